"""Control-plane translation and live push (docs/fidelity.md §2.1, §2.2, §2.3, §1.7;
docs/architecture.md "Config document", "Mesh config", ``XdsServer``)."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

from localmesh.errors import SidecarConfigError
from localmesh.meshconfig import MeshConfig
from localmesh.store import ObjectStore
from localmesh.xds import XdsServer, build_shared, build_sidecar_config
from tests.conformance.conftest import LEAF, LeafApp, Sidecars

_MESH_YAML = """
accessLogFile: /dev/stdout
accessLogEncoding: TEXT
connectTimeout: 2s
defaultConfig:
  tracing:
    sampling: 100.0
extensionProviders:
- name: extended
  envoyFileAccessLog:
    path: /dev/stdout
    logFormat:
      text: "%RESPONSE_CODE% %RESPONSE_FLAGS% %REQ(:PATH)%\\n"
"""


def _pod(name: str, app: str, ports: dict[str, int], *, ready: bool = True,
         version: str = "v1") -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "shop",
                         "labels": {"app": app, "version": version},
                         "annotations": {f"meshchaos.io/{k}-port": str(v)
                                         for k, v in ports.items()}},
            "spec": {"containers": [{"name": app}]},
            "status": {"podIP": "127.0.0.1", "phase": "Running",
                       "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}}


def _service(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": "shop"},
            "spec": {"selector": {"app": name}, "ports": [{"port": 8080}]}}


def _store(honor: bool = True) -> ObjectStore:
    store = ObjectStore()
    for ns in ("shop", "istio-system"):
        store.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    ann = {"meshchaos.io/honor-app-envoy-headers": "true"} if honor else {}
    store.create({"apiVersion": "v1", "kind": "ConfigMap",
                  "metadata": {"name": "istio", "namespace": "istio-system", "annotations": ann},
                  "data": {"mesh": _MESH_YAML}})
    return store


@dataclass
class Mesh:
    store: ObjectStore
    xds: XdsServer
    sidecars: Sidecars
    app: LeafApp

    async def front_config(self) -> dict[str, Any]:
        front = self.sidecars.procs[0]
        return dict(json.loads((await front.admin_get("/config")).body))

    async def call(self, path: str) -> int:
        front = self.sidecars.procs[0]
        resp = await self.sidecars.pool.request(
            "GET", f"http://127.0.0.1:{front.ports['outbound']}{path}", {"host": "leaf:8080"},
            timeout=10)
        return resp.status


@pytest.fixture
async def mesh(sidecars: Sidecars, leaf_app: LeafApp) -> AsyncIterator[Mesh]:
    store = _store()
    front = await sidecars.start("front-1", "front", app_port=1)
    leaf = await sidecars.start("leaf-1", "leaf", app_port=leaf_app.port)
    store.create(_service("front"))
    store.create(_service("leaf"))
    store.create(_pod("front-1", "front", {"app": 1, "inbound": front.ports["inbound"]}))
    store.create(_pod("leaf-1", "leaf", {"app": leaf_app.port,
                                         "inbound": leaf.ports["inbound"]}))
    xds = XdsServer(store, otlp_endpoint="")
    await xds.start()
    try:
        for sc in (front, leaf):
            xds.register_sidecar("shop", sc.pod, sc.admin)
        for sc in (front, leaf):
            await xds.wait_synced("shop", sc.pod)
        yield Mesh(store, xds, sidecars, leaf_app)
    finally:
        await xds.stop()


async def test_registered_sidecars_get_services_endpoints_and_mesh_settings(mesh: Mesh) -> None:
    """docs/architecture.md config document; §2.1 connect timeout from MeshConfig
    `connectTimeout`; §1.7 switch from the ConfigMap annotation; §2.3 accessLogFile on."""
    doc = await mesh.front_config()
    assert doc["node"] == {"pod": "front-1", "namespace": "shop", "service": "front",
                           "mode": "sidecar", "app_port": 1}
    leaf = doc["services"][LEAF]
    assert leaf["ports"] == [8080]
    assert [(e["pod"], e["ready"]) for e in leaf["endpoints"]] == [("leaf-1", True)]
    assert leaf["endpoints"][0]["port"] == mesh.sidecars.procs[1].ports["inbound"]
    assert doc["mesh"]["honor_app_envoy_headers"] is True
    assert doc["mesh"]["connect_timeout_ms"] == 2000
    assert doc["mesh"]["sampling_percent"] == 100.0
    assert doc["mesh"]["access_log"]["enabled"] is True
    assert await mesh.call("/hello") == 200


async def test_virtual_service_timeout_is_pushed_live(mesh: Mesh) -> None:
    """§2.1 "A VS takes effect in the client sidecar"; pushes follow store changes (xDS)."""
    assert await mesh.call("/work?sleep=0.4") == 200
    changed = time.monotonic()
    mesh.store.create({
        "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
        "metadata": {"name": "leaf", "namespace": "shop"},
        "spec": {"hosts": ["leaf"], "http": [{"route": [{"destination": {"host": "leaf"}}],
                                              "timeout": "200ms"}]}})
    await mesh.xds.wait_synced("shop", "front-1")
    assert await mesh.call("/work?sleep=0.4") == 504
    assert time.monotonic() - changed < 1.5
    doc = await mesh.front_config()
    assert doc["routes"][LEAF][0]["timeout_ms"] == 200
    assert doc["routes"][LEAF][0]["retries"] is None


async def test_destination_rule_subset_without_endpoints_is_uh(mesh: Mesh) -> None:
    """§2.2 DR subsets select endpoints by labels; none → 503 UH (§1.6)."""
    mesh.store.create({
        "apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
        "metadata": {"name": "leaf", "namespace": "shop"},
        "spec": {"host": "leaf", "subsets": [{"name": "v2", "labels": {"version": "v2"}}],
                 "trafficPolicy": {"connectionPool": {"tcp": {"connectTimeout": "300ms"}}}}})
    mesh.store.create({
        "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
        "metadata": {"name": "leaf", "namespace": "shop"},
        "spec": {"hosts": ["leaf"], "http": [
            {"route": [{"destination": {"host": "leaf", "subset": "v2"}}]}]}})
    await mesh.xds.wait_synced("shop", "front-1")
    doc = await mesh.front_config()
    assert doc["subsets"][LEAF] == {"v2": {"version": "v2"}}
    assert doc["connect_timeout_ms"][LEAF] == 300
    assert await mesh.call("/v2") == 503


async def test_pod_not_ready_leaves_no_healthy_upstream(mesh: Mesh) -> None:
    """Endpoints are the Service's ready pods; a pod turning unready is pushed (503 UH)."""
    mesh.store.mutate("", "pods", "shop", "leaf-1", _unready, subresource="status")
    await mesh.xds.wait_synced("shop", "front-1")
    assert await mesh.call("/x") == 503


