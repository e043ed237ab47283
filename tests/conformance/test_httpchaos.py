"""HTTPChaos applied by the target pod's inbound sidecar, in front of a real app on loopback
(docs/fidelity.md §5.5).

Each test pushes ``http_faults`` rules, as the chaos controller builds them from an
HTTPChaos spec (localmesh/chaos/httprules.py), to a real sidecar process whose inbound
forwards to a real aiohttp app, and calls the inbound listener as a caller's sidecar
would. The rules quoted are chaos-tproxy's (``chaos-tproxy-proxy/src/handler/http/``,
``proxy/http/server.rs``) and Chaos Mesh's "Simulate HTTP Faults" page (CMW).
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

from localmesh.http import ConnectionPool, Response
from tests.conformance.conftest import (
    LEAF,
    NS,
    SidecarProc,
    Sidecars,
    config,
    endpoint,
    serve_on_loopback,
)


@dataclass
class Hit:
    method: str
    path_qs: str
    headers: dict[str, list[str]]
    body: bytes
    at: float = field(default_factory=time.monotonic)


class EchoApp:
    """Answers every request with what it received; query ``status`` sets the code and
    ``type`` the content type (``text`` = a body that is not JSON)."""

    def __init__(self) -> None:
        self.hits: list[Hit] = []
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.Response:
        headers: dict[str, list[str]] = {}
        for name, value in request.headers.items():
            headers.setdefault(name.lower(), []).append(value)
        body = await request.read()
        self.hits.append(Hit(request.method, request.path_qs, headers, body))
        status = int(request.query.get("status", "200"))
        if request.query.get("type") == "text":
            return web.Response(status=status, text="plain words",
                                headers={"x-app": "echo"})
        return web.json_response({"method": request.method, "path": request.path_qs,
                                  "kept": "yes", "drop": "me"},
                                 status=status, headers={"x-app": "echo"})

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner, self.port = await serve_on_loopback(app)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@dataclass
class Target:
    """The target pod: its sidecar in front of the echo app."""

    sidecar: SidecarProc
    app: EchoApp
    pool: ConnectionPool
    version: int = 0

    async def rules(self, *rules: dict[str, Any]) -> Response:
        self.version += 1
        services = {LEAF: {"name": "leaf", "namespace": NS, "ports": [8080],
                           "endpoints": [endpoint("leaf-1", self.sidecar.ports["inbound"])]}}
        doc = config("leaf-1", "leaf", services=services, app_port=self.app.port,
                     version=self.version)
        doc["http_faults"] = list(rules)
        return await self.sidecar.push(doc)

    async def call(self, path: str = "/api/items", method: str = "GET",
                   headers: dict[str, str] | None = None, body: bytes = b"") -> Response:
        url = f"http://127.0.0.1:{self.sidecar.ports['inbound']}{path}"
        return await self.pool.request(method, url, {"host": "leaf:8080", **(headers or {})},
                                       body, timeout=10)

    async def raw(self, head: str, body: bytes = b"") -> bytes:
        """Send one request on a fresh connection and read until the server closes it."""
        reader, writer = await asyncio.open_connection("127.0.0.1",
                                                       self.sidecar.ports["inbound"])
        try:
            writer.write(head.replace("\n", "\r\n").encode() + body)
            await writer.drain()
            async with asyncio.timeout(10):
                return await reader.read()
        finally:
            writer.close()


@pytest.fixture
async def target(sidecars: Sidecars) -> AsyncIterator[Target]:
    app = EchoApp()
    await app.start()
    sidecar = await sidecars.start("leaf-1", "leaf", app_port=app.port)
    t = Target(sidecar, app, ConnectionPool())
    try:
        yield t
    finally:
        await t.pool.close()
        await app.stop()


def rule(target: str = "Request", *, port: int | None = None, **fields: Any) -> dict[str, Any]:
    """A rule as the controller writes it; selector fields and actions by keyword."""
    selector_keys = ("path", "method", "code", "request_headers", "response_headers")
    selector = {k: fields.pop(k) for k in selector_keys if k in fields}
    if port is not None:
        selector["port"] = port
    return {"id": "shop/http", "target": target, "selector": selector, **fields}


GET = "GET /api/items HTTP/1.1\nhost: leaf:8080\nconnection: close\n\n"


def json_body(resp: Response) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(resp.body)
    return data


# -- abort -------------------------------------------------------------------------------------


async def test_request_abort_closes_the_connection_before_the_app_sees_it(
        target: Target) -> None:
    """chaos-tproxy apply_request_action: "abort the request" returns Err("Abort applied"),
    and hyper drops the connection with nothing written; CMW: "When the abort fault cause
    short circuits, the connection will be directly interrupted"."""
    assert (await target.rules(rule(port=target.app.port, path="/api/*", abort=True))).status \
        == 200
    assert await target.raw(GET) == b""  # the client reads an empty reply
    assert target.app.hits == []
    other = await target.call("/health")
    assert other.status == 200 and [h.path_qs for h in target.app.hits] == ["/health"]
    stats = json.loads((await target.sidecar.admin_get("/stats")).body)
    assert stats["http_chaos_aborted"] == 1


