"""Chaos Mesh HTTPChaos applied in front of this pod's app (docs/fidelity.md §5.5).

Chaos Mesh runs chaos-tproxy in the target pod's network namespace: every connection
to the rule's port goes through it, so a ``Request`` rule acts on the requests the pod
receives and a ``Response`` rule on the responses it sends back. Locally the inbound
sidecar plays that part, in front of everything else it does (the tproxy sits on the
wire before Envoy): request actions run before the sidecar sees the request, response
actions after it produced its answer. What chaos-tproxy does, and so what this does
(``chaos-tproxy-proxy/src/proxy/http/server.rs`` ``HttpService::handle``,
``handler/http/selector.rs``, ``handler/http/action.rs``):

- the rules of a target are all picked first, against the request as it arrived (for
  ``Response``: the request after the request actions, and the response), then each
  one's actions run in rule order;
- a rule matches when every field it has matches: ``port`` (the app's), ``path`` a
  wildcard on the path without the query (``*`` any run, ``?`` one character),
  ``method`` exactly, ``request_headers``/``response_headers`` each a name (any case)
  one of whose fields equals the value, ``code`` the response status;
- actions in the order abort → delay → replace → patch. ``abort`` closes the
  connection without an answer (the tproxy's service returns an error and hyper drops
  the connection), so the client reads an empty reply; a JSON ``patch.body`` on a body
  that is not JSON fails the same way;
- ``replace``: path (the query kept; ``""`` = ``/``), method, body, query keys set,
  headers set; response: code, body, headers. ``patch``: queries and headers appended,
  body merged as an RFC 7396 JSON merge patch.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode

from localmesh.documents import HttpChaosPatchDoc, HttpChaosReplaceDoc, HttpChaosRuleDoc
from localmesh.errors import MeshError, SidecarConfigError
from localmesh.http.message import Request, Response
from localmesh.http.server import ServerConnection
from localmesh.mergepatch import merge_patch

__all__ = ["HttpChaos", "HttpChaosRule", "parse_http_faults", "wildcard"]

# RFC 9110 §5.1: a field name is a token.
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
Forward = Callable[[Request], Awaitable[Response | None]]
# Holds a delay, never shorter than asked: localmesh.sidecar.faults.hold, handed in by the
# sidecar (faults imports config, which imports this module to parse the rules).
Hold = Callable[[float], Awaitable[None]]


class Dropped(MeshError):
    """An action that ends the exchange with the connection closed and nothing written."""


def wildcard(pattern: str) -> re.Pattern[str]:
    """The ``wildmatch`` crate's pattern: ``*`` any run of characters (``/`` included),
    ``?`` exactly one, everything else literal; the whole path must match."""
    parts = ("." if ch == "?" else ".*" if ch == "*" else re.escape(ch) for ch in pattern)
    return re.compile("".join(parts), re.DOTALL)


@dataclass(frozen=True)
class _Replace:
    path: str | None = None
    method: str | None = None
    code: int | None = None
    body: bytes | None = None
    queries: tuple[tuple[str, str], ...] | None = None
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class _Patch:
    body: Any = None  # the decoded merge patch; None = no body patch
    has_body: bool = False
    queries: str = ""  # already urlencoded, as chaos-tproxy keeps it
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class HttpChaosRule:
    """One rule, checked and compiled once when the configuration arrives."""

    id: str
    target: str  # Request | Response
    port: int | None = None
    path: re.Pattern[str] | None = None
    method: str | None = None
    code: int | None = None
    request_headers: tuple[tuple[str, str], ...] = ()
    response_headers: tuple[tuple[str, str], ...] = ()
    abort: bool = False
    delay_s: float = 0.0
    replace: _Replace | None = None
    patch: _Patch | None = None

    def matches_request(self, port: int, method: str, path: str,
                        fields: Callable[[str], list[str]]) -> bool:
        return ((self.port is None or self.port == port)
                and (self.path is None or self.path.fullmatch(path) is not None)
                and (self.method is None or self.method == method)
                and all(value in fields(name) for name, value in self.request_headers))

    def matches_response(self, resp: Response) -> bool:
        if self.code is not None and resp.status != self.code:
            return False
        return all(value in _response_fields(resp, name) for name, value in self.response_headers)


# -- parsing the rules of a configuration document ----------------------------------------

def _bad(where: str, value: object, expected: str) -> SidecarConfigError:
    return SidecarConfigError(f"sidecar config: {where} is {value!r}, not {expected}")


def _names(pairs: Mapping[str, str] | list[list[str]], where: str) -> tuple[tuple[str, str], ...]:
    items: list[tuple[str, str]] = []
    for i, pair in enumerate(pairs.items() if isinstance(pairs, Mapping) else pairs):
        if len(pair) != 2:
            raise _bad(f"{where}[{i}]", pair, "a [name, value] pair")
        name, value = pair
        if not _TOKEN.match(name):
            raise _bad(f"{where}[{name!r}]", name, "a header field name (RFC 9110 §5.1)")
        items.append((name.lower(), value))
    return tuple(items)


def _replace(spec: HttpChaosReplaceDoc, where: str) -> _Replace:
    body = None
    if "body_base64" in spec:
        try:
            body = base64.b64decode(spec["body_base64"], validate=True)
        except (binascii.Error, ValueError):
            raise _bad(f"{where}.body_base64", spec["body_base64"], "base64") from None
    queries = spec.get("queries")
    return _Replace(spec.get("path"), spec.get("method"), spec.get("code"), body,
                    tuple(queries.items()) if queries is not None else None,
                    _names(spec.get("headers", {}), f"{where}.headers"))


def _patch(spec: HttpChaosPatchDoc, where: str) -> _Patch:
    body, has_body = None, "body_json" in spec
    if has_body:
        try:
            body = json.loads(spec["body_json"])
        except ValueError:
            raise _bad(f"{where}.body_json", spec["body_json"], "JSON") from None
    queries = spec.get("queries", [])
    for i, pair in enumerate(queries):
        if len(pair) != 2:
            raise _bad(f"{where}.queries[{i}]", pair, "a [name, value] pair")
    # raw_config.rs try_from_vec *inserts* each pair into a HeaderMap, so of two pairs with
    # one name only the last is appended (DOC≠CODE: the CRD's example shows two Set-Cookie).
    headers = dict(_names(spec.get("headers", []), f"{where}.headers"))
    return _Patch(body, has_body, urlencode([(k, v) for k, v in queries]),
                  tuple(headers.items()))


def _rule(spec: HttpChaosRuleDoc, where: str) -> HttpChaosRule:
    sel = spec["selector"]
    path = sel.get("path")
    return HttpChaosRule(
        spec["id"], spec["target"], sel.get("port"), wildcard(path) if path is not None else None,
        sel.get("method"), sel.get("code"),
        _names(sel.get("request_headers", {}), f"{where}.selector.request_headers"),
        _names(sel.get("response_headers", {}), f"{where}.selector.response_headers"),
        spec.get("abort", False), float(spec.get("delay_ms", 0.0)) / 1000.0,
        _replace(spec["replace"], f"{where}.replace") if "replace" in spec else None,
        _patch(spec["patch"], f"{where}.patch") if "patch" in spec else None)


def parse_http_faults(specs: list[HttpChaosRuleDoc]) -> tuple[HttpChaosRule, ...]:
    """The document's ``http_faults`` (already checked against its shape) as rules."""
    return tuple(_rule(s, f"http_faults[{i}]") for i, s in enumerate(specs))


