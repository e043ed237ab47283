"""The Jaeger-style query API over the trace store (what probes read traces through).

Routes and shapes follow Jaeger's HTTP JSON API (``/api/services``,
``/api/services/{service}/operations``, ``/api/operations``, ``/api/traces/{id}``,
``/api/traces?service=…``), as docs/architecture.md lists them. OTLP fields map as
Jaeger's own OTLP translator maps them: the span kind becomes the tag
``span.kind``, the status ``otel.status_code``/``otel.status_description`` (and
``error=true``), events become logs with an ``event`` field, the parent becomes a
``CHILD_OF`` reference and links ``FOLLOWS_FROM`` references.

Probes poll traces until they settle, so reads by trace id are made cheap: a trace is
rendered once per version (``TraceStore.versioned``) and kept as JSON bytes, and those
answers carry an ``ETag``: a poll with ``If-None-Match`` of an unchanged trace (or set of
traces) gets ``304 Not Modified`` without a body (RFC 9110 §13.1.2). Jaeger itself sends
no ETag; clients that do not ask are answered as before.
"""

from __future__ import annotations

import gc
import hashlib
import json
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

from aiohttp import web

from localmesh.errors import QueryError
from localmesh.tracestore.model import Span, TraceQuery, TraceStore
from localmesh.validation import parse_go_duration

__all__ = ["RenderedTraces", "create_query_app", "etag", "render_trace", "span_tags",
           "tag_value"]

Doc = dict[str, Any]
_STORE: web.AppKey[TraceStore] = web.AppKey("trace_store", TraceStore)
_DEFAULT_LIMIT = 100
# Rendered traces kept, by size: ~1,000 traces of the chain (a probe polls a few hundred).
_CACHE_BYTES = 32 * 1024 * 1024


# -- rendering ------------------------------------------------------------------------

_TAG_TYPES = {bool: "bool", int: "int64", float: "float64", str: "string"}


def _tag(key: str, value: Any) -> Doc:
    # Exact types first (one dict lookup per tag: this runs for every tag of every span).
    kind = _TAG_TYPES.get(type(value))
    if kind is not None:
        return {"key": key, "type": kind, "value": value}
    if isinstance(value, bool):
        return {"key": key, "type": "bool", "value": value}
    if isinstance(value, int):
        return {"key": key, "type": "int64", "value": value}
    if isinstance(value, float):
        return {"key": key, "type": "float64", "value": value}
    if isinstance(value, str):
        return {"key": key, "type": "string", "value": value}
    return {"key": key, "type": "string", "value": json.dumps(value)}


def span_tags(span: Span) -> list[Doc]:
    """The Jaeger tags of a span: its attributes plus kind and status."""
    tags = [_tag(k, v) for k, v in span.attributes.items()]
    if span.kind:
        tags.append(_tag("span.kind", span.kind))
    if span.status_code != "UNSET":
        tags.append(_tag("otel.status_code", span.status_code))
        if span.status_message:
            tags.append(_tag("otel.status_description", span.status_message))
    if span.status_code == "ERROR":
        tags.append(_tag("error", True))
    return tags


def _tag_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return value if isinstance(value, str) else json.dumps(value)


def tag_value(span: Span, key: str) -> str | None:
    """One tag of a span as text, for ``tags=`` matching, or None when absent.

    As in Jaeger, span tags, process (resource) tags and log fields all count.
    """
    if key in span.attributes:
        return _tag_text(span.attributes[key])
    synthesized = _synthesized_tag(span, key)
    if synthesized is not None:
        return synthesized
    if key in span.resource:
        return _tag_text(span.resource[key])
    for event in span.events:
        if key in event.attributes:
            return _tag_text(event.attributes[key])
        if key == "event":
            return event.name
    return None


def _synthesized_tag(span: Span, key: str) -> str | None:
    if key == "span.kind":
        return span.kind or None
    if key == "otel.status_code":
        return None if span.status_code == "UNSET" else span.status_code
    if key == "otel.status_description":
        return span.status_message or None
    if key == "error":
        return "true" if span.status_code == "ERROR" else None
    return None


def _references(span: Span) -> list[Doc]:
    refs = []
    if span.parent_span_id:
        refs.append({"refType": "CHILD_OF", "traceID": span.trace_id,
                     "spanID": span.parent_span_id})
    refs += [{"refType": "FOLLOWS_FROM", "traceID": t, "spanID": s} for t, s in span.links]
    return refs


