"""Request bodies and query parameters, parsed strictly: bad input is a 400 Status."""

from __future__ import annotations

import json
from typing import Any

import yaml
from aiohttp import web

from localmesh.errors import BadRequest
from localmesh.yamldoc import safe_load

__all__ = ["patch_type", "query_bool", "query_int", "read_body"]

_PATCH_TYPES = {
    "application/merge-patch+json": "merge",
    "application/strategic-merge-patch+json": "strategic",
    "application/json-patch+json": "json",
}


async def read_body(request: web.Request) -> Any:
    """Decode a JSON (or YAML) body; malformed input raises BadRequest."""
    try:
        raw = await request.read()
    except web.RequestPayloadError as exc:
        raise BadRequest(f"the request body cannot be read: {exc}") from exc
    if not raw.strip():
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequest(f"the request body is not UTF-8: {exc}") from exc
    if "yaml" in request.content_type:
        try:
            return safe_load(text)
        except yaml.YAMLError as exc:
            raise BadRequest(f"the request body is not valid YAML: {exc}") from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise BadRequest(f"the request body is not valid JSON: {exc}") from exc


def patch_type(content_type: str) -> str | None:
    """Map a patch Content-Type to the store's patch type (None: unsupported)."""
    return _PATCH_TYPES.get(content_type)


def query_int(request: web.Request, name: str) -> int | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return None
    try:
        return int(raw)
    except ValueError:
        raise BadRequest(f"invalid value for query parameter {name}: '{raw}' "
                         "is not an integer") from None


def query_bool(request: web.Request, name: str) -> bool:
    raw = request.query.get(name, "").lower()
    if raw in ("", "false", "0"):
        return False
    if raw in ("true", "1"):
        return True
    raise BadRequest(f"invalid value for query parameter {name}: '{raw}' is not a boolean")
