"""The local Chaos Mesh controller's status lifecycle (docs/fidelity.md §5.1, §5.3, §5.4).

The controller runs against a real ObjectStore; the XdsServer and Supervisor are
recording doubles because they are the boundary the controller talks to.
"""

from __future__ import annotations

import asyncio
import copy
import random
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from localmesh.chaos import ChaosController, install_chaos_admission
from localmesh.errors import NotFound
from localmesh.store import ObjectStore
from localmesh.validation import install_validation

GROUP = "chaos-mesh.org"
Obj = dict[str, Any]


class RecordingXds:
    """Records set_faults/set_http_faults pushes; wait_synced can be made to fail."""

    def __init__(self, journal: list[tuple[str, Any]]) -> None:
        self.journal = journal
        self.faults: dict[str, list[dict[str, Any]]] = {}
        self.http_faults: dict[str, list[dict[str, Any]]] = {}
        self.sync_error: Exception | None = None

    def set_faults(self, namespace: str, pod: str, rules: list[dict[str, Any]]) -> None:
        self.faults[f"{namespace}/{pod}"] = copy.deepcopy(rules)
        self.journal.append(("set_faults", (f"{namespace}/{pod}", len(rules))))

    def set_http_faults(self, namespace: str, pod: str, rules: list[dict[str, Any]]) -> None:
        self.http_faults[f"{namespace}/{pod}"] = copy.deepcopy(rules)
        self.journal.append(("set_http_faults", (f"{namespace}/{pod}", len(rules))))

    async def wait_synced(self, namespace: str, pod: str, timeout: float = 2.0) -> None:  # noqa: ASYNC109
        if self.sync_error is not None:
            raise self.sync_error


class RecordingSupervisor:
    """Records the pod actions the controller asks for."""

    def __init__(self, journal: list[tuple[str, Any]]) -> None:
        self.journal = journal
        self.failed: set[str] = set()

    async def kill_container(self, namespace: str, pod: str, container: str) -> None:
        self.journal.append(("kill_container", f"{namespace}/{pod}/{container}"))

    async def fail_pod(self, namespace: str, pod: str) -> None:
        self.failed.add(f"{namespace}/{pod}")
        self.journal.append(("fail_pod", f"{namespace}/{pod}"))

    async def recover_pod(self, namespace: str, pod: str) -> None:
        self.failed.discard(f"{namespace}/{pod}")
        self.journal.append(("recover_pod", f"{namespace}/{pod}"))


class Harness:
    def __init__(self) -> None:
        self.store = ObjectStore()
        install_validation(self.store)  # the CRD schemas also check what the controller writes
        install_chaos_admission(self.store)
        self.journal: list[tuple[str, Any]] = []
        self.xds = RecordingXds(self.journal)
        self.supervisor = RecordingSupervisor(self.journal)
        self.controller = ChaosController(self.store, self.xds, self.supervisor,
                                          retry_interval=0.05, rng=random.Random(7))
        self.store.create({"apiVersion": "v1", "kind": "Namespace",
                           "metadata": {"name": "shop"}})
        self.store.subscribe(self._watch, group=GROUP, plural="networkchaos")
        self.store.subscribe(self._watch, group=GROUP, plural="podchaos")
        self.store.subscribe(self._watch, group=GROUP, plural="httpchaos")

    def _watch(self, event: str, obj: Obj) -> None:
        if event == "DELETED":
            self.journal.append(("object_gone", obj["metadata"]["name"]))

    def add_pod(self, name: str, app: str, **extra: Any) -> Obj:
        pod = {"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": name, "namespace": "shop", "labels": {"app": app},
                            "annotations": extra.pop("annotations", {})},
               "spec": {"containers": [{"name": "app", "image": "local/app"},
                                       {"name": "istio-proxy", "image": "local/proxy"}]},
               "status": {"phase": extra.pop("phase", "Running")}}
        return self.store.create(pod)

    def create(self, kind: str, name: str, spec: Obj, **meta: Any) -> Obj:
        return self.store.create({"apiVersion": f"{GROUP}/v1alpha1", "kind": kind,
                                  "metadata": {"name": name, "namespace": "shop", **meta},
                                  "spec": spec})

    def get(self, plural: str, name: str) -> Obj:
        return self.store.get(GROUP, plural, "shop", name)

    def events(self, name: str) -> list[tuple[str, str]]:
        return [(e["reason"], e["message"]) for e in self.store.list("", "events", "shop")
                if e["involvedObject"]["name"] == name]


def condition(obj: Obj, kind: str) -> str:
    return next(c["status"] for c in obj["status"]["conditions"] if c["type"] == kind)


