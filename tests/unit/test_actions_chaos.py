"""Chaos actions through the official Kubernetes client against the local API subset.

The API server is the real one (aiohttp, loopback); the chaos controller runs on its
own loop with recording XdsServer/Supervisor doubles (the data-path boundary), so the
objects go through admission, selection and the status lifecycle of docs/fidelity.md §5.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from chaoslib.exceptions import InterruptExecution

from localmesh.chaos import ChaosController, install_chaos_admission
from localmesh.store import ObjectStore
from localmesh.validation import install_validation
from meshchaos.commands import abort
from probes import chaos
from probes.controls import safety as safety_control
from probes.errors import (
    ChaosError,
    ChaosNotInjected,
    ChaosNotSelected,
    ConfigurationError,
    SafetyError,
)
from tests.apiserver_helpers import NoLogs, namespace, pod, serve_api
from tests.unit.test_chaos_lifecycle import RecordingSupervisor, RecordingXds

GROUP = "chaos-mesh.org"


@dataclass
class Cluster:
    store: ObjectStore
    xds: RecordingXds
    kubeconfig: Path

    def config(self, **extra: Any) -> dict[str, Any]:
        return {"kubeconfig": str(self.kubeconfig), "run_id": "t1", **extra}

    def chaos_names(self, plural: str = "networkchaos") -> list[str]:
        return [o["metadata"]["name"] for o in self.store.list(GROUP, plural)]


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    with running_cluster(tmp_path) as served:
        yield served


@contextmanager
def running_cluster(tmp_path: Path) -> Iterator[Cluster]:
    """API server + chaos controller (with data-path doubles) on loopback, stopped after."""
    store = ObjectStore()
    install_validation(store)
    install_chaos_admission(store)
    for ns in ("shop", "kube-system", "other"):
        store.create(namespace(ns))
    for name, app in (("pricing-a", "pricing"), ("inventory-a", "inventory"),
                      ("orders-a", "orders"), ("ratings-a", "ratings")):
        store.create(pod(name, labels={"app": app}))
    journal: list[tuple[str, Any]] = []
    xds, supervisor = RecordingXds(journal), RecordingSupervisor(journal)
    controller = ChaosController(store, xds, supervisor, retry_interval=0.05,
                                 rng=random.Random(1))
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="chaos-controller", daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(controller.start(), loop).result(5)
    try:
        with serve_api(store, NoLogs(), tmp_path) as api:
            yield Cluster(store, xds, api.kubeconfig)
    finally:
        asyncio.run_coroutine_threadsafe(controller.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def test_apply_waits_for_all_injected_and_labels_the_object(cluster: Cluster) -> None:
    """§5.4 AllInjected=True is the only proof of injection; the object carries the run's
    labels, a name unique to the run and the requested duration."""
    result = chaos.apply_chaos("delay-target.yaml", duration="30s",
                               configuration=cluster.config())
    assert result["applied"] is True
    assert (result["name"], result["namespace"], result["kind"]) == \
        ("delay-target-t1", "shop", "NetworkChaos")
    assert result["records"] == [{"id": "shop/pricing-a", "selectorKey": ".",
                                  "phase": "Injected"}]
    assert result["injected_at"]
    stored = cluster.store.get(GROUP, "networkchaos", "shop", "delay-target-t1")
    assert stored["metadata"]["labels"] == {
        "app.kubernetes.io/managed-by": "meshchaos", "meshchaos.io/run-id": "t1",
        "meshchaos.io/manifest": "delay-target"}
    assert stored["spec"]["duration"] == "30s"
    assert cluster.xds.faults["shop/pricing-a"][0]["delay"]["latency_ms"] == 600.0


def test_selector_and_namespace_overrides_reach_the_object(cluster: Cluster) -> None:
    """Per-run overrides: the selector replaces the manifest's one."""
    result = chaos.apply_chaos("delay-target", selector={
        "namespaces": ["shop"], "labelSelectors": {"app": "orders"}},
        configuration=cluster.config())
    assert [r["id"] for r in result["records"]] == ["shop/orders-a"]


def test_a_409_leftover_never_passes_for_success(cluster: Cluster) -> None:
    """chaostoolkit-kubernetes 0.39 returns a 409 body as success; here a leftover with the
    same name leads to a fresh unique name and a real injection."""
    leftover = chaos._build("delay-target.yaml", "t1", duration=None, selector=None,
                            namespace="shop")
    leftover["metadata"]["annotations"] = {"experiment.chaos-mesh.org/pause": "true"}
    cluster.store.create(leftover)
    result = chaos.apply_chaos("delay-target.yaml", configuration=cluster.config())
    assert result["name"].startswith("delay-target-t1-")
    assert result["name"] != "delay-target-t1"
    stored = cluster.store.get(GROUP, "networkchaos", "shop", result["name"])
    assert {c["type"]: c["status"] for c in stored["status"]["conditions"]}["AllInjected"] \
        == "True"


