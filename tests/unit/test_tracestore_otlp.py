"""Spans exported by the real OpenTelemetry SDK come back through the Jaeger-style API.

The receiver speaks OTLP/HTTP (protobuf and JSON; OTLP/JSON ids are hex) and the query
API answers in Jaeger's JSON shape (docs/architecture.md, "Trace store"): the parent
becomes a CHILD_OF reference, the kind the tag span.kind, the status otel.status_code
and error, events logs.
"""

from __future__ import annotations

import base64
import gzip
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import pytest
import requests
from google.rpc import status_pb2
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.trace.v1 import trace_pb2
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode

from localmesh.tracestore import TraceStore, create_trace_apps
from tests.apiserver_helpers import serve_app


@dataclass
class Traces:
    store: TraceStore
    otlp: str
    query: str

    def get(self, path: str, **params: Any) -> requests.Response:
        return requests.get(f"{self.query}{path}", params=params, timeout=5)


@pytest.fixture
def traces() -> Iterator[Traces]:
    store = TraceStore(max_spans=1000)
    otlp_app, query_app = create_trace_apps(store)
    with serve_app(otlp_app) as otlp_port, serve_app(query_app) as query_port:
        yield Traces(store, f"http://127.0.0.1:{otlp_port}",
                     f"http://127.0.0.1:{query_port}")


def _provider(traces: Traces, service: str, **exporter: Any) -> TracerProvider:
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(SimpleSpanProcessor(
        OTLPSpanExporter(endpoint=f"{traces.otlp}/v1/traces", timeout=5, **exporter)))
    return provider


def _emit_call(provider: TracerProvider) -> tuple[str, str, str]:
    """A SERVER span with an event and a failing CLIENT child; returns (trace, parent, child)."""
    tracer = provider.get_tracer("test")
    with tracer.start_as_current_span("GET /orders", kind=SpanKind.SERVER,
                                      attributes={"http.request.method": "GET",
                                                  "meshchaos.budget_ms": 500}) as server:
        server.add_event("work.start", {"reason": "begin"})
        with tracer.start_as_current_span("GET inventory", kind=SpanKind.CLIENT) as client_span:
            client_span.set_status(Status(StatusCode.ERROR, "cancelled: deadline"))
            client_span.set_attribute("meshchaos.attempt", 2)
    ctx, child = server.get_span_context(), client_span.get_span_context()
    provider.shutdown()
    return f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}", f"{child.span_id:016x}"


def _tags(span: dict[str, Any]) -> dict[str, Any]:
    return {t["key"]: t["value"] for t in span["tags"]}


def test_sdk_protobuf_export_is_queried_back_with_parent_references(traces: Traces) -> None:
    """OTLPSpanExporter (protobuf) → /api/traces/{id}: the child references its parent."""
    trace_id, parent_id, child_id = _emit_call(_provider(traces, "orders"))
    body = traces.get(f"/api/traces/{trace_id}").json()
    [trace] = body["data"]
    spans = {s["spanID"]: s for s in trace["spans"]}
    assert set(spans) == {parent_id, child_id}
    assert spans[child_id]["references"] == [
        {"refType": "CHILD_OF", "traceID": trace_id, "spanID": parent_id}]
    assert spans[parent_id]["references"] == []
    server, client_span = _tags(spans[parent_id]), _tags(spans[child_id])
    assert server["span.kind"] == "server" and server["meshchaos.budget_ms"] == 500
    assert client_span["span.kind"] == "client" and client_span["error"] is True
    assert client_span["otel.status_code"] == "ERROR"
    assert client_span["otel.status_description"] == "cancelled: deadline"
    log = spans[parent_id]["logs"][0]
    assert {"key": "event", "type": "string", "value": "work.start"} in log["fields"]
    assert trace["processes"][spans[parent_id]["processID"]]["serviceName"] == "orders"
    assert spans[parent_id]["startTime"] <= spans[child_id]["startTime"]
    assert spans[parent_id]["duration"] >= spans[child_id]["duration"]


