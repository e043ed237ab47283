"""The sidecar's admin listener (docs/architecture.md "Sidecar").

``POST /config`` (whole document, atomic replace; 400 with the reason when bad),
``GET /config`` (secrets redacted), ``GET /ready`` (200 once a config arrived),
``GET /stats``, ``POST /quitquitquit``.

It drives the sidecar through :class:`AdminTarget`, the few members of
``localmesh.sidecar.proxy.Sidecar`` it needs, so the proxy imports this module and not
the other way round.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, Protocol

from localmesh.errors import SidecarConfigError
from localmesh.http.message import Request, Response
from localmesh.sidecar.config import SidecarConfig

__all__ = ["AdminTarget", "handle"]

_TEXT = {"content-type": "text/plain"}


class AdminTarget(Protocol):
    """The part of ``Sidecar`` the admin listener uses."""

    cfg: SidecarConfig | None
    stats: dict[str, int]

    def apply_config(self, doc: Any) -> SidecarConfig: ...

    def stats_snapshot(self) -> dict[str, Any]: ...

    def request_quit(self) -> None: ...


def handle(sidecar: AdminTarget, req: Request) -> Response:
    """Answer one admin request."""
    path = req.target.split("?", 1)[0]
    if path == "/config" and req.method == "POST":
        return _push(sidecar, req.body)
    if path == "/config" and req.method == "GET":
        if sidecar.cfg is None:
            return _json(404, {"error": "no configuration pushed yet"})
        return _json(200, _redacted(sidecar.cfg.raw))
    if path == "/ready":
        if sidecar.cfg is None:
            return Response(503, dict(_TEXT), b"NOT READY\n")
        return Response(200, dict(_TEXT), b"LIVE\n")
    if path == "/stats":
        return _json(200, sidecar.stats_snapshot())
    if path == "/quitquitquit" and req.method == "POST":
        # After this response is written: the runner then stops the listeners.
        asyncio.get_running_loop().call_soon(sidecar.request_quit)
        return Response(200, dict(_TEXT), b"OK\n")
    return _json(404, {"error": f"no admin endpoint {req.method} {path}"})


def _redacted(raw: dict[str, Any]) -> dict[str, Any]:
    """The document without its secrets, as Envoy's /config_dump shows fields marked
    sensitive (``MessageUtil::redact``): the value replaced by ``[redacted]``. The admin
    port is on loopback, open to every local user; the OTLP token must not leak there."""
    mesh = raw.get("mesh") or {}
    if not mesh.get("otlp_headers"):
        return raw
    headers = {name: "[redacted]" for name in mesh["otlp_headers"]}
    return {**raw, "mesh": {**mesh, "otlp_headers": headers}}


def _push(sidecar: AdminTarget, body: bytes) -> Response:
    try:
        doc = json.loads(body)
        cfg = sidecar.apply_config(doc)
    except SidecarConfigError as exc:
        sidecar.stats["config_rejected"] += 1
        return _json(400, {"error": str(exc)})
    except ValueError as exc:
        sidecar.stats["config_rejected"] += 1
        return _json(400, {"error": f"config body is not JSON: {exc}"})
    return _json(200, {"version": cfg.version})


def _json(status: int, body: Any) -> Response:
    return Response(status, {"content-type": "application/json"}, json.dumps(body).encode())
