"""Opaque TCP proxying, as Envoy's ``tcp_proxy`` filter does it for Istio's TCP ports.

docs/fidelity.md §2.5 says which Service ports are TCP (and why the supervisor picks the
listeners); §2.6 is the behaviour emulated here:

- **outbound** (``outbound|<port>||<fqdn>``): the app connects to the listener the supervisor
  announced in ``<SERVICE>_SERVICE_PORT_<NAME>``; the sidecar picks a ready endpoint of the
  Service (round robin) and connects to that pod's inbound TCP listener within the connect
  timeout (DestinationRule ``connectTimeout``, else the mesh's, 10 s). No ready endpoint: the
  downstream connection is closed at once and logged ``UH``. A refused or timed-out connect:
  closed and logged ``UF,URX`` (Istio leaves ``max_connect_attempts`` at its default of 1, so
  the one failed attempt also exhausts the attempts: Envoy's ``onConnectMaxAttempts``).
- **inbound** (``inbound|<port>||``): a caller's sidecar connects here; the bytes go to the app
  port. The caller names its pod in a preamble before its first byte (Istio's TCP metadata
  exchange does the same in-band), so faults aimed at that peer act on the response bytes.
- **the stream**: bytes are relayed as they come, half-close is passed on (a FIN from one
  side is written as end-of-stream to the other, the connection ends when both directions
  did), a reset (RST) from one side aborts the other, and a killed pod's sockets close
  with it, so its peers' connections end.
- **faults** act on this pod's egress as on HTTP (:class:`~localmesh.sidecar.faults.FaultEngine`):
  outbound, the bytes the app sends upstream; inbound, the bytes the app answers with.
  Each chunk is held by its delay (jitter, loss retransmissions, token bucket) from the time
  it arrived, in order; a partition (or 100 % loss) stalls the stream until the rule goes,
  re-tried at the retransmission back-off; a new connection to a partitioned peer never
  completes, so it ends at the connect timeout (``UF,URX``).
- **access log**: one line per connection when it ends, in the mesh's format; for TCP the
  HTTP operators print ``-``, ``%RESPONSE_CODE%`` is 0, ``%BYTES_RECEIVED%`` /
  ``%BYTES_SENT%`` count the downstream connection's bytes and ``%DURATION%`` is the whole
  connection's (Envoy's access log usage, "TCP" notes).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from localmesh.sidecar.faults import RTO_S, FaultEngine
from localmesh.sidecar.txn import Txn

if TYPE_CHECKING:  # the proxy owns a TcpProxy; only its parts are used here
    from localmesh.sidecar.proxy import Sidecar

__all__ = ["PREAMBLE_MAGIC", "InboundSpec", "OutboundSpec", "TcpProxy", "TcpTxn",
           "parse_inbound", "parse_outbound"]

log = logging.getLogger("localmesh.sidecar.tcp")

# The caller's pod ("ns/name") before its first byte: magic, a 2-byte length, the name.
PREAMBLE_MAGIC = b"\x3d\x23\x04\x67"
_PREAMBLE_HEAD = 6
_HIGH_WATER = 1 << 20  # held bytes above which the source stops being read
_LOW_WATER = 1 << 18
_MAX_STALL_RETRY_S = 60.0
_EOF = b""


@dataclass(frozen=True)
class OutboundSpec:
    fqdn: str
    port: int
    listen: int


@dataclass(frozen=True)
class InboundSpec:
    port: int  # the declared container port (the inbound cluster's name)
    listen: int


def parse_outbound(text: str) -> OutboundSpec:
    """``broker.shop.svc.cluster.local:5672=41234`` (``--tcp-outbound``)."""
    try:
        target, listen = text.rsplit("=", 1)
        fqdn, port = target.rsplit(":", 1)
        return OutboundSpec(fqdn.lower(), int(port), int(listen))
    except ValueError:
        raise ValueError(f"--tcp-outbound {text!r} is not FQDN:PORT=LISTEN_PORT") from None


def parse_inbound(text: str) -> InboundSpec:
    """``5672=41235`` (``--tcp-inbound``)."""
    try:
        port, listen = text.split("=", 1)
        return InboundSpec(int(port), int(listen))
    except ValueError:
        raise ValueError(f"--tcp-inbound {text!r} is not PORT=LISTEN_PORT") from None


def _address(addr: Any) -> str:
    return f"{addr[0]}:{addr[1]}" if isinstance(addr, tuple) and len(addr) >= 2 else ""


class TcpTxn(Txn):
    """One proxied TCP connection, as the access log reads it (HTTP fields empty)."""

    protocol = "-"

    def __init__(self, start: float, start_wall: float) -> None:
        super().__init__(start, start_wall, "", "", "", {})


class _Pipe:
    """The bytes of one direction, held as the egress rules say when ``shaped``, in order."""

    def __init__(self, conn: _Conn, shaped: bool) -> None:
        self.conn = conn
        self.shaped = shaped
        self.dst: asyncio.Transport | None = None
        self.src: asyncio.Transport | None = None
        self.queue: collections.deque[bytes] = collections.deque()
        self.queued_bytes = 0
        self.release_at = 0.0  # monotonic time the last queued chunk is released
        self.armed = False
        self.stall_rto = RTO_S
        self.ended = False  # end-of-stream written to dst
        self.dst_paused = False
        self.src_paused = False
        self.sent = 0

    def feed(self, data: bytes) -> None:
        """A chunk (or ``_EOF``) from the source, to be written to the destination."""
        faults = self.conn.proxy.faults
        if not self.queue and (not self.shaped or not faults.active
                               or not faults.affects(self.conn.peer)):
            self._write(data)
            return
        self.queue.append(data)
        self.queued_bytes += len(data)
        if self.queued_bytes > _HIGH_WATER:
            self._pause_src()
        if not self.armed:
            self._schedule()

    def _schedule(self) -> None:
        """Arm the release of the queue's head chunk."""
        if not self.queue or self.conn.closed:
            return
        faults = self.conn.proxy.faults
        head = self.queue[0]
        delay = faults.delay_for(self.conn.peer, len(head)) if self.shaped else 0.0
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        if delay is None:  # black hole: try again at the retransmission back-off
            wait, self.stall_rto = self.stall_rto, min(self.stall_rto * 2, _MAX_STALL_RETRY_S)
            self.armed = True
            faults.after(loop, now, wait, self._retry)
            return
        self.stall_rto = RTO_S
        self.release_at = max(now + delay, self.release_at)
        self.armed = True
        if self.release_at <= now:
            self._release()
            return
        faults.after(loop, now, self.release_at - now, self._release)

    def _retry(self) -> None:
        self.armed = False
        self._schedule()

    def _release(self) -> None:
        self.armed = False
        if self.conn.closed or not self.queue:
            return
        data = self.queue.popleft()
        self.queued_bytes -= len(data)
        self._write(data)
        if self.queued_bytes < _LOW_WATER:
            self._resume_src()
        self._schedule()

    def _write(self, data: bytes) -> None:
        dst = self.dst
        if dst is None or dst.is_closing():
            return
        if data is _EOF or not data:
            self.ended = True
            if dst.can_write_eof():
                dst.write_eof()
            else:
                dst.close()
            self.conn.maybe_done()
            return
        self.sent += len(data)
        dst.write(data)

    def _pause_src(self) -> None:
        if self.src is not None and not self.src_paused:
            self.src_paused = True
            with contextlib.suppress(RuntimeError):
                self.src.pause_reading()

    def _resume_src(self) -> None:
        if (self.src is not None and self.src_paused and not self.dst_paused
                and self.queued_bytes < _LOW_WATER):
            self.src_paused = False
            with contextlib.suppress(RuntimeError):
                self.src.resume_reading()


