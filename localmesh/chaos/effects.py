"""What applying and recovering one record does, per chaos kind and action.

NetworkChaos records become sidecar fault rules (merged per pod across every
chaos object that touches it) pushed with ``XdsServer.set_faults``, HTTPChaos
records the pod's inbound HTTPChaos rules pushed with ``set_http_faults`` (§5.5); applying
waits until the sidecar has acknowledged the push, so a record is never marked
Injected for a fault the data path does not have yet. PodChaos records call the
store (pod-kill) or the supervisor (pod-failure, container-kill), as Chaos
Mesh's controller calls the API server or chaos-daemon (docs/fidelity.md §5.3).

A pod that vanished counts as recovered (§5.4); a pod that vanished before the
apply is a failure the controller retries.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from localmesh.chaos.faults import SOURCE, TARGET, record_rules
from localmesh.chaos.httprules import http2_service_ports, http_rules
from localmesh.documents import FaultRuleDoc, HttpChaosRuleDoc, KubeObject
from localmesh.errors import EffectError, NotFound
from localmesh.store import ObjectStore

__all__ = ["EffectError", "Effects", "FaultSink", "PodRunner", "image_annotation"]

log = logging.getLogger("localmesh.chaos")
Record = dict[str, Any]  # one entry of a chaos object's status.experiment.containerRecords


class FaultSink(Protocol):
    """The part of ``XdsServer`` the controller uses."""

    def set_faults(self, namespace: str, pod: str, rules: list[FaultRuleDoc]) -> None: ...

    def set_http_faults(self, namespace: str, pod: str,
                        rules: list[HttpChaosRuleDoc]) -> None: ...

    async def wait_synced(self, namespace: str, pod: str, timeout: float = 2.0) -> None: ...  # noqa: ASYNC109 - the XdsServer contract


class PodRunner(Protocol):
    """The part of ``Supervisor`` the controller uses."""

    async def kill_container(self, namespace: str, pod: str, container: str) -> None: ...

    async def fail_pod(self, namespace: str, pod: str) -> None: ...

    async def recover_pod(self, namespace: str, pod: str) -> None: ...


def _split(record_id: str) -> tuple[str, str, str]:
    namespace, pod, *rest = record_id.split("/")
    return namespace, pod, rest[0] if rest else ""


class Effects:
    """Applies and recovers records and remembers what is in force, for ``stop()``."""

    def __init__(self, store: ObjectStore, xds: FaultSink, supervisor: PodRunner,
                 *, sync_timeout: float = 2.0) -> None:
        self._store, self._xds, self._supervisor = store, xds, supervisor
        self._sync_timeout = sync_timeout
        # pod key "ns/name" -> (chaos id, selector key) -> rules in force on that pod
        self._rules: dict[str, dict[tuple[str, str], list[FaultRuleDoc]]] = {}
        self._failed_pods: dict[str, set[str]] = {}  # pod key -> chaos ids holding it failed
        # pod key "ns/name" -> chaos id -> the HTTPChaos rules it put on that pod's inbound
        self._http: dict[str, dict[str, list[HttpChaosRuleDoc]]] = {}

    def _pod_exists(self, pod_key: str) -> bool:
        namespace, name, _ = _split(pod_key)
        try:
            self._store.get("", "pods", namespace, name)
        except NotFound:
            return False
        return True

    async def apply(self, obj: KubeObject, record: Record, records: list[Record]) -> str:
        """Inject one record; return the success message or raise EffectError."""
        chaos_id = _chaos_id(obj)
        spec: Mapping[str, Any] = obj["spec"]
        pod_key = "/".join(_split(record["id"])[:2])
        if not self._pod_exists(pod_key):
            raise EffectError(f"pod '{pod_key}' not found")
        if obj["kind"] == "NetworkChaos":
            sources = [r["id"] for r in records if r["selectorKey"] == SOURCE]
            targets = [r["id"] for r in records if r["selectorKey"] == TARGET]
            rules = record_rules(spec, chaos_id, record["selectorKey"], sources, targets)
            self._rules.setdefault(pod_key, {})[(chaos_id, record["selectorKey"])] = rules
            await self._push(pod_key, wait=True)
        elif obj["kind"] == "HTTPChaos":
            pod = self._store.get("", "pods", *_split(pod_key)[:2])
            self._http.setdefault(pod_key, {})[chaos_id] = http_rules(spec, chaos_id, pod,
                                                                     pod_key)
            await self._push_http(pod_key, wait=True)
            self._warn_http2(obj, pod, pod_key, int(spec["port"]))
        else:
            await self._apply_pod(spec, record["id"], chaos_id)
        return f"Successfully apply chaos for {record['id']}"

    def _warn_http2(self, obj: KubeObject, pod: KubeObject, pod_key: str, port: int) -> None:
        """HTTPChaos acts on HTTP/1.1 only here (the sidecar's rules do not see HTTP/2
        streams, docs/fidelity.md §5.5): a Warning event on the chaos object names each
        Service port of the pod that Istio gives HTTP/2, so a run on a gRPC port cannot
        pass for an injected fault."""
        names = http2_service_ports(self._store.list("", "services", _split(pod_key)[0]),
                                    pod, port)
        if names:
            self._store.record_event(
                obj, "HTTP2NotAffected",
                f"spec.port {port} of pod '{pod_key}' is {', '.join(names)}, which speaks "
                "HTTP/2: the local HTTPChaos rules act on HTTP/1.1 requests only, so its "
                "HTTP/2 (gRPC) streams pass unaffected", type_="Warning", component="localmesh")

    async def recover(self, obj: KubeObject, record: Record) -> str:
        """Recover one record; a vanished pod counts as recovered."""
        chaos_id = _chaos_id(obj)
        pod_key = "/".join(_split(record["id"])[:2])
        if obj["kind"] == "NetworkChaos":
            owned = self._rules.get(pod_key, {})
            owned.pop((chaos_id, record["selectorKey"]), None)
            if self._pod_exists(pod_key):
                await self._push(pod_key, wait=True)
        elif obj["kind"] == "HTTPChaos":
            self._http.get(pod_key, {}).pop(chaos_id, None)
            if self._pod_exists(pod_key):
                await self._push_http(pod_key, wait=True)
        elif obj["spec"]["action"] == "pod-failure":
            holders = self._failed_pods.get(pod_key, set())
            holders.discard(chaos_id)
            if not holders and self._pod_exists(pod_key):
                namespace, name, _ = _split(pod_key)
                await self._call(self._supervisor.recover_pod(namespace, name), "recover pod")
                self._mark_images(namespace, name, chaos_id.split("/", 1)[1], keep=False)
        # pod-kill and container-kill are one-shot: recovering them does nothing (§5.3).
        return f"Successfully recover chaos for {record['id']}"

    async def recover_all(self) -> None:
        """Take every fault this controller put in force out again (controller stop)."""
        for pod_key in [k for k, owned in self._rules.items() if owned]:
            self._rules[pod_key].clear()
            if self._pod_exists(pod_key):
                await self._call_sync_push(pod_key)
        for pod_key in [k for k, owned in self._http.items() if owned]:
            self._http[pod_key].clear()
            if self._pod_exists(pod_key):
                try:
                    await self._push_http(pod_key, wait=True)
                except EffectError:  # keep recovering the other pods
                    log.exception("could not clear the HTTPChaos rules of pod '%s'", pod_key)
        for pod_key in [k for k, holders in self._failed_pods.items() if holders]:
            self._failed_pods[pod_key].clear()
            if self._pod_exists(pod_key):
                namespace, name, _ = _split(pod_key)
                try:
                    await self._supervisor.recover_pod(namespace, name)
                except Exception:  # keep recovering the other pods
                    log.exception("could not recover pod '%s' on controller stop", pod_key)

    def forget(self, chaos_id: str) -> list[str]:
        """Drop the state of a chaos object purged without recovery; return pods to recover."""
        touched = []
        for pod_key, owned in self._rules.items():
            for owner in [o for o in owned if o[0] == chaos_id]:
                del owned[owner]
                touched.append(pod_key)
        for pod_key, http in self._http.items():
            if http.pop(chaos_id, None) is not None:
                touched.append(pod_key)
        return touched

    async def push(self, pod_key: str) -> None:
        await self._push(pod_key, wait=False)
        if pod_key in self._http:
            await self._push_http(pod_key, wait=False)

    def merged_http_rules(self, pod_key: str) -> list[HttpChaosRuleDoc]:
        """Every HTTPChaos rule on a pod, by chaos id (chaos-tproxy runs rules in order)."""
        owned = self._http.get(pod_key, {})
        return [rule for owner in sorted(owned) for rule in owned[owner]]

    async def _push_http(self, pod_key: str, *, wait: bool) -> None:
        await self._push_rules(pod_key, "HTTPChaos rules", lambda namespace, pod: (
            self._xds.set_http_faults(namespace, pod, self.merged_http_rules(pod_key))),
            wait=wait)

    def merged_rules(self, pod_key: str) -> list[FaultRuleDoc]:
        """Every rule in force on a pod, from all chaos objects, in a stable order."""
        owned = self._rules.get(pod_key, {})
        return [rule for owner in sorted(owned) for rule in owned[owner]]

    async def _push(self, pod_key: str, *, wait: bool) -> None:
        await self._push_rules(pod_key, "fault rules", lambda namespace, pod: (
            self._xds.set_faults(namespace, pod, self.merged_rules(pod_key))), wait=wait)

    async def _push_rules(self, pod_key: str, what: str, set_rules: Callable[[str, str], None],
                          *, wait: bool) -> None:
        """Hand a pod's rules to the control plane (``set_rules(namespace, pod)``) and, with
        ``wait``, wait until its sidecar holds them."""
        namespace, name, _ = _split(pod_key)
        try:
            set_rules(namespace, name)
            if wait:
                await self._xds.wait_synced(namespace, name, timeout=self._sync_timeout)
        except Exception as exc:  # becomes a Failed event on the record
            raise EffectError(f"could not push {what} to pod '{pod_key}': {exc!r}") from exc

    async def _call_sync_push(self, pod_key: str) -> None:
        try:
            await self._push(pod_key, wait=True)
        except EffectError:
            log.exception("could not clear the fault rules of pod '%s'", pod_key)

    async def _apply_pod(self, spec: Mapping[str, Any], record_id: str, chaos_id: str) -> None:
        namespace, name, container = _split(record_id)
        action = spec["action"]
        if action == "pod-kill":
            try:
                self._store.delete("", "pods", namespace, name,
                                   grace_period_seconds=int(spec.get("gracePeriod") or 0))
            except NotFound as exc:
                raise EffectError(f"pod '{namespace}/{name}' not found") from exc
        elif action == "pod-failure":
            self._mark_images(namespace, name, chaos_id.split("/", 1)[1], keep=True)
            await self._call(self._supervisor.fail_pod(namespace, name), "fail pod")
            self._failed_pods.setdefault(f"{namespace}/{name}", set()).add(chaos_id)
        else:
            await self._call(self._supervisor.kill_container(namespace, name, container),
                             f"kill container '{container}' of")

    def _mark_images(self, namespace: str, pod: str, chaos_name: str, *, keep: bool) -> None:
        """Chaos Mesh's pod-failure saves each container's image in a pod annotation before it
        swaps in the pause image, and drops it on recovery (§5.3); the local pod shows the same.
        """
        def change(obj: KubeObject) -> None:
            annotations = obj["metadata"].setdefault("annotations", {})
            spec = obj.get("spec") or {}
            for kind, field in (("normal", "containers"), ("init", "initContainers")):
                for container in spec.get(field) or []:
                    key = image_annotation(chaos_name, container["name"], kind)
                    if keep:
                        annotations[key] = str(container.get("image", ""))
                    else:
                        annotations.pop(key, None)

        with contextlib.suppress(NotFound):  # a vanished pod has no annotations left
            self._store.mutate("", "pods", namespace, pod, change)

    @staticmethod
    async def _call(action: Any, what: str) -> None:
        try:
            await action
        except Exception as exc:  # becomes a Failed event on the record
            raise EffectError(f"could not {what} the pod: {exc!r}") from exc


def image_annotation(chaos_name: str, container: str, kind: str) -> str:
    """``chaos-mesh-<name>-pod-failure-<container>-<normal|init>-image``; an annotation name
    may hold 63 characters, beyond that Chaos Mesh keys by the container name alone."""
    key = f"chaos-mesh-{chaos_name}-pod-failure-{container}-{kind}-image"
    return key if len(key) <= 63 else container


def _chaos_id(obj: Mapping[str, Any]) -> str:
    meta = obj["metadata"]
    return f"{meta['namespace']}/{meta['name']}"
