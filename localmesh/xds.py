"""The control-plane push: build each sidecar's configuration from store objects, push it live.

Like istiod's xDS, every relevant change (Services, Pods, VirtualServices,
DestinationRules, Gateways, the ``istio`` ConfigMap, Telemetry) rebuilds the
configuration of every registered sidecar and pushes it to its admin
``POST /config`` (debounced by a few ms); fault rules from the chaos controller
(:meth:`XdsServer.set_faults`) are pushed at once. ``wait_synced`` returns once
the sidecar acknowledged the latest version built for it.

Translation follows docs/fidelity.md §2: VS ``timeout`` → route timeout (none
when unset, §2.1); VS ``retries`` → Envoy policy (``attempts <= 0`` = none,
integer ``retryOn`` tokens → retriable status codes, unset = Istio's default,
§2.2); DR subsets by labels and ``connectionPool.tcp.connectTimeout``, else the
mesh ``connectTimeout``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from localmesh.documents import (
    DestinationDoc,
    EndpointDoc,
    FaultAbortDoc,
    FaultDelayDoc,
    FaultRuleDoc,
    FractionalPercentDoc,
    GatewayRoutesDoc,
    HeaderMatchDoc,
    HttpChaosRuleDoc,
    HttpFaultDoc,
    KubeObject,
    ObjectMeta,
    RetriesDoc,
    RouteDoc,
    RouteMatchDoc,
    ServiceDoc,
    SidecarConfigDoc,
)
from localmesh.errors import MeshError, NotFound, SidecarConfigError
from localmesh.http.client import ConnectionPool
from localmesh.http.errors import HttpError
from localmesh.meshconfig import MeshConfig, parse_duration_ms
from localmesh.protocols import (
    GRPC_CODES,
    TCP_INBOUND_ANNOTATION,
    carries_tcp,
    port_protocol,
    speaks_http2,
)
from localmesh.selectors import match_labels
from localmesh.store import ObjectStore

__all__ = ["XdsServer", "build_shared", "build_sidecar_config"]

log = logging.getLogger("localmesh.xds")

_ISTIO = "networking.istio.io"
_RELEVANT = {("", "services"), ("", "pods"), ("", "configmaps"), (_ISTIO, "virtualservices"),
             (_ISTIO, "destinationrules"), (_ISTIO, "gateways"),
             ("telemetry.istio.io", "telemetries")}
_DEBOUNCE_S = 0.005
_RETRY_PUSH_S = 0.05


def _fqdn(host: str, namespace: str) -> str:
    parts = host.lower().split(".")
    if len(parts) == 1:
        return f"{host}.{namespace}.svc.cluster.local"
    if len(parts) == 2:
        return f"{host}.svc.cluster.local"
    if len(parts) == 3 and parts[2] == "svc":
        return f"{host}.cluster.local"
    return host.lower()


def _pod_ready(pod: KubeObject) -> bool:
    meta: ObjectMeta = pod.get("metadata") or {}
    if meta.get("deletionTimestamp"):
        return False
    for cond in (pod.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Ready":
            return bool(cond.get("status") == "True")
    return False


def _pod_port(pod: KubeObject) -> int | None:
    """Where callers connect: the sidecar's inbound listener, else the app (no sidecar)."""
    meta: ObjectMeta = pod.get("metadata") or {}
    ann = meta.get("annotations") or {}
    raw = ann.get("meshchaos.io/inbound-port") or ann.get("meshchaos.io/app-port")
    return int(raw) if raw and str(raw).isdigit() else None


def _tcp_port(pod: KubeObject) -> int | None:
    """Where callers' sidecars send a TCP connection: the pod's inbound TCP listener, else
    (no sidecar injected) its app, as Istio sends plain TCP to a pod outside the mesh."""
    ann = (pod.get("metadata") or {}).get("annotations") or {}
    raw = ann.get(TCP_INBOUND_ANNOTATION)
    if raw is None and "meshchaos.io/inbound-port" not in ann:
        raw = ann.get("meshchaos.io/app-port")
    return int(raw) if raw and str(raw).isdigit() else None


