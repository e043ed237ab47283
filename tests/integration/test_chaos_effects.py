"""Chaos Mesh objects created through the Kubernetes API act on the real local mesh.

A small mesh of its own (namespace ``shop``: ``client`` calls ``echo`` and ``other``
through its sidecar) runs in a MeshThread; faults are applied with the suite's own
actions (``probes.chaos``, the official client) and measured from the test with plain
HTTP against the pods' inbound sidecar listeners. Semantics checked: docs/fidelity.md
§5.2 (netem on the selected pods' egress, responses included; direction/target;
partition = silent drop; loss = retransmission delays; tbf bandwidth) and §5.3
(pod-kill, pod-failure), as modelled in docs/architecture.md "Sidecar".
"""

from __future__ import annotations

import http.client
import statistics
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from localmesh.errors import NotFound
from localmesh.mesh import MeshThread
from probes import chaos

pytestmark = [pytest.mark.integration, pytest.mark.slow]

GROUP = "chaos-mesh.org"
APPS = ("client", "echo", "other")

APP = '''
import http.client, os, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

PROXY = urlparse(os.environ["HTTP_PROXY"])

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def reply(self, status, body):
        self.send_response(status)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        url = urlparse(self.path)
        query = parse_qs(url.query)
        if url.path == "/bytes":
            self.reply(200, b"x" * int(query["n"][0]))
        elif url.path == "/call":
            started = time.monotonic()
            conn = http.client.HTTPConnection(PROXY.hostname, PROXY.port, timeout=8)
            try:
                conn.request("GET", "http://%s:8080/ping" % query["to"][0])
                resp = conn.getresponse()
                resp.read()
                outcome = "%d %s" % (resp.status, resp.getheader("x-envoy-response-flags", ""))
            except OSError as exc:
                outcome = "error %s" % type(exc).__name__
            finally:
                conn.close()
            elapsed = time.monotonic() - started
            self.reply(200, ("%s %.6f" % (outcome, elapsed)).encode())
        else:
            self.reply(200, b"pong")

ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
'''


def _manifests(folder: Path) -> Path:
    docs: list[dict[str, Any]] = [
        {"apiVersion": "v1", "kind": "Namespace",
         "metadata": {"name": "shop", "labels": {"istio-injection": "enabled"}}},
        # a short connect timeout so a partition shows as UF after 1 s, not 10 s
        {"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
         "metadata": {"name": "echo", "namespace": "shop"},
         "spec": {"host": "echo", "trafficPolicy": {
             "connectionPool": {"tcp": {"connectTimeout": "1s"}}}}},
    ]
    for app in APPS:
        labels = {"app": app}
        docs.append({"apiVersion": "v1", "kind": "Service",
                     "metadata": {"name": app, "namespace": "shop", "labels": labels},
                     "spec": {"selector": labels,
                              "ports": [{"name": "http", "port": 8080, "targetPort": 8080}]}})
        docs.append({"apiVersion": "apps/v1", "kind": "Deployment",
                     "metadata": {"name": app, "namespace": "shop", "labels": labels},
                     "spec": {"replicas": 1, "selector": {"matchLabels": labels},
                              "template": {
                                  "metadata": {"labels": labels, "annotations": {
                                      "meshchaos.io/local-command": "python app.py",
                                      "meshchaos.io/local-cwd": "."}},
                                  "spec": {"containers": [{
                                      "name": "app", "image": "local/app",
                                      "ports": [{"containerPort": 8080}]}]}}}})
    (folder / "app.py").write_text(textwrap.dedent(APP))
    path = folder / "mesh.yaml"
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return path


