"""Route-fault actions through the official Kubernetes client against the local API subset.

A VirtualService fault edits an object the application owns, so the action keeps the
object's spec, labels and annotations and the restore writes them back exactly; the run's
cleanup (``remove_run_chaos``, the safety control's signal handlers, ``meshchaos abort``)
restores it like it removes chaos objects (docs/fidelity.md §2.4).
"""

from __future__ import annotations

import copy
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from chaoslib.exceptions import InterruptExecution

from meshchaos.commands import abort
from probes import chaos, routefaults, vsedit
from probes.controls import safety as safety_control
from probes.errors import ChaosError, ConfigurationError, SafetyError
from tests.unit.test_actions_chaos import Cluster, running_cluster

ISTIO = "networking.istio.io"


def _pricing(**route: Any) -> dict[str, Any]:
    """The reference chain's pricing VirtualService (fixtures/k8s/20-traffic.yaml)."""
    http = {"name": "pricing-v1", "timeout": "300ms", "retries": {"attempts": 0},
            "route": [{"destination": {"host": "pricing", "subset": "v1",
                                       "port": {"number": 8080}}}], **route}
    return {"apiVersion": f"{ISTIO}/v1", "kind": "VirtualService",
            "metadata": {"name": "pricing", "namespace": "shop", "labels": {"team": "shop"},
                         "annotations": {"owner": "pricing-team"}},
            "spec": {"hosts": ["pricing"], "http": [http]}}


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    with running_cluster(tmp_path) as served:
        served.store.create(_pricing())
        yield served


def _vs(cluster: Cluster) -> dict[str, Any]:
    return cluster.store.get(ISTIO, "virtualservices", "shop", "pricing")


def _as_owned(vs: dict[str, Any]) -> tuple[Any, Any, Any]:
    meta = vs["metadata"]
    return vs["spec"], meta.get("labels") or {}, meta.get("annotations") or {}


def test_a_fault_lands_on_the_route_with_the_runs_labels_and_the_original_kept(
        cluster: Cluster) -> None:
    before = copy.deepcopy(_vs(cluster))
    result = routefaults.apply_route_fault("pricing", route="pricing-v1", delay="600ms",
                                           abort_status=503, abort_percent=10, settle_s=0,
                                           configuration=cluster.config())
    assert result["applied"] and result["route"] == "pricing-v1"
    vs = _vs(cluster)
    assert vs["spec"]["http"][0]["fault"] == {
        "delay": {"fixedDelay": "600ms", "percentage": {"value": 100.0}},
        "abort": {"httpStatus": 503, "percentage": {"value": 10.0}}}
    labels = vs["metadata"]["labels"]
    assert labels["meshchaos.io/run-id"] == "t1" and labels["team"] == "shop"
    assert labels["app.kubernetes.io/managed-by"] == "meshchaos"
    assert vsedit.ORIGINAL_ANNOTATION in vs["metadata"]["annotations"]
    restored = routefaults.restore_route_faults(configuration=cluster.config())
    assert restored["restored"] == [{"kind": "VirtualService", "namespace": "shop",
                                     "name": "pricing"}]
    assert _as_owned(_vs(cluster)) == _as_owned(before)


def test_the_runs_chaos_cleanup_restores_the_virtual_service_too(cluster: Cluster) -> None:
    """``remove_run_chaos`` is what the safety control runs after the experiment, whatever
    its outcome: a route fault is the run's chaos like a NetworkChaos."""
    before = copy.deepcopy(_vs(cluster))
    routefaults.apply_route_fault("pricing", delay="1s", settle_s=0,
                                  configuration=cluster.config())
    chaos.apply_chaos("delay-target.yaml", configuration=cluster.config())
    result = chaos.remove_run_chaos(configuration=cluster.config())
    kinds = sorted(r["kind"] for r in result["removed"])
    assert kinds == ["NetworkChaos", "VirtualService"]
    assert _as_owned(_vs(cluster)) == _as_owned(before)


def test_an_interrupted_run_restores_the_virtual_service_before_it_stops(
        cluster: Cluster) -> None:
    """SIGTERM during the run: the safety control's handler removes the run's chaos (and so
    restores the VirtualService) before the previous handler runs."""
    before = copy.deepcopy(_vs(cluster))
    seen: list[int] = []
    original = signal.signal(signal.SIGTERM, lambda signum, frame: seen.append(signum))
    try:
        configuration: dict[str, Any] = {"kubeconfig": str(cluster.kubeconfig)}
        safety_control.configure_control(configuration=configuration, experiment={})
        routefaults.apply_route_fault("pricing", abort_status=500, settle_s=0,
                                      configuration=dict(configuration))
        assert "fault" in _vs(cluster)["spec"]["http"][0]
        os.kill(os.getpid(), signal.SIGTERM)
        deadline = time.monotonic() + 10
        while not seen and time.monotonic() < deadline:
            time.sleep(0.01)
        assert seen == [signal.SIGTERM]
        assert _as_owned(_vs(cluster)) == _as_owned(before)
        safety_control.cleanup_control()
    finally:
        signal.signal(signal.SIGTERM, original)


