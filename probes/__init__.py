"""meshchaos's Chaos Toolkit extension: probes (verdicts), actions (chaos), controls.

``chaos discover meshchaos`` lists every activity through :func:`discover`, built from
each activity module's ``__all__`` by chaoslib's own discovery helpers, so the list can
never drift from the code (tests/unit/test_exported_members.py checks it).
"""

from __future__ import annotations

import json
import logging
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = ["ACTION_MODULES", "PROBE_MODULES", "discover"]

logger = logging.getLogger("chaostoolkit")

PROBE_MODULES = ("probes.tracing", "probes.deadlines", "probes.cancellation", "probes.slo",
                 "probes.pods", "probes.sidecalls", "probes.messaging")
ACTION_MODULES = ("probes.chaos", "probes.routefaults")


def _version() -> str:
    try:
        return metadata.version("meshchaos")
    except metadata.PackageNotFoundError:
        return "0.0.0"


def _discover_system() -> dict[str, Any] | None:
    """The local mesh this directory runs, if any (endpoints only: discovery sends no traffic)."""
    from probes.config import DEFAULTS

    endpoints = Path(DEFAULTS["meshchaos_state_dir"]) / "endpoints.json"
    try:
        return {"target": "local", "endpoints": json.loads(endpoints.read_text())}
    except (OSError, ValueError):
        return None


def discover(discover_system: bool = True) -> dict[str, Any]:
    """Discover meshchaos's probes and actions (and the local mesh, when one runs here)."""
    from chaoslib.discovery.discover import (
        discover_actions,
        discover_probes,
        initialize_discovery_result,
    )

    logger.info("Discovering capabilities from meshchaos")
    discovery: dict[str, Any] = initialize_discovery_result("meshchaos", _version(), "istio")
    for module in PROBE_MODULES:
        discovery["activities"].extend(discover_probes(module))
    for module in ACTION_MODULES:
        discovery["activities"].extend(discover_actions(module))
    if discover_system:
        discovery["system"] = _discover_system()
    return discovery