@dataclass
class Mesh:
    thread: MeshThread
    kubeconfig: Path
    folder: Path

    @property
    def store(self) -> Any:
        return self.thread.mesh.store

    def config(self, run_id: str) -> dict[str, Any]:
        return {"kubeconfig": str(self.kubeconfig), "run_id": run_id}

    def pod_of(self, app: str) -> dict[str, Any]:
        pods = [p for p in self.store.list("", "pods", "shop", label_selector=f"app={app}")
                if not p["metadata"].get("deletionTimestamp")]
        assert len(pods) == 1, f"expected one live '{app}' pod, found {len(pods)}"
        return dict(pods[0])

    def inbound(self, app: str) -> int:
        return int(self.pod_of(app)["metadata"]["annotations"]["meshchaos.io/inbound-port"])

    def manifest(self, name: str, kind: str, spec: dict[str, Any]) -> str:
        obj = {"apiVersion": f"{GROUP}/v1alpha1", "kind": kind,
               "metadata": {"name": name, "namespace": "shop"}, "spec": spec}
        path = self.folder / f"{name}.yaml"
        path.write_text(yaml.safe_dump(obj))
        return str(path)


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    folder = tmp_path_factory.mktemp("chaos-mesh")
    thread = MeshThread([_manifests(folder)], folder / "state")
    thread.start(timeout=60)
    try:
        yield Mesh(thread, folder / "state" / "kubeconfig", folder)
    finally:
        thread.stop()


def get(port: int, path: str, timeout: float = 15.0) -> tuple[int, bytes, float]:
    """One GET on a fresh connection to a pod's inbound listener; (status, body, seconds)."""
    started = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        body = resp.read()
        return resp.status, body, time.monotonic() - started
    finally:
        conn.close()


def call(mesh: Mesh, via: str, to: str) -> tuple[str, float]:
    """Ask ``via``'s app to call ``to`` through its sidecar; (outcome, seconds inside the app)."""
    status, body, _ = get(mesh.inbound(via), f"/call?to={to}")
    assert status == 200, body
    outcome, elapsed = body.decode().rsplit(" ", 1)
    return outcome.strip(), float(elapsed)


def samples(measure: Any, n: int) -> list[float]:
    return [measure() for _ in range(n)]


def p50(values: list[float]) -> float:
    return statistics.median(values)


def delay_spec(selector_app: str, latency: str, **extra: Any) -> dict[str, Any]:
    return {"action": "delay", "mode": "all", "duration": "120s",
            "selector": {"labelSelectors": {"app": selector_app}},
            "delay": {"latency": latency, **extra.pop("delay", {})}, **extra}


def test_delay_adds_exactly_the_latency_to_calls_leaving_the_pod_only(mesh: Mesh) -> None:
    """§5.2: netem delay on the selected pod's egress, responses to callers included; a 300 ms
    hold is never shorter (architecture.md) and at most 5 ms longer at p50."""
    direct = lambda: get(mesh.inbound("echo"), "/ping")[2]  # noqa: E731
    via_echo = lambda: call(mesh, "client", "echo")[1]  # noqa: E731
    via_other = lambda: call(mesh, "client", "other")[1]  # noqa: E731
    base = {name: p50(samples(fn, 15)) for name, fn in
            (("direct", direct), ("via_echo", via_echo), ("via_other", via_other))}
    config = mesh.config("d300")
    chaos.apply_chaos(mesh.manifest("delay-echo", "NetworkChaos", delay_spec("echo", "300ms")),
                      configuration=config)
    try:
        slow = {name: samples(fn, 15) for name, fn in
                (("direct", direct), ("via_echo", via_echo), ("via_other", via_other))}
    finally:
        chaos.remove_run_chaos(configuration=config)
    for name in ("direct", "via_echo"):
        assert min(slow[name]) >= 0.300, (name, sorted(slow[name]))
        added = p50(slow[name]) - base[name]
        assert added <= 0.305, (name, added, base, sorted(slow[name]))
    # The in-mesh path has a clean baseline: the p50 difference is the delay itself (2 ms
    # slack below for noise between two samples). The test's own socket to the sidecar
    # pays a ~40 ms delayed-ACK stall without chaos (the sidecar writes a response in two
    # segments), which the 300 ms hold coalesces away, so "direct" only gets the cap.
    assert p50(slow["via_echo"]) - base["via_echo"] >= 0.298, (base, sorted(slow["via_echo"]))
    assert p50(slow["via_other"]) - base["via_other"] < 0.020, slow["via_other"]
    after = p50(samples(direct, 5))
    assert after < base["direct"] + 0.050


