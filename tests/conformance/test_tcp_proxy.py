"""Opaque TCP through two real sidecars, as Envoy's tcp_proxy carries Istio's TCP ports.

docs/fidelity.md §2.5 (which ports are TCP) and §2.6 (tcp_proxy: connect timeout, UF/UH,
half-close, resets, faults on the stream, the TCP access-log line). The app behind the
callee's sidecar is a real TCP echo server; the caller is a plain socket client connected to
the caller sidecar's outbound TCP listener, where the supervisor's service variables point.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.conformance.conftest import NS, SidecarProc, Sidecars, config

pytestmark = pytest.mark.timeout(60)

ECHO = f"echo.{NS}.svc.cluster.local"
ECHO_PORT = 7000
OUT_CLUSTER = f"outbound|{ECHO_PORT}||{ECHO}"
IN_CLUSTER = f"inbound|{ECHO_PORT}||"
BYE = b"bye\n"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class EchoApp:
    """Echoes every byte; on the client's FIN answers ``bye`` and closes (a half-close peer)."""

    def __init__(self) -> None:
        self.server: asyncio.Server | None = None
        self.port = 0
        self.received = bytearray()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                self.received += data
                writer.write(data)
                await writer.drain()
            writer.write(BYE)
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()


@dataclass
class TcpPair:
    """``front`` (caller) → ``echo-0`` (callee, the echo app behind it), over TCP."""

    front: SidecarProc
    echo: SidecarProc
    app: EchoApp
    front_listen: int
    echo_listen: int
    version: int = 1

    def services(self, *, tcp_port: int | None = None, ready: bool = True,
                 endpoints: bool = True) -> dict[str, Any]:
        ep = {"pod": "echo-0", "namespace": NS, "port": self.echo.ports["inbound"],
              "tcp_port": self.echo_listen if tcp_port is None else tcp_port, "ready": ready}
        return {ECHO: {"name": "echo", "namespace": NS, "ports": [ECHO_PORT],
                       "tcp_ports": [ECHO_PORT], "endpoints": [ep] if endpoints else []}}

    async def configure(self, *, front_faults: list[dict[str, Any]] | None = None,
                        echo_faults: list[dict[str, Any]] | None = None, **kw: Any) -> None:
        self.version += 1
        svcs = kw.pop("services", None) or self.services()
        for sc, name, faults, app_port in ((self.front, "front", front_faults, 1),
                                           (self.echo, "echo", echo_faults, self.app.port)):
            resp = await sc.push(config(sc.pod, name, services=svcs, app_port=app_port,
                                        faults=faults, version=self.version, **kw))
            assert resp.status == 200, resp.body

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """What the caller's app does with ECHO_SERVICE_HOST / ECHO_SERVICE_PORT."""
        return await asyncio.open_connection("127.0.0.1", self.front_listen)


@pytest.fixture
async def tcp_pair(sidecars: Sidecars) -> AsyncIterator[TcpPair]:
    app = EchoApp()
    await app.start()
    front_listen, echo_listen = free_port(), free_port()
    # The supervisor's TCP listener arguments, as it gives them to a pod's sidecar.
    echo = await sidecars.start("echo-0", "echo", app_port=app.port,
                                extra=["--tcp-inbound", f"{ECHO_PORT}={echo_listen}"])
    front = await sidecars.start("front-0", "front",
                                 extra=["--tcp-outbound", f"{ECHO}:{ECHO_PORT}={front_listen}"])
    pair = TcpPair(front, echo, app, front_listen, echo_listen)
    await pair.configure()
    try:
        yield pair
    finally:
        await app.stop()


def fields(line: str) -> list[str]:
    """The access-log line split the way its fields are laid out (quoted strings kept whole)."""
    out: list[str] = []
    rest = line
    while rest:
        rest = rest.lstrip()
        if not rest:
            break
        if rest[0] in "\"[":
            close = "]" if rest[0] == "[" else '"'
            end = rest.index(close, 1)
            out.append(rest[1:end])
            rest = rest[end + 1:]
        else:
            part, _, rest = rest.partition(" ")
            out.append(part)
    return out


def rule(action: str, peers: list[str] | None = None, **spec: Any) -> dict[str, Any]:
    return {"id": f"{NS}/tcp-{action}", "action": action, "peers": peers, **spec}


def delay(ms: float, peers: list[str] | None = None) -> dict[str, Any]:
    return rule("delay", peers, delay={"latency_ms": ms, "jitter_ms": 0.0, "correlation": 0.0})


async def roundtrip(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    data: bytes) -> float:
    start = time.monotonic()
    writer.write(data)
    await writer.drain()
    got = await asyncio.wait_for(reader.readexactly(len(data)), 10)
    assert got == data
    return time.monotonic() - start


