"""A loopback stand-in for a target, serving a recorded case to the probes under test.

One ``ThreadingHTTPServer`` on 127.0.0.1 (port 0) plays three roles:
- the **ingress**: ``GET /<anything>`` answers 200 (or ``status``) after ``delay_s`` and
  remembers the trace headers of each request;
- the **Kubernetes API subset** the probes read: pods of ``shop``, their istio-proxy
  logs, ConfigMap istio-system/istio and VirtualServices;
- the **Jaeger query API**: ``GET /api/traces/<id>``.
Evidence is the recorded case with its ids rewritten to the ids the probe really sent,
so a probe run sees exactly the recorded chain behaviour for its own request.
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

from probes.evidence.formats import EXTENDED_TEXT

HERE = Path(__file__).resolve().parent
MESH_YAML = "accessLogFile: /dev/stdout\naccessLogEncoding: TEXT\naccessLogFormat: |\n  " + \
    EXTENDED_TEXT.rstrip("\n") + "\n"
# The export lag the probes allow for: the fake has none, so only the polls' own pace.
FAKE_EXPORT_LAG_S = 0.05


@dataclass
class Fake:
    """What the fake serves; tests change it between runs."""

    case: str = "correct"
    status: int = 200
    delay_s: float = 0.0
    honor: bool = True
    virtual_services: list[dict[str, Any]] = field(default_factory=list)
    received: list[dict[str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    fail_first: int = 0  # the ingress answers 503 this many times first
    mesh_yaml: str = MESH_YAML  # the ``mesh`` key of ConfigMap istio-system/istio
    tempo: bool = False  # answer /api/traces/<id> in Tempo's OTLP-JSON shape

    def recorded(self) -> tuple[dict[str, Any], dict[str, Any], dict[str, str]]:
        base = HERE / self.case
        sent = json.loads((base / "requests.json").read_text())[0]
        traces = json.loads((base / "traces.json").read_text())
        logs = {p.stem.split("_", 1)[1]: p.read_text() for p in (base / "logs").glob("*.log")}
        return sent, traces, logs

    def _sampled(self) -> list[dict[str, str]]:
        """The sampled requests received so far; unsampled ones (flags 00) leave no
        evidence, as on a correct mesh."""
        with self.lock:
            return [r for r in self.received if r.get("traceparent", "").endswith("-01")]

    def _rewrite(self, text: str, request: dict[str, str]) -> str:
        """The recorded case as if ``request`` had caused it."""
        sent, _, _ = self.recorded()
        _, trace, parent, _ = request["traceparent"].split("-")
        text = text.replace(sent["trace_id"], trace)
        # The root span's parent is the probe's own span: without it no trace ever settles
        # (probes.evidence.settle), and every probe would wait out its whole bound.
        text = text.replace(sent["parent_id"], parent)
        text = text.replace(sent["request_id"], request["x-request-id"])
        return text.replace(sent["tracestate"], request.get("tracestate", ""))

    def trace(self, trace_id: str) -> dict[str, Any] | None:
        """Each sampled request's trace is the recorded one under its ids (before any
        request: the recorded trace under its own)."""
        _, traces, _ = self.recorded()
        sampled = self._sampled()
        text = json.dumps(traces)
        if sampled:
            mine = [r for r in sampled if r["traceparent"].split("-")[1] == trace_id]
            if not mine:
                return None
            text = self._rewrite(text, mine[-1])
        data = [t for t in json.loads(text)["data"] if t["traceID"] == trace_id]
        return {"data": data} if data else None

    def log(self, pod: str) -> str:
        """The recorded log lines once per sampled request, under its ids."""
        text = self.recorded()[2].get(pod, "")
        sampled = self._sampled()
        return "".join(self._rewrite(text, r) for r in sampled) if sampled else text

    def pods(self) -> list[str]:
        return sorted(self.recorded()[2])


_KINDS = {"server": "SPAN_KIND_SERVER", "client": "SPAN_KIND_CLIENT"}


def _otlp_value(value: Any) -> dict[str, Any]:
    if isinstance(value, bool):
        return {"boolValue": value}
    if isinstance(value, int):
        return {"intValue": str(value)}
    return {"stringValue": str(value)}


def to_tempo(doc: dict[str, Any]) -> dict[str, Any]:
    """A Jaeger answer re-shaped as Tempo's /api/traces/<id> OTLP-JSON (hex ids)."""
    batches: dict[str, list[dict[str, Any]]] = {}
    for trace in doc["data"]:
        for span in trace["spans"]:
            tags = {t["key"]: t["value"] for t in span["tags"]}
            service = trace["processes"][span["processID"]]["serviceName"]
            start = span["startTime"] * 1000
            error = tags.pop("otel.status_code", None) == "ERROR"
            message = tags.pop("otel.status_description", "")
            tags.pop("error", None)
            state = tags.pop("w3c.tracestate", "")
            batches.setdefault(service, []).append({
                "traceId": span["traceID"], "spanId": span["spanID"],
                "parentSpanId": span["references"][0]["spanID"] if span["references"] else "",
                "name": span["operationName"], "traceState": state,
                "kind": _KINDS.get(tags.pop("span.kind", ""), "SPAN_KIND_INTERNAL"),
                "startTimeUnixNano": str(start),
                "endTimeUnixNano": str(start + span["duration"] * 1000),
                "attributes": [{"key": k, "value": _otlp_value(v)} for k, v in tags.items()],
                "events": [{"timeUnixNano": str(log["timestamp"] * 1000),
                            "name": log["fields"][0]["value"]} for log in span["logs"]],
                "status": {"code": "STATUS_CODE_ERROR", "message": message} if error else {}})
    return {"batches": [{"resource": {"attributes": [
        {"key": "service.name", "value": {"stringValue": service}}]},
        "scopeSpans": [{"spans": spans}]} for service, spans in batches.items()]}


