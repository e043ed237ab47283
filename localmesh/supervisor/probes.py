"""Readiness checks the way the kubelet runs them, against loopback ports."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Any

__all__ = ["SIDECAR_PROBE", "ReadinessProbe", "http_get_ok", "tcp_open"]


@dataclass(frozen=True)
class ReadinessProbe:
    """A container's ``readinessProbe`` (httpGet, else a TCP connect), with k8s defaults."""

    path: str | None = None  # None: Ready once the port accepts connections
    headers: tuple[tuple[str, str], ...] = ()
    timeout_s: float = 1.0
    period_s: float = 10.0
    failure_threshold: int = 3

    @classmethod
    def of(cls, container: dict[str, Any]) -> ReadinessProbe:
        spec = container.get("readinessProbe") or {}
        http = spec.get("httpGet") or {}
        headers = tuple((str(h["name"]), str(h["value"])) for h in http.get("httpHeaders") or []
                        if "name" in h and "value" in h)
        return cls(path=str(http.get("path") or "/") if http else None, headers=headers,
                   timeout_s=float(spec.get("timeoutSeconds") or 1),
                   period_s=float(spec.get("periodSeconds") or 10),
                   failure_threshold=int(spec.get("failureThreshold") or 3))

    async def check(self, port: int) -> bool:
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
