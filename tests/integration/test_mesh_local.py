"""A LocalMesh from manifests: pods as processes, reached through the API, the ingress
and the sidecars the way kubectl and clients reach a cluster.

One echo mesh (tests/data/echo_app.py behind its sidecar, plus the ingress gateway)
serves the module; tests that need a failing or refused start run their own.
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from localmesh.errors import ManifestError, ProcessError, StateDirError
from localmesh.kubeconfig import auth_headers, ssl_context
from localmesh.mesh import MeshThread
from localmesh.statedir import StateDir, otlp_auth_headers, read_otlp_token
from localmesh.supervisor.podspec import otlp_headers_env
from tests.integration.conftest import (
    alive,
    descendants,
    running_mesh,
    stop_and_reap,
    write_echo_manifests,
)

pytestmark = [pytest.mark.integration]

T = TypeVar("T")
NS = "shop"
ECHO_HOST = "echo.shop.svc.cluster.local"


@pytest.fixture(scope="module")
def echo_mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MeshThread]:
    root = tmp_path_factory.mktemp("echo-mesh")
    with running_mesh([write_echo_manifests(root / "manifests")], root / "state") as thread:
        yield thread


def get(url: str, *, host: str | None = None, timeout: float = 5,
        headers: dict[str, str] | None = None,
        context: ssl.SSLContext | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, headers={**({"Host": host} if host else {}),
                                               **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=context) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def token(thread: MeshThread) -> dict[str, str]:
    """The mesh API's bearer token, as its kubeconfig gives it to clients."""
    return auth_headers(thread.mesh.state.kubeconfig)


def tls(thread: MeshThread) -> ssl.SSLContext | None:
    """A TLS context trusting the mesh API's CA, from its kubeconfig."""
    return ssl_context(thread.mesh.state.kubeconfig)


def api(thread: MeshThread, path: str, method: str = "GET") -> Any:
    assert thread.mesh.endpoints is not None
    req = urllib.request.Request(thread.mesh.endpoints.api + path, method=method,
                                 headers=token(thread))
    with urllib.request.urlopen(req, timeout=5, context=tls(thread)) as resp:
        return json.loads(resp.read())


def echo_pods(thread: MeshThread) -> list[dict[str, Any]]:
    items = api(thread, f"/api/v1/namespaces/{NS}/pods?labelSelector=app%3Decho")["items"]
    return [p for p in items if not p["metadata"].get("deletionTimestamp")]


def ready(pod: dict[str, Any]) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True"
               for c in (pod.get("status") or {}).get("conditions") or [])


def until(check: Callable[[], T | None], limit_s: float = 10, what: str = "it") -> T:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"{what} did not happen within {limit_s}s")


def via_ingress(thread: MeshThread, path: str = "/") -> tuple[int, bytes]:
    assert thread.mesh.endpoints is not None
    return get(thread.mesh.endpoints.ingress + path, host=ECHO_HOST)


def test_manifest_pods_and_the_gateway_pod_run_ready(echo_mesh: MeshThread) -> None:
    """Deployment → ReplicaSet → Pod ``<deploy>-<10 hex>-<5 alnum>`` with an injected
    istio-proxy; the gateway pod runs in istio-system (docs/architecture.md)."""
    (pod,) = echo_pods(echo_mesh)
    assert ready(pod) and pod["status"]["phase"] == "Running"
    deploy, rs_hash, suffix = pod["metadata"]["name"].rsplit("-", 2)
    assert deploy == "echo" and len(rs_hash) == 10 and len(suffix) == 5
    assert [c["name"] for c in pod["spec"]["containers"]] == ["echo", "istio-proxy"]
    gateways = api(echo_mesh, "/api/v1/namespaces/istio-system/pods")["items"]
    assert [g["metadata"]["labels"]["istio"] for g in gateways] == ["ingressgateway"]
    assert gateways[0]["metadata"]["name"].startswith("istio-ingressgateway-")
    assert ready(gateways[0])
    deployment = api(echo_mesh, f"/apis/apps/v1/namespaces/{NS}/deployments/echo")
    assert deployment["status"]["readyReplicas"] == 1