def test_gzip_compressed_export_is_accepted(traces: Traces) -> None:
    """The exporter's gzip compression (Content-Encoding: gzip) is decoded."""
    trace_id, _, _ = _emit_call(_provider(traces, "orders", compression=Compression.Gzip))
    assert len(traces.get(f"/api/traces/{trace_id}").json()["data"][0]["spans"]) == 2


def test_services_operations_and_search(traces: Traces) -> None:
    """/api/services, /api/services/{s}/operations and search by service, operation, tags."""
    trace_id, _, _ = _emit_call(_provider(traces, "orders"))
    _emit_call(_provider(traces, "leaf"))
    assert traces.get("/api/services").json()["data"] == ["leaf", "orders"]
    assert traces.get("/api/services/orders/operations").json()["data"] == [
        "GET /orders", "GET inventory"]
    kinds = traces.get("/api/operations", service="orders").json()["data"]
    assert {"name": "GET /orders", "spanKind": "server"} in kinds

    found = traces.get("/api/traces", service="orders", operation="GET inventory",
                       tags=json.dumps({"error": "true"}), lookback="1h").json()["data"]
    assert [t["traceID"] for t in found] == [trace_id]
    none = traces.get("/api/traces", service="orders",
                      tags=json.dumps({"meshchaos.attempt": "9"})).json()["data"]
    assert none == []


def test_search_honours_time_window_and_limit(traces: Traces) -> None:
    """start/end are epoch microseconds; limit caps the traces, most recent first."""
    first, _, _ = _emit_call(_provider(traces, "orders"))
    time.sleep(0.05)
    middle = time.time_ns() // 1000
    second, _, _ = _emit_call(_provider(traces, "orders"))
    newest = traces.get("/api/traces", service="orders", limit=1).json()["data"]
    assert [t["traceID"] for t in newest] == [second]
    early = traces.get("/api/traces", service="orders", end=middle).json()["data"]
    assert [t["traceID"] for t in early] == [first]
    late = traces.get("/api/traces", service="orders", start=middle).json()["data"]
    assert [t["traceID"] for t in late] == [second]


def test_unknown_trace_is_404_in_jaegers_error_shape(traces: Traces) -> None:
    """Jaeger answers {"data": null, "errors": [{"code": 404, "msg": "trace not found"}]}."""
    response = traces.get("/api/traces/" + "ab" * 16)
    assert response.status_code == 404
    body = response.json()
    assert body["data"] is None
    assert body["errors"] == [{"code": 404, "msg": "trace not found"}]
    assert traces.get("/api/traces/not-hex").status_code == 400
    assert traces.get("/api/traces").status_code == 400  # service is required


def _json_export(trace_id: str, span_id: str, parent: str = "") -> dict[str, Any]:
    return {"resourceSpans": [{
        "resource": {"attributes": [{"key": "service.name",
                                     "value": {"stringValue": "orders.shop"}}]},
        "scopeSpans": [{"spans": [{
            "traceId": trace_id, "spanId": span_id, "parentSpanId": parent,
            "name": "orders.shop.svc.cluster.local:8080/*", "kind": 3,
            "startTimeUnixNano": "1795000000000000000", "endTimeUnixNano": "1795000000250000000",
            "attributes": [{"key": "http.status_code", "value": {"intValue": "504"}},
                           {"key": "response_flags", "value": {"stringValue": "UT"}}],
            "status": {"code": 2}}]}]}]}


