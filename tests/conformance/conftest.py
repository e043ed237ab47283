"""Harness for sidecar conformance tests: real sidecar processes, real loopback apps.

- ``sidecars``: starts ``python -m localmesh.sidecar`` processes (own session,
  killed with their process group at the end), collects their stdout (the access
  log) line by line, pushes configuration documents through the admin listener;
- ``leaf_app``: an aiohttp app that records each request's headers and whether
  it was cancelled (``handler_cancellation=True``, like Go's ``r.Context()``);
- ``otlp``: a tiny OTLP/HTTP receiver decoding the protobuf export requests;
- ``pair``: caller ``front`` → callee ``leaf``, wired as the docs describe.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from localmesh.http import ConnectionPool, Response

EXTENDED_FORMAT = (
    '[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" '
    "%RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS% "
    '"%UPSTREAM_TRANSPORT_FAILURE_REASON%" %BYTES_RECEIVED% %BYTES_SENT% %DURATION% '
    '%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% "%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%" '
    '"%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%" %UPSTREAM_CLUSTER_RAW% '
    "%UPSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS% "
    "%REQUESTED_SERVER_NAME% %ROUTE_NAME%"
    ' "%REQ(TRACEPARENT)%" "%REQ(X-ENVOY-EXPECTED-RQ-TIMEOUT-MS)%" "%REQ(X-ENVOY-ATTEMPT-COUNT)%"\n'
)
NS = "shop"
LEAF = f"leaf.{NS}.svc.cluster.local"


@dataclass
class SidecarProc:
    """One running sidecar process and what it printed."""

    pod: str
    proc: asyncio.subprocess.Process
    ports: dict[str, int]
    pool: ConnectionPool
    lines: list[str] = field(default_factory=list)
    stderr: list[str] = field(default_factory=list)
    _new_line: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @property
    def admin(self) -> str:
        return f"http://127.0.0.1:{self.ports['admin']}"

    async def push(self, doc: dict[str, Any]) -> Response:
        return await self.pool.request("POST", f"{self.admin}/config",
                                       {"content-type": "application/json"},
                                       json.dumps(doc).encode(), timeout=5)

    async def admin_get(self, path: str) -> Response:
        return await self.pool.request("GET", f"{self.admin}{path}", timeout=5)

    async def wait_log(self, predicate: Callable[[str], bool], within: float = 5.0) -> str:
        """The first access log line matching ``predicate`` (waits for the 50 ms flush)."""
        async with asyncio.timeout(within):
            seen = 0
            while True:
                for line in self.lines[seen:]:
                    if predicate(line):
                        return line
                seen = len(self.lines)
                self._new_line.clear()
                await self._new_line.wait()

    async def _read(self, stream: asyncio.StreamReader, into: list[str], notify: bool) -> None:
        while line := await stream.readline():
            into.append(line.decode().rstrip("\n"))
            if notify:
                self._new_line.set()

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)


class Sidecars:
    """Starts sidecar processes and guarantees they are gone at the end of the test."""

    def __init__(self, tmp: Path) -> None:
        self._tmp = tmp
        self.pool = ConnectionPool()
        self.procs: list[SidecarProc] = []

    async def start(self, pod: str, service: str, *, app_port: int = 0,
                    mode: str = "sidecar", namespace: str = NS,
                    extra: Sequence[str] = ()) -> SidecarProc:
        """One sidecar process, once it has written its ports file; ``extra`` arguments are
        passed on (the supervisor's TCP listener flags, for one)."""
        ports_file = self._tmp / f"{pod}.ports"
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "localmesh.sidecar", "--pod", pod, "--namespace", namespace,
            "--service", service, "--mode", mode, "--app-port", str(app_port),
            "--ports-file", str(ports_file), *extra, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, start_new_session=True)
        sc = SidecarProc(pod, proc, {}, self.pool)
        self.procs.append(sc)
        assert proc.stdout is not None and proc.stderr is not None
        sc._tasks = [asyncio.create_task(sc._read(proc.stdout, sc.lines, True)),
                     asyncio.create_task(sc._read(proc.stderr, sc.stderr, False))]
        async with asyncio.timeout(20):
            while not ports_file.exists():
                if proc.returncode is not None:
                    raise RuntimeError(f"sidecar {pod} exited: {sc.stderr}")
                await asyncio.sleep(0.02)
        sc.ports = json.loads(ports_file.read_text())
        return sc

    async def close(self) -> None:
        for sc in self.procs:
            sc.kill()
        for sc in self.procs:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5):
                    await sc.proc.wait()
            for t in sc._tasks:
                t.cancel()
        await self.pool.close()


