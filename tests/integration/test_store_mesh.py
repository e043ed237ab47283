"""The store chain (fixtures/store/k8s) on a local mesh of its own, the way a user's services
run under it: one request through the ingress crosses all five hops (two in Node.js, none
with a tracing SDK), and every hop's istio-proxy log holds the inbound line of that request,
with its x-request-id, its trace id and a budget that shrinks along the chain.
"""

from __future__ import annotations

import json
import os
import ssl
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from localmesh.kubeconfig import auth_headers, ssl_context
from localmesh.mesh import MeshThread
from probes.evidence.accesslog import AccessLogRecord, compile_format, parse_lines
from probes.evidence.formats import MESHCHAOS_TEXT
from probes.tracing import trace_continuity
from tests.integration.conftest import running_mesh

pytestmark = [pytest.mark.integration]

ROOT = Path(__file__).resolve().parents[2]
STORE_MANIFESTS = ROOT / "fixtures" / "store" / "k8s"
NS = "store"
HOPS = ("gateway", "catalog", "stock", "warehouse", "reviews")
LOG_FORMAT = compile_format(MESHCHAOS_TEXT)
T = TypeVar("T")


@pytest.fixture(scope="module")
def store_mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MeshThread]:
    root = tmp_path_factory.mktemp("store-mesh")
    with running_mesh([STORE_MANIFESTS], root / "state") as thread:
        yield thread


def endpoint(thread: MeshThread, name: str) -> str:
    assert thread.mesh.endpoints is not None
    return str(getattr(thread.mesh.endpoints, name))


def fetch(url: str, headers: dict[str, str] | None = None,
          context: ssl.SSLContext | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10, context=context) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def until(check: Callable[[], T | None], limit_s: float = 10, what: str = "it") -> T:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"{what} did not happen within {limit_s}s")


def proxy_logs(thread: MeshThread) -> dict[str, list[AccessLogRecord]]:
    """Every store pod's istio-proxy log through the API, as the probes read it."""
    api = endpoint(thread, "api")
    kubeconfig = thread.mesh.state.kubeconfig  # the API's CA and token, as clients get them
    auth, tls = auth_headers(kubeconfig), ssl_context(kubeconfig)
    pods = json.loads(fetch(f"{api}/api/v1/namespaces/{NS}/pods", auth, tls)[1])["items"]
    logs: dict[str, list[AccessLogRecord]] = {}
    for pod in pods:
        name = pod["metadata"]["name"]
        text = fetch(f"{api}/api/v1/namespaces/{NS}/pods/{name}/log?container=istio-proxy",
                     auth, tls)[1]
        records, _ = parse_lines(LOG_FORMAT, NS, name, text.decode().splitlines())
        logs[pod["metadata"]["labels"]["app"]] = records
    return logs


def inbound_of(request_id: str, thread: MeshThread) -> dict[str, AccessLogRecord] | None:
    """The request's inbound line at every hop, or None while one is still missing."""
    found = {hop: [r for r in records if r.direction == "inbound"
                   and r.request_id == request_id]
             for hop, records in proxy_logs(thread).items()}
    if not all(found.get(hop) for hop in HOPS):
        return None
    return {hop: found[hop][0] for hop in HOPS}


def test_a_request_through_the_ingress_is_logged_inbound_at_every_hop(
        store_mesh: MeshThread) -> None:
    """Trace context survives hand-written forwarding in both languages: one trace id and
    one x-request-id at all five inbound sidecars; and each hop's budget is what its caller
    had left (1500ms at the edge, then less at every level)."""
    trace_id, request_id = os.urandom(16).hex(), str(uuid.uuid4())
    headers = {"traceparent": f"00-{trace_id}-{os.urandom(8).hex()}-01",
               "x-request-id": request_id, "x-b3-traceid": trace_id,
               "x-b3-spanid": os.urandom(8).hex(), "x-b3-sampled": "1"}
    status, raw = fetch(endpoint(store_mesh, "ingress") + "/api/items/42", headers)
    assert status == 200, raw
    page = json.loads(raw)["catalog"]
    assert page["stock"]["warehouse"]["item"] == "42" and page["reviews"]
    inbound = until(lambda: inbound_of(request_id, store_mesh), what="five inbound lines")
    for hop, record in inbound.items():
        assert (hop, record.response_code, record.trace_id) == (hop, 200, trace_id)
        assert record.fields["b3_trace_id"] == trace_id  # B3 is copied by hand too
    budget = {hop: record.expected_rq_timeout_ms or 0 for hop, record in inbound.items()}
    assert budget["gateway"] == 1500
    assert budget["gateway"] > budget["catalog"] > budget["stock"] > budget["warehouse"] > 0
    assert budget["catalog"] > budget["reviews"] > 0


def test_paths_outside_api_get_no_route_at_the_ingress(store_mesh: MeshThread) -> None:
    """The ingress VirtualService matches the prefix /api/ only (404 NR elsewhere)."""
    assert fetch(endpoint(store_mesh, "ingress") + "/")[0] == 404


def test_an_expected_call_the_store_chain_does_not_make_fails_the_trace_probe(
        store_mesh: MeshThread) -> None:
    """call_tree is an expectation: the sidecars show gateway -> catalog -> stock, and an
    expected stock -> ledger that no request made fails at stock instead of passing."""
    config = {"target": "local", "meshchaos_state_dir": str(store_mesh.mesh.state.path),
              "run_id": "expected-calls", "namespace": NS, "allowed_namespaces": NS,
              "entry_path": "/api/items/42",
              "call_tree": {"entry": "gateway", "calls": {"gateway": ["catalog"],
                                                          "catalog": ["stock"],
                                                          "stock": ["ledger"]}}}
    result = trace_continuity(requests=2, checks=["same-trace"], timeout_s=15.0,
                              configuration=config)
    checks = {c["name"]: c for c in result["checks"]}
    assert result["passed"] is False
    assert checks["expected-calls"]["hop"] == "stock"
    assert "stock -> ledger" in checks["expected-calls"]["observed"]
    assert checks["same-trace"]["status"] == "held"