async def eventually(check: Callable[[], bool], within: float = 3.0) -> None:
    """Poll a condition on the loop (the controller runs on the same loop), bounded."""
    deadline = asyncio.get_running_loop().time() + within
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met within {within}s")
        await asyncio.sleep(0.01)


def gone(h: Harness, plural: str, name: str) -> bool:
    try:
        h.get(plural, name)
    except NotFound:
        return True
    return False


def has_condition(h: Harness, plural: str, name: str, kind: str, value: str) -> Callable[[], bool]:
    def check() -> bool:
        try:
            obj = h.get(plural, name)
        except NotFound:
            return False
        return any(c["type"] == kind and c["status"] == value
                   for c in (obj.get("status") or {}).get("conditions") or [])
    return check


@pytest.fixture
async def h() -> AsyncIterator[Harness]:
    harness = Harness()
    await harness.controller.start()
    try:
        yield harness
    finally:
        await harness.controller.stop()


DELAY = {"action": "delay", "mode": "all", "selector": {"labelSelectors": {"app": "pricing"}},
         "delay": {"latency": "300ms"}}


async def test_create_selects_injects_and_reports_all_injected(h: Harness) -> None:
    """§5.4: Selected = records ≠ nil; AllInjected = all records Injected; finalizer
    chaos-mesh/records is added on create (FinalizerInited)."""
    h.add_pod("pricing-a", "pricing")
    h.add_pod("orders-a", "orders")
    h.create("NetworkChaos", "leaf-delay", DELAY)
    await eventually(has_condition(h, "networkchaos", "leaf-delay", "AllInjected", "True"))
    obj = h.get("networkchaos", "leaf-delay")
    assert obj["metadata"]["finalizers"] == ["chaos-mesh/records"]
    assert condition(obj, "Selected") == "True"
    assert condition(obj, "AllRecovered") == "False"
    assert condition(obj, "Paused") == "False"
    assert obj["status"]["experiment"]["desiredPhase"] == "Run"
    [record] = obj["status"]["experiment"]["containerRecords"]
    assert (record["id"], record["selectorKey"], record["phase"]) == \
        ("shop/pricing-a", ".", "Injected")
    assert (record["injectedCount"], record["recoveredCount"]) == (1, 0)
    assert record["events"][-1]["type"] == "Succeeded"
    assert record["events"][-1]["operation"] == "Apply"
    assert h.xds.faults["shop/pricing-a"][0]["delay"]["latency_ms"] == 300.0
    assert h.xds.faults["shop/pricing-a"][0]["peers"] is None
    assert "shop/orders-a" not in h.xds.faults
    reasons = [r for r, _ in h.events("leaf-delay")]
    assert {"FinalizerInited", "Started", "Applied", "Updated"} <= set(reasons)


async def test_pause_recovers_and_resume_reinjects(h: Harness) -> None:
    """§5.4: annotation experiment.chaos-mesh.org/pause == "true" → recovery, Paused=True;
    removing it resumes."""
    h.add_pod("pricing-a", "pricing")
    h.create("NetworkChaos", "leaf-delay", DELAY)
    await eventually(has_condition(h, "networkchaos", "leaf-delay", "AllInjected", "True"))
    h.store.patch(GROUP, "networkchaos", "shop", "leaf-delay",
                  {"metadata": {"annotations": {"experiment.chaos-mesh.org/pause": "true"}}})
    await eventually(has_condition(h, "networkchaos", "leaf-delay", "AllRecovered", "True"))
    obj = h.get("networkchaos", "leaf-delay")
    assert condition(obj, "Paused") == "True"
    assert condition(obj, "AllInjected") == "False"
    assert obj["status"]["experiment"]["desiredPhase"] == "Stop"
    assert h.xds.faults["shop/pricing-a"] == []
    assert "Paused" in [r for r, _ in h.events("leaf-delay")]
    h.store.patch(GROUP, "networkchaos", "shop", "leaf-delay",
                  {"metadata": {"annotations": {"experiment.chaos-mesh.org/pause": None}}})
    await eventually(has_condition(h, "networkchaos", "leaf-delay", "AllInjected", "True"))
    record = h.get("networkchaos", "leaf-delay")["status"]["experiment"]["containerRecords"][0]
    assert (record["injectedCount"], record["recoveredCount"]) == (2, 1)
    assert h.xds.faults["shop/pricing-a"][0]["action"] == "delay"