@pytest.fixture
async def sidecars(tmp_path: Path) -> AsyncIterator[Sidecars]:
    s = Sidecars(tmp_path)
    try:
        yield s
    finally:
        await s.close()


# -- apps -------------------------------------------------------------------------------


async def serve_on_loopback(app: web.Application, *,
                            handler_cancellation: bool = False) -> tuple[web.AppRunner, int]:
    """Serve ``app`` on 127.0.0.1 at a port the kernel picks, without an access log; its runner
    (``cleanup()`` stops it) and the port. ``handler_cancellation`` cancels a handler whose
    client went away, as the leaf app records."""
    runner = web.AppRunner(app, handler_cancellation=handler_cancellation, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server = site._server
    assert server is not None
    port: int = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
    return runner, port


@dataclass
class Seen:
    path: str
    headers: dict[str, str]
    cancelled: bool = False
    done: asyncio.Event = field(default_factory=asyncio.Event)


class LeafApp:
    """Records requests; query ``sleep`` (s) delays the answer, ``status`` sets the code."""

    def __init__(self) -> None:
        self.seen: list[Seen] = []
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.Response:
        seen = Seen(request.path_qs, {k.lower(): v for k, v in request.headers.items()})
        self.seen.append(seen)
        try:
            await asyncio.sleep(float(request.query.get("sleep", "0")))
        except asyncio.CancelledError:
            seen.cancelled = True
            seen.done.set()
            raise
        seen.done.set()
        body = await request.read()
        return web.json_response({"headers": dict(request.headers), "body": body.decode()},
                                 status=int(request.query.get("status", "200")))

    async def last_was_cancelled(self, within: float = 2.0) -> bool:
        """Wait (at most ``within``) until the latest request ended; whether it was cancelled."""
        seen = self.seen[-1]
        async with asyncio.timeout(within):
            await seen.done.wait()
        return seen.cancelled

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner, self.port = await serve_on_loopback(app, handler_cancellation=True)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture
async def leaf_app() -> AsyncIterator[LeafApp]:
    app = LeafApp()
    await app.start()
    try:
        yield app
    finally:
        await app.stop()


class OtlpReceiver:
    """Collects spans posted as OTLP/HTTP protobuf."""

    def __init__(self) -> None:
        self.spans: list[dict[str, Any]] = []
        self.batches: list[int] = []  # spans per POST, in arrival order
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def _traces(self, request: web.Request) -> web.Response:
        req = ExportTraceServiceRequest()
        req.ParseFromString(await request.read())
        self.batches.append(sum(len(ss.spans) for rs in req.resource_spans
                                for ss in rs.scope_spans))
        for rs in req.resource_spans:
            service = next(a.value.string_value for a in rs.resource.attributes
                           if a.key == "service.name")
            for ss in rs.scope_spans:
                for s in ss.spans:
                    attrs = {a.key: getattr(a.value, a.value.WhichOneof("value"))
                             for a in s.attributes}
                    self.spans.append({
                        "service": service, "trace_id": s.trace_id.hex(),
                        "span_id": s.span_id.hex(), "parent_id": s.parent_span_id.hex(),
                        "name": s.name, "kind": s.kind, "attrs": attrs,
                        "status": s.status.code})
        return web.Response(status=200)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/traces", self._traces)
        self._runner, self.port = await serve_on_loopback(app)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def wait_spans(self, predicate: Callable[[list[dict[str, Any]]], bool],
                         within: float = 5.0) -> list[dict[str, Any]]:
        async with asyncio.timeout(within):
            while not predicate(self.spans):  # noqa: ASYNC110 - spans come from other processes
                await asyncio.sleep(0.02)
        return self.spans

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture
async def otlp() -> AsyncIterator[OtlpReceiver]:
    r = OtlpReceiver()
    await r.start()
    try:
        yield r
    finally:
        await r.stop()


# -- configuration documents -------------------------------------------------------------


def endpoint(pod: str, port: int, ready: bool = True, **labels: str) -> dict[str, Any]:
    return {"pod": pod, "namespace": NS, "host": "127.0.0.1", "port": port,
            "labels": {"app": pod.split("-")[0], **labels}, "ready": ready}


def config(pod: str, service: str, *, services: dict[str, Any], app_port: int = 0,
           routes: dict[str, Any] | None = None, mesh: dict[str, Any] | None = None,
           faults: list[dict[str, Any]] | None = None, version: int = 1,
           subsets: dict[str, Any] | None = None,
           connect_timeout_ms: dict[str, float] | None = None) -> dict[str, Any]:
    base_mesh: dict[str, Any] = {
        "honor_app_envoy_headers": False, "sampling_percent": 100.0,
        "access_log": {"enabled": True, "encoding": "TEXT", "format": EXTENDED_FORMAT},
        "connect_timeout_ms": 10000, "otlp_endpoint": ""}
    base_mesh.update(mesh or {})
    return {"version": version,
            "node": {"pod": pod, "namespace": NS, "service": service, "mode": "sidecar",
                     "app_port": app_port},
            "mesh": base_mesh, "services": services, "routes": routes or {},
            "subsets": subsets or {}, "connect_timeout_ms": connect_timeout_ms or {},
            "gateway_routes": [], "faults": faults or []}


def leaf_route(timeout_ms: float = 0, retries: dict[str, Any] | None = None,
               name: str = "leaf-route", **match: Any) -> dict[str, Any]:
    return {LEAF: [{"name": name, "match": [match] if match else [],
                    "destinations": [{"host": LEAF, "subset": "", "port": 8080, "weight": 100}],
                    "timeout_ms": timeout_ms, "retries": retries}]}


@dataclass
class Pair:
    """``front`` (caller) → ``leaf`` (callee): requests enter through front's outbound."""

    front: SidecarProc
    leaf: SidecarProc
    app: LeafApp
    pool: ConnectionPool
    version: int = 0

    def services(self, extra_endpoints: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        eps = [endpoint("leaf-1", self.leaf.ports["inbound"]), *(extra_endpoints or [])]
        return {LEAF: {"name": "leaf", "namespace": NS, "ports": [8080], "endpoints": eps},
                f"front.{NS}.svc.cluster.local": {
                    "name": "front", "namespace": NS, "ports": [8080],
                    "endpoints": [endpoint("front-1", self.front.ports["inbound"])]}}

    async def configure(self, *, front_faults: list[dict[str, Any]] | None = None,
                        leaf_faults: list[dict[str, Any]] | None = None,
                        services: dict[str, Any] | None = None, **kw: Any) -> None:
        self.version += 1
        svcs = services or self.services()
        for sc, name, faults, app_port in ((self.front, "front", front_faults, 1),
                                           (self.leaf, "leaf", leaf_faults, self.app.port)):
            resp = await sc.push(config(sc.pod, name, services=svcs, app_port=app_port,
                                        faults=faults, version=self.version, **kw))
            assert resp.status == 200, resp.body

    async def call(self, path: str = "/work", headers: dict[str, str] | None = None,
                   within: float = 10.0, host: str = "leaf:8080") -> Response:
        """The front app's call: absolute-form through its HTTP_PROXY, as proxy clients send."""
        conn = await self.pool.acquire("127.0.0.1", self.front.ports["outbound"], 5.0)
        try:
            async with asyncio.timeout(within):
                resp = await conn.send("GET", f"http://{host}{path}", host,
                                       {k.lower(): v for k, v in (headers or {}).items()}, b"")
        except BaseException:
            self.pool.discard(conn)
            raise
        self.pool.release(conn)
        return resp


@pytest.fixture
async def pair(sidecars: Sidecars, leaf_app: LeafApp) -> AsyncIterator[Pair]:
    front, leaf = await asyncio.gather(sidecars.start("front-1", "front", app_port=1),
                                       sidecars.start("leaf-1", "leaf", app_port=leaf_app.port))
    p = Pair(front, leaf, leaf_app, ConnectionPool())
    try:
        yield p
    finally:
        await p.pool.close()


def field_of(line: str, index: int) -> str:
    """The n-th space-separated field of a TEXT access log line (quoted fields kept whole)."""
    import shlex
    return shlex.split(line)[index]

