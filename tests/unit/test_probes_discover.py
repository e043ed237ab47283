"""``chaos discover meshchaos`` lists the probes and actions of the installed distribution.

Chaos Toolkit resolves the distribution name to one import name with
``importlib.metadata.packages_distributions()`` and takes the first one mapped to it
(chaoslib ``discovery/package.py``); the wheel declares ``probes`` first in its
``top_level.txt`` (hatch_build.py), for editable installs too. These tests run chaoslib's
own entry point, as the CLI does with ``--no-install``.
"""

from __future__ import annotations

import json
from importlib import metadata

from chaoslib.discovery.discover import discover
from chaoslib.discovery.package import get_importname_from_package

PROBES = {("probes.tracing", "trace_continuity"), ("probes.deadlines", "deadline_propagation"),
          ("probes.deadlines", "virtual_service_audit"), ("probes.cancellation", "orphan_work"),
          ("probes.slo", "steady_state"), ("probes.slo", "recovery_time"),
          ("probes.pods", "service_pods_ready"), ("probes.sidecalls", "flagged_calls"),
          ("probes.sidecalls", "side_call_fallback"), ("probes.pods", "workload_replaced"),
          ("probes.messaging", "message_flow")}
ACTIONS = {("probes.chaos", "apply_chaos"), ("probes.chaos", "remove_chaos"),
           ("probes.chaos", "remove_run_chaos"), ("probes.chaos", "remove_suite_chaos"),
           ("probes.routefaults", "apply_route_fault"),
           ("probes.routefaults", "restore_route_faults")}


def test_the_distribution_resolves_to_the_package_that_holds_discover() -> None:
    assert get_importname_from_package("meshchaos") == "probes"


def test_the_installed_distribution_declares_every_top_level_package_probes_first() -> None:
    declared = (metadata.distribution("meshchaos").read_text("top_level.txt") or "").split()
    assert declared[0] == "probes"
    assert set(declared) == {"probes", "meshchaos", "localmesh", "reports", "fixtures"}


def test_chaos_discover_meshchaos_lists_every_probe_and_action() -> None:
    """What `chaos discover meshchaos --no-install --no-system-info` writes to discovery.json."""
    found = discover("meshchaos", discover_system=False, download_and_install=False)
    written = json.loads(json.dumps(found, default=str))  # the CLI saves it as JSON
    activities = {(a["type"], a["mod"], a["name"]) for a in written["activities"]}
    assert activities == ({("probe", *p) for p in PROBES} | {("action", *a) for a in ACTIONS})
    assert written["extension"]["name"] == "meshchaos"
    steady = next(a for a in written["activities"] if a["name"] == "steady_state")
    assert {"rate", "duration_s", "slo"} <= {arg["name"] for arg in steady["arguments"]}