def test_remove_waits_until_gone_and_is_idempotent(cluster: Cluster) -> None:
    """§5.4: delete → recover → finalizer dropped → gone; a second remove (404) is fine."""
    chaos.apply_chaos("delay-target.yaml", configuration=cluster.config())
    first = chaos.remove_chaos(name="delay-target-t1", configuration=cluster.config())
    assert first["removed"] == [{"kind": "NetworkChaos", "namespace": "shop",
                                 "name": "delay-target-t1"}]
    assert cluster.chaos_names() == []
    assert cluster.xds.faults["shop/pricing-a"] == []
    second = chaos.remove_chaos(name="delay-target-t1", configuration=cluster.config())
    assert second["removed"] == []
    assert second["already_gone"] == first["removed"]


def test_remove_by_manifest_takes_only_this_runs_objects(cluster: Cluster) -> None:
    """Objects are found by the run-id and manifest labels, not by a guessed name."""
    chaos.apply_chaos("pod-failure-side-service.yaml", configuration=cluster.config())
    chaos.apply_chaos("pod-failure-side-service.yaml", configuration=cluster.config(run_id="t2"))
    result = chaos.remove_chaos(manifest="pod-failure-side-service.yaml",
                                configuration=cluster.config())
    assert [r["name"] for r in result["removed"]] == ["pod-failure-side-service-t1"]
    assert cluster.chaos_names("podchaos") == ["pod-failure-side-service-t2"]


def test_remove_run_chaos_removes_every_object_of_the_run_only(cluster: Cluster) -> None:
    """The safety cleanup removes everything labelled with the run id, nothing else."""
    chaos.apply_chaos("delay-target.yaml", configuration=cluster.config())
    chaos.apply_chaos("pod-failure-side-service.yaml", configuration=cluster.config())
    chaos.apply_chaos("loss-target-egress.yaml", configuration=cluster.config(run_id="t2"))
    result = chaos.remove_run_chaos(configuration=cluster.config())
    assert sorted(r["name"] for r in result["removed"]) == [
        "delay-target-t1", "pod-failure-side-service-t1"]
    assert cluster.chaos_names() == ["loss-target-egress-t2"]
    assert cluster.chaos_names("podchaos") == []


@pytest.mark.parametrize("target_ns", ["kube-system", "istio-system", "chaos-mesh", "other"])
def test_allowlist_refuses_before_anything_is_applied(cluster: Cluster, target_ns: str) -> None:
    """Never kube-system/istio-system/chaos-mesh, only allowed_namespaces (default shop)."""
    with pytest.raises(SafetyError, match=f"namespace '{target_ns}'"):
        chaos.apply_chaos("delay-target.yaml", namespace=target_ns,
                          configuration=cluster.config())
    assert cluster.chaos_names() == []


def test_a_selector_reaching_into_another_namespace_is_refused(cluster: Cluster) -> None:
    """The allowlist covers the namespaces a chaos object selects from, not only its own."""
    with pytest.raises(SafetyError, match="namespace 'kube-system'"):
        chaos.apply_chaos("delay-target.yaml", selector={"namespaces": ["kube-system"]},
                          configuration=cluster.config())
    assert cluster.chaos_names() == []


def test_dry_run_prints_the_manifest_and_applies_nothing(
        cluster: Cluster, capsys: pytest.CaptureFixture[str]) -> None:
    """dry_run: print what would be applied; nothing reaches the API."""
    result = chaos.apply_chaos("partition-target-peer.yaml",
                               configuration=cluster.config(dry_run="true"))
    out = capsys.readouterr().out
    assert result["dry_run"] is True
    assert result["applied"] is False
    assert "name: partition-target-peer-t1" in out
    assert "meshchaos.io/run-id: t1" in out
    assert cluster.chaos_names() == []


def test_no_pod_selected_fails_at_once_and_leaves_nothing(cluster: Cluster) -> None:
    """§5.1 "no pod is selected" is a clear failure, not a wait for the timeout."""
    started = time.monotonic()
    with pytest.raises(ChaosNotSelected, match="no pod is selected"):
        chaos.apply_chaos("delay-target.yaml",
                          selector={"labelSelectors": {"app": "nobody"}},
                          wait_timeout=20, configuration=cluster.config())
    assert time.monotonic() - started < 10
    assert cluster.chaos_names() == []


