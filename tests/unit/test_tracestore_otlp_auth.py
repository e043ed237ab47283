"""Only the mesh's own writers get spans into its trace store (docs/fidelity.md §8.5).

A span is evidence: a verdict is read from the traces, so whoever can post spans can forge
one. The mesh's OTLP/HTTP receiver therefore wants ``Authorization: Bearer <token>`` on
every export, a token random per mesh that the sidecars (in their config document), the
apps (``OTEL_EXPORTER_OTLP_HEADERS``) and the state dir's owner (``otlp-token``, 0600) hold.
Any other export is refused as the OpenTelemetry Collector's ``confighttp`` auth interceptor
refuses it: ``401``, a ``google.rpc.Status`` UNAUTHENTICATED in the request's encoding
(``httphelper.NewStatusFromMsgAndHTTPCode``), before the body is read. The OTLP
specification ("OTLP/HTTP Response", Failures) lists 429, 502, 503 and 504 as the
retryable codes: a 401 is final, and the SDK's exporter gives up at once. Reads (the
Jaeger-style query API) stay open, as Jaeger's query service is by default.
"""

from __future__ import annotations

import json
import socket
import stat
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from aiohttp import web
from google.rpc import status_pb2  # type: ignore[import-untyped]
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from localmesh.errors import StateDirError
from localmesh.kubeconfig import new_token
from localmesh.sidecar.config import parse_config
from localmesh.sidecar.tracing import KIND_SERVER, Span, SpanExporter
from localmesh.statedir import StateDir, otlp_auth_headers, read_otlp_token
from localmesh.supervisor.podspec import otlp_headers_env
from localmesh.tracestore import TraceStore, create_otlp_app, create_trace_apps
from tests.apiserver_helpers import serve_app

_TRACE = "5b8efff798038103d269b633813fc60c"


@dataclass
class Guarded:
    store: TraceStore
    token: str
    otlp: str
    query: str

    def post(self, body: object, headers: dict[str, str] | None = None) -> requests.Response:
        return requests.post(f"{self.otlp}/v1/traces", json=body, headers=headers, timeout=5)


@pytest.fixture
def guarded() -> Iterator[Guarded]:
    store = TraceStore(max_spans=100)
    token = new_token()
    otlp_app, query_app = create_trace_apps(store, otlp_token=token)
    with serve_app(otlp_app) as otlp_port, serve_app(query_app) as query_port:
        yield Guarded(store, token, f"http://127.0.0.1:{otlp_port}",
                      f"http://127.0.0.1:{query_port}")


def _export(service: str = "forged") -> dict[str, object]:
    """One OTLP/JSON span (ids hex, as OTLP/JSON writes them)."""
    return {"resourceSpans": [{
        "resource": {"attributes": [{"key": "service.name",
                                     "value": {"stringValue": service}}]},
        "scopeSpans": [{"spans": [{"traceId": _TRACE, "spanId": "eee19b7ec3c1b174",
                                   "name": "GET /", "kind": 2,
                                   "startTimeUnixNano": "1", "endTimeUnixNano": "2"}]}]}]}


def _status(response: requests.Response) -> dict[str, object]:
    body = response.json()
    assert isinstance(body, dict)
    return body


def test_an_export_without_the_token_is_401_and_stores_nothing(guarded: Guarded) -> None:
    """The Collector's authInterceptor: no credential → 401 UNAUTHENTICATED (16), in the
    request's encoding, with the challenge RFC 9110 §15.5.2 requires of a 401."""
    response = guarded.post(_export())
    assert response.status_code == 401
    assert response.headers["Content-Type"].startswith("application/json")
    assert _status(response)["code"] == 16
    assert "Unauthorized" in str(_status(response)["message"])
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert len(guarded.store) == 0


def test_an_export_with_a_wrong_token_is_401_and_stores_nothing(guarded: Guarded) -> None:
    for header in (f"Bearer {new_token()}", f"Bearer {guarded.token}x", guarded.token,
                   f"Basic {guarded.token}", "Bearer "):
        response = guarded.post(_export(), {"Authorization": header})
        assert response.status_code == 401, header
    assert len(guarded.store) == 0


