"""The supervisor runs pods as process groups the way the kubelet runs containers.

Real processes on loopback: a tiny app (tests/data/echo_app.py) and the real
sidecar (``python -m localmesh.sidecar``). The control plane is a stand-in that
pushes a minimal configuration, so these tests do not depend on localmesh.xds.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from localmesh.store import ObjectStore
from localmesh.supervisor import Supervisor
from localmesh.supervisor.container import ContainerRun
from localmesh.supervisor.pods import PodRunner
from localmesh.supervisor.spawner import ForkServer

DATA = Path(__file__).resolve().parents[1] / "data"
NS = "shop"


class StandInXds:
    """Pushes a minimal sidecar config on register, like XdsServer.register_sidecar does."""

    def __init__(self) -> None:
        self.registered: dict[tuple[str, str], str] = {}
        self.unregistered: list[tuple[str, str]] = []
        self._tasks: set[asyncio.Task[None]] = set()

    def register_sidecar(self, namespace: str, pod: str, admin_url: str) -> None:
        self.registered[(namespace, pod)] = admin_url
        task = asyncio.ensure_future(asyncio.to_thread(self._push, namespace, pod, admin_url))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def unregister_sidecar(self, namespace: str, pod: str) -> None:
        self.registered.pop((namespace, pod), None)
        self.unregistered.append((namespace, pod))

    @staticmethod
    def _push(namespace: str, pod: str, admin_url: str) -> None:
        doc = {"version": 1, "node": {"pod": pod, "namespace": namespace, "service": "echo",
                                      "mode": "sidecar"},
               "mesh": {"access_log": {"enabled": True, "encoding": "TEXT"}}}
        req = urllib.request.Request(f"{admin_url}/config", data=json.dumps(doc).encode(),
                                     method="POST")
        with urllib.request.urlopen(req, timeout=5) as resp:
            resp.read()


def deployment(name: str = "echo", replicas: int = 1, *, env: dict[str, str] | None = None,
               command: str | None = None, probe: bool = True) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": name, "image": f"example/{name}:1",
        "ports": [{"containerPort": 8080}],
        "env": [{"name": k, "value": v} for k, v in (env or {}).items()],
    }
    if probe:
        container["readinessProbe"] = {"httpGet": {"path": "/healthz", "port": 8080},
                                       "periodSeconds": 1}
    annotations = {"meshchaos.io/local-command": command or f"python {DATA / 'echo_app.py'}"}
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                 "template": {"metadata": {"labels": {"app": name}, "annotations": annotations},
                              "spec": {"terminationGracePeriodSeconds": 2,
                                       "containers": [container]}}},
    }


def pods(store: ObjectStore, app: str = "echo") -> list[dict[str, Any]]:
    return [p for p in store.list("", "pods", NS, label_selector=f"app={app}")
            if not p["metadata"].get("deletionTimestamp")]


def ready(pod: dict[str, Any]) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True"
               for c in (pod.get("status") or {}).get("conditions") or [])


async def until(check: Any, limit_s: float = 10.0, what: str = "condition") -> Any:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit_s
    while loop.time() < deadline:
        value = check()
        if value:
            return value
        await asyncio.sleep(0.02)
    raise AssertionError(f"{what} not reached within {limit_s}s")


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def http_get(port: int, path: str = "/", *, proxy_host: str | None = None) -> tuple[int, str]:
    url = f"http://127.0.0.1:{port}{path}"
    req = urllib.request.Request(url)
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.fixture
async def mesh(tmp_path: Path) -> AsyncIterator[tuple[ObjectStore, Supervisor, StandInXds]]:
    store = ObjectStore()
    store.create({"apiVersion": "v1", "kind": "Namespace",
                  "metadata": {"name": NS, "labels": {"istio-injection": "enabled"}}})
    xds = StandInXds()
    supervisor = Supervisor(store, xds, state_dir=tmp_path, otlp_endpoint="http://127.0.0.1:1")
    pids: list[int] = []
    try:
        yield store, supervisor, xds
    finally:
        pids = supervisor.all_pids()
        await supervisor.stop()
        for pid in pids:
            if alive(pid):
                os.killpg(pid, signal.SIGKILL)
        assert not [p for p in pids if alive(p)], "processes outlived the supervisor"


async def start_echo(store: ObjectStore, supervisor: Supervisor, **kw: Any) -> dict[str, Any]:
    store.create(deployment(**kw))
    await supervisor.start()
    await supervisor.wait_ready(20)
    (pod,) = pods(store)
    return pod


async def test_deployment_becomes_replicaset_and_ready_pod_with_generated_names(mesh: Any) -> None:
    """Deployment D → ReplicaSet D-<10 hex> → Pod D-<hash>-<5 alnum>, owned by its RS
    (docs/architecture.md "Pods as processes"); status replicas counts follow."""
    store, supervisor, _ = mesh
    store.create(deployment(replicas=2))
    await supervisor.start()
    await supervisor.wait_ready(20)
    (rs,) = store.list("apps", "replicasets", NS)
    assert rs["metadata"]["name"].startswith("echo-") and len(rs["metadata"]["name"]) == 15
    assert rs["metadata"]["ownerReferences"][0]["kind"] == "Deployment"
    running = pods(store)
    assert len(running) == 2
    for pod in running:
        name = pod["metadata"]["name"]
        assert name.startswith(rs["metadata"]["name"] + "-") and len(name) == 21
        assert pod["metadata"]["ownerReferences"][0]["uid"] == rs["metadata"]["uid"]
        assert pod["status"]["phase"] == "Running" and ready(pod)
        assert pod["status"]["podIP"] == "127.0.0.1"
        names = [c["name"] for c in pod["status"]["containerStatuses"]]
        assert names == ["echo", "istio-proxy"]
    await until(lambda: store.get("apps", "deployments", NS, "echo").get("status", {})
                .get("availableReplicas") == 2, what="deployment available")
    rs = store.get("apps", "replicasets", NS, rs["metadata"]["name"])
    assert rs["status"]["readyReplicas"] == 2 and rs["status"]["replicas"] == 2


async def test_app_gets_env_contract_and_ports_annotations(mesh: Any) -> None:
    """App env: container env + PORT, POD_NAME, POD_NAMESPACE, POD_IP, OTEL_*, HTTP_PROXY,
    NO_PROXY (docs/architecture.md "App environment")."""
    store, supervisor, _ = mesh
    pod = await start_echo(store, supervisor, env={"GREETING": "hi"})
    ann = pod["metadata"]["annotations"]
    ports = supervisor.pod_ports(NS, pod["metadata"]["name"])
    assert {k: int(ann[f"meshchaos.io/{k}-port"]) for k in ports} == ports
    status, body = await asyncio.to_thread(http_get, ports["app"], "/env")
    env = json.loads(body)
    assert status == 200
    assert env["GREETING"] == "hi"
    assert env["PORT"] == str(ports["app"])
    assert env["POD_NAME"] == pod["metadata"]["name"] and env["POD_NAMESPACE"] == NS
    assert env["POD_IP"] == "127.0.0.1"
    assert env["OTEL_SERVICE_NAME"] == "echo"
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://127.0.0.1:1"
    assert env["HTTP_PROXY"] == env["http_proxy"] == f"http://127.0.0.1:{ports['outbound']}"
    assert env["NO_PROXY"] == ""


async def test_app_output_lands_in_its_container_log(mesh: Any, tmp_path: Path) -> None:
    """stdout and stderr of the app are the app container's log, one entry per line."""
    store, supervisor, _ = mesh
    pod = await start_echo(store, supervisor)
    name = pod["metadata"]["name"]
    await asyncio.to_thread(http_get, supervisor.pod_ports(NS, name)["app"], "/hello")

    def app_log() -> str:
        return str(supervisor.logs.read(NS, name, "echo", since_seconds=None,
                                        tail_lines=None, timestamps=False, previous=False))

    text = await until(lambda: "handled GET /hello" in app_log() and app_log(), what="log line")
    assert "echo-app listening on" in text and "echo-app stderr line" in text
    assert (tmp_path / "pods" / f"{NS}_{name}" / "echo.log").exists()