def test_jitter_spreads_the_added_latency(mesh: Mesh) -> None:
    """§5.2 netem `delay <lat> <jitter>`: latencies spread around the mean, not one value."""
    config = mesh.config("jit")
    chaos.apply_chaos(mesh.manifest("jitter-echo", "NetworkChaos",
                                    delay_spec("echo", "100ms", delay={"jitter": "50ms"})),
                      configuration=config)
    try:
        values = samples(lambda: call(mesh, "client", "echo")[1], 30)
    finally:
        chaos.remove_run_chaos(configuration=config)
    assert max(values) - min(values) >= 0.040, values
    assert statistics.pstdev(values) >= 0.010, values
    assert min(values) >= 0.045, values
    assert 0.070 <= p50(values) <= 0.135, values


def test_direction_to_with_a_target_affects_only_that_link(mesh: Mesh) -> None:
    """§5.2: `to` with a target → on the selected pods, only traffic to the target pods."""
    base_echo = p50([call(mesh, "client", "echo")[1] for _ in range(5)])
    base_other = p50([call(mesh, "client", "other")[1] for _ in range(5)])
    base_direct = p50(samples(lambda: get(mesh.inbound("client"), "/ping")[2], 5))
    spec = delay_spec("client", "200ms", direction="to", target={
        "mode": "all", "selector": {"labelSelectors": {"app": "echo"}}})
    config = mesh.config("dirto")
    chaos.apply_chaos(mesh.manifest("client-to-echo", "NetworkChaos", spec),
                      configuration=config)
    try:
        to_echo = [call(mesh, "client", "echo")[1] for _ in range(5)]
        to_other = [call(mesh, "client", "other")[1] for _ in range(5)]
        direct = samples(lambda: get(mesh.inbound("client"), "/ping")[2], 5)
    finally:
        chaos.remove_run_chaos(configuration=config)
    assert min(to_echo) >= 0.200, to_echo
    assert p50(to_echo) - base_echo <= 0.230, to_echo
    assert p50(to_other) - base_other < 0.030, to_other
    assert p50(direct) - base_direct < 0.030, direct


def test_partition_gives_connect_timeouts_not_refusals(mesh: Mesh) -> None:
    """§5.2: partition = silent DROP on both ends: callers see connect timeouts (UF after the
    connect timeout) or stalls, never a fast refusal; other links are untouched."""
    spec = {"action": "partition", "mode": "all", "duration": "120s", "direction": "both",
            "selector": {"labelSelectors": {"app": "client"}},
            "target": {"mode": "all", "selector": {"labelSelectors": {"app": "echo"}}}}
    config = mesh.config("part")
    chaos.apply_chaos(mesh.manifest("partition-client-echo", "NetworkChaos", spec),
                      configuration=config)
    try:
        outcome, elapsed = call(mesh, "client", "echo")
        other_outcome, other_elapsed = call(mesh, "client", "other")
        status, _, direct_elapsed = get(mesh.inbound("echo"), "/ping")
    finally:
        chaos.remove_run_chaos(configuration=config)
    assert not outcome.startswith("200"), outcome
    assert elapsed >= 0.95, (outcome, elapsed)
    assert "refused" not in outcome.lower(), outcome
    assert outcome.startswith("503") or "timeout" in outcome.lower(), outcome
    assert other_outcome.startswith("200") and other_elapsed < 0.5
    assert status == 200 and direct_elapsed < 0.5
    healed, _ = call(mesh, "client", "echo")
    assert healed.startswith("200"), healed