def test_a_header_that_is_not_utf8_is_a_401_not_a_server_error(guarded: Guarded) -> None:
    """RFC 9110 §5.5: field values may hold obs-text (bytes over 0x7F)."""
    port = int(guarded.otlp.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        conn.sendall(b"POST /v1/traces HTTP/1.1\r\nHost: otlp\r\nConnection: close\r\n"
                     b"Authorization: Bearer \xff\xfe\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 2\r\n\r\n{}")
        head = conn.recv(4096).split(b"\r\n", 1)[0]
    assert head == b"HTTP/1.1 401 Unauthorized"
    assert len(guarded.store) == 0


def test_a_protobuf_export_is_refused_in_protobuf(guarded: Guarded) -> None:
    """OTLP/HTTP: the error body is a Status "encoded in the same format as the request"."""
    request = trace_service_pb2.ExportTraceServiceRequest()
    response = requests.post(f"{guarded.otlp}/v1/traces", data=request.SerializeToString(),
                             headers={"Content-Type": "application/x-protobuf"}, timeout=5)
    assert response.status_code == 401
    assert response.headers["Content-Type"] == "application/x-protobuf"
    status = status_pb2.Status()
    status.ParseFromString(response.content)
    assert status.code == 16


def test_an_export_with_the_token_is_200_and_stored(guarded: Guarded) -> None:
    """The scheme is case-insensitive (RFC 9110 §11.1), the token is not."""
    ok = guarded.post(_export("frontend"), {"Authorization": f"Bearer {guarded.token}"})
    assert ok.status_code == 200
    assert guarded.post(_export("frontend"),
                        {"Authorization": f"bearer {guarded.token}"}).status_code == 200
    assert len(guarded.store) == 1  # the same span twice: stored once
    assert (guarded.store.trace(_TRACE) or [])[0].service == "frontend"


def test_reads_stay_open_as_a_jaeger_query_is(guarded: Guarded) -> None:
    guarded.post(_export("frontend"), {"Authorization": f"Bearer {guarded.token}"})
    response = requests.get(f"{guarded.query}/api/traces/{_TRACE}", timeout=5)
    assert response.status_code == 200
    assert response.json()["data"][0]["traceID"] == _TRACE


def test_a_receiver_built_without_a_token_takes_anyone() -> None:
    """Tests that embed the app (like the API's test helper) keep it open."""
    store = TraceStore(max_spans=10)
    with serve_app(create_otlp_app(store)) as port:
        response = requests.post(f"http://127.0.0.1:{port}/v1/traces", json=_export(),
                                 timeout=5)
    assert response.status_code == 200 and len(store) == 1


# -- the writers: the apps' OpenTelemetry SDK and the sidecars' exporter -------------------

def _sdk_export(otlp: str) -> SpanExportResult:
    """One span through the real SDK exporter, built as fixtures/chain/telemetry.py builds
    it: an endpoint and nothing else, so the headers come from the environment."""
    finished = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "orders"}))
    provider.add_span_processor(SimpleSpanProcessor(finished))
    with provider.get_tracer("t").start_as_current_span("work"):
        pass
    exporter = OTLPSpanExporter(endpoint=f"{otlp}/v1/traces", timeout=5)
    try:
        return exporter.export(finished.get_finished_spans())
    finally:
        exporter.shutdown()  # type: ignore[no-untyped-call]