def test_injection_timeout_names_object_condition_and_last_status(cluster: Cluster) -> None:
    """An injection that did not happen never passes: the error says what was awaited."""
    cluster.xds.sync_error = TimeoutError("sidecar did not ack")
    with pytest.raises(ChaosNotInjected) as exc:
        chaos.apply_chaos("delay-target.yaml", wait_timeout=1.0,
                          configuration=cluster.config())
    message = str(exc.value)
    assert "NetworkChaos 'shop/delay-target-t1'" in message
    assert "AllInjected=True" in message
    assert "last status" in message
    assert "shop/pricing-a Not Injected" in message
    cluster.xds.sync_error = None


def test_missing_manifest_is_a_configuration_error(cluster: Cluster) -> None:
    with pytest.raises(ConfigurationError, match=r"'no-such\.yaml' not found"):
        chaos.apply_chaos("no-such.yaml", configuration=cluster.config())


def test_abort_removes_every_suite_object_and_prints_them(
        cluster: Cluster, capsys: pytest.CaptureFixture[str]) -> None:
    """`meshchaos abort` removes all objects labelled managed-by meshchaos, all runs."""
    chaos.apply_chaos("delay-target.yaml", configuration=cluster.config())
    chaos.apply_chaos("pod-failure-side-service.yaml", configuration=cluster.config(run_id="t9"))
    assert abort.main(["--kubeconfig", str(cluster.kubeconfig)]) == 0
    out = capsys.readouterr().out
    assert "removed NetworkChaos shop/delay-target-t1" in out
    assert "removed PodChaos shop/pod-failure-side-service-t9" in out
    assert cluster.chaos_names() == [] and cluster.chaos_names("podchaos") == []
    assert abort.main(["--kubeconfig", str(cluster.kubeconfig)]) == 0
    assert "no chaos objects of meshchaos in all namespaces" in capsys.readouterr().out


def _experiment(ns: str = "") -> dict[str, Any]:
    args: dict[str, Any] = {"manifest": "delay-target.yaml"}
    if ns:
        args["namespace"] = ns
    return {"method": [{"type": "action", "name": "slow-pricing",
                        "provider": {"type": "python", "module": "probes.chaos",
                                     "func": "apply_chaos", "arguments": args}}]}


def test_control_sets_the_run_id_and_cleans_up_after_the_experiment(cluster: Cluster) -> None:
    """The control creates configuration["run_id"] and removes the run's objects after the
    experiment whatever its outcome."""
    configuration: dict[str, Any] = {"kubeconfig": str(cluster.kubeconfig)}
    safety_control.configure_control(configuration=configuration, experiment=_experiment())
    try:
        run_id = configuration["run_id"]
        assert len(run_id) == 8
        safety_control.before_experiment_control(context={})
        chaos.apply_chaos("delay-target.yaml", configuration=dict(configuration))
        assert cluster.chaos_names() == [f"delay-target-{run_id}"]
        journal: dict[str, Any] = {"status": "failed"}
        safety_control.after_experiment_control(context={}, state=journal)
        assert cluster.chaos_names() == []
        assert journal["meshchaos_safety"]["removed"][0]["name"] == \
            f"delay-target-{run_id}"
    finally:
        safety_control.cleanup_control()


def test_control_refuses_a_forbidden_namespace_before_the_experiment(cluster: Cluster) -> None:
    """The allowlist is checked before anything is applied: the run is interrupted."""
    configuration: dict[str, Any] = {"kubeconfig": str(cluster.kubeconfig)}
    safety_control.configure_control(configuration=configuration,
                                     experiment=_experiment("kube-system"))
    try:
        with pytest.raises(InterruptExecution, match="namespace 'kube-system'"):
            safety_control.before_experiment_control(context={})
        with pytest.raises(InterruptExecution, match="namespace 'kube-system'"):
            safety_control.before_activity_control(context=_experiment("kube-system")
                                                   ["method"][0], configuration=configuration)
    finally:
        safety_control.cleanup_control()
    assert cluster.chaos_names() == []