async def test_readiness_probe_holds_pod_unready_until_it_passes(mesh: Any) -> None:
    """readinessProbe.httpGet gates Ready (k8s: a pod is Ready when all containers are)."""
    store, supervisor, _ = mesh
    store.create(deployment(env={"READY_AFTER_S": "1.0"}))
    await supervisor.start()
    pod = await until(lambda: [p for p in pods(store) if "meshchaos.io/app-port" in
                               p["metadata"].get("annotations", {})], what="pod started")
    name = pod[0]["metadata"]["name"]
    port = supervisor.pod_ports(NS, name)["app"]
    await until(lambda: _answers(port), what="app listening")
    assert not ready(store.get("", "pods", NS, name)), "Ready before the probe passed"
    await until(lambda: ready(store.get("", "pods", NS, name)), what="Ready", limit_s=10)


def _answers(port: int) -> bool:
    import socket
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


async def test_deleted_pod_is_replaced_with_new_name_and_processes_gone(mesh: Any) -> None:
    """Graceful delete: SIGTERM, purge; the ReplicaSet creates a replacement at once with a
    new name (docs/fidelity.md §5.3 pod-kill: new pod name)."""
    store, supervisor, xds = mesh
    pod = await start_echo(store, supervisor)
    old = pod["metadata"]["name"]
    old_pids = supervisor.pod_pids(NS, old)
    store.delete("", "pods", NS, old)
    new = await until(lambda: [p for p in pods(store) if p["metadata"]["name"] != old
                               and ready(p)], what="replacement Ready")
    assert new[0]["metadata"]["name"] != old
    await until(lambda: not any(alive(p) for p in old_pids.values()), what="old pids gone")
    await until(lambda: not [p for p in store.list("", "pods", NS)
                             if p["metadata"]["name"] == old], what="old pod purged")
    assert (NS, old) in xds.unregistered
    reasons = [e["reason"] for e in store.list("", "events", NS)
               if e["involvedObject"]["name"] == old]
    assert {"Scheduled", "Created", "Started", "Killing"} <= set(reasons)