class _Side(asyncio.Protocol):
    """One socket of a proxied connection; what it reads goes into ``out``."""

    def __init__(self, conn: _Conn, out: _Pipe, into: _Pipe) -> None:
        self.conn = conn
        self.out = out  # bytes read here flow through this pipe
        self.into = into  # the pipe that writes to this socket
        self.transport: asyncio.Transport | None = None
        self.eof = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports have the interface without the asyncio base class.
        self.transport = cast(asyncio.Transport, transport)
        self.out.src = self.transport
        self.into.dst = self.transport
        if self is self.conn.down:
            # tcp_proxy reads nothing from the downstream until the upstream is connected
            # (receive_before_connect off): a UH or UF connection logs 0 bytes received.
            with contextlib.suppress(RuntimeError):
                self.transport.pause_reading()
            txn = self.conn.txn
            txn.downstream_local = _address(transport.get_extra_info("sockname"))
            txn.downstream_remote = _address(transport.get_extra_info("peername"))

    def data_received(self, data: bytes) -> None:
        self.conn.proxy.faults.run_due()
        self.conn.on_data(self, data)

    def eof_received(self) -> bool:
        self.eof = True
        self.conn.on_eof(self)
        return True  # keep writing the other direction (half-close)

    def connection_lost(self, exc: Exception | None) -> None:
        self.conn.on_lost(self, exc)

    def pause_writing(self) -> None:
        self.into.dst_paused = True
        self.into._pause_src()

    def resume_writing(self) -> None:
        self.into.dst_paused = False
        self.into._resume_src()