def _services(store: ObjectStore) -> dict[str, ServiceDoc]:
    pods = store.list("", "pods")
    out: dict[str, ServiceDoc] = {}
    for svc in store.list("", "services"):
        meta: ObjectMeta = svc["metadata"]
        spec = svc.get("spec") or {}
        ns = meta.get("namespace", "default")
        selector = spec.get("selector") or {}
        eps: list[EndpointDoc] = []
        for pod in pods:
            pmeta: ObjectMeta = pod["metadata"]
            port = _pod_port(pod)
            if (not selector or pmeta.get("namespace") != ns or port is None
                    or not match_labels(selector, pmeta.get("labels") or {})):
                continue
            ep: EndpointDoc = {
                "pod": pmeta["name"], "namespace": ns,
                "host": str((pod.get("status") or {}).get("podIP") or "127.0.0.1"),
                "port": port, "labels": dict(pmeta.get("labels") or {}),
                "ready": _pod_ready(pod)}
            tcp_port = _tcp_port(pod)
            if tcp_port is not None:
                ep["tcp_port"] = tcp_port
            eps.append(ep)
        doc: ServiceDoc = {
            "name": meta["name"], "namespace": ns,
            "ports": [int(p["port"]) for p in spec.get("ports") or [] if "port" in p],
            "endpoints": eps}
        tcp_ports = [int(p["port"]) for p in spec.get("ports") or []
                     if "port" in p and carries_tcp(port_protocol(p))]
        if tcp_ports:
            doc["tcp_ports"] = tcp_ports
        h2_ports = [int(p["port"]) for p in spec.get("ports") or []
                    if "port" in p and speaks_http2(p)]
        if h2_ports:
            doc["h2_ports"] = h2_ports
        out[f"{meta['name']}.{ns}.svc.cluster.local"] = doc
    return out


def _retries(spec: Mapping[str, Any] | None, where: str) -> RetriesDoc | None:
    if spec is None:
        return None  # Istio's default policy (§2.2)
    attempts = int(spec.get("attempts") or 0)
    if attempts <= 0:
        return {"attempts": 0, "retry_on": [], "retriable_status_codes": []}
    tokens = [t.strip() for t in str(spec.get("retryOn") or "").split(",") if t.strip()]
    codes = [int(t) for t in tokens if t.isdigit()]
    names = [t for t in tokens if not t.isdigit()]
    if codes and "retriable-status-codes" not in names:
        names.append("retriable-status-codes")
    per_try = spec.get("perTryTimeout")
    return {"attempts": attempts,
            "per_try_timeout_ms": parse_duration_ms(per_try, f"{where}.perTryTimeout")
            if per_try else 0,
            "retry_on": names, "retriable_status_codes": codes}


def _percentage(spec: Mapping[str, Any]) -> FractionalPercentDoc:
    """Istio's ``translatePercentToFractionalPercent``: ``value * 10000`` per MILLION,
    truncated as Go's uint32 conversion does (§2.4)."""
    return {"numerator": int(float(spec.get("value") or 0) * 10_000), "denominator": "MILLION"}


def _fault(spec: Mapping[str, Any] | None, where: str) -> HttpFaultDoc | None:
    """Istio's ``TranslateFault``: VirtualService ``fault`` → Envoy HTTPFault per route (§2.4).

    A delay's ``percentage`` wins over the deprecated integer ``percent`` (per HUNDRED);
    with neither the delay fires for no request, and an abort without ``percentage`` aborts
    none. ``exponentialDelay`` is dropped as Istio drops it; a ``grpcStatus`` abort becomes
    Envoy's numeric ``grpc_status`` (the code's number, ``UNAVAILABLE`` → 14).
    """
    if not spec:
        return None
    out: HttpFaultDoc = {}
    delay = spec.get("delay")
    if delay and delay.get("fixedDelay"):
        pct: FractionalPercentDoc = (
            _percentage(delay["percentage"]) if delay.get("percentage") is not None
            else {"numerator": int(delay.get("percent") or 0), "denominator": "HUNDRED"})
        delay_doc: FaultDelayDoc = {
            "fixed_delay_ms": parse_duration_ms(delay["fixedDelay"],
                                                f"{where}.delay.fixedDelay"),
            "percentage": pct}
        out["delay"] = delay_doc
    elif delay:
        log.warning("%s.delay: only fixedDelay is translated (Istio: exponential faults are "
                    "not yet supported)", where)
    abort = spec.get("abort")
    if abort and (abort.get("httpStatus") is not None or abort.get("grpcStatus") is not None):
        abort_doc: FaultAbortDoc = {
            "percentage": _percentage(abort["percentage"])
            if abort.get("percentage") is not None
            else {"numerator": 0, "denominator": "HUNDRED"}}
        if abort.get("httpStatus") is not None:
            abort_doc["http_status"] = int(abort["httpStatus"])
        else:
            # TranslateFault: FaultAbort_GrpcStatus{uint32(SupportedGRPCStatus[name])}; the
            # admission check refused any other name (localmesh/validation.py _check_fault).
            abort_doc["grpc_status"] = GRPC_CODES[str(abort["grpcStatus"])]
        out["abort"] = abort_doc
    elif abort:
        log.warning("%s.abort: only httpStatus and grpcStatus aborts are emulated "
                    "(http2Error is refused by Istio's webhook)", where)
    return out or None