async def test_killed_container_restarts_with_restart_count_plus_one(mesh: Any) -> None:
    """container-kill: the kubelet restarts the container, restartCount + 1 (§5.3)."""
    store, supervisor, _ = mesh
    pod = await start_echo(store, supervisor)
    name = pod["metadata"]["name"]
    before = supervisor.pod_pids(NS, name)["echo"]
    await supervisor.kill_container(NS, name, "echo")

    def restarted() -> dict[str, Any] | None:
        current = store.get("", "pods", NS, name)
        app = current["status"]["containerStatuses"][0]
        return current if app["restartCount"] == 1 and ready(current) else None

    current = await until(restarted, what="restart")
    app = current["status"]["containerStatuses"][0]
    assert app["lastState"]["terminated"]["exitCode"] == 137
    assert supervisor.pod_pids(NS, name)["echo"] != before
    assert not alive(before)
    previous = supervisor.logs.read(NS, name, "echo", since_seconds=None, tail_lines=None,
                                    timestamps=False, previous=True)
    assert "echo-app listening" in previous


async def test_pod_failure_stops_every_container_and_recover_brings_it_back(mesh: Any) -> None:
    """pod-failure replaces every container, istio-proxy included; the pod keeps its name
    (docs/fidelity.md §5.3)."""
    store, supervisor, _ = mesh
    pod = await start_echo(store, supervisor)
    name = pod["metadata"]["name"]
    ports = supervisor.pod_ports(NS, name)
    await supervisor.fail_pod(NS, name)
    assert not _answers(ports["app"]) and not _answers(ports["inbound"])
    failed = await until(lambda: (p := store.get("", "pods", NS, name)) and not ready(p) and p,
                         what="unready")
    assert all(c["image"].startswith("gcr.io/google-containers/pause")
               for c in failed["status"]["containerStatuses"])
    await supervisor.recover_pod(NS, name)
    await until(lambda: ready(store.get("", "pods", NS, name)), what="Ready again")
    assert _answers(ports["app"]) and _answers(ports["inbound"])
    assert [p["metadata"]["name"] for p in pods(store)] == [name]


