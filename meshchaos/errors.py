"""Errors of the meshchaos command line and pytest plugin.

One tree, rooted at :class:`MeshchaosError`, for what the command line and the plugin
find wrong themselves; what the parts below them raise keeps its own tree
(``localmesh.errors.MeshError`` from the mesh, ``probes.errors.ProbeError``,
``reports.errors.ReportError``), and :func:`meshchaos.cli.main` turns this root and the
mesh's into exit code 1 with the message::

    MeshchaosError
    ├── UsageError (ValueError)   an option value the command cannot use (--set-env,
    │                             --manifests); names the option and quotes the value
    ├── MeshApiError              the local mesh's API did not answer, or answered an error
    ├── StopError                 ``meshchaos down`` could not stop every process of the mesh
    └── ExperimentNotPassed       an experiment item's verdict is FAIL or INCONCLUSIVE

Messages are lowercase, name the thing and quote the value.
"""

from __future__ import annotations

__all__ = ["ExperimentNotPassed", "MeshApiError", "MeshchaosError", "StopError", "UsageError"]


class MeshchaosError(Exception):
    """Root of every error the command line and the pytest plugin raise."""


class UsageError(MeshchaosError, ValueError):
    """An option value the command cannot use."""


class MeshApiError(MeshchaosError):
    """The local mesh's API did not answer a command's request, or answered an error."""


class StopError(MeshchaosError):
    """Processes of the mesh that outlived ``meshchaos down``."""


class ExperimentNotPassed(MeshchaosError):
    """Raised by an experiment item when the verdict is FAIL or INCONCLUSIVE."""

    def __init__(self, summary: str) -> None:
        super().__init__(summary)
        self.summary = summary