async def test_response_abort_lets_the_app_work_and_drops_its_answer(target: Target) -> None:
    """apply_response_action aborts after the app answered: the request reached the app
    (its work is done) and the client still reads nothing."""
    await target.rules(rule("Response", port=target.app.port, abort=True))
    assert await target.raw(GET) == b""
    assert [h.path_qs for h in target.app.hits] == ["/api/items"]


# -- delay -------------------------------------------------------------------------------------


async def test_request_delay_holds_the_request_at_least_as_asked_before_the_app(
        target: Target) -> None:
    """apply_request_action: `sleep(delay)` before the request goes on; docs/fidelity.md §5.2's
    hold rule: never shorter than asked."""
    await target.rules(rule(port=target.app.port, delay_ms=300.0))
    for _ in range(3):
        start = time.monotonic()
        resp = await target.call()
        elapsed = time.monotonic() - start
        assert resp.status == 200
        assert 0.3 <= elapsed < 0.3 + 0.3
        assert target.app.hits[-1].at - start >= 0.3  # held before the app saw it


async def test_response_delay_holds_the_answer_after_the_app_answered(target: Target) -> None:
    """apply_response_action: the delay comes after the response exists: the app is reached at
    once and the caller waits at least the delay."""
    await target.rules(rule("Response", port=target.app.port, delay_ms=250.0))
    start = time.monotonic()
    resp = await target.call()
    elapsed = time.monotonic() - start
    assert resp.status == 200 and elapsed >= 0.25
    assert target.app.hits[-1].at - start < 0.2


# -- replace -----------------------------------------------------------------------------------


async def test_request_replace_sets_path_method_queries_headers_and_body(
        target: Target) -> None:
    """replace: `replace_path` keeps the query, the method is set, the body replaced (base64 in
    the CRD), `replace_queries` sets keys over the old ones, headers are inserted (every
    earlier field of the name goes)."""
    new_body = base64.b64encode(b'{"new": true}').decode()
    await target.rules(rule(port=target.app.port, replace={
        "path": "/api/v2", "method": "DELETE", "body_base64": new_body,
        "queries": {"foo": "unknown"}, "headers": {"X-Token": "replaced"}}))
    resp = await target.call("/api/items?foo=bar&keep=1", method="POST",
                             headers={"x-token": "original"}, body=b"old")
    assert resp.status == 200
    hit = target.app.hits[-1]
    assert hit.method == "DELETE"
    path, _, query = hit.path_qs.partition("?")
    assert path == "/api/v2"
    assert sorted(query.split("&")) == ["foo=unknown", "keep=1"]
    assert hit.headers["x-token"] == ["replaced"]
    assert hit.body == b'{"new": true}'


async def test_replace_with_an_empty_path_sends_slash(target: Target) -> None:
    """replace_path: `"" => "/"`."""
    await target.rules(rule(port=target.app.port, replace={"path": ""}))
    await target.call("/api/items?x=1")
    assert target.app.hits[-1].path_qs == "/?x=1"