def test_ingress_reaches_the_app_and_both_containers_log_the_request(
        echo_mesh: MeshThread) -> None:
    """App output is the app container's log; Envoy access-log lines are istio-proxy's
    (docs/architecture.md "Container logs")."""
    marker = f"/probe-{uuid.uuid4().hex[:8]}"
    status, body = via_ingress(echo_mesh, marker)
    assert status == 200 and body.startswith(b"hello from echo-")
    (pod,) = echo_pods(echo_mesh)
    base = f"/api/v1/namespaces/{NS}/pods/{pod['metadata']['name']}/log"

    def log(container: str) -> str:
        assert echo_mesh.mesh.endpoints is not None
        return get(f"{echo_mesh.mesh.endpoints.api}{base}?container={container}",
                   headers=token(echo_mesh), context=tls(echo_mesh))[1].decode()

    until(lambda: marker in log("istio-proxy"), what="access log line")
    proxy_line = next(line for line in log("istio-proxy").splitlines() if marker in line)
    assert f'"GET {marker} HTTP/1.1" 200' in proxy_line
    assert f"handled GET {marker}" in log("echo")


def test_an_unmatched_ingress_request_is_404_nr_at_once_in_one_gateway_line(
        echo_mesh: MeshThread) -> None:
    """docs/fidelity.md §1.6 gateway: a Host no Gateway + VirtualService routes is Envoy's
    ``404 NR`` on Istio's gateway (route ``-``), answered at once; before, the gateway's
    passthrough sent it to the gateway itself, ~9,990 times, into ``503 UF,URX`` after 5.6 s.
    The bound (500 ms) is generous for a loaded 2-core box; a loop takes seconds."""
    assert echo_mesh.mesh.endpoints is not None
    marker = f"/unrouted-{uuid.uuid4().hex[:8]}"
    start = time.monotonic()
    status, body = get(echo_mesh.mesh.endpoints.ingress + marker, host="nobody.example.com")
    took = time.monotonic() - start
    assert (status, body) == (404, b"")
    assert took < 0.5, took
    (gateway,) = api(echo_mesh, "/api/v1/namespaces/istio-system/pods")["items"]
    base = f"/api/v1/namespaces/istio-system/pods/{gateway['metadata']['name']}/log"

    def lines() -> list[str]:
        assert echo_mesh.mesh.endpoints is not None
        text = get(f"{echo_mesh.mesh.endpoints.api}{base}?container=istio-proxy",
                   headers=token(echo_mesh), context=tls(echo_mesh))[1].decode()
        return [line for line in text.splitlines() if marker in line]

    (line,) = until(lines, what="the gateway's access log line")
    time.sleep(0.2)  # the access log flushes every 50 ms: a loop would have added lines
    assert lines() == [line]
    assert f'"GET {marker} HTTP/1.1" 404 NR route_not_found' in line
    assert line.rstrip().endswith(" -")  # %ROUTE_NAME%, the last field of Istio's format
    assert '"nobody.example.com"' in line


def test_app_environment_follows_the_contract(echo_mesh: MeshThread) -> None:
    """PORT, POD_NAME, POD_NAMESPACE, POD_IP, OTEL_SERVICE_NAME,
    OTEL_EXPORTER_OTLP_ENDPOINT, HTTP_PROXY/http_proxy, NO_PROXY="" plus the container's
    literal env (docs/architecture.md "App environment")."""
    status, body = via_ingress(echo_mesh, "/env")
    env = json.loads(body)
    (pod,) = echo_pods(echo_mesh)
    ann = pod["metadata"]["annotations"]
    endpoints = echo_mesh.mesh.endpoints
    assert status == 200 and endpoints is not None
    assert env["POD_NAME"] == pod["metadata"]["name"] and env["POD_NAMESPACE"] == NS
    assert env["PORT"] == ann["meshchaos.io/app-port"] and env["POD_IP"] == "127.0.0.1"
    assert env["OTEL_SERVICE_NAME"] == "echo"
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == endpoints.otlp
    assert env["OTEL_EXPORTER_OTLP_HEADERS"] == otlp_headers_env(
        read_otlp_token(echo_mesh.mesh.state.path))
    assert env["HTTP_PROXY"] == f"http://127.0.0.1:{ann['meshchaos.io/outbound-port']}"
    assert env["http_proxy"] == env["HTTP_PROXY"] and env["NO_PROXY"] == ""
    assert env["GREETING"] == "hello"