async def test_crashing_app_backs_off_and_counts_restarts(mesh: Any) -> None:
    """A container that exits is restarted with back-off and a BackOff event (kubelet)."""
    store, supervisor, _ = mesh
    store.create(deployment(command=f"{sys.executable} -c 'import sys; sys.exit(3)'",
                            probe=False))
    await supervisor.start()

    def crashed() -> dict[str, Any] | None:
        found = pods(store)
        if not found or not found[0].get("status"):
            return None
        app = found[0]["status"]["containerStatuses"][0]
        return found[0] if app["restartCount"] >= 2 else None

    pod = await until(crashed, what="two restarts")
    app = pod["status"]["containerStatuses"][0]
    assert app["lastState"]["terminated"]["exitCode"] == 3
    reasons = {e["reason"] for e in store.list("", "events", NS)}
    assert "BackOff" in reasons
    with pytest.raises(Exception, match="not Ready") as info:
        await supervisor.wait_ready(0.5)
    assert pod["metadata"]["name"] in str(info.value)


async def test_failing_readiness_probe_unreadies_the_pod_with_an_unhealthy_event(
        mesh: Any) -> None:
    """A Ready container whose probe fails failureThreshold times is unready (Unhealthy
    event, kubelet) and Ready again once the probe passes; the process keeps running."""
    store, supervisor, _ = mesh
    pod = await start_echo(store, supervisor)
    name = pod["metadata"]["name"]
    port = supervisor.pod_ports(NS, name)["app"]
    pid = supervisor.pod_pids(NS, name)["echo"]
    await asyncio.to_thread(http_get, port, "/unhealthy")
    await until(lambda: not ready(store.get("", "pods", NS, name)), limit_s=15,
                what="unready")
    events = [e for e in store.list("", "events", NS) if e["reason"] == "Unhealthy"]
    assert events and events[0]["type"] == "Warning"
    await asyncio.to_thread(http_get, port, "/healthy")
    await until(lambda: ready(store.get("", "pods", NS, name)), limit_s=15, what="Ready again")
    assert supervisor.pod_pids(NS, name)["echo"] == pid


async def test_killed_sidecar_restarts_on_its_ports_and_is_pushed_again(mesh: Any) -> None:
    """container-kill of istio-proxy: same listeners after the restart, registered with
    the control plane again, restartCount + 1 (§5.3)."""
    store, supervisor, xds = mesh
    pod = await start_echo(store, supervisor)
    name = pod["metadata"]["name"]
    ports = supervisor.pod_ports(NS, name)
    await supervisor.kill_container(NS, name, "istio-proxy")

    def restarted() -> bool:
        current = store.get("", "pods", NS, name)
        proxy = current["status"]["containerStatuses"][1]
        return proxy["restartCount"] == 1 and ready(current)

    await until(restarted, what="sidecar restart")
    assert supervisor.pod_ports(NS, name) == ports
    assert xds.registered[(NS, name)] == f"http://127.0.0.1:{ports['admin']}"
    assert _answers(ports["inbound"]) and _answers(ports["admin"])


async def test_opted_out_pod_runs_without_sidecar_or_proxy_env(mesh: Any) -> None:
    """``sidecar.istio.io/inject: "false"`` → no istio-proxy container, no HTTP_PROXY; the
    app is still reachable directly (docs/architecture.md)."""
    store, supervisor, xds = mesh
    manifest = deployment()
    manifest["spec"]["template"]["metadata"]["labels"]["sidecar.istio.io/inject"] = "false"
    store.create(manifest)
    await supervisor.start()
    await supervisor.wait_ready(20)
    (pod,) = pods(store)
    assert [c["name"] for c in pod["spec"]["containers"]] == ["echo"]
    assert list(pod["metadata"]["annotations"]) == ["meshchaos.io/local-command",
                                                    "meshchaos.io/app-port"]
    status, body = await asyncio.to_thread(
        http_get, int(pod["metadata"]["annotations"]["meshchaos.io/app-port"]), "/env")
    assert status == 200 and "HTTP_PROXY" not in json.loads(body)
    assert xds.registered == {}