def _handler(fake: Fake) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:  # keep test output clean
            return

        def _send(self, status: int, body: Any, ctype: str = "application/json") -> None:
            data = body if isinstance(body, bytes) else (
                body.encode() if isinstance(body, str) else json.dumps(body).encode())
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            url = urlparse(self.path)
            path, query = url.path, parse_qs(url.query)
            if path == "/api/traces" and "traceID" in query and not fake.tempo:
                # Jaeger's search by ids: one document per known trace
                docs = [doc["data"][0] for t in query["traceID"] if (doc := fake.trace(t))]
                return self._send(200, {"data": docs, "errors": None})
            if path.startswith("/api/traces/"):
                doc = fake.trace(path.rsplit("/", 1)[1])
                if doc and fake.tempo:
                    doc = to_tempo(doc)
                return self._send(200, doc) if doc else self._send(404, {"data": None})
            if path == "/api/v1/namespaces/shop/pods":
                return self._send(200, {"kind": "PodList", "apiVersion": "v1", "items": [
                    {"metadata": {"name": pod, "namespace": "shop",
                                  "labels": {"app": pod.rsplit("-", 2)[0]}},
                     "spec": {"containers": [{"name": "app"}, {"name": "istio-proxy"}]}}
                    for pod in fake.pods()]})
            match = re.fullmatch(r"/api/v1/namespaces/shop/pods/([^/]+)/log", path)
            if match:
                assert query.get("container") == ["istio-proxy"], query
                assert int(query["sinceSeconds"][0]) > 0
                return self._send(200, fake.log(match.group(1)), "text/plain")
            if path == "/api/v1/namespaces/istio-system/configmaps/istio":
                return self._send(200, {"kind": "ConfigMap", "apiVersion": "v1", "metadata": {
                    "name": "istio", "namespace": "istio-system", "annotations": {
                        "meshchaos.io/honor-app-envoy-headers": str(fake.honor).lower()}},
                    "data": {"mesh": fake.mesh_yaml}})
            if path == "/apis/networking.istio.io/v1/namespaces/shop/virtualservices":
                return self._send(200, {"apiVersion": "networking.istio.io/v1",
                                        "kind": "VirtualServiceList",
                                        "items": fake.virtual_services})
            if path.startswith(("/api", "/apis")):
                return self._send(404, {"kind": "Status", "code": 404})
            return self._ingress()

        def _ingress(self) -> None:
            headers = {k.lower(): v for k, v in self.headers.items()}
            with fake.lock:
                fake.received.append(headers)
                failing = fake.fail_first > 0
                fake.fail_first -= 1 if failing else 0
            if fake.delay_s:
                time.sleep(fake.delay_s)
            # The probe may have given up first: that is the point of some tests.
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                self._send(503 if failing else fake.status, b"ok", "text/plain")

    return Handler


@dataclass
class Running:
    fake: Fake
    url: str
    kubeconfig: Path

    def configuration(self, **extra: Any) -> dict[str, Any]:
        # The fake serves every span at once: a cluster's export lag (the 7 s default of
        # target kubernetes) would only make each probe wait for nothing.
        return {"target": "kubernetes", "namespace": "shop", "ingress_url": self.url,
                "traces_url": self.url, "traces_api": "jaeger",
                "kubeconfig": str(self.kubeconfig), "span_export_lag_s": FAKE_EXPORT_LAG_S,
                **extra}


@contextmanager
def serve(tmp: Path, fake: Fake | None = None) -> Iterator[Running]:
    """Run the fake on 127.0.0.1 for the duration of the block, then stop it."""
    fake = fake or Fake()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(fake))
    server.daemon_threads = True
    with serving(server, "fake-cluster") as url:
        kubeconfig = tmp / "kubeconfig"
        kubeconfig.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": {"server": url}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}],
            "users": [{"name": "fake", "user": {}}]}))
        yield Running(fake, url, kubeconfig)


@contextmanager
def serving(server: ThreadingHTTPServer, name: str = "loopback-http") -> Iterator[str]:
    """Serve on a thread for the duration of the block; yields the server's base URL.

    ``shutdown()`` waits for the serving loop's next poll: the default poll of 0.5 s would
    cost every test that stops a server half a second.
    """
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01},
                              name=name, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
