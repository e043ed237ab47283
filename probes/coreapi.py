"""Core/v1 reads (pods, pod logs, ConfigMaps, events) without importing ``CoreV1Api``.

The official client's ``CoreV1Api`` costs about 1 s of CPU to import (kubernetes >= 30
wraps each of its several hundred methods in pydantic's ``validate_call``), more than every
read the probes make in a run. The probes need four GETs of it, so they build them with
the same client's ``ApiClient`` (``param_serialize`` + ``call_api``: kubeconfig, token,
TLS and timeouts as ``CoreV1Api`` would use them) and decode the JSON themselves. Errors
are the client's own ``ApiException`` with the status, as ``CoreV1Api`` raises them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

__all__ = ["core_get", "core_get_json"]

_AUTH = ["BearerToken"]


def core_get(api_client: Any, path: str, *, query: Mapping[str, Any] | None = None,
             timeout_s: float, accept: str = "application/json") -> bytes:
    """GET ``path`` (``/api/v1/...``) and return the body; non-2xx raises ApiException."""
    from kubernetes.client.exceptions import ApiException

    request = api_client.param_serialize(
        "GET", path, query_params=[(k, v) for k, v in (query or {}).items() if v is not None],
        header_params={"Accept": accept}, auth_settings=_AUTH)
    response = api_client.call_api(*request, _request_timeout=timeout_s)
    body = response.read()
    if not 200 <= response.status <= 299:
        raise ApiException.from_response(http_resp=response, body=body.decode(errors="replace"),
                                         data=None)
    return bytes(body)


def core_get_json(api_client: Any, path: str, *, query: Mapping[str, Any] | None = None,
                  timeout_s: float) -> Any:
    """:func:`core_get` decoded as JSON (ValueError when the body is not JSON)."""
    return json.loads(core_get(api_client, path, query=query, timeout_s=timeout_s))
