"""Real chain processes (``python -m fixtures.chain``) wired through a sidecar-like forwarder.

Four processes play frontend → orders → (pricing ‖ ratings) with HTTP_PROXY pointing at a
loopback forwarder and OTEL_EXPORTER_OTLP_ENDPOINT at a loopback OTLP sink, as the local
mesh's supervisor wires them (architecture.md "Pods as processes").
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path

import aiohttp
import pytest

from fixtures.chain.testing import Forwarder, OtlpSink

ROOT = Path(__file__).resolve().parents[2]
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
HOPS = {
    "frontend": "seq:http://orders:8080/orders",
    "orders": "par:http://pricing:8080/pricing;par:http://ratings:8080/ratings",
    "pricing": "",
    "ratings": "",
}


@asynccontextmanager
async def chain_process(name: str, calls: str, proxy: str, otlp: str
                        ) -> AsyncIterator[tuple[asyncio.subprocess.Process, int]]:
    """Start one hop on 127.0.0.1:0, yield (process, port); always kill its process group."""
    env = {**os.environ, "PORT": "0", "CHAIN_HOST": "127.0.0.1", "OTEL_SERVICE_NAME": name,
           "POD_NAME": f"{name}-0", "POD_NAMESPACE": "shop", "CHAIN_CALLS": calls,
           "CHAIN_WORK_BEFORE": "5", "HTTP_PROXY": proxy, "OTEL_EXPORTER_OTLP_ENDPOINT": otlp}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "fixtures.chain", cwd=ROOT, env=env, start_new_session=True,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 30.0)
        assert line, f"{name} exited before listening: {(await proc.stderr.read()).decode()}"  # type: ignore[union-attr]
        yield proc, int(json.loads(line)["port"])
    finally:
        if proc.returncode is None:
            with suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()


async def stop(proc: asyncio.subprocess.Process) -> int:
    """SIGTERM, as the kubelet does; the process must flush its spans and exit 0."""
    proc.send_signal(signal.SIGTERM)
    return await asyncio.wait_for(proc.wait(), 15.0)


async def test_four_real_processes_export_one_connected_trace_and_shrink_the_budget() -> None:
    """One request through four processes yields one trace (W3C: every hop keeps the trace-id
    and sends its CLIENT span as parent-id), a shrinking budget per hop, completed work in
    every /debug/work, and every span flushed on SIGTERM. HTTP_PROXY points at a forwarder that
    knows only the chain's services, so spans arrive only if export bypasses the proxy."""
    async with OtlpSink() as sink, Forwarder({}) as proxy:
        procs = {}
        async with chain_process("frontend", HOPS["frontend"], proxy.url, sink.url) as fe, \
                chain_process("orders", HOPS["orders"], proxy.url, sink.url) as od, \
                chain_process("pricing", HOPS["pricing"], proxy.url, sink.url) as pr, \
                chain_process("ratings", HOPS["ratings"], proxy.url, sink.url) as ra:
            procs = {"frontend": fe, "orders": od, "pricing": pr, "ratings": ra}
            proxy.routes.update({name: port for name, (_, port) in procs.items()})
            headers = {"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01",
                       "x-envoy-expected-rq-timeout-ms": "2000", "x-request-id": "req-1"}
            async with aiohttp.ClientSession() as session:
                async with session.get(f"http://127.0.0.1:{fe[1]}/", headers=headers) as resp:
                    body = await resp.json()
                    assert resp.status == 200, body
                work = {}
                for name, (_, port) in procs.items():
                    async with session.get(f"http://127.0.0.1:{port}/debug/work",
                                           params={"trace_id": TRACE_ID}) as resp:
                        work[name] = await resp.json()
            codes = [await stop(proc) for proc, _ in procs.values()]
    assert codes == [0, 0, 0, 0]
    assert {name: [i["outcome"] for i in w["items"]] for name, w in work.items()} == {
        name: ["completed"] for name in HOPS}
    assert all(h["x-request-id"] == "req-1" for h in proxy.seen)

    spans = sink.spans()
    assert {s["trace_id"] for s in spans} == {TRACE_ID}
    server = {s["service"]: s for s in spans if s["kind"] == 2}  # SPAN_KIND_SERVER
    client = {s["attributes"]["server.address"]: s for s in spans if s["kind"] == 3}
    assert set(server) == set(HOPS) and set(client) == {"orders", "pricing", "ratings"}
    assert server["frontend"]["parent_id"] == PARENT_ID
    assert client["orders"]["parent_id"] == server["frontend"]["span_id"]
    assert server["orders"]["parent_id"] == client["orders"]["span_id"]
    for leaf in ("pricing", "ratings"):
        assert client[leaf]["parent_id"] == server["orders"]["span_id"]
        assert server[leaf]["parent_id"] == client[leaf]["span_id"]
    budgets = {name: server[name]["attributes"]["meshchaos.budget_ms"] for name in HOPS}
    assert budgets["frontend"] == 2000
    assert 2000 - 5 - 5 - 200 <= budgets["orders"] <= 2000 - 5 - 5
    assert max(budgets["pricing"], budgets["ratings"]) <= budgets["orders"] - 10
    assert server["pricing"]["events"] == ["work.start", "work.end"]