async def test_bytes_flow_both_ways_and_a_half_close_is_passed_on(tcp_pair: TcpPair) -> None:
    """Envoy tcp_proxy relays the stream unchanged and supports half-close: the client's FIN
    reaches the app as end-of-stream while the app can still answer (§2.6)."""
    reader, writer = await tcp_pair.connect()
    payload = bytes(range(256)) * 64  # 16 KiB, every byte value
    await roundtrip(reader, writer, payload)
    writer.write_eof()
    assert await asyncio.wait_for(reader.read(), 5) == BYE  # then EOF: read() returned
    writer.close()
    assert bytes(tcp_pair.app.received) == payload


async def test_each_side_logs_istios_tcp_access_log_line(tcp_pair: TcpPair) -> None:
    """Istio's TEXT format for a TCP connection (Envoy access log, TCP notes): method, path and
    protocol '-', response code 0, BYTES_RECEIVED/BYTES_SENT of the downstream connection,
    DURATION of the whole connection, UPSTREAM_HOST and the outbound|inbound cluster (§2.6)."""
    reader, writer = await tcp_pair.connect()
    await roundtrip(reader, writer, b"x" * 100)
    await asyncio.sleep(0.05)
    writer.write_eof()
    assert await asyncio.wait_for(reader.read(), 5) == BYE
    writer.close()
    out = fields(await tcp_pair.front.wait_log(lambda ln: OUT_CLUSTER in ln))
    assert out[1] == "- - -"
    assert out[2:7] == ["0", "-", "-", "-", "-"]  # code, flags, details, termination, failure
    assert out[7:9] == ["100", str(100 + len(BYE))]  # received from / sent to the app
    assert int(out[9]) >= 50  # the whole connection, not one exchange
    assert out[15] == f"127.0.0.1:{tcp_pair.echo_listen}"  # UPSTREAM_HOST: the callee's sidecar
    assert out[16] == OUT_CLUSTER
    assert out[18] == f"127.0.0.1:{tcp_pair.front_listen}"  # DOWNSTREAM_LOCAL_ADDRESS
    inbound = fields(await tcp_pair.echo.wait_log(lambda ln: IN_CLUSTER in ln))
    assert inbound[1] == "- - -" and inbound[2] == "0" and inbound[3] == "-"
    assert inbound[7:9] == ["100", str(100 + len(BYE))]  # the preamble is not counted
    assert inbound[15] == f"127.0.0.1:{tcp_pair.app.port}"
    assert inbound[16] == IN_CLUSTER


async def test_a_refused_connect_closes_the_client_and_logs_uf_urx(tcp_pair: TcpPair) -> None:
    """tcp_proxy: a connect failure sets UpstreamConnectionFailure (UF); with Istio's default
    max_connect_attempts of 1 the attempts are spent too (URX, onConnectMaxAttempts); the
    downstream connection is closed (§2.6)."""
    await tcp_pair.configure(services=tcp_pair.services(tcp_port=free_port()))
    reader, writer = await tcp_pair.connect()
    writer.write(b"AMQP\x00\x00\x09\x01")  # a client that speaks first
    with contextlib.suppress(ConnectionError):  # closed with the bytes unread: maybe a RST
        assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()
    line = fields(await tcp_pair.front.wait_log(lambda ln: OUT_CLUSTER in ln))
    assert line[2:4] == ["0", "UF,URX"]
    assert line[6] == "delayed connect error: Connection refused"
    assert line[7:9] == ["0", "0"]  # nothing is read before the upstream connects


async def test_no_ready_endpoint_closes_the_client_and_logs_uh(tcp_pair: TcpPair) -> None:
    """No healthy upstream host: tcp_proxy closes the downstream connection at once with
    NoHealthyUpstream (UH) and never connects (§2.6)."""
    await tcp_pair.configure(services=tcp_pair.services(ready=False))
    reader, writer = await tcp_pair.connect()
    start = time.monotonic()
    assert await asyncio.wait_for(reader.read(), 5) == b""
    assert time.monotonic() - start < 1.0
    writer.close()
    line = fields(await tcp_pair.front.wait_log(lambda ln: OUT_CLUSTER in ln))
    assert line[2:4] == ["0", "UH"]
    assert line[7:9] == ["0", "0"]