async def test_pause_annotation_must_be_exactly_true(h: Harness) -> None:
    """§5.4: pause only when the annotation is exactly "true" ("True" does not pause)."""
    h.add_pod("pricing-a", "pricing")
    h.create("NetworkChaos", "leaf-delay", DELAY,
             annotations={"experiment.chaos-mesh.org/pause": "True"})
    await eventually(has_condition(h, "networkchaos", "leaf-delay", "AllInjected", "True"))
    assert condition(h.get("networkchaos", "leaf-delay"), "Paused") == "False"


async def test_delete_recovers_before_the_object_disappears(h: Harness) -> None:
    """§5.4: delete → Stop → Recover all → finalizer dropped once all are Not Injected."""
    h.add_pod("pricing-a", "pricing")
    h.create("NetworkChaos", "leaf-delay", DELAY)
    await eventually(has_condition(h, "networkchaos", "leaf-delay", "AllInjected", "True"))
    h.store.delete(GROUP, "networkchaos", "shop", "leaf-delay")
    await eventually(lambda: gone(h, "networkchaos", "leaf-delay"))
    clear = h.journal.index(("set_faults", ("shop/pricing-a", 0)))
    assert clear < h.journal.index(("object_gone", "leaf-delay"))
    reasons = [r for r, _ in h.events("leaf-delay")]
    assert "Deleted" in reasons
    assert "Recovered" in reasons


async def test_duration_expiry_recovers_and_keeps_the_object(h: Harness) -> None:
    """§5.4: creationTimestamp + duration passed → Stop (event TimeUp); the object stays."""
    h.add_pod("pricing-a", "pricing")
    h.create("NetworkChaos", "short", {**DELAY, "duration": "300ms"})
    await eventually(has_condition(h, "networkchaos", "short", "AllInjected", "True"))
    await eventually(has_condition(h, "networkchaos", "short", "AllRecovered", "True"))
    obj = h.get("networkchaos", "short")
    assert obj["status"]["experiment"]["desiredPhase"] == "Stop"
    assert h.xds.faults["shop/pricing-a"] == []
    assert "TimeUp" in [r for r, _ in h.events("short")]


async def test_vanished_pod_counts_as_recovered(h: Harness) -> None:
    """§5.4: a vanished pod counts as recovered, so deletion is not blocked by it."""
    h.add_pod("pricing-a", "pricing")
    h.create("NetworkChaos", "leaf-delay", DELAY)
    await eventually(has_condition(h, "networkchaos", "leaf-delay", "AllInjected", "True"))
    h.store.delete("", "pods", "shop", "pricing-a")
    h.store.patch(GROUP, "networkchaos", "shop", "leaf-delay",
                  {"metadata": {"annotations": {"experiment.chaos-mesh.org/pause": "true"}}})
    await eventually(has_condition(h, "networkchaos", "leaf-delay", "AllRecovered", "True"))
    record = h.get("networkchaos", "leaf-delay")["status"]["experiment"]["containerRecords"][0]
    assert (record["phase"], record["recoveredCount"]) == ("Not Injected", 1)
    h.store.delete(GROUP, "networkchaos", "shop", "leaf-delay")
    await eventually(lambda: gone(h, "networkchaos", "leaf-delay"))


async def test_no_matching_pod_is_a_failed_event_and_selected_false(h: Harness) -> None:
    """§5.1: no match → "no pod is selected"; records stay nil so Selected is False."""
    h.create("NetworkChaos", "nothing", {**DELAY, "selector": {"labelSelectors": {"app": "x"}}})
    await eventually(lambda: any("no pod is selected" in m for _, m in h.events("nothing")))
    obj = h.get("networkchaos", "nothing")
    assert "containerRecords" not in obj["status"]["experiment"]
    assert condition(obj, "Selected") == "False"
    assert condition(obj, "AllInjected") == "False"
    failed = [(r, m) for r, m in h.events("nothing") if r == "Failed"]
    assert failed == [("Failed", "Failed to select targets: no pod is selected")]


async def test_selection_happens_once_and_a_replacement_pod_is_not_killed(h: Harness) -> None:
    """§5.1/§5.3: selection only while containerRecords is nil; the replacement pod of a
    pod-kill is not re-selected."""
    h.add_pod("inventory-a", "inventory")
    h.create("PodChaos", "kill", {"action": "pod-kill", "mode": "all",
                                  "selector": {"labelSelectors": {"app": "inventory"}}})
    await eventually(has_condition(h, "podchaos", "kill", "AllInjected", "True"))
    with pytest.raises(NotFound):
        h.store.get("", "pods", "shop", "inventory-a")
    h.add_pod("inventory-b", "inventory")
    h.store.patch(GROUP, "podchaos", "shop", "kill",
                  {"metadata": {"annotations": {"note": "poke"}}})
    await asyncio.sleep(0.2)
    h.store.get("", "pods", "shop", "inventory-b")  # still there
    records = h.get("podchaos", "kill")["status"]["experiment"]["containerRecords"]
    assert [r["id"] for r in records] == ["shop/inventory-a"]
    assert records[0]["injectedCount"] == 1