async def test_response_replace_sets_code_body_and_headers(target: Target) -> None:
    """apply_response_action replace: status code, body and headers of the app's answer."""
    await target.rules(rule("Response", port=target.app.port, replace={
        "code": 503, "body_base64": base64.b64encode(b"replaced").decode(),
        "headers": {"x-app": "chaos", "content-type": "text/plain"}}))
    resp = await target.call()
    assert (resp.status, resp.body) == (503, b"replaced")
    assert resp.headers["x-app"] == "chaos"
    assert resp.headers["content-type"] == "text/plain"
    assert resp.headers["content-length"] == str(len(b"replaced"))


# -- patch -------------------------------------------------------------------------------------


async def test_request_patch_appends_queries_and_headers_and_merges_the_json_body(
        target: Target) -> None:
    """patch: `append_queries` adds `&k=v` (or `?k=v`), headers are appended as more fields,
    the body is merged as an RFC 7396 JSON merge patch (null removes a key)."""
    await target.rules(rule(port=target.app.port, patch={
        "queries": [["foo", "bar"], ["foo", "unknown"]],
        "headers": [["x-token", "added"]],
        "body_json": '{"b": {"c": 2}, "drop": null}'}))
    resp = await target.call("/api/items?q=1", method="POST", headers={"x-token": "mine"},
                             body=b'{"a": 1, "b": {"d": 4}, "drop": "x"}')
    assert resp.status == 200
    hit = target.app.hits[-1]
    assert hit.path_qs == "/api/items?q=1&foo=bar&foo=unknown"
    assert ", ".join(hit.headers["x-token"]) == "mine, added"
    assert json.loads(hit.body) == {"a": 1, "b": {"d": 4, "c": 2}}


async def test_request_patch_without_a_query_starts_one(target: Target) -> None:
    """append_queries: no query yet → `?` then the pairs."""
    await target.rules(rule(port=target.app.port, patch={"queries": [["foo", "bar"]]}))
    await target.call("/api/items")
    assert target.app.hits[-1].path_qs == "/api/items?foo=bar"


async def test_response_patch_appends_header_fields_and_merges_the_json_body(
        target: Target) -> None:
    """Response patch: headers appended (a second field, never a replacement), JSON body
    merged with the app's."""
    await target.rules(rule("Response", port=target.app.port, patch={
        "headers": [["x-app", "patched"]], "body_json": '{"drop": null, "added": [1]}'}))
    resp = await target.call()
    assert resp.status == 200
    assert json.loads(resp.body) == {"method": "GET", "path": "/api/items", "kept": "yes",
                                     "added": [1]}
    raw = await target.raw(GET)
    assert b"x-app: echo\r\n" in raw and b"x-app: patched\r\n" in raw


async def test_a_json_patch_on_a_body_that_is_not_json_drops_the_connection(
        target: Target) -> None:
    """action.rs read_value: `serde_json::from_slice(&data)?` fails on a body that is not JSON
    and the error ends the exchange the way an abort does."""
    await target.rules(rule("Response", port=target.app.port, patch={"body_json": '{"a": 1}'}))
    text = "GET /api/items?type=text HTTP/1.1\nhost: leaf:8080\nconnection: close\n\n"
    assert await target.raw(text) == b""
    assert len(target.app.hits) == 1


# -- matching ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("pattern", "path", "hit"), [
    ("/api/*", "/api/items", True), ("/api/*", "/api/v1/deep/x", True),
    ("/api/*", "/apix", False), ("/api/?", "/api/a", True), ("/api/?", "/api/ab", False),
    ("/api/items", "/api/items?x=1", True), ("/api/items", "/api/items/", False),
    ("*", "/", True)])
async def test_path_is_a_wildcard_on_the_path_without_its_query(
        target: Target, pattern: str, path: str, hit: bool) -> None:
    """selector.rs select_request: `WildMatch::matches(request.uri().path())` (CMW: "Supports
    Matching wildcards"): `*` any run, `?` one character, the whole path, query left out."""
    await target.rules(rule(port=target.app.port, path=pattern,
                            replace={"headers": {"x-hit": "1"}}))
    await target.call(path)
    assert ("x-hit" in target.app.hits[-1].headers) is hit