def test_the_sdk_exporter_sends_the_token_from_otel_exporter_otlp_headers(
        guarded: Guarded, monkeypatch: pytest.MonkeyPatch) -> None:
    """OpenTelemetry's SDK environment spec: OTEL_EXPORTER_OTLP_HEADERS is a list of
    ``key=value`` with URL-encoded values; the HTTP exporter reads it when its code passes
    no ``headers`` (``_resolve_headers``). The supervisor sets it for every app."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", otlp_headers_env(guarded.token))
    assert _sdk_export(guarded.otlp) is SpanExportResult.SUCCESS
    assert guarded.store.services() == ["orders"]


def test_the_sdk_exporter_without_the_token_fails_at_once_and_stores_nothing(
        guarded: Guarded, monkeypatch: pytest.MonkeyPatch) -> None:
    """401 is not in the OTLP spec's retryable list: the exporter gives up without the
    backoff (its first retry would wait ~1 s)."""
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_HEADERS", raising=False)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_HEADERS", raising=False)
    began = time.monotonic()
    assert _sdk_export(guarded.otlp) is SpanExportResult.FAILURE
    assert time.monotonic() - began < 0.9
    assert len(guarded.store) == 0


def test_the_headers_variable_is_url_encoded_as_the_spec_asks() -> None:
    assert otlp_headers_env("abc-_9") == "authorization=Bearer%20abc-_9"


async def _serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[TraceStore, str, str]]:
    store, token = TraceStore(max_spans=100), new_token()
    runner, url = await _serve(create_otlp_app(store, token=token))
    try:
        yield store, token, url
    finally:
        await runner.cleanup()


def _sidecar_span() -> Span:
    return Span(trace_id=_TRACE, span_id="00f067aa0ba902b7", parent_id="", name="inbound",
                kind=KIND_SERVER, start_ns=1, end_ns=2)


async def test_the_sidecar_exporter_posts_with_the_headers_of_its_config(
        receiver: tuple[TraceStore, str, str]) -> None:
    store, token, url = receiver
    exporter = SpanExporter(url, "orders.shop", {},
                            headers=(("authorization", f"Bearer {token}"),))
    exporter.add(_sidecar_span())
    await exporter.stop()
    assert exporter.exported == 1 and exporter.failed_batches == 0
    assert (store.trace(_TRACE) or [])[0].service == "orders.shop"


async def test_a_sidecar_exporter_without_the_token_counts_a_failed_batch(
        receiver: tuple[TraceStore, str, str], caplog: pytest.LogCaptureFixture) -> None:
    store, _token, url = receiver
    exporter = SpanExporter(url, "orders.shop", {},
                            headers=(("authorization", "Bearer not-it"),))
    exporter.add(_sidecar_span())
    await exporter.stop()
    assert exporter.exported == 0 and exporter.failed_batches == 1
    assert len(store) == 0
    assert "answered 401" in caplog.text and "not-it" not in caplog.text


# -- the state dir: how a user (and the tests) get the token ------------------------------

def test_the_token_file_is_the_owners_alone_and_read_back(tmp_path: Path) -> None:
    state = StateDir(tmp_path)
    state.path.mkdir(exist_ok=True)
    state.write_otlp_token("t0ken")
    assert stat.S_IMODE(state.otlp_token_file.stat().st_mode) == 0o600
    assert read_otlp_token(tmp_path) == "t0ken"
    assert otlp_auth_headers(tmp_path) == {"Authorization": "Bearer t0ken"}
    state.release()
    assert not state.otlp_token_file.exists()
    with pytest.raises(StateDirError, match="otlp-token is missing"):
        read_otlp_token(tmp_path)


def test_the_error_json_is_small() -> None:
    """The refusal names no token and echoes nothing of the request."""
    store, token = TraceStore(max_spans=10), new_token()
    with serve_app(create_otlp_app(store, token=token)) as port:
        response = requests.post(f"http://127.0.0.1:{port}/v1/traces",
                                 data=json.dumps(_export()), timeout=5,
                                 headers={"Content-Type": "application/json",
                                          "Authorization": "Bearer guess"})
    assert response.status_code == 401
    assert len(response.content) < 200 and "guess" not in response.text
    assert token not in response.text


def test_the_sidecars_parsed_config_never_shows_the_token_in_a_repr() -> None:
    """A repr ends up in logs and tracebacks; the token must not."""
    doc = {"version": 1, "node": {"pod": "orders-1", "namespace": "shop", "service": "orders"},
           "mesh": {"otlp_endpoint": "http://127.0.0.1:4318",
                    "otlp_headers": {"authorization": "Bearer s3cret-token"}},
           "services": {}, "routes": {}, "subsets": {}, "connect_timeout_ms": {},
           "gateway_routes": [], "faults": []}
    cfg = parse_config(doc)
    assert cfg.mesh.otlp_headers == (("authorization", "Bearer s3cret-token"),)
    assert "s3cret" not in repr(cfg) and "s3cret" not in repr(cfg.mesh)