def _string_match(spec: Mapping[str, Any]) -> HeaderMatchDoc:
    """Istio's StringMatch (one of exact/prefix/regex), as the sidecar reads it."""
    out: HeaderMatchDoc = {}
    if "exact" in spec:
        out["exact"] = str(spec["exact"])
    if "prefix" in spec:
        out["prefix"] = str(spec["prefix"])
    if "regex" in spec:
        out["regex"] = str(spec["regex"])
    return out


def _match(m: Mapping[str, Any]) -> RouteMatchDoc:
    uri = _string_match(m.get("uri") or {})
    out: RouteMatchDoc = {}
    if "prefix" in uri:
        out["prefix"] = uri["prefix"]
    if "exact" in uri:
        out["exact"] = uri["exact"]
    if "regex" in uri:
        out["regex"] = uri["regex"]
    headers = {str(name).lower(): _string_match(cond)
               for name, cond in (m.get("headers") or {}).items()}
    if headers:
        out["headers"] = headers
    return out


def _http_routes(vs: KubeObject) -> list[RouteDoc]:
    meta: ObjectMeta = vs["metadata"]
    ns = meta.get("namespace", "default")
    where = f"virtualservice {ns}/{meta['name']}"
    routes: list[RouteDoc] = []
    for i, http in enumerate((vs.get("spec") or {}).get("http") or []):
        dests: list[DestinationDoc] = []
        for d in http.get("route") or []:
            dest = d.get("destination") or {}
            dests.append({"host": _fqdn(str(dest.get("host", "")), ns),
                          "subset": str(dest.get("subset", "")),
                          "port": int((dest.get("port") or {}).get("number") or 0),
                          "weight": int(d.get("weight", 100 if len(http["route"]) == 1 else 0))})
        if not dests:
            continue  # redirect/direct_response routes are not emulated
        timeout = http.get("timeout")
        route: RouteDoc = {
            "name": str(http.get("name") or f"{meta['name']}.{i}"),
            "match": [_match(m) for m in http.get("match") or []],
            "destinations": dests,
            "timeout_ms": parse_duration_ms(timeout, f"{where}.http[{i}].timeout")
            if timeout else 0,
            "retries": _retries(http.get("retries"), f"{where}.http[{i}].retries")}
        fault = _fault(http.get("fault"), f"{where}.http[{i}].fault")
        if fault is not None:
            route["fault"] = fault
        routes.append(route)
    return routes


@dataclass
class Shared:
    """The parts of every sidecar's document that do not depend on the sidecar."""

    mesh: MeshConfig
    services: dict[str, ServiceDoc]
    routes: dict[str, list[RouteDoc]]
    gateway_routes: list[GatewayRoutesDoc]
    subsets: dict[str, dict[str, dict[str, str]]]
    connect_timeout_ms: dict[str, float]


def build_shared(store: ObjectStore) -> Shared:
    """Translate the store's Services, Pods, VirtualServices and DestinationRules once."""
    routes: dict[str, list[RouteDoc]] = {}
    gateway_routes: list[GatewayRoutesDoc] = []
    for vs in sorted(store.list(_ISTIO, "virtualservices"),
                     key=lambda o: o["metadata"].get("creationTimestamp", "")):
        spec = vs.get("spec") or {}
        ns = vs["metadata"].get("namespace", "default")
        http = _http_routes(vs)
        gateways = spec.get("gateways") or ["mesh"]
        if "mesh" in gateways:
            for host in spec.get("hosts") or []:
                routes.setdefault(_fqdn(str(host), ns), []).extend(http)
        if any(g != "mesh" for g in gateways):
            gateway_routes.append({"hosts": [str(h).lower() for h in spec.get("hosts") or []],
                                   "routes": http})
    subsets: dict[str, dict[str, dict[str, str]]] = {}
    connect: dict[str, float] = {}
    for dr in store.list(_ISTIO, "destinationrules"):
        spec = dr.get("spec") or {}
        ns = dr["metadata"].get("namespace", "default")
        host = _fqdn(str(spec.get("host", "")), ns)
        subsets[host] = {str(s["name"]): {str(k): str(v) for k, v in
                                          (s.get("labels") or {}).items()}
                         for s in spec.get("subsets") or [] if "name" in s}
        tcp = ((spec.get("trafficPolicy") or {}).get("connectionPool") or {}).get("tcp") or {}
        if tcp.get("connectTimeout"):
            connect[host] = parse_duration_ms(
                tcp["connectTimeout"],
                f"destinationrule {ns}/{dr['metadata']['name']}.connectTimeout")
    return Shared(MeshConfig.from_store(store), _services(store), routes, gateway_routes,
                  subsets, connect)