def test_otlp_json_with_hex_ids_is_accepted(traces: Traces) -> None:
    """OTLP/JSON: traceId/spanId are hex strings (not base64) and int64 values strings."""
    trace_id, span_id, parent = "5b8efff798038103d269b633813fc60c", "eee19b7ec3c1b174", \
        "eee19b7ec3c1b173"
    response = requests.post(f"{traces.otlp}/v1/traces", json=_json_export(
        trace_id, span_id, parent), timeout=5)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("application/json")
    assert response.json() == {}
    [span] = traces.get(f"/api/traces/{trace_id}").json()["data"][0]["spans"]
    assert span["references"][0]["spanID"] == parent
    assert _tags(span)["http.status_code"] == 504
    assert span["startTime"] == 1_795_000_000_000_000 and span["duration"] == 250_000


def test_otlp_json_with_base64_ids_is_accepted(traces: Traces) -> None:
    """The protobuf JSON mapping's base64 bytes are understood too."""
    trace_id, span_id = "5b8efff798038103d269b633813fc60d", "eee19b7ec3c1b175"
    b64 = lambda h: base64.b64encode(bytes.fromhex(h)).decode()  # noqa: E731
    response = requests.post(f"{traces.otlp}/v1/traces",
                             json=_json_export(b64(trace_id), b64(span_id)), timeout=5)
    assert response.status_code == 200
    assert traces.get(f"/api/traces/{trace_id}").status_code == 200


def test_garbage_bodies_are_400_with_a_status_message(traces: Traces) -> None:
    """OTLP/HTTP: a body that cannot be decoded is 400 with a google.rpc.Status."""
    bad_pb = requests.post(f"{traces.otlp}/v1/traces", data=b"\xff\xff\xff\xff", timeout=5,
                           headers={"Content-Type": "application/x-protobuf"})
    assert bad_pb.status_code == 400
    status = status_pb2.Status.FromString(bad_pb.content)
    assert status.code == 3 and "ExportTraceServiceRequest" in status.message
    bad_json = requests.post(f"{traces.otlp}/v1/traces", data="{nope", timeout=5,
                             headers={"Content-Type": "application/json"})
    assert bad_json.status_code == 400 and bad_json.json()["code"] == 3
    bad_gzip = requests.post(f"{traces.otlp}/v1/traces", data=b"not gzip", timeout=5,
                             headers={"Content-Type": "application/x-protobuf",
                                      "Content-Encoding": "gzip"})
    assert bad_gzip.status_code == 400
    wrong_type = requests.post(f"{traces.otlp}/v1/traces", data="x", timeout=5,
                               headers={"Content-Type": "text/plain"})
    assert wrong_type.status_code == 415
    assert len(traces.store) == 0


def test_spans_with_invalid_ids_are_reported_as_partial_success(traces: Traces) -> None:
    """OTLP partial success: rejected_spans counts spans whose ids are not 16/8 bytes."""
    good = trace_pb2.Span(trace_id=bytes.fromhex("5b8efff798038103d269b633813fc60e"),
                          span_id=bytes.fromhex("eee19b7ec3c1b176"), name="ok")
    short_id = trace_pb2.Span(trace_id=good.trace_id, span_id=b"\x01\x02", name="bad")
    request = trace_service_pb2.ExportTraceServiceRequest(resource_spans=[
        trace_pb2.ResourceSpans(scope_spans=[trace_pb2.ScopeSpans(spans=[good, short_id])])])
    response = requests.post(f"{traces.otlp}/v1/traces", timeout=5,
                             data=gzip.compress(request.SerializeToString()),
                             headers={"Content-Type": "application/x-protobuf",
                                      "Content-Encoding": "gzip"})
    assert response.status_code == 200
    reply = trace_service_pb2.ExportTraceServiceResponse.FromString(response.content)
    assert reply.partial_success.rejected_spans == 1
    assert len(traces.store) == 1
    [trace] = traces.get("/api/traces/5b8efff798038103d269b633813fc60e").json()["data"]
    assert trace["processes"]["p1"]["serviceName"] == "unknown_service"