def test_loss_inflates_the_tail_in_retransmission_steps(mesh: Mesh) -> None:
    """§5.2 loss + architecture.md: a lost send is resent after the 200 ms RTO, doubling per
    consecutive loss, so added latencies cluster at 0, 200, 600, 1400 ms."""
    # timed inside the client app: the in-mesh path has a clean ~2 ms baseline
    base = p50(samples(lambda: call(mesh, "client", "echo")[1], 10))
    spec = {"action": "loss", "mode": "all", "duration": "120s",
            "selector": {"labelSelectors": {"app": "echo"}}, "loss": {"loss": "30"}}
    config = mesh.config("loss")
    chaos.apply_chaos(mesh.manifest("loss-echo", "NetworkChaos", spec), configuration=config)
    try:
        values = samples(lambda: call(mesh, "client", "echo")[1], 40)
    finally:
        chaos.remove_run_chaos(configuration=config)
    extra = [v - base for v in values]
    steps = (0.0, 0.2, 0.6, 1.4, 3.0)
    off_step = [e for e in extra if min(abs(e - s) for s in steps) > 0.06]
    # A busy 2-core runner can stall one call by tens of ms; a wrong model (a uniform or a
    # fixed delay) would put most samples off the steps, and a hold never shortens a call.
    assert len(off_step) <= 2, (off_step, extra)
    assert all(e >= -0.02 for e in extra), extra
    assert any(e >= 0.19 for e in extra), extra
    assert sum(e < 0.06 for e in extra) >= 10, extra


def test_bandwidth_caps_throughput_within_ten_percent(mesh: Mesh) -> None:
    """§5.2 bandwidth = tbf rate R: a long transfer runs at the rate (bps = bytes/s)."""
    size = 600_000
    spec = {"action": "bandwidth", "mode": "all", "duration": "120s",
            "selector": {"labelSelectors": {"app": "echo"}},
            "bandwidth": {"rate": "300kbps", "limit": 20971520, "buffer": 10000}}
    _, _, fast = get(mesh.inbound("echo"), f"/bytes?n={size}")
    config = mesh.config("bw")
    chaos.apply_chaos(mesh.manifest("bandwidth-echo", "NetworkChaos", spec),
                      configuration=config)
    try:
        status, body, elapsed = get(mesh.inbound("echo"), f"/bytes?n={size}")
    finally:
        chaos.remove_run_chaos(configuration=config)
    assert status == 200 and len(body) == size
    throughput = size / elapsed
    assert fast < elapsed / 4
    assert 0.9 * 300_000 <= throughput <= 1.1 * 300_000, throughput


def test_pod_kill_yields_a_new_pod_name_and_a_ready_pod(mesh: Mesh) -> None:
    """§5.3 pod-kill: Delete(pod); the replacement has a new name and becomes Ready."""
    old = mesh.pod_of("other")["metadata"]["name"]
    spec = {"action": "pod-kill", "mode": "one", "duration": "60s",
            "selector": {"labelSelectors": {"app": "other"}}}
    config = mesh.config("kill")
    result = chaos.apply_chaos(mesh.manifest("kill-other", "PodChaos", spec),
                               configuration=config)
    assert result["records"][0]["id"] == f"shop/{old}"
    try:
        deadline = time.monotonic() + 30
        while True:
            pods = [p for p in mesh.store.list("", "pods", "shop", label_selector="app=other")
                    if not p["metadata"].get("deletionTimestamp")]
            ready = [p for p in pods if p["metadata"]["name"] != old and any(
                c.get("type") == "Ready" and c.get("status") == "True"
                for c in (p.get("status") or {}).get("conditions") or [])]
            if ready:
                break
            assert time.monotonic() < deadline, pods
            time.sleep(0.1)
        with pytest.raises(NotFound):
            mesh.store.get("", "pods", "shop", old)
        # Endpoints reach the caller's sidecar after readiness (as EDS does): poll, bounded.
        outcomes = []
        while not (outcomes and outcomes[-1].startswith("200")):
            assert time.monotonic() < deadline + 10, outcomes
            outcomes.append(call(mesh, "client", "other")[0])
            time.sleep(0.1)
    finally:
        chaos.remove_run_chaos(configuration=config)


