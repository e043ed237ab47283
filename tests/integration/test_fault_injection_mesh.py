"""Istio's fault-injection task, as a scenario of our own, on a local mesh of its own.

Bookinfo's shape without Bookinfo: the ingress → ``reviews`` (tests/data/side_caller_app.py),
which calls its side hop ``ratings`` (tests/data/echo_app.py) and falls back when that call
fails. The faults are plain Istio VirtualServices in the form of the task's
``virtual-service-ratings-test-delay.yaml`` / ``-abort.yaml`` (a route matched on the header
``end-user: jason`` carrying the fault, then the catch-all route), created through the API as
kubectl would. The caller's sidecar applies them (docs/fidelity.md §2.4); the effect is
measured where the caller sees it: the delay is never early, and the abort ratio over 400
concurrent requests is within 5 points of the ``percentage``.
"""

from __future__ import annotations

import json
import ssl
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from localmesh.kubeconfig import auth_headers, ssl_context
from localmesh.mesh import MeshThread
from localmesh.yamldoc import safe_load
from tests.integration.conftest import ECHO_APP, ROOT, running_mesh
from tests.istio_samples import ratings_test_vs
from tests.mesh_manifests import ingress_route, mesh_preamble

pytestmark = [pytest.mark.integration]

NS = "shop"
CALLER_APP = ROOT / "tests" / "data" / "side_caller_app.py"
REVIEWS_HOST = f"reviews.{NS}.svc.cluster.local"


def _app(name: str, command: str) -> str:
    return textwrap.dedent(f"""\
        ---
        apiVersion: apps/v1
        kind: Deployment
        metadata: {{name: {name}, namespace: {NS}}}
        spec:
          replicas: 1
          selector: {{matchLabels: {{app: {name}}}}}
          template:
            metadata:
              labels: {{app: {name}, version: v1}}
              annotations: {{meshchaos.io/local-command: "{command}"}}
            spec:
              terminationGracePeriodSeconds: 1
              containers:
              - name: {name}
                image: example/{name}:1
                ports: [{{containerPort: 8080}}]
                readinessProbe:
                  httpGet: {{path: /healthz, port: 8080}}
                  periodSeconds: 1
        ---
        apiVersion: v1
        kind: Service
        metadata: {{name: {name}, namespace: {NS}}}
        spec:
          selector: {{app: {name}}}
          ports: [{{name: http, port: 8080, targetPort: 8080}}]
        """)


MESH = mesh_preamble(NS) + ingress_route(NS, "reviews", gateway="shop-gateway",
                                         name="ingress") + textwrap.dedent(f"""\
    ---
    apiVersion: networking.istio.io/v1
    kind: DestinationRule
    metadata: {{name: ratings, namespace: {NS}}}
    spec:
      host: ratings
      subsets:
      - name: v1
        labels: {{version: v1}}
    """) + _app("reviews", f"python {CALLER_APP}") + _app("ratings", f"python {ECHO_APP}")


def _ratings_vs(fault: str) -> dict[str, Any]:
    """The task's VirtualService with its fault block; nothing local in it."""
    return ratings_test_vs(safe_load(textwrap.dedent(fault)))


DELAY = """\
    delay:
      percentage:
        value: 100.0
      fixedDelay: 1s
    """
ABORT = """\
    abort:
      percentage:
        value: 10.0
      httpStatus: 500
    """


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MeshThread]:
    root = tmp_path_factory.mktemp("fault-mesh")
    (root / "manifests").mkdir()
    (root / "manifests" / "mesh.yaml").write_text(MESH)
    with running_mesh([root / "manifests"], root / "state") as thread:
        yield thread


def _endpoint(thread: MeshThread, name: str) -> str:
    assert thread.mesh.endpoints is not None
    return str(getattr(thread.mesh.endpoints, name))


def _api_auth(thread: MeshThread) -> dict[str, str]:
    """The mesh API's bearer token, as its kubeconfig gives it to clients."""
    return auth_headers(thread.mesh.state.kubeconfig)


def _api_tls(thread: MeshThread) -> ssl.SSLContext | None:
    """A TLS context trusting the mesh API's CA, from its kubeconfig."""
    return ssl_context(thread.mesh.state.kubeconfig)