async def test_bad_configuration_exits_2_naming_the_setting() -> None:
    """A setting that cannot be parsed stops the process at once with a message naming it."""
    env = {**os.environ, "CHAIN_CALLS": "fan:http://x:1/x"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "fixtures.chain", cwd=ROOT, env=env, start_new_session=True,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        _, err = await asyncio.wait_for(proc.communicate(), 30.0)
    finally:
        if proc.returncode is None:
            os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
    assert proc.returncode == 2
    assert "CHAIN_CALLS='fan:http://x:1/x'" in err.decode()


def dockerfile_copies() -> list[str]:
    """The repository paths fixtures/Dockerfile copies into the image."""
    text = (ROOT / "fixtures" / "Dockerfile").read_text()
    return [line.split()[1] for line in text.splitlines() if line.startswith("COPY ")]


async def test_the_image_file_set_alone_runs_the_chain(tmp_path: Path) -> None:
    """fixtures/Dockerfile copies fixtures/chain/ and, of localmesh, only the lean HTTP stack
    (localmesh.http and what it imports): those files, with the third-party packages but
    without the editable project (python -S skips its .pth), must start without importing
    the packages the image does not install, answer /healthz and report a refused downstream
    call as 502."""
    import shutil
    import sysconfig

    for source in dockerfile_copies():
        target = tmp_path / source
        if (ROOT / source).is_dir():
            shutil.copytree(ROOT / source, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(ROOT / source, target)
    # What the image leaves out (aiohttp) must not be imported by the chain's start path.
    probe = ("import sys, importlib.util, fixtures.chain.run, fixtures.chain.app as a, "
             "localmesh.http as h; "
             "left_out = sorted(m for m in sys.modules if m.split('.')[0] in "
             "('aiohttp',)); "
             "print(importlib.util.find_spec('localmesh.mesh') is None, a.__file__, h.__file__, "
             "','.join(left_out) or '-')")
    env = {"PATH": os.environ.get("PATH", ""),
           "PYTHONPATH": f"{tmp_path}:{sysconfig.get_paths()['purelib']}"}
    check = await asyncio.create_subprocess_exec(
        sys.executable, "-S", "-c", probe, cwd=tmp_path, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(check.communicate(), 30.0)
    assert out.decode().split() == ["True", str(tmp_path / "fixtures/chain/app.py"),
                                    str(tmp_path / "localmesh/http/__init__.py"), "-"], err
    env.update({"PORT": "0", "CHAIN_HOST": "127.0.0.1", "CHAIN_CALLS": "seq:http://127.0.0.1:9/x"})
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-S", "-m", "fixtures.chain", cwd=tmp_path, env=env,
        start_new_session=True, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        assert proc.stdout is not None
        port = json.loads(await asyncio.wait_for(proc.stdout.readline(), 30.0))["port"]
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{port}/healthz") as resp:
                assert resp.status == 200
            async with session.get(f"http://127.0.0.1:{port}/x") as resp:
                assert resp.status == 502  # the refused call, reported by the lean client
        assert await stop(proc) == 0
    finally:
        if proc.returncode is None:
            with suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()


async def test_a_hop_listens_on_a_literal_address_or_a_name_alike() -> None:
    """CHAIN_HOST may be an address (bound directly) or a name (resolved by the loop); both
    serve, and stopping closes the listener."""
    from opentelemetry.sdk.trace import TracerProvider

    from fixtures.chain.app import ChainService
    from fixtures.chain.config import ChainConfig
    from fixtures.chain.server import ChainServer

    for host in ("127.0.0.1", "localhost"):
        server = ChainServer(ChainService(ChainConfig(name=host), TracerProvider().get_tracer("t")))
        port = await server.start(host, 0)
        try:
            async with aiohttp.ClientSession() as session, session.get(
                    f"http://127.0.0.1:{port}/healthz") as resp:
                assert (resp.status, (await resp.json())["service"]) == (200, host)
        finally:
            await server.stop(1.0)
        with pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.1", port)
