"""Readiness checks the way the kubelet runs them, against loopback ports.

``httpGet`` and ``tcpSocket`` are run as the kubelet runs them. An ``exec`` probe runs its
command, except the ones this module knows a loopback equivalent of: RabbitMQ's
``rabbitmq-diagnostics -q check_port_connectivity`` (the broker's listeners accept
connections) becomes an AMQP 0-9-1 protocol-header handshake on the app port, which answers
in about a millisecond where the CLI tool starts an Erlang VM each time (0.4-0.7 s measured on
this machine, and CPU taken from the broker while it boots).
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Any

__all__ = ["SIDECAR_PROBE", "ReadinessProbe", "amqp_handshake_ok", "exec_ok", "http_get_ok",
           "tcp_open"]

# AMQP 0-9-1 §4.2.2: the client opens with this header; a server that accepts the version
# answers with a Connection.Start method frame (type 1, channel 0, class 10, method 10).
_AMQP_HEADER = b"AMQP\x00\x00\x09\x01"
_AMQP_EQUIVALENTS = {("rabbitmq-diagnostics", "check_port_connectivity"),
                     ("rabbitmq-diagnostics", "ping"),
                     ("rabbitmq-diagnostics", "check_running")}


def _handshake_of(command: tuple[str, ...]) -> str:
    if not command:
        return ""
    tool = command[0].rsplit("/", 1)[-1]
    verbs = [a for a in command[1:] if not a.startswith("-")]
    return "amqp" if verbs and (tool, verbs[0]) in _AMQP_EQUIVALENTS else ""


@dataclass(frozen=True)
class ReadinessProbe:
    """A container's ``readinessProbe`` (httpGet, else a TCP connect), with k8s defaults."""

    path: str | None = None  # None: Ready once the port accepts connections
    headers: tuple[tuple[str, str], ...] = ()
    command: tuple[str, ...] = ()  # an exec probe run as a process (no local equivalent)
    handshake: str = ""  # "amqp": an exec probe replaced by its protocol handshake
    timeout_s: float = 1.0
    period_s: float = 10.0
    failure_threshold: int = 3

    @classmethod
    def of(cls, container: dict[str, Any]) -> ReadinessProbe:
        spec = container.get("readinessProbe") or {}
        http = spec.get("httpGet") or {}
        command = tuple(str(a) for a in (spec.get("exec") or {}).get("command") or [])
        handshake = _handshake_of(command)
        headers = tuple((str(h["name"]), str(h["value"])) for h in http.get("httpHeaders") or []
                        if "name" in h and "value" in h)
        return cls(path=str(http.get("path") or "/") if http else None, headers=headers,
                   command=() if handshake else command, handshake=handshake,
                   timeout_s=float(spec.get("timeoutSeconds") or 1),
                   period_s=float(spec.get("periodSeconds") or 10),
                   failure_threshold=int(spec.get("failureThreshold") or 3))

    async def check(self, port: int) -> bool:
        if self.handshake == "amqp":
            return await amqp_handshake_ok(port, within=self.timeout_s)
        if self.command:
            return await exec_ok(self.command, within=self.timeout_s)
        if self.path is None:
            return await tcp_open(port, within=self.timeout_s)
        return await http_get_ok(port, self.path, within=self.timeout_s,
                                 headers=[{"name": k, "value": v} for k, v in self.headers])


# istio-proxy: the admin /ready endpoint answers 200 once the first config push applied.
SIDECAR_PROBE = ReadinessProbe(path="/ready", period_s=2.0)


async def tcp_open(port: int, *, within: float = 1.0) -> bool:
    """True when something accepts connections on 127.0.0.1:port."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), within)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


async def http_get_ok(port: int, path: str = "/", *, within: float = 1.0,
                      headers: list[dict[str, Any]] | None = None) -> bool:
    """A kubelet httpGet probe: success is a status in [200, 400)."""
    try:
        return await asyncio.wait_for(_http_get(port, path, headers or []), within)
    except (OSError, TimeoutError, ValueError, asyncio.IncompleteReadError):
        return False


async def _http_get(port: int, path: str, headers: list[dict[str, Any]]) -> bool:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        extra = "".join(f"{h['name']}: {h['value']}\r\n" for h in headers
                        if "name" in h and "value" in h)
        writer.write(f"GET {path or '/'} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                     f"User-Agent: kube-probe/1.31\r\nConnection: close\r\n{extra}\r\n"
                     .encode("latin-1"))
        await writer.drain()
        status_line = await reader.readline()
        parts = status_line.split()
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/"):
            return False
        return 200 <= int(parts[1]) < 400
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def amqp_handshake_ok(port: int, *, within: float = 1.0) -> bool:
    """True when an AMQP 0-9-1 server on 127.0.0.1:port answers the protocol header with
    Connection.Start (the broker has finished booting: its listener opens last)."""
    try:
        return await asyncio.wait_for(_amqp_start(port), within)
    except (OSError, TimeoutError, asyncio.IncompleteReadError):
        return False


async def _amqp_start(port: int) -> bool:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(_AMQP_HEADER)
        await writer.drain()
        head = await reader.readexactly(11)  # type, channel, size, class id, method id
        return head[0] == 1 and head[1:3] == b"\x00\x00" and head[7:11] == b"\x00\x0a\x00\x0a"
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def exec_ok(command: tuple[str, ...], *, within: float = 1.0) -> bool:
    """A kubelet exec probe: success is exit status 0 within the timeout."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *command, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL)
    except OSError:
        return False
    try:
        return await asyncio.wait_for(proc.wait(), within) == 0
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        return False