# -- the actions ------------------------------------------------------------------------------

def _response_fields(resp: Response, name: str) -> list[str]:
    values = [v for k, v in (resp.extra or ()) if k == name]
    own = resp.headers.get(name)
    return [own, *values] if own is not None else values


def _split(target: str) -> tuple[str, str | None]:
    path, sep, query = target.partition("?")
    return path, query if sep else None


def _patched_body(body: bytes, patch: Any) -> bytes:
    try:
        data = json.loads(body)
    except ValueError:
        # chaos-tproxy's read_value fails and the exchange errors out: the connection closes
        raise Dropped from None
    return json.dumps(merge_patch(data, patch), separators=(",", ":")).encode()


def _request_actions(rule: HttpChaosRule, req: Request) -> None:
    """``apply_request_action`` after its abort and delay: replace, then patch."""
    headers = req.headers
    if (rep := rule.replace) is not None:
        path, query = _split(req.target)
        if rep.path is not None:
            path = rep.path or "/"
        if rep.method is not None:
            req.method = rep.method
        if rep.body is not None:
            req.body = rep.body
        if rep.queries is not None:
            merged = dict(parse_qsl(query or "", keep_blank_values=True))
            merged.update(rep.queries)
            query = urlencode(merged) or None
        req.target = path if query is None else f"{path}?{query}"
        for name, value in rep.headers:
            headers[name] = value  # insert: every earlier field of that name goes
            if req.repeated is not None:
                req.repeated.pop(name, None)
    if (pat := rule.patch) is not None:
        if pat.queries:
            req.target += f"&{pat.queries}" if "?" in req.target else f"?{pat.queries}"
        if pat.has_body:
            req.body = _patched_body(req.body, pat.body)
        for name, value in pat.headers:
            # appended as another field; one dict entry per name, so joined as RFC 9110 §5.3
            old = headers.get(name)
            headers[name] = value if old is None else f"{old}, {value}"
            if old is not None and req.repeated is not None:
                req.repeated.setdefault(name, [old]).append(value)