def _span_doc(span: Span, process_id: str) -> Doc:
    return {
        "traceID": span.trace_id, "spanID": span.span_id, "operationName": span.name,
        "references": _references(span), "startTime": span.start_ns // 1000,
        "duration": span.duration_ns // 1000, "tags": span_tags(span),
        "logs": [{"timestamp": e.time_ns // 1000,
                  "fields": [_tag("event", e.name)]
                  + [_tag(k, v) for k, v in e.attributes.items()]} for e in span.events],
        "processID": process_id, "warnings": None, "flags": 1,
    }


def render_trace(spans: list[Span]) -> Doc:
    """One trace in Jaeger's JSON shape, processes numbered p1, p2, … by first use."""
    processes: dict[tuple[str, str], str] = {}
    process_docs: dict[str, Doc] = {}
    # Spans of one export batch share their resource dict: key it once per object.
    resource_keys: dict[int, str] = {}
    span_docs = []
    for span in spans:
        resource_key = resource_keys.get(id(span.resource))
        if resource_key is None:
            resource_key = resource_keys[id(span.resource)] = json.dumps(
                dict(span.resource), sort_keys=True, default=str)
        key = (span.service, resource_key)
        pid = processes.get(key)
        if pid is None:
            pid = processes[key] = f"p{len(processes) + 1}"
            process_docs[pid] = {
                "serviceName": span.service,
                "tags": [_tag(k, v) for k, v in span.resource.items() if k != "service.name"]}
        span_docs.append(_span_doc(span, pid))
    return {"traceID": spans[0].trace_id, "spans": span_docs, "processes": process_docs,
            "warnings": None}


class RenderedTraces:
    """Rendered trace documents as JSON bytes, one per (trace id, version), LRU by size."""

    def __init__(self, max_bytes: int = _CACHE_BYTES) -> None:
        self.max_bytes = max_bytes
        self.size = 0
        self._docs: OrderedDict[str, tuple[int, bytes]] = OrderedDict()

    def document(self, trace_id: str, version: int, spans: list[Span]) -> bytes:
        hit = self._docs.get(trace_id)
        if hit is not None and hit[0] == version:
            self._docs.move_to_end(trace_id)
            return hit[1]
        # Rendering builds many small acyclic dicts: keep the cyclic collector from walking
        # the whole process (the store holds every span) on each allocation burst.
        was_enabled = gc.isenabled()
        gc.disable()
        try:
            doc = json.dumps(render_trace(spans), separators=(",", ":")).encode()
        finally:
            if was_enabled:
                gc.enable()
        if hit is not None:
            self.size -= len(hit[1])
        self._docs[trace_id] = (version, doc)
        self._docs.move_to_end(trace_id)
        self.size += len(doc)
        while self.size > self.max_bytes and len(self._docs) > 1:
            self.size -= len(self._docs.popitem(last=False)[1][1])
        return doc


_RENDERED: web.AppKey[RenderedTraces] = web.AppKey("rendered_traces", RenderedTraces)


def etag(versions: Sequence[tuple[str, int]]) -> str:
    """A strong entity tag naming exactly these trace versions (same tag = same body)."""
    text = ";".join(f"{trace_id}:{version}" for trace_id, version in versions)
    return '"' + hashlib.blake2b(text.encode(), digest_size=12).hexdigest() + '"'


def _not_modified(request: web.Request, tag: str) -> bool:
    header = request.headers.get("If-None-Match", "")
    # RFC 9110 §13.1.2: a list of (possibly weak) tags or "*", compared weakly for GET.
    return any(part.strip().removeprefix("W/") in (tag, "*") for part in header.split(",")
               if part.strip())


def _traces_answer(request: web.Request, trace_ids: Sequence[str]) -> web.Response:
    """The known traces among ``trace_ids`` (404 when asked for one unknown trace)."""
    found = request.app[_STORE].versioned(trace_ids)
    if not found and len(trace_ids) == 1 and request.match_info.get("trace_id"):
        return _answer(None, 404, "trace not found")
    tag = etag([(t, v) for t, v, _ in found])
    if _not_modified(request, tag):
        return web.Response(status=304, headers={"ETag": tag})
    rendered = request.app[_RENDERED]
    docs = b",".join(rendered.document(t, v, spans) for t, v, spans in found)
    body = (b'{"data":[' + docs + b'],"total":' + str(len(found)).encode()
            + b',"limit":0,"offset":0,"errors":null}')
    return web.Response(body=body, content_type="application/json", headers={"ETag": tag})


def _answer(data: Any, status: int = 200, error: str = "") -> web.Response:
    body: Doc = {"data": data, "total": len(data) if isinstance(data, list) else 0,
                 "limit": 0, "offset": 0,
                 "errors": [{"code": status, "msg": error}] if error else None}
    return web.json_response(body, status=status)