async def test_pod_kill_deletes_with_the_grace_period(h: Harness) -> None:
    """§5.3: pod-kill = Delete(pod, GracePeriodSeconds=gracePeriod)."""
    h.store.set_graceful_deletion("", "pods")
    h.add_pod("inventory-a", "inventory")
    h.create("PodChaos", "kill", {"action": "pod-kill", "mode": "one", "gracePeriod": 3,
                                  "selector": {"labelSelectors": {"app": "inventory"}}})
    await eventually(has_condition(h, "podchaos", "kill", "AllInjected", "True"))
    pod = h.store.get("", "pods", "shop", "inventory-a")
    assert pod["metadata"]["deletionTimestamp"]
    assert pod["metadata"]["deletionGracePeriodSeconds"] == 3


async def test_pod_failure_fails_the_pod_for_its_duration(h: Harness) -> None:
    """§5.3: pod-failure takes the whole pod (sidecar included) down until recovery at
    duration expiry."""
    h.add_pod("ratings-a", "ratings")
    h.create("PodChaos", "fail", {"action": "pod-failure", "mode": "all", "duration": "400ms",
                                  "selector": {"labelSelectors": {"app": "ratings"}}})
    await eventually(has_condition(h, "podchaos", "fail", "AllInjected", "True"))
    assert h.supervisor.failed == {"shop/ratings-a"}
    notes = h.store.get("", "pods", "shop", "ratings-a")["metadata"]["annotations"]
    assert notes["chaos-mesh-fail-pod-failure-app-normal-image"] == "local/app"
    assert notes["chaos-mesh-fail-pod-failure-istio-proxy-normal-image"] == "local/proxy"
    await eventually(has_condition(h, "podchaos", "fail", "AllRecovered", "True"))
    assert h.supervisor.failed == set()
    notes = h.store.get("", "pods", "shop", "ratings-a")["metadata"].get("annotations") or {}
    assert not [k for k in notes if k.startswith("chaos-mesh-")]
    assert ("recover_pod", "shop/ratings-a") in h.journal


async def test_container_kill_kills_each_named_container(h: Harness) -> None:
    """§5.3: container-kill acts per ns/pod/container record."""
    h.add_pod("orders-a", "orders")
    h.create("PodChaos", "ck", {"action": "container-kill", "mode": "all",
                                "containerNames": ["app", "istio-proxy"],
                                "selector": {"labelSelectors": {"app": "orders"}}})
    await eventually(has_condition(h, "podchaos", "ck", "AllInjected", "True"))
    records = h.get("podchaos", "ck")["status"]["experiment"]["containerRecords"]
    assert [r["id"] for r in records] == ["shop/orders-a/app", "shop/orders-a/istio-proxy"]
    assert [c for c in h.journal if c[0] == "kill_container"] == [
        ("kill_container", "shop/orders-a/app"), ("kill_container", "shop/orders-a/istio-proxy")]


async def test_rules_of_two_chaos_objects_on_one_pod_are_merged(h: Harness) -> None:
    """Chaos Mesh merges every chaos on a pod into one PodNetworkChaos (§5.2)."""
    h.add_pod("orders-a", "orders")
    sel = {"labelSelectors": {"app": "orders"}}
    h.create("NetworkChaos", "d", {"action": "delay", "mode": "all", "selector": sel,
                                   "delay": {"latency": "10ms"}})
    h.create("NetworkChaos", "l", {"action": "loss", "mode": "all", "selector": sel,
                                   "loss": {"loss": "30"}})
    await eventually(has_condition(h, "networkchaos", "d", "AllInjected", "True"))
    await eventually(has_condition(h, "networkchaos", "l", "AllInjected", "True"))
    assert sorted(r["action"] for r in h.xds.faults["shop/orders-a"]) == ["delay", "loss"]
    h.store.delete(GROUP, "networkchaos", "shop", "d")
    await eventually(lambda: gone(h, "networkchaos", "d"))
    assert [r["action"] for r in h.xds.faults["shop/orders-a"]] == ["loss"]


