"""Hatch build hook: declare the wheel's top-level packages, the Chaos Toolkit extension first.

``chaos discover meshchaos`` finds the extension through the distribution: chaoslib
(``discovery/package.py``) looks the distribution up in
``importlib.metadata.packages_distributions()`` and imports the *first* top-level name
that maps to it, then calls that module's ``discover()``. Without a ``top_level.txt`` those
names are inferred from the installed ``.py`` files: none for an editable install (only a
``.pth`` file), and set order (so any of ``fixtures``, ``localmesh``, ``meshchaos``, …) for a
wheel. This hook writes ``top_level.txt`` into the ``.dist-info`` of both kinds of wheel,
listing the package that holds ``discover()`` (option ``discover-package``) first and the
other packages of the wheel after it.

For an editable install the hook also compiles the packages' bytecode into the source tree
(``__pycache__``), as pip does for the files of a regular install: with
``PYTHONDONTWRITEBYTECODE`` set (common in containers and CI images) nothing else ever
writes it, and every process of a ``chaos run`` (the controls, the mesh daemon, its fork
servers) would compile the project's sources again, a few tenths of a second of CPU per
run. A source edited later simply has a stale ``.pyc``, which Python ignores.
"""

from __future__ import annotations

import compileall
import shutil
import tempfile
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface


class TopLevelHook(BuildHookInterface):  # type: ignore[type-arg]
    """Adds ``<name>-<version>.dist-info/top_level.txt`` to the wheel."""

    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if self.target_name != "wheel":
            return
        if version == "editable":
            for package in self.build_config.packages:
                compileall.compile_dir(Path(self.root) / package, quiet=1)
        first = str(self.config.get("discover-package", "probes"))
        packages = [first, *(p for p in self.build_config.packages if p != first)]
        self._scratch = Path(tempfile.mkdtemp(prefix="meshchaos-build-"))
        listing = self._scratch / "top_level.txt"
        listing.write_text("".join(f"{name}\n" for name in packages))
        dist_info = f"{self.build_config.builder.artifact_project_id}.dist-info"
        build_data["force_include"][str(listing)] = f"{dist_info}/top_level.txt"

    def finalize(self, version: str, build_data: dict[str, Any], artifact_path: str) -> None:
        scratch = getattr(self, "_scratch", None)
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