async def test_a_partition_ends_a_new_connection_at_the_connect_timeout(
        tcp_pair: TcpPair) -> None:
    """A partitioned peer never answers the SYN: the connect waits the DestinationRule's
    connectTimeout, then UF,URX (§2.6, §5.2 partition = black hole, never a refusal)."""
    await tcp_pair.configure(front_faults=[rule("partition", ["shop/echo-0"])],
                             echo_faults=[rule("partition", ["shop/front-0"])],
                             connect_timeout_ms={ECHO: 300})
    reader, writer = await tcp_pair.connect()
    start = time.monotonic()
    assert await asyncio.wait_for(reader.read(), 5) == b""
    waited = time.monotonic() - start
    writer.close()
    assert 0.29 <= waited < 1.5
    line = fields(await tcp_pair.front.wait_log(lambda ln: OUT_CLUSTER in ln))
    assert line[2:4] == ["0", "UF,URX"]
    assert int(line[9]) >= 290


async def test_a_partition_stalls_an_open_stream_until_it_heals(tcp_pair: TcpPair) -> None:
    """Established connections stall under a partition (nothing is refused or reset) and
    carry on once the rule is gone, as TCP retransmits (§5.2)."""
    reader, writer = await tcp_pair.connect()
    await roundtrip(reader, writer, b"before")
    await tcp_pair.configure(front_faults=[rule("partition", ["shop/echo-0"])],
                             echo_faults=[rule("partition", ["shop/front-0"])])
    writer.write(b"during")
    await writer.drain()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(reader.readexactly(6), 0.5)
    await tcp_pair.configure()
    assert await asyncio.wait_for(reader.readexactly(6), 5) == b"during"
    writer.close()


async def test_delay_on_the_callers_egress_holds_the_stream_at_least_the_latency(
        tcp_pair: TcpPair) -> None:
    """NetworkChaos delay acts on the pod's egress (§5.2): the bytes the app sends up wait the
    latency, never less; so does the connect (the SYN is egress too)."""
    await tcp_pair.configure(front_faults=[delay(120.0)])
    start = time.monotonic()
    reader, writer = await tcp_pair.connect()
    first = await roundtrip(reader, writer, b"ping")
    assert time.monotonic() - start >= 0.24  # SYN and data each held 120 ms
    assert first >= 0.12
    assert await roundtrip(reader, writer, b"pong") >= 0.12
    writer.close()


async def test_delay_on_the_callees_egress_holds_its_answers(tcp_pair: TcpPair) -> None:
    """Inbound, the pod's egress is what its app answers: a delay aimed at the caller holds
    the echo, and only for that caller (peers from the TCP metadata preamble)."""
    await tcp_pair.configure(echo_faults=[delay(150.0, ["shop/front-0"])])
    reader, writer = await tcp_pair.connect()
    assert await roundtrip(reader, writer, b"held") >= 0.15
    writer.close()
    await tcp_pair.configure(echo_faults=[delay(150.0, ["shop/someone-else"])])
    reader, writer = await tcp_pair.connect()
    await roundtrip(reader, writer, b"warm")
    assert await roundtrip(reader, writer, b"free") < 0.15  # not held the 150 ms
    writer.close()


async def test_bandwidth_limits_the_stream_to_the_rate(tcp_pair: TcpPair) -> None:
    """Chaos Mesh bandwidth (tc tbf) as a token bucket on the egress bytes (§5.2): 60 KB at
    100 KB/s with a 10 KB bucket take at least 0.5 s."""
    await tcp_pair.configure(front_faults=[rule("bandwidth", bandwidth={
        "rate_bytes_per_s": 100_000, "limit_bytes": 1_000_000, "buffer_bytes": 10_000})])
    reader, writer = await tcp_pair.connect()
    assert await roundtrip(reader, writer, b"b" * 60_000) >= 0.5
    writer.close()


async def test_loss_retransmits_after_the_rto(tcp_pair: TcpPair) -> None:
    """Loss as a lost send resent after Linux's RTO of 200 ms (§5.2): at 100 % the stream
    stalls, and it resumes when the rule goes."""
    reader, writer = await tcp_pair.connect()
    await roundtrip(reader, writer, b"warm")
    await tcp_pair.configure(front_faults=[rule("loss", loss={"percent": 100.0,
                                                              "correlation": 0.0})])
    writer.write(b"lost")
    await writer.drain()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(reader.readexactly(4), 0.4)
    await tcp_pair.configure()
    assert await asyncio.wait_for(reader.readexactly(4), 5) == b"lost"
    writer.close()


async def test_a_killed_callee_pod_ends_the_callers_connection(tcp_pair: TcpPair) -> None:
    """PodChaos pod-kill: the callee's processes die with their sockets, so the caller's
    sidecar sees its upstream end and ends the app's connection (no hang)."""
    reader, writer = await tcp_pair.connect()
    await roundtrip(reader, writer, b"alive")
    tcp_pair.echo.kill()
    await tcp_pair.app.stop()
    with contextlib.suppress(ConnectionError):
        assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()
    line = fields(await tcp_pair.front.wait_log(lambda ln: OUT_CLUSTER in ln))
    assert line[7] == "5"