# -- query parameters -------------------------------------------------------------------

def _duration_ns(text: str, name: str) -> int:
    try:
        if text.endswith("d") and text[:-1].isdigit():
            return int(text[:-1]) * 86_400 * 1_000_000_000
        return parse_go_duration(text)
    except ValueError:
        raise QueryError(f"unable to parse param '{name}': '{text}' is not a duration") from None


def _int(params: Mapping[str, str], name: str) -> int | None:
    raw = params.get(name)
    if not raw:
        return None
    try:
        return int(raw)
    except ValueError:
        raise QueryError(f"unable to parse param '{name}': '{raw}' is not an integer") from None


def _tags(request: web.Request) -> dict[str, str]:
    tags: dict[str, str] = {}
    raw = request.query.get("tags")
    if raw:
        try:
            parsed = json.loads(raw)
        except json.JSONDecodeError:
            raise QueryError(f"malformed 'tags' parameter: '{raw}' is not JSON") from None
        if not isinstance(parsed, dict):
            raise QueryError(f"malformed 'tags' parameter: '{raw}' is not a JSON object")
        tags.update({str(k): _tag_text(v) for k, v in parsed.items()})
    for pair in request.query.getall("tag", []):
        key, sep, value = pair.partition(":")
        if not sep:
            raise QueryError(f"malformed 'tag' parameter: '{pair}' is not key:value")
        tags[key] = value
    return tags


def parse_query(request: web.Request) -> TraceQuery:
    """Read Jaeger's search parameters (start/end in epoch microseconds)."""
    params = request.query
    service = params.get("service", "")
    if not service:
        raise QueryError("parameter 'service' is required")
    end_us = _int(params, "end")
    start_us = _int(params, "start")
    lookback = params.get("lookback", "")
    if start_us is None and lookback and lookback != "custom":
        end_for_lookback = end_us if end_us is not None else time.time_ns() // 1000
        start_us = end_for_lookback - _duration_ns(lookback, "lookback") // 1000
    min_d, max_d = params.get("minDuration"), params.get("maxDuration")
    limit = _int(params, "limit")
    return TraceQuery(
        service=service, operation=params.get("operation", ""), tags=_tags(request),
        start_ns=start_us * 1000 if start_us is not None else None,
        end_ns=end_us * 1000 if end_us is not None else None,
        min_duration_ns=_duration_ns(min_d, "minDuration") if min_d else None,
        max_duration_ns=_duration_ns(max_d, "maxDuration") if max_d else None,
        limit=limit if limit is not None else _DEFAULT_LIMIT)


# -- handlers -----------------------------------------------------------------------------

async def _services(request: web.Request) -> web.Response:
    return _answer(request.app[_STORE].services())


async def _service_operations(request: web.Request) -> web.Response:
    service = request.match_info["service"]
    return _answer([name for name, _ in request.app[_STORE].operations(service)])


async def _operations(request: web.Request) -> web.Response:
    service = request.query.get("service", "")
    if not service:
        return _answer(None, 400, "parameter 'service' is required")
    kind = request.query.get("spanKind", "")
    ops = request.app[_STORE].operations(service)
    return _answer([{"name": n, "spanKind": k} for n, k in ops if not kind or k == kind])


async def _trace(request: web.Request) -> web.Response:
    trace_id = request.match_info["trace_id"]
    if not trace_id or len(trace_id) > 32 or any(c not in "0123456789abcdefABCDEF"
                                                 for c in trace_id):
        return _answer(None, 400, f"cannot parse traceID '{trace_id}'")
    return _traces_answer(request, [trace_id])


async def _search(request: web.Request) -> web.Response:
    store = request.app[_STORE]
    ids = request.query.getall("traceID", [])
    if ids:
        return _traces_answer(request, ids)
    try:
        query = parse_query(request)
    except QueryError as exc:
        return _answer(None, 400, str(exc))
    return _answer([render_trace(spans) for spans in store.find(query, tag_value)])


def create_query_app(store: TraceStore) -> web.Application:
    """The Jaeger-style query application over ``store``."""
    app = web.Application()
    app[_STORE] = store
    app[_RENDERED] = RenderedTraces()
    router = app.router
    router.add_get("/api/services", _services)
    router.add_get("/api/services/{service}/operations", _service_operations)
    router.add_get("/api/operations", _operations)
    router.add_get("/api/traces/{trace_id}", _trace)
    router.add_get("/api/traces", _search)
    return app