async def test_pod_without_local_command_runs_only_its_sidecar(mesh: Any) -> None:
    """No ``meshchaos.io/local-command``: only the sidecar runs; the app container waits
    with a reason that says why, and start-up does not wait for it."""
    store, supervisor, _ = mesh
    manifest = deployment()
    del manifest["spec"]["template"]["metadata"]["annotations"]
    store.create(manifest)
    await supervisor.start()
    await supervisor.wait_ready(20)
    (pod,) = pods(store)

    def statuses() -> list[dict[str, Any]] | None:
        found = store.get("", "pods", NS, pod["metadata"]["name"])
        got = (found.get("status") or {}).get("containerStatuses") or []
        return got if len(got) == 2 and got[1]["ready"] else None

    app, proxy = await until(statuses, what="sidecar Ready")
    assert app["state"]["waiting"]["reason"] == "NoLocalCommand"
    assert "meshchaos.io/local-command" in app["state"]["waiting"]["message"]
    assert proxy["ready"] is True


async def test_a_killed_fork_server_is_replaced_and_its_pods_come_back(mesh: Any) -> None:
    """Killing a fork server kills its children (PDEATHSIG); the containers restart
    (restartCount + 1) through a new fork server and the pod is Ready again."""
    store, supervisor, _ = mesh
    pod = await start_echo(store, supervisor)
    name = pod["metadata"]["name"]
    old_servers = supervisor.forkserver_pids
    app_pid = supervisor.pod_pids(NS, name)["echo"]
    os.kill(old_servers[1], signal.SIGKILL)  # the apps' server

    def back() -> dict[str, Any] | None:
        current = store.get("", "pods", NS, name)
        app = current["status"]["containerStatuses"][0]
        return current if app["restartCount"] == 1 and ready(current) else None

    await until(back, what="the app back through a new fork server")
    assert not alive(app_pid)
    new_servers = supervisor.forkserver_pids
    assert new_servers[0] == old_servers[0] and new_servers[1] != old_servers[1]


async def test_an_app_that_starts_during_its_sidecars_probe_is_ready_without_a_period(
        mesh: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The kubelet probes a container as soon as it starts, not one period later (k8s:
    initialDelaySeconds 0). Here the app comes up while the sidecar's first successful
    probe is in flight, the race that made two of the chain's pods turn Ready 2 s (one
    periodSeconds) after the others on every mesh start; its start must wake the prober.
    The probe period is stretched to 30 s here, so a lost wake-up cannot pass unseen."""
    original, original_spawn = PodRunner._probe, ForkServer.spawn
    probing = asyncio.Event()
    held = {"done": False}

    async def spawn(self: ForkServer, argv: list[str], **kw: Any) -> Any:
        if "localmesh.sidecar" not in argv:  # the app starts once the sidecar is probed
            await probing.wait()
        return await original_spawn(self, argv, **kw)

    async def probe(self: PodRunner, container: ContainerRun) -> bool:
        if container.name != "istio-proxy" or held["done"]:
            return await original(self, container)
        probing.set()
        # Polls the real probe too, so no Event can stand in for this loop. The app's
        # container may not be registered yet when the first probe runs.
        while not (  # noqa: ASYNC110
                (app := self.containers.get("echo")) is not None and app.running
                and await original(self, container)):
            await asyncio.sleep(0.01)  # answer only once the app has started meanwhile
        held["done"] = True
        return True

    monkeypatch.setattr(ForkServer, "spawn", spawn)
    monkeypatch.setattr(PodRunner, "_period", lambda self: 30.0)
    monkeypatch.setattr(PodRunner, "_probe", probe)
    store, supervisor, _ = mesh
    store.create(deployment())
    await supervisor.start()
    await supervisor.wait_ready(10)  # a third of the probe period
    assert held["done"]
