"""Evidence readers against a loopback API: istio-proxy logs, mesh config, VS, traces."""

from __future__ import annotations

import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from probes.errors import EvidenceError
from probes.evidence.kube import (
    parse_duration_ms,
    parse_mesh_config,
    read_mesh_settings,
    read_proxy_logs,
    read_routes,
)
from probes.evidence.traceapi import TraceReader
from probes.target import resolve_target
from tests.data.evidence.fakecluster import Fake, serve, serving


def test_proxy_logs_of_every_sidecar_pod_are_read_and_parsed(tmp_path: Path) -> None:
    """architecture.md: the istio-proxy container log is the Envoy access log."""
    with serve(tmp_path) as running:
        target = resolve_target(running.configuration())
        client = target.api_client()
        try:
            mesh = read_mesh_settings(client)
            records, skipped = read_proxy_logs(client, "shop", mesh.log_format, since_seconds=30)
        finally:
            client.close()
    assert mesh.access_log_enabled and mesh.honor_app_envoy_headers
    assert skipped == 0
    assert {r.hop for r in records} == {"frontend", "orders", "inventory", "pricing", "ratings"}
    assert all(r.trace_id for r in records)


def test_virtual_services_are_read_and_normalised(tmp_path: Path) -> None:
    """IA-VS: timeout and retries.{attempts, perTryTimeout, retryOn} of each HTTP route."""
    fake = Fake(virtual_services=[{"metadata": {"name": "orders", "namespace": "shop"},
                                   "spec": {"hosts": ["orders"], "http": [{
                                       "route": [{"destination": {"host": "orders"}}],
                                       "timeout": "500ms", "retries": {
                                           "attempts": 2, "perTryTimeout": "0.2s",
                                           "retryOn": "5xx,reset"}}]}}])
    with serve(tmp_path, fake) as running:
        client = resolve_target(running.configuration()).api_client()
        try:
            (route,) = read_routes(client, "shop")
        finally:
            client.close()
    assert (route.host, route.timeout_ms, route.attempts, route.per_try_timeout_ms) == (
        "orders", 500, 2, 200)
    assert route.retry_on == ("5xx", "reset")


def test_trace_reader_returns_the_trace_and_empty_for_unknown_ids(tmp_path: Path) -> None:
    """architecture.md Trace store: GET /api/traces/{traceID} in Jaeger's JSON shape."""
    fake = Fake()
    sent, _, _ = fake.recorded()
    with serve(tmp_path, fake) as running, TraceReader(running.url) as reader:
        assert len(reader.fetch(sent["trace_id"])) > 10
        assert reader.fetch("f" * 32) == []
        found = reader.wait_for(["e" * 32], ["frontend"], wait_s=0.3, poll_s=0.05)
    assert found == {"e" * 32: []}


def test_trace_reader_fetches_many_traces_in_one_jaeger_search(tmp_path: Path) -> None:
    """Jaeger's GET /api/traces?traceID=a&traceID=b returns every known trace of the list."""
    fake = Fake()
    sent, _, _ = fake.recorded()
    with serve(tmp_path, fake) as running, TraceReader(running.url) as reader:
        found = reader.fetch_many([sent["trace_id"], "f" * 32])
        single = reader.fetch(sent["trace_id"])
    assert len(found[sent["trace_id"]]) == len(single) > 10
    assert found["f" * 32] == []


def test_unreachable_trace_api_is_could_not_measure() -> None:
    with TraceReader("http://127.0.0.1:9", timeout_s=0.5) as reader, \
            pytest.raises(EvidenceError, match="unreachable"):
        reader.fetch("a" * 32)


def test_mesh_config_defaults_follow_istio() -> None:
    """§2.3: access log off by default; IA-MESH sampling default 1.0; switch default off."""
    settings = parse_mesh_config(None)
    assert not settings.access_log_enabled and settings.sampling_percent == 1.0
    assert not settings.honor_app_envoy_headers


def test_mesh_config_reads_a_telemetry_provider_format() -> None:
    """architecture.md Mesh config: extensionProviders[].envoyFileAccessLog.logFormat.text."""
    mesh = ("extensionProviders:\n- name: envoy\n  envoyFileAccessLog:\n    path: /dev/stdout\n"
            "    logFormat:\n      text: '%START_TIME% %RESPONSE_CODE%'\n"
            "defaultConfig:\n  tracing:\n    sampling: 100\n")
    settings = parse_mesh_config(mesh)
    assert settings.access_log_enabled and settings.sampling_percent == 100.0
    assert settings.log_format.fields == ("start_time", "response_code")


def test_mesh_config_json_encoding_uses_istios_json_keys() -> None:
    settings = parse_mesh_config("accessLogFile: /dev/stdout\naccessLogEncoding: JSON\n")
    assert settings.log_format.encoding == "JSON" and "request_id" in settings.log_format.fields


@pytest.mark.parametrize(("value", "ms"), [("1s", 1000), ("0.5s", 500), ("250ms", 250),
                                           ("1m", 60000), (None, 0)])
def test_durations_follow_the_crd_pattern(value: str | None, ms: int) -> None:
    """§5.2/IA-CRD duration strings; unset = no timeout (§2.1)."""
    assert parse_duration_ms(value) == ms


def test_unparseable_duration_names_the_value() -> None:
    with pytest.raises(EvidenceError, match="'soon'"):
        parse_duration_ms("soon")


def test_mesh_config_json_format_string_is_compiled() -> None:
    """IA-MESH accessLogFormat holds a JSON object as text when accessLogEncoding is JSON."""
    mesh = ("accessLogFile: /dev/stdout\naccessLogEncoding: JSON\n"
            'accessLogFormat: \'{"rid": "%REQ(X-REQUEST-ID)%", "code": "%RESPONSE_CODE%"}\'\n')
    fmt = parse_mesh_config(mesh).log_format
    assert fmt.parse('{"rid": "abc", "code": 504}') == {"request_id": "abc",
                                                       "response_code": "504"}


def test_trace_reader_polls_conditionally_and_reuses_what_it_parsed_on_304(
        tmp_path: Path) -> None:
    """RFC 9110 §13.1.2: the reader sends the last answer's ETag as If-None-Match and a 304
    stands for that answer; a Jaeger that sends no ETag is read in full every time."""
    seen: list[str | None] = []
    fake = Fake()
    sent, _, _ = fake.recorded()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.headers.get("If-None-Match"))
            if self.headers.get("If-None-Match") == '"v1"':
                self.send_response(304)
                self.send_header("ETag", '"v1"')
                self.end_headers()
                return
            body = json.dumps(fake.trace(sent["trace_id"])).encode()
            self.send_response(200)
            self.send_header("ETag", '"v1"')
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            return

    with serving(ThreadingHTTPServer(("127.0.0.1", 0), Handler)) as url, \
            TraceReader(url) as reader:
        first = reader.fetch_many([sent["trace_id"]])
        second = reader.fetch_many([sent["trace_id"]])
    assert seen == [None, '"v1"']
    assert second == first and len(first[sent["trace_id"]]) > 10