class _Conn:
    """One downstream connection and its upstream: two sides, two pipes, one log line."""

    def __init__(self, proxy: TcpProxy, *, outbound: bool, cluster: str) -> None:
        self.proxy = proxy
        self.outbound = outbound
        self.txn = TcpTxn(time.monotonic(), time.time())
        self.txn.upstream_cluster = cluster
        self.peer: str | None = None  # the other pod ("ns/name"), when known
        # Egress of this pod: outbound, what the app sends up; inbound, what it answers.
        self.up_pipe = _Pipe(self, shaped=outbound)  # downstream -> upstream
        self.down_pipe = _Pipe(self, shaped=not outbound)  # upstream -> downstream
        self.down = _Side(self, self.up_pipe, self.down_pipe)
        self.up: _Side | None = None
        self.closed = False
        self.logged = False
        self.early: list[bytes] = []  # downstream bytes before the upstream is connected
        self.preamble = b"" if not outbound else None  # inbound: parsing the caller's name
        self.task: asyncio.Task[None] | None = None

    # -- downstream bytes ----------------------------------------------------------------

    def on_data(self, side: _Side, data: bytes) -> None:
        if side is self.down:
            if self.preamble is not None:
                data = self._strip_preamble(data)
                if not data:
                    return
            if self.up is None:
                # Not read as far as tcp_proxy is concerned (uvloop may deliver bytes before
                # the pause takes): held, counted once they go upstream.
                self.early.append(data)
                if side.transport is not None:
                    with contextlib.suppress(RuntimeError):
                        side.transport.pause_reading()
                return
            self.txn.bytes_received += len(data)
        pipe = self.up_pipe if side is self.down else self.down_pipe
        pipe.feed(data)

    def on_eof(self, side: _Side) -> None:
        if side is self.down and self.up is None:
            return  # passed on once the upstream is connected (upstream_ready)
        (self.up_pipe if side is self.down else self.down_pipe).feed(_EOF)

    def _strip_preamble(self, data: bytes) -> bytes:
        buf = (self.preamble or b"") + data
        if len(buf) < _PREAMBLE_HEAD and PREAMBLE_MAGIC.startswith(buf[:4]):
            self.preamble = buf
            return b""
        self.preamble = None
        if buf[:4] != PREAMBLE_MAGIC:
            return buf  # no sidecar in front: an anonymous peer
        (size,) = struct.unpack(">H", buf[4:6])
        if len(buf) < _PREAMBLE_HEAD + size:
            self.preamble = buf
            return b""
        self.peer = buf[_PREAMBLE_HEAD:_PREAMBLE_HEAD + size].decode(errors="replace") or None
        return buf[_PREAMBLE_HEAD + size:]

    # -- life cycle --------------------------------------------------------------------------

    def upstream_ready(self, side: _Side) -> None:
        self.up = side
        if self.down.transport is not None and not self.up_pipe.src_paused:
            with contextlib.suppress(RuntimeError):
                self.down.transport.resume_reading()
        for chunk in self.early:
            self.txn.bytes_received += len(chunk)
            self.up_pipe.feed(chunk)
        self.early.clear()
        if self.down.eof:
            self.up_pipe.feed(_EOF)

    def maybe_done(self) -> None:
        """Both directions ended: close both sockets (the kernel flushes what is written)."""
        if self.up_pipe.ended and self.down_pipe.ended:
            self.close(reset=False)

    def on_lost(self, side: _Side, exc: Exception | None) -> None:
        if self.closed:
            return
        # A reset (or a socket error) on one side resets the other; a clean close of one side
        # before both directions ended closes the other after what is written.
        self.close(reset=exc is not None)

    def close(self, *, reset: bool) -> None:
        if self.closed:
            return
        self.closed = True
        for side in (self.down, self.up):
            transport = side.transport if side is not None else None
            if transport is None:
                continue
            if reset:
                transport.abort()
            else:
                transport.close()
        if self.task is not None and not self.task.done():
            self.task.cancel()
        self.finish()

    def finish(self) -> None:
        if self.logged:
            return
        self.logged = True
        self.txn.end = time.monotonic()
        self.txn.bytes_sent = self.down_pipe.sent
        self.proxy.connections.discard(self)
        self.proxy.sidecar.access_log.log(self.txn)

    def fail(self, flags: Sequence[str], transport_failure: str = "") -> None:
        for flag in flags:
            self.txn.add_flag(flag)
        if transport_failure:
            self.txn.transport_failure = transport_failure
        self.close(reset=False)