def _post_spans(url: str, trace_id: str, headers: dict[str, str]) -> int:
    """One OTLP/JSON span for ``trace_id``, posted as any local process could post it."""
    body = {"resourceSpans": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "echo"}}]},
        "scopeSpans": [{"spans": [{"traceId": trace_id, "spanId": "00f067aa0ba902b7",
                                   "name": "forged", "kind": 2, "startTimeUnixNano": "1",
                                   "endTimeUnixNano": "2"}]}]}]}
    req = urllib.request.Request(f"{url}/v1/traces", data=json.dumps(body).encode(),
                                 method="POST",
                                 headers={"Content-Type": "application/json", **headers})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def test_only_the_meshs_writers_get_spans_into_its_trace_store(echo_mesh: MeshThread) -> None:
    """docs/fidelity.md §8.5: a forged export from another process is 401 and stores nothing;
    the token is the owner's alone (otlp-token, 0600, beside the 0600 kubeconfig); with it the
    export is taken, and reads stay open, as a Jaeger query is by default."""
    endpoints = echo_mesh.mesh.endpoints
    assert endpoints is not None
    forged, real = uuid.uuid4().hex, uuid.uuid4().hex
    assert _post_spans(endpoints.otlp, forged, {}) == 401
    assert _post_spans(endpoints.otlp, forged, {"Authorization": "Bearer guessed"}) == 401
    state = echo_mesh.mesh.state
    assert (state.otlp_token_file.stat().st_mode & 0o777) == 0o600
    assert _post_spans(endpoints.otlp, real, otlp_auth_headers(state.path)) == 200
    assert get(f"{endpoints.traces}/api/traces/{forged}")[0] == 404
    status, body = get(f"{endpoints.traces}/api/traces/{real}")
    assert status == 200 and json.loads(body)["data"][0]["traceID"] == real


def test_the_sidecars_export_with_the_token_and_never_show_it(echo_mesh: MeshThread) -> None:
    """A call through the ingress leaves the gateway's and the echo sidecar's spans in the
    store (their exports carry the token from their config), while the admin listener,
    open on loopback, shows the token redacted."""
    endpoints = echo_mesh.mesh.endpoints
    assert endpoints is not None
    trace = uuid.uuid4().hex
    status, _ = get(f"{endpoints.ingress}/traced", host=ECHO_HOST,
                    headers={"traceparent": f"00-{trace}-00f067aa0ba902b7-01"})
    assert status == 200

    def services() -> set[str] | None:
        code, body = get(f"{endpoints.traces}/api/traces/{trace}")
        if code != 200:
            return None
        data = json.loads(body)["data"][0]
        found = {p["serviceName"] for p in data["processes"].values()}
        return found if len(found) >= 2 else None
    assert {"echo.shop"} <= until(services, what="the sidecars' spans")
    (pod,) = echo_pods(echo_mesh)
    admin = pod["metadata"]["annotations"]["meshchaos.io/admin-port"]
    code, body = get(f"http://127.0.0.1:{admin}/config")
    assert code == 200 and read_otlp_token(echo_mesh.mesh.state.path) not in body.decode()
    assert json.loads(body)["mesh"]["otlp_headers"] == {"authorization": "[redacted]"}