async def test_failed_push_leaves_the_record_not_injected(h: Harness) -> None:
    """An injection that did not happen must not read as one: Failed event, AllInjected False."""
    h.add_pod("pricing-a", "pricing")
    h.xds.sync_error = TimeoutError("sidecar did not ack")
    h.create("NetworkChaos", "leaf-delay", DELAY)
    await eventually(lambda: any(r == "Failed" for r, _ in h.events("leaf-delay")))
    obj = h.get("networkchaos", "leaf-delay")
    assert condition(obj, "AllInjected") == "False"
    record = obj["status"]["experiment"]["containerRecords"][0]
    assert record["phase"] == "Not Injected"
    assert record["events"][-1]["type"] == "Failed"
    h.xds.sync_error = None
    await eventually(has_condition(h, "networkchaos", "leaf-delay", "AllInjected", "True"))


async def test_stop_recovers_every_injected_fault() -> None:
    """ChaosController.stop() recovers every fault it injected (docs/architecture.md)."""
    harness = Harness()
    await harness.controller.start()
    harness.add_pod("pricing-a", "pricing")
    harness.add_pod("ratings-a", "ratings")
    harness.create("NetworkChaos", "leaf-delay", DELAY)
    harness.create("PodChaos", "fail", {"action": "pod-failure", "mode": "all", "duration": "1h",
                                        "selector": {"labelSelectors": {"app": "ratings"}}})
    await eventually(has_condition(harness, "networkchaos", "leaf-delay", "AllInjected", "True"))
    await eventually(has_condition(harness, "podchaos", "fail", "AllInjected", "True"))
    await harness.controller.stop()
    assert harness.xds.faults["shop/pricing-a"] == []
    assert harness.supervisor.failed == set()
    assert condition(harness.get("networkchaos", "leaf-delay"), "AllRecovered") == "True"


async def test_an_object_paused_at_creation_is_selected_but_not_injected(h: Harness) -> None:
    """§5.1/§5.4: selection happens while records are nil whatever the desired phase; a
    paused object's records stay Not Injected (Selected, AllRecovered and Paused True)."""
    h.add_pod("pricing-a", "pricing")
    h.create("NetworkChaos", "held", DELAY,
             annotations={"experiment.chaos-mesh.org/pause": "true"})
    await eventually(has_condition(h, "networkchaos", "held", "Selected", "True"))
    obj = h.get("networkchaos", "held")
    assert condition(obj, "AllRecovered") == "True"
    assert condition(obj, "Paused") == "True"
    assert obj["status"]["experiment"]["desiredPhase"] == "Stop"
    assert "shop/pricing-a" not in h.xds.faults


async def test_clean_finalizer_forced_lets_a_stuck_object_go(h: Harness) -> None:
    """§5.4: stuck recovery blocks deletion; annotation
    chaos-mesh.chaos-mesh.org/cleanFinalizer=forced forces it."""
    h.add_pod("ratings-a", "ratings")
    h.create("NetworkChaos", "stuck", {**DELAY, "selector": {
        "labelSelectors": {"app": "ratings"}}})
    await eventually(has_condition(h, "networkchaos", "stuck", "AllInjected", "True"))
    h.xds.sync_error = TimeoutError("sidecar gone quiet")
    h.store.delete(GROUP, "networkchaos", "shop", "stuck")
    await eventually(lambda: any(r == "Failed" for r, _ in h.events("stuck")))
    assert not gone(h, "networkchaos", "stuck")
    h.store.patch(GROUP, "networkchaos", "shop", "stuck", {"metadata": {"annotations": {
        "chaos-mesh.chaos-mesh.org/cleanFinalizer": "forced"}}})
    await eventually(lambda: gone(h, "networkchaos", "stuck"))
    h.xds.sync_error = None


async def test_after_time_up_resuming_does_not_inject_again(h: Harness) -> None:
    """§5.4 desired phase, first match wins: duration passed → Stop, before the pause check;
    removing a pause after the time is up does not bring the fault back."""
    h.add_pod("pricing-a", "pricing")
    h.create("NetworkChaos", "short", {**DELAY, "duration": "200ms"},
             annotations={"experiment.chaos-mesh.org/pause": "true"})
    await eventually(has_condition(h, "networkchaos", "short", "Selected", "True"))
    await eventually(lambda: "TimeUp" in [r for r, _ in h.events("short")])
    h.store.patch(GROUP, "networkchaos", "shop", "short",
                  {"metadata": {"annotations": {"experiment.chaos-mesh.org/pause": None}}})
    await asyncio.sleep(0.2)
    obj = h.get("networkchaos", "short")
    assert obj["status"]["experiment"]["desiredPhase"] == "Stop"
    assert obj["status"]["experiment"]["containerRecords"][0]["injectedCount"] == 0
    assert "shop/pricing-a" not in h.xds.faults