def test_meshchaos_abort_restores_every_route_fault_of_the_suite(
        cluster: Cluster, capsys: pytest.CaptureFixture[str]) -> None:
    before = copy.deepcopy(_vs(cluster))
    routefaults.apply_route_fault("pricing", delay="1s", settle_s=0,
                                  configuration=cluster.config(run_id="old-run"))
    assert abort.main(["--kubeconfig", str(cluster.kubeconfig)]) == 0
    assert _as_owned(_vs(cluster)) == _as_owned(before)
    assert "restored VirtualService shop/pricing" in capsys.readouterr().out


def test_a_second_fault_on_the_same_virtual_service_is_refused(cluster: Cluster) -> None:
    """Restoring two runs' edits out of order would lose the original: the second is refused,
    naming the run that holds the object."""
    routefaults.apply_route_fault("pricing", delay="1s", settle_s=0,
                                  configuration=cluster.config(run_id="first"))
    with pytest.raises(SafetyError, match="already carries one of run 'first'"):
        routefaults.apply_route_fault("pricing", delay="2s", settle_s=0,
                                      configuration=cluster.config(run_id="second"))
    assert _vs(cluster)["spec"]["http"][0]["fault"]["delay"]["fixedDelay"] == "1s"


def test_the_delay_can_be_derived_from_the_route_timeout(cluster: Cluster) -> None:
    result = routefaults.apply_route_fault("pricing", delay_factor=2, caller="inventory",
                                           settle_s=0, configuration=cluster.config())
    assert result["fault"]["delay"]["fixedDelay"] == "600ms"
    assert result["derived"] == "delay 600 ms = 2 x inventory->pricing timeout 300 ms"


@pytest.mark.parametrize(("kwargs", "error", "message"), [
    ({"virtual_service": "pricing", "route": "pricing-v2", "delay": "1s"},
     ConfigurationError, "has no http route 'pricing-v2' (it has: pricing-v1)"),
    ({"virtual_service": "nope", "delay": "1s"},
     ConfigurationError, "VirtualService 'shop/nope' not found"),
    ({"virtual_service": "pricing", "abort_status": 700},
     ConfigurationError, "'abort_status' is 700, not an HTTP status in [200, 600)"),
    ({"virtual_service": "pricing", "delay": "1s", "delay_percent": 150},
     ConfigurationError, "'delay_percent' is 150, not a percentage"),
    ({"virtual_service": "pricing"}, ConfigurationError, "needs 'delay', 'abort_status'"),
    ({"virtual_service": "pricing", "delay": "1s", "namespace": "kube-system"},
     SafetyError, "namespace 'kube-system' is never a chaos target"),
])
def test_a_bad_request_is_refused_before_anything_is_written(
        cluster: Cluster, kwargs: dict[str, Any], error: type[Exception],
        message: str) -> None:
    before = copy.deepcopy(_vs(cluster))
    with pytest.raises(error) as caught:
        routefaults.apply_route_fault(settle_s=0, configuration=cluster.config(), **kwargs)
    assert message in str(caught.value)
    assert _vs(cluster) == before


def test_a_malformed_delay_is_refused_by_admission_naming_the_field(cluster: Cluster) -> None:
    """The API server's CEL rule on ``fixedDelay`` answers 422; nothing is stored."""
    before = copy.deepcopy(_vs(cluster))
    with pytest.raises(ChaosError, match="fixedDelay") as caught:
        routefaults.apply_route_fault("pricing", delay="2 s", settle_s=0,
                                      configuration=cluster.config())
    assert "is not a valid duration" in str(caught.value)
    assert _vs(cluster) == before


def test_the_safety_control_refuses_a_route_fault_outside_the_allowlist_before_the_run(
        cluster: Cluster) -> None:
    """As for chaos objects: the namespace a route fault would edit is checked before anything
    is applied, and again with the activity's final arguments."""
    action = {"type": "action", "name": "fault-elsewhere",
              "provider": {"type": "python", "module": "probes.routefaults",
                           "func": "apply_route_fault",
                           "arguments": {"virtual_service": "pricing", "delay": "1s",
                                         "namespace": "other"}}}
    configuration: dict[str, Any] = {"kubeconfig": str(cluster.kubeconfig)}
    safety_control.configure_control(configuration=configuration,
                                     experiment={"method": [action]})
    try:
        with pytest.raises(InterruptExecution, match="namespace 'other' is not in"):
            safety_control.before_experiment_control(context={})
        with pytest.raises(InterruptExecution, match="namespace 'other' is not in"):
            safety_control.before_activity_control(context=action,
                                                   configuration=configuration)
    finally:
        safety_control.cleanup_control()