def test_pod_failure_makes_the_pod_unreachable_for_its_duration(mesh: Mesh) -> None:
    """§5.3 pod-failure: every container, istio-proxy included, stops serving until the
    duration ends; then the pod serves again."""
    port = mesh.inbound("echo")
    spec = {"action": "pod-failure", "mode": "all", "duration": "3s",
            "selector": {"labelSelectors": {"app": "echo"}}}
    config = mesh.config("fail")
    started = time.monotonic()
    chaos.apply_chaos(mesh.manifest("fail-echo", "PodChaos", spec), configuration=config)
    try:
        with pytest.raises(OSError):
            get(port, "/ping", timeout=1.0)
        outcome, _ = call(mesh, "client", "echo")
        assert not outcome.startswith("200"), outcome
        while time.monotonic() - started < 2.5:
            with pytest.raises(OSError):
                get(port, "/ping", timeout=0.5)
            time.sleep(0.2)
        deadline = started + 15
        while True:
            try:
                status, _, _ = get(mesh.inbound("echo"), "/ping", timeout=1.0)
            except OSError:
                status = 0
            if status == 200:
                break
            assert time.monotonic() < deadline, "echo did not serve again after pod-failure"
            time.sleep(0.2)
        assert time.monotonic() - started >= 3.0
    finally:
        chaos.remove_run_chaos(configuration=config)


def test_container_kill_restarts_the_container_in_the_same_pod(mesh: Mesh) -> None:
    """§5.3 container-kill: the named container is killed and the kubelet restarts it: same
    pod name, restartCount + 1, and the pod serves again."""
    pod = mesh.pod_of("other")
    name = pod["metadata"]["name"]

    def restarts() -> int:
        statuses = mesh.store.get("", "pods", "shop", name)["status"]["containerStatuses"]
        return int(next(s["restartCount"] for s in statuses if s["name"] == "app"))

    before = restarts()
    spec = {"action": "container-kill", "mode": "one", "duration": "60s",
            "containerNames": ["app"], "selector": {"labelSelectors": {"app": "other"}}}
    config = mesh.config("ckill")
    result = chaos.apply_chaos(mesh.manifest("ckill-other", "PodChaos", spec),
                               configuration=config)
    try:
        assert result["records"] == [{"id": f"shop/{name}/app", "selectorKey": ".",
                                      "phase": "Injected"}]
        deadline = time.monotonic() + 30
        while restarts() != before + 1:
            assert time.monotonic() < deadline, restarts()
            time.sleep(0.1)
        outcomes: list[str] = []
        while not (outcomes and outcomes[-1].startswith("200")):
            assert time.monotonic() < deadline, outcomes
            outcomes.append(call(mesh, "client", "other")[0])
            time.sleep(0.1)
        assert mesh.pod_of("other")["metadata"]["name"] == name
    finally:
        chaos.remove_run_chaos(configuration=config)


def test_direction_from_shapes_the_targets_egress_toward_the_sources_only(mesh: Mesh) -> None:
    """§5.2: `from` → tc on the *target* pods for traffic to the sources: echo's answers to
    client are held, its answers to anyone else are not."""
    base_echo = p50([call(mesh, "client", "echo")[1] for _ in range(5)])
    spec = delay_spec("client", "200ms", direction="from", target={
        "mode": "all", "selector": {"labelSelectors": {"app": "echo"}}})
    config = mesh.config("dirfrom")
    result = chaos.apply_chaos(mesh.manifest("client-from-echo", "NetworkChaos", spec),
                               configuration=config)
    try:
        assert {r["selectorKey"] for r in result["records"]} == {".", ".Target"}
        from_echo = [call(mesh, "client", "echo")[1] for _ in range(5)]
        to_other = [call(mesh, "client", "other")[1] for _ in range(5)]
        direct = [get(mesh.inbound("echo"), "/ping")[2] for _ in range(5)]
    finally:
        chaos.remove_run_chaos(configuration=config)
    assert min(from_echo) >= 0.200, from_echo
    assert p50(from_echo) - base_echo <= 0.230, from_echo
    assert p50(to_other) < 0.050, to_other
    assert max(direct) < 0.150, direct