def _request(url: str, *, method: str = "GET", body: dict[str, Any] | None = None,
             headers: dict[str, str] | None = None,
             context: ssl.SSLContext | None = None) -> tuple[int, bytes]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={
        **({"Content-Type": "application/json"} if data else {}), **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=15, context=context) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _apply(thread: MeshThread, vs: dict[str, Any]) -> None:
    """Create or replace the VirtualService through the API, then let the push land."""
    base = f"{_endpoint(thread, 'api')}/apis/networking.istio.io/v1/namespaces/{NS}/virtualservices"
    auth = _api_auth(thread)
    tls = _api_tls(thread)
    status, current = _request(f"{base}/{vs['metadata']['name']}", headers=auth, context=tls)
    if status == 200:
        vs = {**vs, "metadata": {**vs["metadata"], "resourceVersion":
                                 json.loads(current)["metadata"]["resourceVersion"]}}
        status, body = _request(f"{base}/{vs['metadata']['name']}", method="PUT", body=vs,
                                headers=auth, context=tls)
    else:
        status, body = _request(base, method="POST", body=vs, headers=auth, context=tls)
    assert status in (200, 201), body
    time.sleep(0.3)  # the xDS push is debounced by ms; the sidecars ack within this


def _page(thread: MeshThread, user: str | None) -> dict[str, Any]:
    headers = {"Host": REVIEWS_HOST, **({"end-user": user} if user else {})}
    status, body = _request(_endpoint(thread, "ingress") + "/page", headers=headers)
    assert status == 200, body  # the caller always answers: its fallback covers ratings
    page: dict[str, Any] = json.loads(body)
    return page


def _pages(thread: MeshThread, users: Sequence[str | None]) -> list[dict[str, Any]]:
    with ThreadPoolExecutor(max_workers=16) as pool:
        return list(pool.map(lambda u: _page(thread, u), users))


def _caller_proxy_log(thread: MeshThread) -> list[str]:
    api, auth, tls = _endpoint(thread, "api"), _api_auth(thread), _api_tls(thread)
    pods = json.loads(_request(f"{api}/api/v1/namespaces/{NS}/pods?labelSelector=app%3Dreviews",
                               headers=auth, context=tls)[1])["items"]
    (pod,) = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
    name = pod["metadata"]["name"]
    text = _request(f"{api}/api/v1/namespaces/{NS}/pods/{name}/log?container=istio-proxy",
                    headers=auth, context=tls)[1]
    return [ln for ln in text.decode().splitlines() if "outbound|8080|v1|ratings" in ln]


def _logged(thread: MeshThread, marker: str, count: int, limit_s: float = 5.0) -> list[str]:
    """The caller's outbound ratings lines holding ``marker``, once ``count`` are there (the
    log reaches the container log file in batches)."""
    deadline = time.monotonic() + limit_s
    while True:
        lines = [ln for ln in _caller_proxy_log(thread) if marker in ln]
        if len(lines) >= count or time.monotonic() > deadline:
            return lines
        time.sleep(0.1)


def test_a_header_matched_delay_holds_only_jasons_side_calls_never_less_than_asked(
        mesh: MeshThread) -> None:
    """Istio's delay task: jason's calls to ratings wait the fixedDelay (1 s here, 7 s in the
    task) in reviews' sidecar; everyone else's do not. Measured by the caller itself."""
    _apply(mesh, _ratings_vs(DELAY))
    users: list[str | None] = ["jason"] * 8
    pages = _pages(mesh, users + ["someone", None] * 8)
    jason, others = pages[:8], pages[8:]
    assert all(p["ratings_status"] == 200 for p in pages)
    waits = sorted(p["ratings_ms"] for p in jason)
    print(f"jason's side calls took {waits[0]:.1f} to {waits[-1]:.1f} ms")
    assert waits[0] >= 1000.0  # never early
    assert waits[-1] < 2500.0
    assert max(p["ratings_ms"] for p in others) < 900.0
    assert len(_logged(mesh, " 200 DI via_upstream ", 8)) == 8


def test_a_header_matched_abort_fails_its_percentage_of_jasons_calls_and_no_one_elses(
        mesh: MeshThread) -> None:
    """Istio's abort task at ``percentage: 10``: over 400 concurrent requests of jason's, the
    share answered ``500 fault filter abort`` is within 5 points of 10 % (the binomial
    standard deviation is 1.5 points, so 5 points is 3.3 of them), every abort is logged
    ``500 FI fault_filter_abort`` at the caller's sidecar, the caller falls back on each, and
    others are never aborted."""
    _apply(mesh, _ratings_vs(ABORT))
    jason = _pages(mesh, ["jason"] * 400)
    others = _pages(mesh, ["someone"] * 40)
    aborted = [p for p in jason if p["ratings_status"] == 500]
    assert all(p["ratings_body"] == "fault filter abort" and p["fallback"] for p in aborted)
    assert {p["ratings_status"] for p in jason} <= {200, 500}
    ratio = len(aborted) / len(jason)
    assert abs(ratio - 0.10) <= 0.05, f"{len(aborted)}/400 aborted"
    assert all(p["ratings_status"] == 200 for p in others)
    logged = _logged(mesh, " 500 FI fault_filter_abort ", len(aborted))
    assert len(logged) == len(aborted)
    print(f"aborted {len(aborted)}/400 = {ratio:.3f}")