def test_pod_deleted_through_the_api_is_replaced_under_a_new_name(
        echo_mesh: MeshThread) -> None:
    """kubectl delete pod: the ReplicaSet creates a replacement with a new name that
    becomes Ready and serves; the old processes are gone (docs/fidelity.md §5.3)."""
    (old,) = echo_pods(echo_mesh)
    old_name = old["metadata"]["name"]
    assert echo_mesh.mesh.supervisor is not None
    old_pids = echo_mesh.run(_pids(echo_mesh, old_name))
    assert len(old_pids) == 2
    api(echo_mesh, f"/api/v1/namespaces/{NS}/pods/{old_name}", method="DELETE")
    new = until(lambda: [p for p in echo_pods(echo_mesh)
                         if p["metadata"]["name"] != old_name and ready(p)],
                what="a Ready replacement")
    assert len(new) == 1
    until(lambda: via_ingress(echo_mesh)[1].decode().strip().endswith(new[0]["metadata"]["name"]),
          what="the replacement serving")
    until(lambda: not any(alive(pid) for pid in old_pids), what="old processes gone")


async def _pids(thread: MeshThread, name: str) -> list[int]:
    """The pod's process ids, read on the mesh's own loop."""
    assert thread.mesh.supervisor is not None
    return list(thread.mesh.supervisor.pod_pids(NS, name).values())


def test_killed_container_restarts_and_counts_it(echo_mesh: MeshThread) -> None:
    """container-kill: restartCount + 1, lastState terminated, Ready again (§5.3)."""
    (pod,) = echo_pods(echo_mesh)
    name = pod["metadata"]["name"]
    supervisor = echo_mesh.mesh.supervisor
    assert supervisor is not None
    echo_mesh.run(supervisor.kill_container(NS, name, "echo"))

    def restarted() -> dict[str, Any] | None:
        current = api(echo_mesh, f"/api/v1/namespaces/{NS}/pods/{name}")
        app = current["status"]["containerStatuses"][0]
        return current if app["restartCount"] == 1 and ready(current) else None

    current = until(restarted, what="the restart")
    assert current["status"]["containerStatuses"][0]["lastState"]["terminated"]["signal"] == 9
    # The sidecar may still hold a pooled connection to the killed process for one request.
    until(lambda: via_ingress(echo_mesh)[0] == 200, limit_s=5, what="serving again")


def test_pod_failure_makes_the_pod_unreachable_until_recovered(echo_mesh: MeshThread) -> None:
    """pod-failure: every container incl. istio-proxy stops serving, the pod keeps its name;
    callers get a 503 (docs/fidelity.md §5.3); recovery brings it back."""
    (pod,) = echo_pods(echo_mesh)
    name = pod["metadata"]["name"]
    supervisor = echo_mesh.mesh.supervisor
    assert supervisor is not None
    ports = supervisor.pod_ports(NS, name)
    echo_mesh.run(supervisor.fail_pod(NS, name))
    try:
        assert not _listening(ports["inbound"]) and not _listening(ports["app"])
        status, _ = via_ingress(echo_mesh)
        assert status == 503
        assert [p["metadata"]["name"] for p in echo_pods(echo_mesh)] == [name]
    finally:
        echo_mesh.run(supervisor.recover_pod(NS, name))
    until(lambda: via_ingress(echo_mesh)[0] == 200, what="serving again")
    assert ready(api(echo_mesh, f"/api/v1/namespaces/{NS}/pods/{name}"))


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_second_mesh_on_a_live_state_dir_refuses_naming_pid_and_dir(
        echo_mesh: MeshThread, tmp_path: Path) -> None:
    """A live state dir belongs to its mesh: a second start refuses with pid and dir."""
    state = echo_mesh.mesh.state.path
    second = MeshThread([write_echo_manifests(tmp_path / "m")], state)
    with pytest.raises(StateDirError) as info:
        second.start(timeout=20)
    assert str(os.getpid()) in str(info.value) and str(state) in str(info.value)
    assert StateDir(state).live_pid() == os.getpid()
    assert echo_mesh.mesh.state.endpoints_file.exists()