class TcpProxy:
    """The TCP listeners of one sidecar (none unless the supervisor asked for some)."""

    def __init__(self, sidecar: Sidecar, *, inbound: InboundSpec | None = None,
                 outbound: Sequence[OutboundSpec] = ()) -> None:
        self.sidecar = sidecar
        self.inbound = inbound
        self.outbound = tuple(outbound)
        self.servers: list[asyncio.Server] = []
        self.connections: set[_Conn] = set()
        self._rr: dict[str, int] = {}
        # Counted in the sidecar's own stats (admin GET /stats).
        self.stats = sidecar.stats
        for key in ("tcp_downstream_cx_total", "tcp_upstream_cx_none_healthy",
                    "tcp_upstream_cx_connect_fail"):
            self.stats.setdefault(key, 0)

    @property
    def faults(self) -> FaultEngine:
        return self.sidecar.faults

    async def start(self) -> dict[str, int]:
        """Bind every listener; the ports bound, by cluster name."""
        loop = asyncio.get_running_loop()
        bound: dict[str, int] = {}
        if self.inbound is not None:
            spec = self.inbound
            server = await loop.create_server(
                lambda: self._accept(outbound=False, cluster=f"inbound|{spec.port}||").down,
                "127.0.0.1", spec.listen)
            self.servers.append(server)
            bound[f"inbound|{spec.port}||"] = server.sockets[0].getsockname()[1]
        for out in self.outbound:
            cluster = f"outbound|{out.port}||{out.fqdn}"
            server = await loop.create_server(self._outbound_factory(out, cluster),
                                              "127.0.0.1", out.listen)
            self.servers.append(server)
            bound[cluster] = server.sockets[0].getsockname()[1]
        return bound

    def _outbound_factory(self, spec: OutboundSpec,
                          cluster: str) -> Callable[[], asyncio.Protocol]:
        return lambda: self._accept_outbound(spec, cluster).down

    def close(self) -> None:
        """Stop accepting (draining, like the HTTP listeners)."""
        for server in self.servers:
            server.close()

    def abort_all(self) -> None:
        """The process is going away: reset what is still open (logged as it ends)."""
        for conn in list(self.connections):
            conn.close(reset=True)

    # -- accepting ------------------------------------------------------------------------

    def _accept(self, *, outbound: bool, cluster: str) -> _Conn:
        conn = _Conn(self, outbound=outbound, cluster=cluster)
        self.connections.add(conn)
        self.stats["tcp_downstream_cx_total"] += 1
        if not outbound:
            conn.task = asyncio.ensure_future(self._connect_app(conn))
        return conn

    def _accept_outbound(self, spec: OutboundSpec, cluster: str) -> _Conn:
        conn = self._accept(outbound=True, cluster=cluster)
        conn.task = asyncio.ensure_future(self._connect_upstream(conn, spec))
        return conn

    async def _connect_app(self, conn: _Conn) -> None:
        port = self.sidecar.app_port
        conn.txn.upstream_host = f"127.0.0.1:{port}"
        await self._open(conn, "127.0.0.1", port, timeout_s=self._connect_timeout_s(""),
                         preamble=b"", partitioned=False)

    async def _connect_upstream(self, conn: _Conn, spec: OutboundSpec) -> None:
        await asyncio.sleep(0)  # let connection_made run first
        target = self._endpoint(spec)
        if target is None:
            self.stats["tcp_upstream_cx_none_healthy"] += 1
            conn.fail(["UH"])  # Envoy: no healthy upstream host, the connection is closed
            return
        host, port, peer = target
        conn.peer = peer
        conn.txn.upstream_host = f"{host}:{port}"
        faults = self.faults
        partitioned = faults.active and faults.partitioned(peer)
        hold = 0.0
        if faults.active and not partitioned and faults.affects(peer):
            # The SYN is egress too: it waits its delay (a lost one, its retransmissions).
            hold = faults.delay_for(peer, 0) or 0.0
        if hold > 0:
            await asyncio.sleep(hold)
        name = f"{self.sidecar.namespace}/{self.sidecar.pod}".encode()
        preamble = PREAMBLE_MAGIC + struct.pack(">H", len(name)) + name
        await self._open(conn, host, port, timeout_s=self._connect_timeout_s(spec.fqdn),
                         preamble=preamble, partitioned=partitioned)

    async def _open(self, conn: _Conn, host: str, port: int, *, timeout_s: float,
                    preamble: bytes, partitioned: bool) -> None:
        loop = asyncio.get_running_loop()
        up_side = _Side(conn, conn.down_pipe, conn.up_pipe)
        try:
            async with asyncio.timeout(timeout_s):
                if partitioned:  # a black-holed SYN is never answered
                    await loop.create_future()
                await loop.create_connection(lambda: up_side, host, port)
        except TimeoutError:
            self.stats["tcp_upstream_cx_connect_fail"] += 1
            conn.fail(["UF", "URX"])
            return
        except OSError as exc:
            self.stats["tcp_upstream_cx_connect_fail"] += 1
            # The same text the HTTP path logs for a refused connect (localmesh.http.client).
            reason = os.strerror(exc.errno) if exc.errno else str(exc)
            conn.fail(["UF", "URX"], f"delayed connect error: {reason}")
            return
        if conn.closed:  # the downstream left while connecting
            if up_side.transport is not None:
                up_side.transport.close()
            return
        if up_side.transport is not None:
            conn.txn.upstream_local = _address(up_side.transport.get_extra_info("sockname"))
        if preamble and up_side.transport is not None:
            up_side.transport.write(preamble)
        conn.upstream_ready(up_side)

    # -- configuration --------------------------------------------------------------------

    def _connect_timeout_s(self, fqdn: str) -> float:
        cfg = self.sidecar.cfg
        if cfg is None:
            return 10.0
        ms = (cfg.connect_timeout_ms.get(fqdn) if fqdn else None) or cfg.mesh.connect_timeout_ms
        return ms / 1000.0

    def _endpoint(self, spec: OutboundSpec) -> tuple[str, int, str] | None:
        """A ready endpoint's inbound TCP listener (round robin), or None (UH)."""
        cfg = self.sidecar.cfg
        if cfg is None:
            return None
        raw_services: dict[str, Any] = cfg.raw.get("services") or {}
        svc = raw_services.get(spec.fqdn) or {}
        if spec.port not in (svc.get("tcp_ports") or ()):
            return None
        ready = [e for e in svc.get("endpoints") or ()
                 if e.get("ready", True) and e.get("tcp_port")]
        if not ready:
            return None
        ep = ready[self._next(spec.fqdn) % len(ready)]
        return (str(ep.get("host") or "127.0.0.1"), int(ep["tcp_port"]),
                f"{ep['namespace']}/{ep['pod']}")

    def _next(self, key: str) -> int:
        self._rr[key] = self._rr.get(key, -1) + 1
        return self._rr[key]


def parse_listeners(inbound: str | None,
                    outbound: Sequence[str]) -> tuple[InboundSpec | None, list[OutboundSpec]]:
    """The sidecar's ``--tcp-inbound`` / ``--tcp-outbound`` arguments."""
    return (parse_inbound(inbound) if inbound else None), [parse_outbound(o) for o in outbound]