def build_sidecar_config(shared: Shared, pod: KubeObject | None, namespace: str, name: str, *,
                         version: int, otlp_endpoint: str,
                         otlp_headers: dict[str, str] | None = None,
                         faults: list[FaultRuleDoc],
                         http_faults: list[HttpChaosRuleDoc] | None = None) -> SidecarConfigDoc:
    """One sidecar's whole configuration document (docs/architecture.md)."""
    meta: ObjectMeta = (pod or {}).get("metadata") or {}
    labels = meta.get("labels") or {}
    ann = meta.get("annotations") or {}
    app_port = ann.get("meshchaos.io/app-port")
    gateway = labels.get("istio") == "ingressgateway"
    return {
        "version": version,
        "node": {"pod": name, "namespace": namespace,
                 "service": labels.get("app") or name.rsplit("-", 2)[0],
                 "mode": "gateway" if gateway else "sidecar",
                 "app_port": int(app_port) if app_port and str(app_port).isdigit() else 0},
        "mesh": shared.mesh.for_namespace(namespace).to_doc(otlp_endpoint, otlp_headers),
        "services": shared.services,
        "routes": shared.routes,
        "subsets": shared.subsets,
        "connect_timeout_ms": shared.connect_timeout_ms,
        "gateway_routes": shared.gateway_routes if gateway else [],
        "faults": faults,
        "http_faults": http_faults or [],
    }


@dataclass
class _Target:
    namespace: str
    pod: str
    admin_url: str
    built: int = 0
    acked: int = 0
    error: str = ""
    busy: bool = False  # building or pushing right now
    dirty: asyncio.Event = field(default_factory=asyncio.Event)
    synced: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None