def test_otlp_json_enum_names_and_snake_case_fields_are_accepted(traces: Traces) -> None:
    """The protobuf JSON mapping allows enum names and original field names."""
    body = _json_export("5b8efff798038103d269b633813fc610", "eee19b7ec3c1b180")
    span = body["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    span["kind"] = "SPAN_KIND_CLIENT"
    span["status"] = {"code": "STATUS_CODE_OK"}
    span["events"] = [{"time_unix_nano": "1795000000100000000", "name": "call.cancelled"}]
    assert requests.post(f"{traces.otlp}/v1/traces", json=body, timeout=5).status_code == 200
    [got] = traces.get("/api/traces/5b8efff798038103d269b633813fc610").json()["data"][0]["spans"]
    assert _tags(got)["span.kind"] == "client" and _tags(got)["otel.status_code"] == "OK"
    assert "error" not in _tags(got)
    assert got["logs"] == [{"timestamp": 1_795_000_000_100_000,
                            "fields": [{"key": "event", "type": "string",
                                        "value": "call.cancelled"}]}]


def test_several_trace_ids_are_fetched_at_once_and_bad_params_are_400(traces: Traces) -> None:
    """/api/traces?traceID=a&traceID=b returns the known ones; a bad lookback is a 400."""
    first, _, _ = _emit_call(_provider(traces, "orders"))
    second, _, _ = _emit_call(_provider(traces, "orders"))
    found = traces.get("/api/traces", traceID=[first, second, "f" * 32]).json()["data"]
    assert {t["traceID"] for t in found} == {first, second}
    bad = traces.get("/api/traces", service="orders", lookback="a while")
    assert bad.status_code == 400 and "lookback" in bad.json()["errors"][0]["msg"]
    bad_limit = traces.get("/api/traces", service="orders", limit="many")
    assert bad_limit.status_code == 400


def test_a_poll_of_an_unchanged_trace_is_answered_304_with_its_etag(traces: Traces) -> None:
    """RFC 9110 §13.1.2 If-None-Match: probes poll traces until they settle, and a trace that
    did not change costs neither a render nor a body; a new span changes the tag."""
    trace_id, _, _ = _emit_call(_provider(traces, "orders"))
    first = traces.get(f"/api/traces/{trace_id}")
    tag = first.headers["ETag"]
    again = requests.get(f"{traces.query}/api/traces/{trace_id}",
                         headers={"If-None-Match": tag}, timeout=5)
    assert again.status_code == 304 and again.content == b""
    assert again.headers["ETag"] == tag

    stored = traces.store.trace(trace_id) or []
    traces.store.add([replace(stored[0], span_id="f" * 16)])  # one more span in the trace
    changed = requests.get(f"{traces.query}/api/traces/{trace_id}",
                           headers={"If-None-Match": tag}, timeout=5)
    assert changed.status_code == 200 and changed.headers["ETag"] != tag
    assert len(changed.json()["data"][0]["spans"]) == 3


def test_the_search_by_ids_answers_the_same_documents_and_304_for_the_same_set(
        traces: Traces) -> None:
    """Jaeger's GET /api/traces?traceID=a&traceID=b, unknown ids left out; the tag covers the
    whole set, so it stays 304 only while none of the traces changed."""
    first, _, _ = _emit_call(_provider(traces, "orders"))
    second, _, _ = _emit_call(_provider(traces, "leaf"))
    ids = [first, second, "ab" * 16]
    found = traces.get("/api/traces", traceID=ids)
    assert [t["traceID"] for t in found.json()["data"]] == [first, second]
    assert found.json()["data"][0] == traces.get(f"/api/traces/{first}").json()["data"][0]
    again = requests.get(f"{traces.query}/api/traces", params={"traceID": ids},
                         headers={"If-None-Match": found.headers["ETag"]}, timeout=5)
    assert again.status_code == 304
    other = requests.get(f"{traces.query}/api/traces", params={"traceID": [first]},
                         headers={"If-None-Match": found.headers["ETag"]}, timeout=5)
    assert other.status_code == 200 and len(other.json()["data"]) == 1