def test_invalid_manifest_fails_start_naming_file_object_and_field(tmp_path: Path) -> None:
    """Validation like an API server: nothing starts, and the error names the file, the
    object and the field."""
    folder = write_echo_manifests(tmp_path / "m", extra="""---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: echo-timeout
  namespace: shop
spec:
  hosts: [echo]
  http:
  - route:
    - destination: {host: echo}
    timeout: 3 seconds
""")
    thread = MeshThread([folder], tmp_path / "state")
    with pytest.raises(ManifestError) as info:
        thread.start(timeout=20)
    message = str(info.value)
    assert "mesh.yaml" in message and "echo-timeout" in message
    assert "spec.http[0].timeout" in message
    assert StateDir(tmp_path / "state").owner_pid() is None


def test_stale_state_dir_is_cleaned_and_stop_leaves_no_process(tmp_path: Path) -> None:
    """A dead owner pid marks the dir stale: start cleans it. Stop ends every process and
    frees the ports."""
    state = tmp_path / "state"
    (state / "pods" / "shop_old-pod").mkdir(parents=True)
    dead = os.fork()
    if dead == 0:
        os._exit(0)
    os.waitpid(dead, 0)
    (state / "mesh.pid").write_text(f"{dead}\n")
    (state / "endpoints.json").write_text("{not json")
    thread = MeshThread([write_echo_manifests(tmp_path / "m")], state)
    endpoints = thread.start(timeout=60)
    try:
        assert not (state / "pods" / "shop_old-pod").exists()
        assert json.loads((state / "endpoints.json").read_text())["pid"] == os.getpid()
        supervisor = thread.mesh.supervisor
        assert supervisor is not None and len(supervisor.forkserver_pids) == 2
        family = [*supervisor.forkserver_pids,
                  *(pid for server in supervisor.forkserver_pids for pid in descendants(server))]
        assert len(family) >= 5  # two fork servers, echo app + sidecar, gateway
    finally:
        stop_and_reap(thread)
    assert not [pid for pid in family if alive(pid)]
    api_port = int(endpoints.api.rsplit(":", 1)[1])
    ingress_port = int(endpoints.ingress.rsplit(":", 1)[1])
    assert not _listening(api_port) and not _listening(ingress_port)
    assert not (state / "mesh.pid").exists() and not (state / "endpoints.json").exists()
    assert not (state / "otlp-token").exists()


def test_a_replaced_gateway_takes_over_the_same_ingress_port(echo_mesh: MeshThread) -> None:
    """The ingress URL in endpoints.json stays valid when the gateway pod is killed: its
    replacement binds the same port once the old one released it."""
    (old,) = api(echo_mesh, "/api/v1/namespaces/istio-system/pods")["items"]
    old_name = old["metadata"]["name"]
    api(echo_mesh, f"/api/v1/namespaces/istio-system/pods/{old_name}?gracePeriodSeconds=0",
        method="DELETE")

    def replaced() -> bool:
        pods = api(echo_mesh, "/api/v1/namespaces/istio-system/pods")["items"]
        return any(p["metadata"]["name"] != old_name and ready(p) for p in pods)

    until(replaced, what="a Ready gateway replacement")
    until(lambda: via_ingress(echo_mesh)[0] == 200, what="the ingress serving again")


def test_a_pod_that_cannot_start_fails_start_with_its_name_and_log_tail(
        tmp_path: Path) -> None:
    """start() is bounded: a crashing app fails it, naming the pod, its state and the last
    lines it printed; everything started is stopped again."""
    folder = write_echo_manifests(tmp_path / "m", extra="""---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: broken
  namespace: shop
spec:
  replicas: 1
  selector: {matchLabels: {app: broken}}
  template:
    metadata:
      labels: {app: broken}
      annotations:
        meshchaos.io/local-command: >-
          python -c "import sys; print('boom: DATABASE_URL is not set', file=sys.stderr);
          sys.exit(2)"
    spec:
      containers:
      - name: broken
        image: example/broken:1
        ports: [{containerPort: 8080}]
""")
    thread = MeshThread([folder], tmp_path / "state")
    with pytest.raises(ProcessError) as info:
        thread.start(timeout=4)
    message = str(info.value)
    assert "pod shop/broken-" in message and "exit code 2" in message
    assert "boom: DATABASE_URL is not set" in message
    assert StateDir(tmp_path / "state").owner_pid() is None
