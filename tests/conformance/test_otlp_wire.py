"""The hand-written OTLP encoding decodes with the official opentelemetry-proto classes
(opentelemetry-proto trace/v1/trace.proto, collector/trace/v1/trace_service.proto)."""

from __future__ import annotations

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from localmesh.sidecar.otlp_wire import SpanEncoder


def test_encoded_request_decodes_with_opentelemetry_proto() -> None:
    """Every field the sidecar writes survives a decode by the reference message classes."""
    enc = SpanEncoder({"service.name": "front.shop", "k8s.pod.name": "front-1"})
    attrs: dict[str, str | int | float | bool] = {
        "http.method": "GET", "http.status_code": 504, "neg": -7, "ratio": 0.25, "flag": True,
        "long": "x" * 300}
    spans = [enc.span("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331",
                      "00f067aa0ba902b7", "leaf.shop.svc.cluster.local:8080/*", 3,
                      1_700_000_000_000_000_000, 1_700_000_000_250_000_000, attrs, True),
             enc.span("0af7651916cd43dd8448eb211c80319c", "c7ad6b7169203332", "", "root", 2,
                      1, 2, {"http.method": "GET"}, False)]
    req = ExportTraceServiceRequest()
    req.ParseFromString(enc.request(spans))
    rs = req.resource_spans[0]
    assert {a.key: a.value.string_value for a in rs.resource.attributes} == {
        "service.name": "front.shop", "k8s.pod.name": "front-1"}
    ss = rs.scope_spans[0]
    assert ss.scope.name == "envoy"
    first, second = ss.spans
    assert first.trace_id.hex() == "0af7651916cd43dd8448eb211c80319c"
    assert first.span_id.hex() == "b7ad6b7169203331"
    assert first.parent_span_id.hex() == "00f067aa0ba902b7"
    assert first.name == "leaf.shop.svc.cluster.local:8080/*"
    assert first.kind == Span.SPAN_KIND_CLIENT
    assert first.end_time_unix_nano - first.start_time_unix_nano == 250_000_000
    decoded = {a.key: getattr(a.value, a.value.WhichOneof("value")) for a in first.attributes}
    assert decoded == attrs
    assert first.status.code == Status.STATUS_CODE_ERROR
    assert second.parent_span_id == b"" and second.kind == Span.SPAN_KIND_SERVER
    assert second.status.code == Status.STATUS_CODE_UNSET