def _unready(pod: dict[str, Any]) -> None:
    pod["status"]["conditions"] = [{"type": "Ready", "status": "False"}]


async def test_set_faults_pushes_at_once_and_clears(mesh: Mesh) -> None:
    """docs/architecture.md `set_faults(namespace, pod, rules)`: "[] clears; pushes at once"."""
    rule = {"id": "shop/d", "action": "delay", "peers": None,
            "delay": {"latency_ms": 250.0, "jitter_ms": 0.0, "correlation": 0.0}}
    mesh.xds.set_faults("shop", "leaf-1", [rule])
    await mesh.xds.wait_synced("shop", "leaf-1")
    start = time.monotonic()
    assert await mesh.call("/slow") == 200
    assert time.monotonic() - start >= 0.25
    mesh.xds.set_faults("shop", "leaf-1", [])
    await mesh.xds.wait_synced("shop", "leaf-1")
    start = time.monotonic()
    assert await mesh.call("/fast") == 200
    assert time.monotonic() - start < 0.25


async def test_faults_survive_a_sidecar_restart(mesh: Mesh, sidecars: Sidecars) -> None:
    """Chaos stays in force while it is active (docs/fidelity.md §5.4): rules set while a pod's
    sidecar is away are pushed when a sidecar registers again; `wait_synced` on a pod without
    a registered sidecar returns at once."""
    rule = {"id": "shop/d", "action": "delay", "peers": None,
            "delay": {"latency_ms": 150.0, "jitter_ms": 0.0, "correlation": 0.0}}
    mesh.xds.unregister_sidecar("shop", "leaf-1")
    mesh.xds.set_faults("shop", "leaf-1", [rule])
    await mesh.xds.wait_synced("shop", "leaf-1", timeout=0.5)
    leaf = sidecars.procs[1]
    mesh.xds.register_sidecar("shop", "leaf-1", leaf.admin)
    await mesh.xds.wait_synced("shop", "leaf-1")
    doc = json.loads((await leaf.admin_get("/config")).body)
    assert doc["faults"] == [rule]