def _response_actions(rule: HttpChaosRule, resp: Response) -> None:
    """``apply_response_action`` after its abort and delay: replace, then patch."""
    if (rep := rule.replace) is not None:
        if rep.code is not None:
            resp.status = rep.code
        if rep.body is not None:
            resp.body = rep.body
        for name, value in rep.headers:
            resp.headers[name] = value
            if resp.extra:
                resp.extra = [(k, v) for k, v in resp.extra if k != name]
    if (pat := rule.patch) is not None:
        if pat.has_body:
            resp.body = _patched_body(resp.body, pat.body)
        if pat.headers:
            resp.extra = [*(resp.extra or ()), *pat.headers]


@dataclass
class HttpChaos:
    """The HTTPChaos rules of one sidecar and the exchanges they touched."""

    hold: Hold
    rules: tuple[HttpChaosRule, ...] = ()
    active: bool = False  # read on every inbound request: a plain attribute
    stats: dict[str, int] = field(default_factory=lambda: {
        "http_chaos_matched": 0, "http_chaos_aborted": 0, "http_chaos_delayed": 0})

    def set_rules(self, rules: tuple[HttpChaosRule, ...]) -> None:
        self.rules = rules
        self.active = bool(rules)

    async def serve(self, req: Request, conn: ServerConnection, port: int,
                    forward: Forward) -> Response | None:
        """Run one inbound request through the rules around ``forward`` (the sidecar).

        ``None`` means the connection was closed with nothing written (abort)."""
        try:
            return await self._serve(req, conn, port, forward)
        except Dropped:
            self.stats["http_chaos_aborted"] += 1
            conn.close()
            return None

    async def _serve(self, req: Request, conn: ServerConnection, port: int,
                     forward: Forward) -> Response | None:
        path = _split(req.target)[0]
        fields = _request_fields(req)
        picked = [r for r in self.rules
                  if r.target == "Request" and r.matches_request(port, req.method, path, fields)]
        for rule in picked:
            await self._abort_and_delay(rule)
            _request_actions(rule, req)
        # What a Response rule matches on: the request as forwarded (the sidecar edits
        # its headers in place), then the answer.
        method, path, fields = req.method, _split(req.target)[0], _request_fields(req, copy=True)
        resp = await forward(req)
        if resp is None:
            return None
        for rule in [r for r in self.rules if r.target == "Response"
                     and r.matches_request(port, method, path, fields)
                     and r.matches_response(resp)]:
            await self._abort_and_delay(rule)
            _response_actions(rule, resp)
        return resp

    async def _abort_and_delay(self, rule: HttpChaosRule) -> None:
        self.stats["http_chaos_matched"] += 1
        if rule.abort:
            raise Dropped
        if rule.delay_s > 0:
            self.stats["http_chaos_delayed"] += 1
            await self.hold(rule.delay_s)


def _request_fields(req: Request, *, copy: bool = False) -> Callable[[str], list[str]]:
    """Every value of a request field by (lower-case) name, repeated fields kept apart."""
    headers = dict(req.headers) if copy else req.headers
    repeated = {k: list(v) for k, v in (req.repeated or {}).items()} if copy else req.repeated

    def values(name: str) -> list[str]:
        if repeated is not None and name in repeated:
            return repeated[name]
        value = headers.get(name)
        return [] if value is None else [value]

    return values
