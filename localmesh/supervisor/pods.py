"""The kubelet of one local pod: run its containers as process groups, probe, report status.

A pod runs an app process (from ``meshchaos.io/local-command``) and, when
injected, an ``istio-proxy`` process (``python -m localmesh.sidecar``), each in its
own session, forked by the fork server. The pod's status, events and logs are
what ``kubectl`` would show for the same pod on a cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from localmesh.documents import KubeObject
from localmesh.errors import ApiError, NotFound, ProcessError
from localmesh.podlogs import PodLogs
from localmesh.store import ObjectStore
from localmesh.supervisor.container import ContainerRun, pump_lines
from localmesh.supervisor.injection import PROXY_CONTAINER, has_sidecar
from localmesh.supervisor.podspec import (
    SIDECAR_MODULE,
    Launch,
    PodPorts,
    app_container,
    app_launch,
    declared_app_port,
    is_gateway,
    sidecar_launch,
)
from localmesh.supervisor.podstatus import PodStatus
from localmesh.supervisor.ports import PortAllocator
from localmesh.supervisor.probes import SIDECAR_PROBE, ReadinessProbe
from localmesh.supervisor.spawner import Child, ForkServer
from localmesh.supervisor.tcpports import TcpPorts, plan_tcp_ports

__all__ = ["PodContext", "PodRunner", "SidecarRegistry"]

log = logging.getLogger("localmesh.supervisor")


_FAST_PROBE_S = 0.02  # readiness polling until a container is first Ready
_SIDECAR_PORTS_TIMEOUT_S = 10.0
_DEFAULT_GRACE_S = 30.0


class SidecarRegistry(Protocol):
    """The part of ``localmesh.xds.XdsServer`` the supervisor uses."""

    def register_sidecar(self, namespace: str, pod: str, admin_url: str) -> None: ...

    def unregister_sidecar(self, namespace: str, pod: str) -> None: ...


@dataclass
class PodContext:
    """What every pod runner shares: the store, the control plane, logs, processes, ports."""

    store: ObjectStore
    xds: SidecarRegistry
    logs: PodLogs
    proxy_forkserver: ForkServer
    app_forkserver: ForkServer
    ports: PortAllocator
    otlp_endpoint: str
    base_dir: Path
    ingress_port: int = 0
    sidecar_module: str = SIDECAR_MODULE
    data_root: Path | None = None  # <state-dir>/data: each pod's MESHCHAOS_DATA_DIR below it
    otlp_token: str | None = None  # the trace receiver's bearer token, for the apps' exporters


class PodRunner:
    """Runs one pod until it is deleted (or the supervisor stops)."""

    def __init__(self, ctx: PodContext, pod: KubeObject) -> None:
        self.ctx = ctx
        meta = pod["metadata"]
        self.namespace: str = meta["namespace"]
        self.name: str = meta["name"]
        self.pod = pod
        self.sidecar = has_sidecar(pod)
        self.ports = self._allocate_ports(pod)
        self.tcp = self._plan_tcp(pod) if self.sidecar else TcpPorts()
        self.containers: dict[str, ContainerRun] = {}
        app = app_container(pod)
        if app is not None:
            self.containers[str(app.get("name") or "app")] = ContainerRun(
                str(app.get("name") or "app"), str(app.get("image") or ""))
        if self.sidecar:
            proxy = next(c for c in pod["spec"]["containers"] if c.get("name") == PROXY_CONTAINER)
            self.containers[PROXY_CONTAINER] = ContainerRun(PROXY_CONTAINER,
                                                            str(proxy.get("image") or ""))
        self._status = PodStatus()
        self.stopping = False
        self.done = asyncio.Event()
        self._allowed = asyncio.Event()  # cleared during pod-failure
        self._allowed.set()
        self._kick = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._published: KubeObject | None = None

    # -- set-up -----------------------------------------------------------------------

    def _allocate_ports(self, pod: KubeObject) -> PodPorts:
        alloc = self.ctx.ports.allocate
        outbound = self.ctx.ingress_port if is_gateway(pod) and self.ctx.ingress_port \
            else alloc()
        return PodPorts(app=alloc(), inbound=alloc(), outbound=outbound, admin=alloc())

    def _plan_tcp(self, pod: KubeObject) -> TcpPorts:
        """The sidecar's TCP listeners for the Services of the pod's namespace (§2.5)."""
        services = self.ctx.store.list("", "services", self.namespace)
        return plan_tcp_ports(services, pod, declared_app_port(pod), self.ctx.ports.allocate)

    @property
    def data_dir(self) -> Path | None:
        root = self.ctx.data_root
        return None if root is None else root / f"{self.namespace}_{self.name}"

    def start(self) -> None:
        self._tasks.append(asyncio.ensure_future(self._run()))

    async def _run(self) -> None:
        try:
            self._event("Scheduled", f"Successfully assigned {self.namespace}/{self.name} to "
                        "localmesh", component="default-scheduler")
            self.publish(annotations=self._port_annotations())
            for container in self.containers.values():
                self._tasks.append(asyncio.ensure_future(self._supervise(container)))
            self._tasks.append(asyncio.ensure_future(self._readiness()))
        except NotFound:
            self.stopping = True  # deleted before it started

    def _port_annotations(self) -> dict[str, str]:
        if not self.sidecar:
            return {"meshchaos.io/app-port": str(self.ports.app)}
        return {**self.ports.annotations(), **self.tcp.annotations()}

    def _launch(self, container: ContainerRun) -> Launch | None:
        if container.name == PROXY_CONTAINER:
            return sidecar_launch(self.pod, self.ports, base_dir=self.ctx.base_dir,
                                  module=self.ctx.sidecar_module, tcp=self.tcp)
        return app_launch(self.pod, self.ports, otlp_endpoint=self.ctx.otlp_endpoint,
                          sidecar=self.sidecar, base_dir=self.ctx.base_dir, tcp=self.tcp,
                          data_dir=self.data_dir, otlp_token=self.ctx.otlp_token)

    # -- processes ----------------------------------------------------------------------

    async def _supervise(self, container: ContainerRun) -> None:
        """Keep one container running: start, wait for exit, back off, restart."""
        launch = self._launch(container)
        if launch is None:
            container.mark_waiting("NoLocalCommand", "annotation meshchaos.io/local-command "
                                   "is not set: only the sidecar runs for this pod")
            self.publish()
            return
        while not self.stopping:
            if not self._allowed.is_set():
                await self._pause(container)
                continue
            try:
                await self._run_once(container, launch)
                ran_for = time.monotonic() - container.started_mono
            except ProcessError as exc:
                # Never started (the fork server is gone, say): back off like a crash.
                container.mark_waiting("RunContainerError", str(exc))
                self._event("Failed", f"Error: {exc}", type_="Warning")
                ran_for = 0.0
            if self.stopping:
                break
            if not self._allowed.is_set():
                continue  # pod-failure took it down: _pause accounts for it
            delay = container.backoff.next_delay(ran_for)
            log.info("pod %s/%s: container %s exited (%s) after %.1fs; restarting in %.1fs",
                     self.namespace, self.name, container.name,
                     json.dumps(container.last_state.get("terminated", {}).get("exitCode")),
                     ran_for, delay)
            if delay > 0:
                container.mark_waiting("CrashLoopBackOff", f"back-off {delay:.1f}s restarting "
                                       f"failed container={container.name} pod={self.name}")
                self._event("BackOff", f"Back-off restarting failed container "
                            f"{container.name} in pod {self.name}", type_="Warning")
                self.publish()
                await self._sleep(delay)
            if not self.stopping and self._allowed.is_set():
                container.restart_count += 1
                self.ctx.logs.rotate_previous(self.namespace, self.name, container.name)

    async def _run_once(self, container: ContainerRun, launch: Launch) -> int:
        """Start the container's process and wait for it to exit; return its exit code."""
        writer = self.ctx.logs.writer(self.namespace, self.name, container.name)
        out_r, out_w = os.pipe()
        ready_r, ready_w = os.pipe() if container.name == PROXY_CONTAINER else (-1, -1)
        extra = [ready_w] if ready_w >= 0 else []
        try:
            proxy = container.name == PROXY_CONTAINER
            server = self.ctx.proxy_forkserver if proxy else self.ctx.app_forkserver
            await server.wait_ready()
            # Hand the held ports over only now: the window for someone else to take them
            # is the child's own start-up.
            self.ctx.ports.release(*((self.ports.inbound, self.ports.outbound,
                                      self.ports.admin, *self.tcp.ports) if proxy
                                     else (self.ports.app,)))
            child = await server.spawn(
                launch.argv, env=launch.env, cwd=launch.cwd, python=launch.python,
                stdout=out_w, stderr=out_w, extra_fds=extra)
        except BaseException:
            for fd in (out_r, ready_r):
                if fd >= 0:
                    os.close(fd)
            raise
        finally:
            for fd in (out_w, ready_w):
                if fd >= 0:
                    os.close(fd)
        pump = asyncio.ensure_future(pump_lines(out_r, writer))
        if not container.ever_started:
            self._event("Pulled", f'Container image "{container.image}" already present on '
                        "machine")
        container.mark_running(child)
        log.info("pod %s/%s: container %s started (pid %d)", self.namespace, self.name,
                 container.name, child.pid)
        self._event("Created", f"Created container {container.name}")
        self._event("Started", f"Started container {container.name}")
        self.publish()
        self._kick.set()
        if ready_r >= 0:
            await self._await_sidecar(child, ready_r)
        code = await child.wait()
        if container.name == PROXY_CONTAINER:
            self.ctx.xds.unregister_sidecar(self.namespace, self.name)
        with contextlib.suppress(TimeoutError):
            # Grandchildren may keep the pipe open: do not wait on them forever.
            await asyncio.wait_for(asyncio.shield(pump), 1.0)
        if not pump.done():
            pump.cancel()
        container.mark_exited(code)
        self.publish()
        self._kick.set()
        return code

    async def _await_sidecar(self, child: Child, ready_r: int) -> None:
        """Wait for the sidecar's ports line, then hand it to the control plane."""
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        pipe = os.fdopen(ready_r, "rb", 0)
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), pipe)
        try:
            line = await asyncio.wait_for(reader.readline(), _SIDECAR_PORTS_TIMEOUT_S)
        except TimeoutError:
            line = b""
        finally:
            transport.close()
        if not line:
            if child.returncode is None:
                self._event("Failed", f"istio-proxy did not report its ports within "
                            f"{_SIDECAR_PORTS_TIMEOUT_S:.0f}s", type_="Warning")
            return
        with contextlib.suppress(ValueError):
            reported = json.loads(line)
            log.debug("sidecar of %s/%s listening: %s", self.namespace, self.name, reported)
        if not self.stopping and child.returncode is None:
            self.ctx.xds.register_sidecar(self.namespace, self.name,
                                          f"http://127.0.0.1:{self.ports.admin}")

    async def _pause(self, container: ContainerRun) -> None:
        """Pod-failure: the pause image replaces the container until recovery."""
        container.mark_paused()
        self.publish()
        await self._allowed.wait()
        if self.stopping:
            return
        container.paused = False
        container.restart_count += 1
        self.ctx.logs.rotate_previous(self.namespace, self.name, container.name)

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.done.wait(), seconds)

    def signal_all(self, sig: int) -> None:
        for container in self.containers.values():
            if container.child is not None:
                container.child.signal_group(sig)

    # -- readiness ------------------------------------------------------------------------

    async def _readiness(self) -> None:
        failures: dict[str, int] = {}
        while not self.stopping:
            # Cleared before probing, not after: a container that starts while a probe is
            # in flight must wake the next pass at once. Cleared after, its kick was lost
            # and the pod waited a whole period (2 s for the chain) to turn Ready: at every
            # start, the pods whose app came up during their sidecar's probe lagged by 2 s.
            self._kick.clear()
            changed = False
            fast = False
            for container in self.containers.values():
                ok = container.running and await self._probe(container)
                if ok:
                    failures[container.name] = 0
                    if not container.ready:
                        container.ready, changed = True, True
                elif container.ready:
                    failures[container.name] = failures.get(container.name, 0) + 1
                    if failures[container.name] >= self._threshold(container) \
                            or not container.running:
                        container.ready, changed = False, True
                        if container.running:
                            self._event("Unhealthy", f"Readiness probe failed: container "
                                        f"{container.name} did not answer", type_="Warning")
                fast = fast or (container.running and not container.ready)
            if changed:
                self.publish()
            period = _FAST_PROBE_S if fast else self._period()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._kick.wait(), period)

    def _probe_of(self, container: ContainerRun) -> tuple[ReadinessProbe, int]:
        if container.name == PROXY_CONTAINER:
            return SIDECAR_PROBE, self.ports.admin
        return ReadinessProbe.of(app_container(self.pod) or {}), self.ports.app

    async def _probe(self, container: ContainerRun) -> bool:
        probe, port = self._probe_of(container)
        return await probe.check(port)

    def _threshold(self, container: ContainerRun) -> int:
        return self._probe_of(container)[0].failure_threshold

    def _period(self) -> float:
        return min((self._probe_of(c)[0].period_s for c in self.containers.values()),
                   default=10.0)

    # -- status -----------------------------------------------------------------------------

    def publish(self, *, annotations: dict[str, str] | None = None) -> None:
        """Write the pod's status to the store (only when it changed).

        The port annotations ride along with the first status: one write (and one
        control-plane rebuild) instead of two.
        """
        status = self._status.compose(list(self.containers.values()))
        if status == self._published and not annotations:
            return

        def change(pod: KubeObject) -> None:
            pod["status"] = status
            if annotations:
                pod["metadata"].setdefault("annotations", {}).update(annotations)

        try:
            self.ctx.store.mutate("", "pods", self.namespace, self.name, change,
                                  subresource="status")
        except NotFound:
            return
        except ApiError:
            log.warning("could not write the status of pod %s/%s", self.namespace, self.name,
                        exc_info=True)
            return
        self._published = status

    def _event(self, reason: str, message: str, *, type_: str = "Normal",
               component: str = "kubelet") -> None:
        involved = {"apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": self.name, "namespace": self.namespace,
                                 "uid": self.pod["metadata"].get("uid")}}
        self.ctx.store.record_event(involved, reason, message, type_=type_, component=component)

    # -- faults and shutdown ----------------------------------------------------------------------

    async def kill_container(self, name: str) -> None:
        container = self.containers.get(name)
        if container is None:
            raise NotFound(f"container {name} is not valid for pod {self.name}", kind="pods",
                           name=self.name)
        if container.child is not None:
            container.child.signal_group(signal.SIGKILL)

    async def fail(self) -> None:
        """Every container (istio-proxy too) stops serving; the pod keeps its name."""
        self._allowed.clear()
        children = [c.child for c in self.containers.values() if c.child is not None]
        for child in children:
            child.signal_group(signal.SIGKILL)
        await asyncio.gather(*(child.wait() for child in children))

    async def recover(self) -> None:
        self._allowed.set()

    @property
    def failed(self) -> bool:
        return not self._allowed.is_set()

    async def terminate(self, grace: float | None) -> None:
        """Stop every process (SIGTERM, SIGKILL after the grace period) and the tasks."""
        if self.stopping and self.done.is_set():
            return
        self.stopping = True
        self.done.set()
        self._allowed.set()
        grace = self._grace() if grace is None else grace
        if self.sidecar:  # the control plane stops pushing to a draining proxy first
            self.ctx.xds.unregister_sidecar(self.namespace, self.name)
        children = [c.child for c in self.containers.values() if c.child is not None]
        for name, container in self.containers.items():
            if container.child is not None:
                self._event("Killing", f"Stopping container {name}")
        for child in children:
            child.signal_group(signal.SIGKILL if grace <= 0 else signal.SIGTERM)
        if children and grace > 0:
            await asyncio.wait([asyncio.ensure_future(c.wait()) for c in children],
                               timeout=grace)
            for child in children:
                if child.returncode is None:
                    child.signal_group(signal.SIGKILL)
        await asyncio.gather(*(c.wait() for c in children))
        self.ctx.ports.release(*self.ports.as_dict().values(), *self.tcp.ports)
        tasks = [t for t in self._tasks if not t.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.ctx.logs.close(self.namespace, self.name)

    def _grace(self) -> float:
        try:
            pod = self.ctx.store.get("", "pods", self.namespace, self.name)
        except NotFound:
            pod = self.pod
        meta_grace = pod["metadata"].get("deletionGracePeriodSeconds")
        if meta_grace is not None:
            return float(meta_grace)
        spec_grace = (pod.get("spec") or {}).get("terminationGracePeriodSeconds")
        return float(spec_grace) if spec_grace is not None else _DEFAULT_GRACE_S