# -- translation, in process ------------------------------------------------------------


def _vs_doc(retries: dict[str, Any] | None) -> dict[str, Any]:
    store = _store()
    http: dict[str, Any] = {"route": [{"destination": {"host": "leaf"}}]}
    if retries is not None:
        http["retries"] = retries
    store.create({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
                  "metadata": {"name": "leaf", "namespace": "shop"},
                  "spec": {"hosts": ["leaf"], "http": [http]}})
    doc = build_sidecar_config(build_shared(store), None, "shop", "front-1", version=1,
                               otlp_endpoint="", faults=[])
    route: dict[str, Any] = doc["routes"][LEAF][0]
    return route


def test_retry_on_integer_codes_become_retriable_status_codes() -> None:
    """§2.2 ConvertPolicy: "integer tokens become retriable_status_codes, plus
    retriable-status-codes if missing"; `perTryTimeout` → per_try_timeout."""
    route = _vs_doc({"attempts": 3, "perTryTimeout": "250ms", "retryOn": "5xx,503"})
    assert route["retries"] == {"attempts": 3, "per_try_timeout_ms": 250.0,
                                "retry_on": ["5xx", "retriable-status-codes"],
                                "retriable_status_codes": [503]}


def test_zero_attempts_disable_retries_and_no_block_keeps_istio_default() -> None:
    """§2.2 "attempts <= 0 → no policy"; no retries block → Istio's default (None here)."""
    assert _vs_doc({"attempts": 0})["retries"]["attempts"] == 0
    assert _vs_doc(None)["retries"] is None
    assert _vs_doc(None)["timeout_ms"] == 0  # §2.1: no VS timeout = disabled


def test_mesh_config_defaults_without_configmap() -> None:
    """§2.3 access log off by default; §3 sampling default 1%; §2.1 connectTimeout 10s;
    §1.7 switch default off."""
    store = ObjectStore()
    cfg = MeshConfig.from_store(store)
    assert (cfg.access_log_enabled, cfg.sampling_percent, cfg.connect_timeout_ms,
            cfg.honor_app_envoy_headers) == (False, 1.0, 10_000.0, False)


def test_telemetry_enables_an_extension_provider_format() -> None:
    """docs/architecture.md: `extensionProviders[].envoyFileAccessLog.logFormat.text` is used
    when a Telemetry object enables that provider."""
    store = _store()
    store.create({"apiVersion": "telemetry.istio.io/v1", "kind": "Telemetry",
                  "metadata": {"name": "mesh-default", "namespace": "istio-system"},
                  "spec": {"accessLogging": [{"providers": [{"name": "extended"}]}],
                           "tracing": [{"randomSamplingPercentage": 50.0}]}})
    cfg = MeshConfig.from_store(store).for_namespace("shop")
    assert cfg.access_log_enabled
    assert cfg.access_log_format == "%RESPONSE_CODE% %RESPONSE_FLAGS% %REQ(:PATH)%\n"
    assert cfg.sampling_percent == 50.0


async def test_untranslatable_object_keeps_the_last_good_config_and_says_why(
        mesh: Mesh) -> None:
    """A VirtualService timeout that is not a duration cannot become a route (§2.1 timeouts are
    durations): the sidecars keep their last good config and `wait_synced` names the cause;
    fixing the object heals the push."""
    vs = {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
          "metadata": {"name": "leaf", "namespace": "shop"},
          "spec": {"hosts": ["leaf"], "http": [{"route": [{"destination": {"host": "leaf"}}],
                                                "timeout": "soon"}]}}
    mesh.store.create(vs)
    with pytest.raises(SidecarConfigError, match="not a duration: 'soon'"):
        await mesh.xds.wait_synced("shop", "front-1")
    assert await mesh.call("/still-routed") == 200
    mesh.store.delete("networking.istio.io", "virtualservices", "shop", "leaf")
    await mesh.xds.wait_synced("shop", "front-1")
