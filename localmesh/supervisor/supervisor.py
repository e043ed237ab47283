"""The Supervisor: the controllers and the kubelet of the local mesh in one object.

It watches the store: Deployments become ReplicaSets become Pods
(:mod:`.replicasets`), and every Pod becomes a :class:`.pods.PodRunner` that runs
its processes. A pod marked for deletion is stopped gracefully and then purged,
which is what lets the store's graceful deletion end.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from pathlib import Path
from typing import Any

from localmesh.documents import KubeObject
from localmesh.errors import NotFound, ProcessError
from localmesh.podlogs import PodLogs
from localmesh.store import ObjectStore
from localmesh.supervisor.injection import install_injection
from localmesh.supervisor.pods import PodContext, PodRunner, SidecarRegistry
from localmesh.supervisor.podspec import SIDECAR_MODULE
from localmesh.supervisor.ports import PortAllocator
from localmesh.supervisor.replicasets import ReplicaSetController, is_pod_ready
from localmesh.supervisor.spawner import ForkServer, launch_forkservers

__all__ = ["Supervisor"]

log = logging.getLogger("localmesh.supervisor")


_STOP_GRACE_S = 2.0
# A replacement gateway waits this long at most for the old one to free the ingress port.
_PORT_HANDOVER_S = 35.0


class Supervisor:
    """Runs every pod of the store as process groups; see docs/architecture.md."""

    def __init__(self, store: ObjectStore, xds: SidecarRegistry, *, state_dir: Path,
                 otlp_endpoint: str, ingress_port: int = 0, base_dir: Path | None = None,
                 sidecar_module: str = SIDECAR_MODULE,
                 forkservers: dict[str, ForkServer] | None = None,
                 ports: PortAllocator | None = None, otlp_token: str | None = None) -> None:
        self.store = store
        self.logs = PodLogs(state_dir)
        self._data_root = Path(state_dir) / "data"
        self.controller = ReplicaSetController(store)
        # "proxy" and "app"; launched by warm_up, or before this object (launch_forkservers)
        self._forkservers: dict[str, ForkServer] = dict(forkservers or {})
        self._xds = xds
        self._otlp = otlp_endpoint
        self._otlp_token = otlp_token
        self._ingress_port = ingress_port
        self._base_dir = (base_dir or Path.cwd()).resolve()
        self._sidecar_module = sidecar_module
        self._runners: dict[tuple[str, str], PodRunner] = {}
        self._retired: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ctx: PodContext | None = None
        # The caller's allocator may already hold ports for pods to come (the ingress port).
        self._ports = ports if ports is not None else PortAllocator()
        self._retiring: dict[tuple[str, str], _Retiring] = {}
        self._terminating: set[tuple[str, str]] = set()
        self._seen_uids: set[str] = set()
        self._changed = asyncio.Event()  # a pod or ReplicaSet changed (wait_ready wakes up)
        install_injection(store)
        store.set_graceful_deletion("", "pods")

    # -- lifecycle ------------------------------------------------------------------------

    def warm_up(self, objects: list[KubeObject]) -> None:
        """Start the fork servers now, preloading what these objects' pods will run.

        Their imports are most of a mesh's start-up time; they overlap with whatever
        the caller does before :meth:`start` (validating manifests, for one), and
        pods queue their processes until their server is ready.
        """
        if self._forkservers:
            return
        self._forkservers = launch_forkservers(objects, sidecar_module=self._sidecar_module)

    async def start(self) -> None:
        """Start the fork servers (unless warmed up already) and the controllers."""
        if not self._forkservers:
            self.warm_up(self.store.list("apps", "deployments") + self.store.list("", "pods"))
        self._loop = asyncio.get_running_loop()
        self._ctx = PodContext(self.store, self._xds, self.logs, self._forkservers["proxy"],
                               self._forkservers["app"], self._ports,
                               self._otlp, self._base_dir, self._ingress_port,
                               self._sidecar_module, data_root=self._data_root,
                               otlp_token=self._otlp_token)
        self.store.subscribe(self._on_pod, group="", plural="pods")
        self.store.subscribe(self._on_replicaset, group="apps", plural="replicasets")
        for pod in self.store.list("", "pods"):
            self._sync_pod(pod)
        self.controller.start()

    async def stop(self) -> None:
        """Stop every process of every pod; the pods stay in the store, not running."""
        self.controller.stop()
        self._loop = None
        runners = list(self._runners.values())
        self._runners.clear()
        await asyncio.gather(*(r.terminate(_STOP_GRACE_S) for r in runners),
                             return_exceptions=True)
        await self._finish_retiring()
        for task in list(self._retired):
            task.cancel()
        await asyncio.gather(*self._retired, return_exceptions=True)
        servers, self._forkservers = self._forkservers, {}
        await asyncio.gather(*(server.stop() for server in servers.values()))
        self._ports.release_all()
        self.logs.close()

    async def _finish_retiring(self) -> None:
        """Let pods already being deleted finish, within the stop grace; then kill them."""
        retiring = list(self._retiring.values())
        if not retiring:
            return
        waits = [asyncio.ensure_future(r.stopped.wait()) for r in retiring]
        _, pending = await asyncio.wait(waits, timeout=_STOP_GRACE_S + 1)
        for wait in pending:
            wait.cancel()
        for r in retiring:
            r.runner.signal_all(signal.SIGKILL)

    @property
    def forkserver_pids(self) -> list[int]:
        """The fork servers' pids (every pod process is a child of one of them)."""
        return [s.pid for s in self._forkservers.values() if s.pid is not None]

    # -- store events -------------------------------------------------------------------------

    def _on_replicaset(self, event: str, rs: KubeObject) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._changed.set)

    def _on_pod(self, event: str, pod: KubeObject) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        loop.call_soon_threadsafe(self._changed.set)
        if event == "DELETED":
            loop.call_soon_threadsafe(self._forget, pod)
        else:
            loop.call_soon_threadsafe(self._sync_pod, pod)

    def _sync_pod(self, pod: KubeObject) -> None:
        if self._ctx is None:
            return
        meta = pod["metadata"]
        key = (meta["namespace"], meta["name"])
        runner = self._runners.get(key)
        if meta.get("deletionTimestamp"):
            if runner is not None:
                self._retire(key, runner, purge=True)
            elif (meta["namespace"], meta["name"]) not in self._terminating:
                self._purge(meta["namespace"], meta["name"])
            return
        if runner is None and meta.get("uid") not in self._seen_uids:
            self._seen_uids.add(str(meta.get("uid")))
            self._start_runner(key, pod)

    def _start_runner(self, key: tuple[str, str], pod: KubeObject) -> None:
        assert self._ctx is not None
        holder = self._port_holder(pod)
        runner = PodRunner(self._ctx, pod)
        self._runners[key] = runner
        if holder is None:
            runner.start()
            return

        async def start_after_handover() -> None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(holder.stopped.wait(), _PORT_HANDOVER_S)
            if not runner.stopping:
                runner.start()

        self._track(start_after_handover())

    def _port_holder(self, pod: KubeObject) -> _Retiring | None:
        """A terminating pod that still holds the fixed ingress port this pod will bind."""
        labels = pod["metadata"].get("labels") or {}
        if labels.get("istio") != "ingressgateway" or not self._ingress_port:
            return None
        return next((r for r in self._retiring.values() if r.gateway), None)

    def _retire(self, key: tuple[str, str], runner: PodRunner, *, purge: bool) -> None:
        del self._runners[key]
        retiring = _Retiring(runner)
        self._retiring[key] = retiring
        self._terminating.add(key)

        async def stop_and_purge() -> None:
            try:
                await runner.terminate(None)
            finally:
                retiring.stopped.set()
                self._retiring.pop(key, None)
                self._terminating.discard(key)
                if purge:
                    self._purge(*key)

        self._track(stop_and_purge())

    def _forget(self, pod: KubeObject) -> None:
        meta = pod["metadata"]
        key = (meta["namespace"], meta["name"])
        runner = self._runners.get(key)
        if runner is not None:
            self._retire(key, runner, purge=False)

    def _purge(self, namespace: str, name: str) -> None:
        with contextlib.suppress(NotFound):
            self.store.purge("", "pods", namespace, name)

    def _track(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._retired.add(task)
        task.add_done_callback(self._retired.discard)

    # -- the interface the chaos controller and the mesh use ----------------------------------

    def _runner(self, namespace: str, pod: str) -> PodRunner:
        runner = self._runners.get((namespace, pod))
        if runner is None:
            raise NotFound(f'pods "{pod}" not found', kind="pods", name=pod)
        return runner

    async def kill_container(self, namespace: str, pod: str, container: str) -> None:
        """Kill one container's process group; it restarts with restartCount + 1."""
        await self._runner(namespace, pod).kill_container(container)

    async def fail_pod(self, namespace: str, pod: str) -> None:
        """Stop every container of the pod, istio-proxy included, until ``recover_pod``."""
        await self._runner(namespace, pod).fail()

    async def recover_pod(self, namespace: str, pod: str) -> None:
        runner = self._runners.get((namespace, pod))
        if runner is not None:  # a pod deleted meanwhile has nothing left to recover
            await runner.recover()

    def pod_ports(self, namespace: str, pod: str) -> dict[str, int]:
        """The pod's loopback ports: app, inbound, outbound, admin."""
        return self._runner(namespace, pod).ports.as_dict()

    def pod_pids(self, namespace: str, pod: str) -> dict[str, int]:
        """The pid of each running container process of a pod (for tests and diagnostics)."""
        runner = self._runner(namespace, pod)
        return {name: c.child.pid for name, c in runner.containers.items()
                if c.child is not None}

    def all_pids(self) -> list[int]:
        pids = [c.child.pid for r in self._runners.values() for c in r.containers.values()
                if c.child is not None]
        pids += self.forkserver_pids
        return pids

    def unready_pods(self) -> list[KubeObject]:
        """Pods that run (or should run) an app and are not Ready."""
        pods = []
        for pod in self.store.list_shared("", "pods"):
            if pod["metadata"].get("deletionTimestamp") or is_pod_ready(pod):
                continue
            statuses = (pod.get("status") or {}).get("containerStatuses") or []
            if any((s.get("state") or {}).get("waiting", {}).get("reason") == "NoLocalCommand"
                   for s in statuses):
                continue
            pods.append(pod)
        return pods

    async def wait_ready(self, limit_s: float) -> None:
        """Wait until every pod that can be Ready is; raise ProcessError naming the laggards."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit_s
        while True:
            self._changed.clear()
            self._raise_if_forkserver_failed()
            pending = self.unready_pods()
            wanted = self._missing_replicas()
            if not pending and not wanted:
                self.controller.settle()
                return
            if loop.time() >= deadline:
                raise ProcessError(self._not_ready_message(pending, wanted, limit_s))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(0.2, deadline - loop.time()))

    def _raise_if_forkserver_failed(self) -> None:
        for role, server in self._forkservers.items():
            ready = server.launch()
            if ready.done() and not ready.cancelled() and ready.exception() is not None:
                raise ProcessError(f"no {role} process can start: {ready.exception()}")

    def _missing_replicas(self) -> list[str]:
        missing = []
        for rs in self.store.list_shared("apps", "replicasets"):
            wanted = int((rs.get("spec") or {}).get("replicas", 1))
            have = int((rs.get("status") or {}).get("replicas") or 0)
            if have < wanted:
                missing.append(f"{rs['metadata']['namespace']}/{rs['metadata']['name']}")
        return missing

    def _not_ready_message(self, pending: list[KubeObject], missing: list[str],
                           timeout: float) -> str:
        lines = [f"pods not Ready after {timeout:.0f}s:"]
        for pod in pending:
            ns, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
            lines.append(f"- pod {ns}/{name}: {_describe(pod)}")
            for container in _containers(pod):
                with contextlib.suppress(Exception):
                    tail = self.logs.read(ns, name, container, since_seconds=None,
                                          tail_lines=10, timestamps=False, previous=False)
                    if tail.strip():
                        lines.append(f"  last lines of container {container}:")
                        lines += [f"    {line}" for line in tail.rstrip().splitlines()]
        lines += [f"- replicaset {name}: pods not created yet" for name in missing]
        return "\n".join(lines)


class _Retiring:
    """A pod being stopped; ``stopped`` is set once none of its processes is left."""

    def __init__(self, runner: PodRunner) -> None:
        self.runner = runner
        self.gateway = runner.ports.outbound == runner.ctx.ingress_port
        self.stopped = asyncio.Event()


def _containers(pod: KubeObject) -> list[str]:
    return [str(c.get("name")) for c in (pod.get("spec") or {}).get("containers") or []]


def _describe(pod: KubeObject) -> str:
    parts = []
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        state = status.get("state") or {}
        kind = next(iter(state), "unknown")
        detail = state.get(kind) or {}
        reason = detail.get("reason") or ""
        if "exitCode" in detail:
            reason += f" exit code {detail['exitCode']}"
        last = (status.get("lastState") or {}).get("terminated") or {}
        if kind != "terminated" and "exitCode" in last:
            reason += f", last exit code {last['exitCode']}"
        parts.append(f"{status.get('name')} {kind} {reason}".strip()
                     + f" (ready={status.get('ready')}, restarts={status.get('restartCount')})")
    return "; ".join(parts) or "no container has started"