async def test_method_matches_exactly(target: Target) -> None:
    """select_request: `request.method() == m`."""
    await target.rules(rule(port=target.app.port, method="POST", abort=True))
    assert (await target.call(method="GET")).status == 200
    assert await target.raw("POST /api/items HTTP/1.1\nhost: leaf:8080\ncontent-length: 0\n"
                            "connection: close\n\n") == b""


async def test_request_headers_match_one_field_of_the_name_in_any_case(target: Target) -> None:
    """select_request: every configured header must have a field whose value equals it
    (`get_all(header).iter().any(|f| f == value)`; header names are case-insensitive)."""
    await target.rules(rule(port=target.app.port, request_headers={"X-User": "jason"},
                            replace={"headers": {"x-hit": "1"}}))
    await target.call(headers={"x-user": "jason"})
    assert "x-hit" in target.app.hits[-1].headers
    await target.call(headers={"x-user": "Jason"})
    assert "x-hit" not in target.app.hits[-1].headers
    await target.raw("GET /api/items HTTP/1.1\nhost: leaf:8080\nx-user: alice\nx-user: jason\n"
                     "connection: close\n\n")
    assert "x-hit" in target.app.hits[-1].headers


async def test_port_selects_only_the_apps_port(target: Target) -> None:
    """select_request: `selector.port.iter().all(|p| port == *p)`: a rule for another port
    leaves this app's traffic alone."""
    await target.rules(rule(port=target.app.port + 1, abort=True))
    assert (await target.call()).status == 200


async def test_response_code_selects_which_answers_are_changed(target: Target) -> None:
    """select_response: `response.status() == code` (CMW `code`: "Specifies the status code
    responded by target"); response_headers match the answer's fields."""
    await target.rules(rule("Response", port=target.app.port, code=500,
                            response_headers={"x-app": "echo"}, replace={"code": 200}))
    assert (await target.call("/api/items?status=500")).status == 200
    assert (await target.call("/api/items?status=404")).status == 404
    await target.rules(rule("Response", port=target.app.port, code=500,
                            response_headers={"x-app": "other"}, replace={"code": 200}))
    assert (await target.call("/api/items?status=500")).status == 500


async def test_rules_are_chosen_on_the_request_as_it_arrived_then_run_in_order(
        target: Target) -> None:
    """HttpService::handle collects the matching request rules first, then applies each: a
    path replaced by the first still matches the second's pattern for the original path."""
    await target.rules(
        rule(port=target.app.port, path="/api/*", replace={"path": "/moved"}),
        rule(port=target.app.port, path="/api/*", patch={"headers": [["x-second", "1"]]}))
    await target.call("/api/items")
    hit = target.app.hits[-1]
    assert hit.path_qs == "/moved" and hit.headers["x-second"] == ["1"]


async def test_a_response_rule_matches_the_request_after_the_request_actions(
        target: Target) -> None:
    """select_response is given the request's uri, method and headers after the request
    actions ran (they are read from the forwarded request)."""
    await target.rules(
        rule(port=target.app.port, replace={"path": "/moved"}),
        rule("Response", port=target.app.port, path="/moved", replace={"code": 418}))
    assert (await target.call("/api/items")).status == 418


async def test_a_rule_the_sidecar_cannot_read_is_refused_naming_the_field(
        target: Target) -> None:
    """The admin endpoint answers 400 and keeps the previous configuration (docs/architecture.md
    "Sidecar"); a replace body must be base64, as the CRD's `format: byte`."""
    resp = await target.rules(rule(port=target.app.port, replace={"body_base64": "%%%"}))
    assert resp.status == 400
    assert b"http_faults[0].replace.body_base64" in resp.body


async def test_patch_headers_keep_the_last_value_of_a_repeated_name(target: Target) -> None:
    """raw_config.rs try_from_vec: `map.insert(key, value)` for each [name, value] pair, so
    `[["x-token", "one"], ["x-token", "two"]]` appends only "two" (DOC≠CODE with the CRD's
    two-Set-Cookie example; docs/fidelity.md §5.5 follows the code)."""
    await target.rules(rule(port=target.app.port,
                            patch={"headers": [["x-token", "one"], ["x-token", "two"]]}))
    await target.call()
    assert target.app.hits[-1].headers["x-token"] == ["two"]