def test_sigterm_removes_the_runs_chaos_then_calls_the_previous_handler(
        cluster: Cluster) -> None:
    """An interrupted run still removes its objects (SIGTERM handler), and the previous
    handler (chaoslib's) still runs."""
    seen: list[int] = []
    original = signal.signal(signal.SIGTERM, lambda signum, frame: seen.append(signum))
    try:
        configuration: dict[str, Any] = {"kubeconfig": str(cluster.kubeconfig)}
        safety_control.configure_control(configuration=configuration, experiment={})
        chaos.apply_chaos("pod-failure-side-service.yaml", configuration=dict(configuration))
        assert cluster.chaos_names("podchaos") != []
        os.kill(os.getpid(), signal.SIGTERM)
        deadline = time.monotonic() + 10
        while not seen and time.monotonic() < deadline:
            time.sleep(0.01)
        assert seen == [signal.SIGTERM]
        assert cluster.chaos_names("podchaos") == []
        safety_control.cleanup_control()
        assert signal.getsignal(signal.SIGTERM) is not safety_control._on_signal
    finally:
        signal.signal(signal.SIGTERM, original)


def test_remove_by_name_refuses_an_object_the_suite_did_not_create(cluster: Cluster) -> None:
    """Removal by name only takes objects labelled managed-by meshchaos: someone else's
    experiment is never deleted by a typo."""
    foreign = chaos._build("delay-target.yaml", "x", duration=None, selector=None,
                           namespace="shop")
    foreign["metadata"]["name"] = "someone-elses"
    foreign["metadata"]["labels"] = {"team": "payments"}
    cluster.store.create(foreign)
    with pytest.raises(SafetyError, match="'shop/someone-elses': it is not labelled"):
        chaos.remove_chaos(name="someone-elses", configuration=cluster.config())
    assert cluster.chaos_names() == ["someone-elses"]


def test_a_webhook_refusal_reaches_the_client_as_a_422_naming_the_field(
        cluster: Cluster, tmp_path: Path) -> None:
    """§5.2 webhook rule through the API: `from` without a target is a 422 Invalid whose
    Status names the field; the action reports it and nothing is stored."""
    from kubernetes import client, config
    from kubernetes.client.exceptions import ApiException

    bad = chaos._build("delay-target.yaml", "t1", duration=None, selector=None,
                       namespace="shop")
    bad["spec"]["direction"] = "from"
    api = client.CustomObjectsApi(config.new_client_from_config(str(cluster.kubeconfig)))
    with pytest.raises(ApiException) as exc:
        api.create_namespaced_custom_object(GROUP, "v1alpha1", "shop", "networkchaos", bad)
    assert exc.value.status == 422
    body = json.loads(exc.value.body)
    assert body["reason"] == "Invalid"
    assert body["details"]["causes"][0]["field"] == "spec.direction"
    assert "'from' needs spec.target" in body["message"]
    manifest = tmp_path / "from-without-target.yaml"
    manifest.write_text(yaml.safe_dump(bad))
    with pytest.raises(ChaosError, match=r"spec\.direction 'from' needs spec\.target"):
        chaos.apply_chaos(str(manifest), configuration=cluster.config())
    assert cluster.chaos_names() == []


def test_ctrl_c_removes_the_runs_chaos_then_interrupts_as_before(cluster: Cluster) -> None:
    """SIGINT: the run's objects are removed first, then Python's KeyboardInterrupt still
    reaches chaoslib (which marks the run interrupted and plays the rollbacks)."""
    original = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        configuration: dict[str, Any] = {"kubeconfig": str(cluster.kubeconfig)}
        safety_control.configure_control(configuration=configuration, experiment={})
        chaos.apply_chaos("delay-target.yaml", configuration=dict(configuration))
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)  # the handler runs between bytecodes; this sleep is cut short
        assert cluster.chaos_names() == []
    finally:
        safety_control.cleanup_control()
        signal.signal(signal.SIGINT, original)


# -- aiming a reviewed template at services named by configuration keys -----------------

def _service(name: str, ns: str, selector: dict[str, str] | None) -> dict[str, Any]:
    spec: dict[str, Any] = {"ports": [{"port": 8080}]}
    if selector is not None:
        spec["selector"] = selector
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns},
            "spec": spec}


def _virtual_service(host: str, ns: str, http: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": host, "namespace": ns},
            "spec": {"hosts": [host], "http": [{"route": [{"destination": {"host": host}}],
                                                **http}]}}


@pytest.fixture
def store_ns(cluster: Cluster) -> Cluster:
    """A namespace 'store' of someone else's services: stock's pods are labelled
    tier=stock (not app=<name>), so only its Service's selector finds them."""
    cluster.store.create(namespace("store"))
    cluster.store.create(pod("stock-7f9-a", "store", labels={"tier": "stock"}))
    cluster.store.create(pod("catalog-1b2-a", "store", labels={"tier": "catalog"}))
    cluster.store.create(_service("stock", "store", {"tier": "stock"}))
    cluster.store.create(_service("catalog", "store", {"tier": "catalog"}))
    cluster.store.create(_service("headless", "store", None))
    cluster.store.create(_virtual_service("stock", "store", {"timeout": "250ms"}))
    cluster.store.create(_virtual_service("catalog", "store", {
        "retries": {"attempts": 2, "perTryTimeout": "100ms"}}))
    return cluster


