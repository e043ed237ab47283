"""The suite's safety rules for chaos objects (probes/safety.py)."""

from __future__ import annotations

import inspect
import logging
import re
import socket
from pathlib import Path
from typing import Any

import pytest
from chaoslib.discovery.discover import discover_actions

from probes import chaos, safety
from probes.controls import safety as safety_control
from probes.errors import ChaosError, ConfigurationError, SafetyError


@pytest.mark.parametrize("namespace", ["kube-system", "istio-system", "chaos-mesh"])
def test_system_namespaces_are_refused_even_when_allowlisted(namespace: str) -> None:
    """kube-system, istio-system and chaos-mesh are never chaos targets."""
    with pytest.raises(SafetyError, match=f"namespace '{namespace}' is never a chaos target"):
        safety.check_namespaces([namespace], {"allowed_namespaces": [namespace]}, "test")


def test_allowlist_defaults_to_shop() -> None:
    safety.check_namespaces(["shop"], None, "test")
    with pytest.raises(SafetyError, match=r"'payments' is not in allowed_namespaces \['shop'\]"):
        safety.check_namespaces(["payments"], {}, "test")


def test_allowlist_accepts_a_comma_string_from_a_var_file() -> None:
    config = {"allowed_namespaces": "shop, payments"}
    assert safety.allowed_namespaces(config) == ["shop", "payments"]
    safety.check_namespaces(["payments"], config, "test")


def test_a_malformed_allowlist_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="allowed_namespaces"):
        safety.allowed_namespaces({"allowed_namespaces": {"shop": True}})


def test_namespaces_of_covers_selector_target_and_pods() -> None:
    obj = {"metadata": {"namespace": "shop"},
           "spec": {"selector": {"namespaces": ["a"]},
                    "target": {"selector": {"pods": {"b": ["x"]}}}}}
    assert safety.namespaces_of(obj) == {"shop", "a", "b"}


def test_stamp_labels_the_object_and_bounds_it_in_time() -> None:
    obj: dict[str, object] = {"metadata": {"name": "x"}, "spec": {}}
    safety.stamp(obj, run_id="abcd1234", manifest="delay-target")
    assert obj["metadata"] == {"name": "x", "labels": {  # type: ignore[comparison-overlap]
        "app.kubernetes.io/managed-by": "meshchaos", "meshchaos.io/run-id": "abcd1234",
        "meshchaos.io/manifest": "delay-target"}}
    assert obj["spec"] == {"duration": "60s"}


@pytest.mark.parametrize(("value", "expected"), [
    (True, True), ("true", True), ("1", True), ("yes", True), (False, False),
    ("false", False), ("", False), (None, False)])
def test_dry_run_reads_booleans_and_var_file_strings(value: object, expected: bool) -> None:
    assert safety.is_dry_run({"dry_run": value}) is expected


def test_run_ids_are_unique_label_values() -> None:
    ids = {safety.new_run_id() for _ in range(200)}
    assert len(ids) == 200
    assert all(re.fullmatch(r"[0-9a-f]{8}", i) for i in ids)


def test_label_selector_narrows_by_run_and_manifest() -> None:
    assert safety.label_selector() == "app.kubernetes.io/managed-by=meshchaos"
    assert safety.label_selector("r1", "m") == ("app.kubernetes.io/managed-by=meshchaos,"
                                                "meshchaos.io/run-id=r1,meshchaos.io/manifest=m")


def test_every_action_is_exported_and_discovered_as_an_action() -> None:
    """chaoslib discovery publishes only ``__all__``; each activity takes configuration and
    secrets last, as the extension template does."""
    public = sorted(name for name, fn in inspect.getmembers(chaos, inspect.isfunction)
                    if fn.__module__ == chaos.__name__ and not name.startswith("_"))
    assert sorted(chaos.__all__) == public
    discovered = discover_actions("probes.chaos")
    assert sorted(a["name"] for a in discovered) == public
    assert {a["type"] for a in discovered} == {"action"}
    for name in public:
        params = list(inspect.signature(getattr(chaos, name)).parameters)
        assert params[-2:] == ["configuration", "secrets"], name


def test_the_control_exposes_the_hooks_chaoslib_looks_up_by_name() -> None:
    """chaoslib 1.44 control/python.py: configure_control, cleanup_control and the
    before_/after_<level>_control functions are found by name."""
    assert set(safety_control.__all__) == {
        "configure_control", "cleanup_control", "before_experiment_control",
        "after_experiment_control", "before_activity_control"}
    for name in safety_control.__all__:
        assert callable(getattr(safety_control, name))


def test_cleanup_after_the_local_mesh_stopped_has_nothing_left_to_remove(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """When the local-mesh control stopped the mesh first, its store (and every chaos object
    in it) is gone: the cleanup says so instead of failing to reach the API."""
    configuration: dict[str, Any] = {"meshchaos_state_dir": str(tmp_path / "state"),
                                     "kubeconfig": str(tmp_path / "state" / "kubeconfig")}
    safety_control.configure_control(configuration=configuration, experiment={})
    try:
        journal: dict[str, Any] = {}
        with caplog.at_level(logging.INFO, logger="chaostoolkit"):
            safety_control.after_experiment_control(context={}, state=journal)
        assert journal["meshchaos_safety"]["cleaned"] is True
        assert "is gone, and its chaos objects with it" in caplog.text
    finally:
        safety_control.cleanup_control()


def test_an_unreachable_api_is_a_chaos_error_not_a_raw_urllib3_one(tmp_path: Path) -> None:
    """'Could not act' raises the package's own error, naming the API it tried."""
    from localmesh.kubeconfig import write_kubeconfig

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", port)
    with pytest.raises(ChaosError, match=f"cannot reach the Kubernetes API 'http://127.0.0.1:"
                                         f"{port}'"):
        chaos.remove_suite_chaos(configuration={"kubeconfig": str(kubeconfig)})