class XdsServer:
    """Pushes live configuration to every registered sidecar."""

    def __init__(self, store: ObjectStore, *, otlp_endpoint: str,
                 otlp_headers: dict[str, str] | None = None) -> None:
        self._store = store
        self._otlp = otlp_endpoint
        self._otlp_headers = dict(otlp_headers or {})  # the receiver's token: never logged
        self._targets: dict[tuple[str, str], _Target] = {}
        # Fault rules outlive registrations: a sidecar that restarts (pod-failure,
        # container-kill) must come back with the chaos still in force.
        self._faults: dict[tuple[str, str], list[FaultRuleDoc]] = {}
        self._http_faults: dict[tuple[str, str], list[HttpChaosRuleDoc]] = {}
        self._versions = itertools.count(1)
        self._pool = ConnectionPool(max_idle_per_host=2)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._debounce: asyncio.TimerHandle | None = None
        self._shared: Shared | None = None
        self._subscribed = False
        self.pushes = 0

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        if not self._subscribed:
            self._store.subscribe(self._on_change)
            self._subscribed = True

    async def stop(self) -> None:
        if self._debounce is not None:
            self._debounce.cancel()
        for target in list(self._targets.values()):
            await self._stop_target(target)
        self._targets.clear()
        await self._pool.close()

    # -- store events ---------------------------------------------------------------

    def _on_change(self, event: str, obj: KubeObject) -> None:
        group = obj.get("apiVersion", "v1").rpartition("/")[0]
        kind = obj.get("kind", "")
        rtype = self._store.registry.by_kind(group, kind)
        if rtype is None or (rtype.group, rtype.plural) not in _RELEVANT:
            return
        if rtype.plural == "configmaps" and (obj["metadata"].get("namespace"),
                                             obj["metadata"].get("name")) != ("istio-system",
                                                                              "istio"):
            return
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            on_loop = asyncio.get_running_loop() is loop
        except RuntimeError:
            on_loop = False
        if on_loop:
            self._schedule_all()  # synchronous: a wait_synced right after the write sees it
        else:
            loop.call_soon_threadsafe(self._schedule_all)

    def _schedule_all(self) -> None:
        self._shared = None
        for target in self._targets.values():
            target.synced.clear()
        if self._debounce is None and self._loop is not None:
            self._debounce = self._loop.call_later(_DEBOUNCE_S, self._mark_all)

    def _mark_all(self) -> None:
        self._debounce = None
        for target in self._targets.values():
            target.dirty.set()

    # -- sidecars --------------------------------------------------------------------

    def register_sidecar(self, namespace: str, pod: str, admin_url: str) -> None:
        """Start pushing to a sidecar's admin URL; the first push goes out at once."""
        old = self._targets.pop((namespace, pod), None)
        if old is not None and old.task is not None:
            old.task.cancel()
        target = _Target(namespace, pod, admin_url.rstrip("/"))
        self._targets[(namespace, pod)] = target
        target.task = asyncio.get_running_loop().create_task(self._pusher(target))
        target.dirty.set()

    def unregister_sidecar(self, namespace: str, pod: str) -> None:
        target = self._targets.pop((namespace, pod), None)
        if target is not None and target.task is not None:
            target.task.cancel()

    def set_faults(self, namespace: str, pod: str, rules: list[FaultRuleDoc]) -> None:
        """Replace one pod's fault rules ([] clears them) and push at once."""
        self._faults[(namespace, pod)] = [r.copy() for r in rules]
        self._push_now(namespace, pod)

    def set_http_faults(self, namespace: str, pod: str, rules: list[HttpChaosRuleDoc]) -> None:
        """Replace one pod's HTTPChaos rules ([] clears them) and push at once (§5.5)."""
        self._http_faults[(namespace, pod)] = [r.copy() for r in rules]
        self._push_now(namespace, pod)

    def _push_now(self, namespace: str, pod: str) -> None:
        """One pod's rules changed: push its sidecar now, not after the debounce, and let
        wait_synced wait for that push."""
        target = self._targets.get((namespace, pod))
        if target is not None:
            target.synced.clear()
            target.dirty.set()

    async def wait_synced(self, namespace: str, pod: str,
                          timeout: float = 2.0) -> None:  # noqa: ASYNC109 - the contract
        """Return once the sidecar acknowledged the latest configuration built for it.

        A pod whose sidecar is not registered (not running, or none injected) has nothing
        to acknowledge: its rules are kept and pushed when a sidecar registers.
        """
        target = self._targets.get((namespace, pod))
        if target is None:
            return
        try:
            async with asyncio.timeout(timeout):
                await asyncio.sleep(0)  # let writes from other threads reach the loop
                while True:
                    pending = (target.dirty.is_set() or target.busy
                               or self._debounce is not None)
                    if not pending and target.synced.is_set():
                        return
                    if not pending and target.error:
                        raise SidecarConfigError(f"sidecar {namespace}/{pod}: {target.error}")
                    await asyncio.sleep(0.002)
        except TimeoutError:
            raise TimeoutError(f"sidecar {namespace}/{pod} did not acknowledge config "
                               f"v{target.built} within {timeout}s (acked v{target.acked})"
                               ) from None

    async def _stop_target(self, target: _Target) -> None:
        if target.task is not None:
            target.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await target.task

    def _document(self, target: _Target) -> SidecarConfigDoc:
        if self._shared is None:
            self._shared = build_shared(self._store)
        try:
            pod: KubeObject | None = self._store.get("", "pods", target.namespace, target.pod)
        except NotFound:
            pod = None
        target.built = next(self._versions)
        return build_sidecar_config(self._shared, pod, target.namespace, target.pod,
                                    version=target.built, otlp_endpoint=self._otlp,
                                    otlp_headers=self._otlp_headers,
                                    faults=self._faults.get((target.namespace, target.pod), []),
                                    http_faults=self._http_faults.get(
                                        (target.namespace, target.pod), []))

    async def _pusher(self, target: _Target) -> None:
        while True:
            await target.dirty.wait()
            target.dirty.clear()
            target.synced.clear()
            target.busy = True
            try:
                await self._push(target)
            finally:
                target.busy = False

    async def _push(self, target: _Target) -> None:
        try:
            doc = self._document(target)
        except MeshError as exc:
            # A store object we cannot translate (bad duration, bad mesh YAML): keep the
            # sidecar on its last good config and say why; the next change retries.
            target.error = f"config cannot be built: {exc}"
            log.error("cannot build config for %s/%s: %s", target.namespace, target.pod, exc)
            return
        try:
            resp = await self._pool.request(
                "POST", f"{target.admin_url}/config", {"content-type": "application/json"},
                json.dumps(doc).encode(), timeout=5.0, connect_timeout=1.0)
        except (HttpError, OSError, TimeoutError) as exc:
            log.warning("push to %s/%s failed, retrying: %s", target.namespace, target.pod, exc)
            await asyncio.sleep(_RETRY_PUSH_S)
            target.dirty.set()
            return
        self.pushes += 1
        if resp.status == 200:
            target.acked, target.error = doc["version"], ""
            target.synced.set()
        else:
            body = resp.body.decode(errors="replace")
            target.error = f"rejected config v{doc['version']}: {body}"
            log.error("sidecar %s/%s %s", target.namespace, target.pod, target.error)