def test_the_namespace_key_moves_the_manifest_and_its_selectors(store_ns: Cluster) -> None:
    """`--var namespace=store` retargets a template written for shop, selectors included."""
    config = store_ns.config(namespace="store", allowed_namespaces="store")
    result = chaos.apply_chaos("delay-target.yaml", service="stock",
                               configuration=config)
    stored = store_ns.store.get(GROUP, "networkchaos", "store", result["name"])
    assert stored["spec"]["selector"] == {"namespaces": ["store"],
                                          "labelSelectors": {"tier": "stock"}}
    assert [r["id"] for r in result["records"]] == ["store/stock-7f9-a"]


def test_the_delay_is_derived_from_the_route_timeout_and_says_so(store_ns: Cluster) -> None:
    """Istio's route timeout bounds every try (fidelity §1.2): twice it makes callers give up."""
    config = store_ns.config(namespace="store", allowed_namespaces="store")
    result = chaos.apply_chaos("delay-target.yaml", service="stock", caller="catalog",
                               latency_factor=2, configuration=config)
    stored = store_ns.store.get(GROUP, "networkchaos", "store", result["name"])
    assert stored["spec"]["delay"]["latency"] == "500ms"
    assert result["derived"] == "delay 500 ms = 2 x catalog->stock timeout 250 ms"


def test_a_route_with_only_per_try_timeouts_bounds_the_delay_by_all_its_tries(
        store_ns: Cluster) -> None:
    config = store_ns.config(namespace="store", allowed_namespaces="store", dry_run="true")
    result = chaos.apply_chaos("delay-target.yaml", service="catalog",
                               latency_factor=1.5, configuration=config)
    assert result["dry_run"] is True
    assert result["derived"] == ("delay 450 ms = 1.5 x route to catalog 3 tries x "
                                 "perTryTimeout 100 ms")
    assert store_ns.chaos_names() == []


def test_a_partition_peer_is_aimed_by_its_own_service_selector(store_ns: Cluster) -> None:
    config = store_ns.config(namespace="store", allowed_namespaces="store")
    result = chaos.apply_chaos("partition-target-peer.yaml", service="catalog",
                               peer="stock", configuration=config)
    stored = store_ns.store.get(GROUP, "networkchaos", "store", result["name"])
    assert stored["spec"]["selector"]["labelSelectors"] == {"tier": "catalog"}
    assert stored["spec"]["target"]["selector"] == {"namespaces": ["store"],
                                                    "labelSelectors": {"tier": "stock"}}


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"service": "stokc"}, "names service 'stokc', but namespace 'store' has no such "
                           "Service \\(it has: catalog, headless, stock\\)"),
    ({"service": "headless"}, "Service 'store/headless' has no spec.selector"),
    ({"service": "catalog", "latency_factor": 2, "manifest": "pod-kill-target.yaml"},
     "'latency' applies to a delay"),
    ({"service": "headless", "peer": "stock", "manifest": "delay-target.yaml"},
     "has no spec.selector"),
    ({"service": "stock", "peer": "catalog"}, "argument 'peer' needs a manifest with "
                                              "spec.target"),
])
def test_bad_targets_fail_before_any_chaos_is_applied(store_ns: Cluster, kwargs: dict[str, Any],
                                                      message: str) -> None:
    config = store_ns.config(namespace="store", allowed_namespaces="store")
    manifest = kwargs.pop("manifest", "delay-target.yaml")
    with pytest.raises(ConfigurationError, match=message):
        chaos.apply_chaos(manifest, configuration=config, **kwargs)
    assert store_ns.chaos_names() == [] and store_ns.chaos_names("podchaos") == []


def test_a_timeout_experiment_on_a_service_without_a_route_timeout_is_refused(
        store_ns: Cluster) -> None:
    """Istio's default route has no timeout (fidelity §2.1): there is nothing to exceed."""
    store_ns.store.create(_service("reviews", "store", {"tier": "reviews"}))
    store_ns.store.create(pod("reviews-1-a", "store", labels={"tier": "reviews"}))
    config = store_ns.config(namespace="store", allowed_namespaces="store")
    with pytest.raises(ConfigurationError, match="no VirtualService in namespace 'store' "
                                                 "routes to it"):
        chaos.apply_chaos("delay-target.yaml", service="reviews", latency_factor=2,
                          configuration=config)
    assert store_ns.chaos_names() == []
