"""The broker as a pod: Debian's rabbitmq-server run by the local mesh from
fixtures/broker/k8s, reached by a client pod over AMQP through both sidecars (tcp_proxy,
docs/fidelity.md §2.5-§2.6), with publisher confirms and a persistent message.

Needs the ``rabbitmq-server`` package (``.ci/run`` installs it; README.md "Quick start").
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from localmesh.errors import ProcessError
from localmesh.mesh import MeshThread
from localmesh.rabbitmq import SERVER, ctl, find_orphans, node_name, require_server
from localmesh.statedir import StateDir
from probes import chaos
from tests.data.amqp_client import write_client_manifests

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

ROOT = Path(__file__).resolve().parents[2]
BROKER_MANIFESTS = ROOT / "fixtures" / "broker" / "k8s"
NS = "shop"
BROKER_CLUSTER = f"outbound|5672||broker.{NS}.svc.cluster.local"
CONNECT_TIMEOUT_MS = 600

needs_rabbitmq = pytest.mark.skipif(not os.access(SERVER, os.X_OK),
                                    reason=f"{SERVER} missing: apt-get install -y rabbitmq-server")


@pytest.fixture(scope="module")
def broker_mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MeshThread]:
    if not os.access(SERVER, os.X_OK):
        pytest.skip(f"{SERVER} missing: apt-get install -y rabbitmq-server")
    root = tmp_path_factory.mktemp("broker-mesh")
    manifests = write_client_manifests(root / "manifests")
    # A short connect timeout for the broker (DestinationRule connectionPool.tcp), so that a
    # partition's connect timeout is measured in a test's time.
    (manifests / "broker-rule.yaml").write_text(textwrap.dedent(f"""\
        apiVersion: networking.istio.io/v1beta1
        kind: DestinationRule
        metadata:
          name: broker
          namespace: {NS}
        spec:
          host: broker.{NS}.svc.cluster.local
          trafficPolicy:
            connectionPool:
              tcp:
                connectTimeout: {CONNECT_TIMEOUT_MS}ms
        """))
    thread = MeshThread([manifests, BROKER_MANIFESTS], root / "state")
    thread.start(timeout=60)
    try:
        wait_pushed(thread)
        yield thread
    finally:
        thread.stop()


def wait_pushed(thread: MeshThread) -> None:
    """Every pod Ready is not every sidecar told: the client's sidecar learns the broker's
    Ready endpoint from the control plane's next push (on a cluster, the endpoints'
    propagation); a connection before it is closed as UH."""
    assert thread.mesh.xds is not None
    for pod in thread.mesh.store.list("", "pods", NS):
        thread.run(thread.mesh.xds.wait_synced(NS, pod["metadata"]["name"]))


def pod_of(thread: MeshThread, app: str) -> dict[str, Any]:
    (pod,) = [p for p in thread.mesh.store.list("", "pods", NS)
              if (p["metadata"].get("labels") or {}).get("app") == app]
    return pod


def app_port(pod: dict[str, Any]) -> int:
    return int(pod["metadata"]["annotations"]["meshchaos.io/app-port"])


def roundtrip(thread: MeshThread, query: str = "n=1") -> dict[str, Any]:
    """The client pod's answer: its messages, or (502) the AMQP error it met."""
    port = app_port(pod_of(thread, "client"))
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/roundtrip?{query}",
                                    timeout=30) as resp:
            return dict(json.loads(resp.read()))
    except urllib.error.HTTPError as exc:
        return {"status": exc.code, **json.loads(exc.read())}


def chaos_manifest(folder: Path, name: str, kind: str, spec: dict[str, Any]) -> str:
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"apiVersion": "chaos-mesh.org/v1alpha1", "kind": kind,
                                    "metadata": {"name": name, "namespace": NS},
                                    "spec": spec}))
    return str(path)


def chaos_config(thread: MeshThread, run_id: str) -> dict[str, Any]:
    return {"kubeconfig": str(thread.mesh.state.kubeconfig), "run_id": run_id}


def container_log(thread: MeshThread, app: str, container: str) -> str:
    meta = pod_of(thread, app)["metadata"]
    assert thread.mesh.supervisor is not None
    return thread.mesh.supervisor.logs.read(NS, meta["name"], container, since_seconds=None,
                                            tail_lines=None, timestamps=False, previous=False)


def proxy_log(thread: MeshThread, app: str) -> str:
    return container_log(thread, app, "istio-proxy")


def wait_for(check: Any, limit_s: float = 10.0) -> Any:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    return check()


@needs_rabbitmq
def test_the_broker_pod_is_ready_by_its_own_check_with_its_own_node_and_dirs(
        broker_mesh: MeshThread) -> None:
    """The broker's readiness is RabbitMQ's (an AMQP handshake standing for
    check_port_connectivity), its node name is the pod's, its data below the state dir."""
    pod = pod_of(broker_mesh, "broker")
    conditions = {c["type"]: c["status"] for c in pod["status"]["conditions"]}
    assert conditions["Ready"] == "True"
    name = pod["metadata"]["name"]
    data = broker_mesh.mesh.state.data_dir / f"{NS}_{name}"
    assert (data / "mnesia" / node_name(name)).is_dir()

    def log() -> str:
        return container_log(broker_mesh, "broker", "rabbitmq")

    # Ready once the AMQP listener accepts, as check_port_connectivity has it; the boot's
    # last line follows within moments.
    assert wait_for(lambda: "Server startup complete" in log())
    assert f"node {node_name(name)}" in log()
    # Its own epmd on a port of its own, never the machine's shared 4369.
    assert "epmd 4369 " not in log()


@needs_rabbitmq
def test_a_persistent_message_is_confirmed_and_consumed_through_both_sidecars(
        broker_mesh: MeshThread) -> None:
    """aio-pika publishes with publisher confirms and consumes with a manual ack through the
    client's outbound TCP listener; both sidecars log the AMQP connection as Istio logs a
    TCP connection: '"- - -" 0', the bytes of each side, the outbound|inbound cluster."""
    result = roundtrip(broker_mesh)
    client = pod_of(broker_mesh, "client")["metadata"]["name"]
    assert result["bodies"] == [f"message 0 from {client}"]
    assert result["persistent"] is True
    assert "127.0.0.1" in result["url"]  # the sidecar, as BROKER_SERVICE_* said

    def outbound_line() -> str:
        return next((ln for ln in proxy_log(broker_mesh, "client").splitlines()
                     if BROKER_CLUSTER in ln), "")

    def inbound_line() -> str:
        return next((ln for ln in proxy_log(broker_mesh, "broker").splitlines()
                     if "inbound|5672||" in ln), "")

    out, inbound = wait_for(outbound_line), wait_for(inbound_line)
    assert '"- - -" 0 - ' in out, out
    assert '"- - -" 0 - ' in inbound, inbound
    out_bytes = out.split('"-" ', 1)[1].split()[:2]
    in_bytes = inbound.split('"-" ', 1)[1].split()[:2]
    assert int(out_bytes[0]) > 0 and int(out_bytes[1]) > 0
    assert out_bytes == in_bytes  # the same stream seen from both ends


@needs_rabbitmq
def test_a_partition_between_client_and_broker_ends_the_connect_at_the_timeout(
        broker_mesh: MeshThread, tmp_path: Path) -> None:
    """NetworkChaos partition client <-> broker acts on the AMQP connection as Envoy's
    tcp_proxy sees a black hole: the connect waits the DestinationRule's connectTimeout and the
    client's sidecar logs UF,URX (docs/fidelity.md §2.6, §5.2); healed, messages flow again."""
    spec = {"action": "partition", "mode": "all", "duration": "120s", "direction": "both",
            "selector": {"labelSelectors": {"app": "client"}},
            "target": {"mode": "all", "selector": {"labelSelectors": {"app": "broker"}}}}
    config = chaos_config(broker_mesh, "broker-partition")
    chaos.apply_chaos(chaos_manifest(tmp_path, "partition-client-broker", "NetworkChaos", spec),
                      configuration=config)
    try:
        started = time.monotonic()
        result = roundtrip(broker_mesh)
        elapsed = time.monotonic() - started
    finally:
        chaos.remove_run_chaos(configuration=config)
    assert result.get("status") == 502 and "AMQPConnectionError" in result["error"], result
    assert elapsed >= CONNECT_TIMEOUT_MS / 1000.0, elapsed

    def failed_line() -> str:
        return next((ln for ln in proxy_log(broker_mesh, "client").splitlines()
                     if BROKER_CLUSTER in ln and " UF,URX " in ln), "")

    line = wait_for(failed_line)
    assert '"- - -" 0 UF,URX ' in line, line
    duration = int(line.split('"-" ', 1)[1].split()[2])
    assert duration >= CONNECT_TIMEOUT_MS, line
    assert roundtrip(broker_mesh)["bodies"], "the healed link carries messages again"


@needs_rabbitmq
def test_the_brokers_cli_tools_reach_its_node(broker_mesh: MeshThread) -> None:
    """rabbitmqctl / rabbitmq-diagnostics reach the pod's node through its own epmd and cookie
    (what the firehose tracer, ``rabbitmqctl trace_on``, will need)."""
    name = pod_of(broker_mesh, "broker")["metadata"]["name"]
    data = broker_mesh.mesh.state.data_dir / f"{NS}_{name}"
    status = ctl(data, "-q", "check_port_connectivity", tool="rabbitmq-diagnostics")
    assert status.returncode == 0, status.stdout + status.stderr
    traced = ctl(data, "trace_on")
    assert traced.returncode == 0 and "Starting tracing" in traced.stdout, traced
    assert ctl(data, "trace_off").returncode == 0


@needs_rabbitmq
def test_a_killed_broker_leaves_nothing_that_stop_orphans_cannot_end(
        broker_mesh: MeshThread) -> None:
    """What ``meshchaos abort`` / ``down`` rely on: every broker process carries the marker
    of its data dir, so find_orphans sees the live broker (and nothing else)."""
    pids = find_orphans(broker_mesh.mesh.state.data_dir)
    assert len(pids) >= 3  # launcher, epmd, the start script / the VM
    for pid in pids:
        assert Path(f"/proc/{pid}").exists()


def test_a_missing_package_fails_the_start_naming_it(tmp_path: Path) -> None:
    """No rabbitmq-server: the error names the Deployment and the Debian package."""
    with pytest.raises(ProcessError) as err:
        require_server(tmp_path / "rabbitmq-server")
    assert "rabbitmq-server" in str(err.value) and "apt-get install -y" in str(err.value)


def exec_done(pid: int, limit_s: float = 5.0) -> None:
    """Wait until ``pid`` runs its new program. With vfork, Popen returns while the kernel
    is still setting up the exec'd image, and /proc/<pid>/environ reads empty until it is
    done (seen after the conformance suite: cmdline and environ both b'')."""
    deadline = time.monotonic() + limit_s
    while not Path(f"/proc/{pid}/cmdline").read_bytes():
        assert time.monotonic() < deadline, f"pid {pid} never finished its exec"
        time.sleep(0.001)


@needs_rabbitmq
def test_down_of_a_killed_mesh_stops_its_broker_and_removes_its_data(tmp_path: Path) -> None:
    """A SIGKILLed mesh: its broker is stopped and its data removed by the next clean-up
    (``meshchaos down`` / ``abort`` call StateDir.remove_data)."""
    state = StateDir(tmp_path / "state")
    data = state.data_dir / f"{NS}_broker-x"
    data.mkdir(parents=True)
    env = dict(os.environ, MESHCHAOS_BROKER_DATA=str(data))
    sleeper = subprocess.Popen(["sleep", "60"], env=env)
    try:
        exec_done(sleeper.pid)
        assert sleeper.pid in find_orphans(state.data_dir)
        stopped = state.remove_data()
        assert sleeper.pid in stopped
        assert sleeper.wait(5) == -signal.SIGKILL
        assert not state.data_dir.exists()
    finally:
        if sleeper.poll() is None:
            sleeper.kill()


def meshchaos(*args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "meshchaos.cli", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def gone(pids: list[int], within: float = 10.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if not [p for p in pids if Path(f"/proc/{p}").exists() and not _zombie(p)]:
            return True
        time.sleep(0.05)
    return False


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0] == "Z"
    except OSError:
        return True


@needs_rabbitmq
def test_a_sigkilled_mesh_leaves_no_broker_and_down_removes_its_data(tmp_path: Path) -> None:
    """``meshchaos up --detach`` with the broker, then the daemon is SIGKILLed (a killed run):
    the broker goes with it (the fork server's death reaches the launcher as SIGTERM, the
    launcher's reaches its children) and ``meshchaos down`` removes its data dir."""
    state = tmp_path / "state"
    up = meshchaos("up", "--detach", "--manifests",
                   str(write_client_manifests(tmp_path / "m")), "--manifests",
                   str(BROKER_MANIFESTS), "--state-dir", str(state))
    assert up.returncode == 0, up.stdout + up.stderr
    data = StateDir(state).data_dir
    brokers = find_orphans(data)
    assert brokers, "the broker's processes carry the data dir's marker"
    daemon = StateDir(state).owner_pid()
    assert daemon is not None
    os.kill(daemon, signal.SIGKILL)
    assert gone(brokers, within=20), f"broker processes left: {find_orphans(data)}"
    down = meshchaos("down", "--state-dir", str(state))
    assert down.returncode == 0, down.stdout + down.stderr
    assert not data.exists()


def test_abort_and_down_stop_a_broker_left_by_a_killed_run(tmp_path: Path) -> None:
    """A broker process that outlived its mesh (simulated: a process with the marker of the
    state dir's data) is stopped by ``meshchaos abort`` (before it removes chaos, which here
    has no cluster to talk to) and, next time, by ``meshchaos down``, which removes the data."""
    state = StateDir(tmp_path / "state")
    for command in ("abort", "down"):
        data = state.data_dir / f"{NS}_broker-x"
        data.mkdir(parents=True, exist_ok=True)
        left = subprocess.Popen(["sleep", "60"],
                                env=dict(os.environ, MESHCHAOS_BROKER_DATA=str(data)))
        try:
            exec_done(left.pid)
            args = ["--state-dir", str(state.path)]
            if command == "abort":
                args += ["--kubeconfig", str(tmp_path / "no-such-kubeconfig"), "--timeout", "1"]
            result = meshchaos(command, *args)
            assert f"{left.pid}" in result.stdout, result.stdout + result.stderr
            assert left.wait(5) == -signal.SIGKILL
            assert not state.data_dir.exists()
        finally:
            if left.poll() is None:
                left.kill()


@needs_rabbitmq
def test_a_pod_kill_of_the_broker_ends_the_clients_open_connection(
        broker_mesh: MeshThread, tmp_path: Path) -> None:
    """PodChaos pod-kill of the broker: its processes (sidecar included) die, so the client's
    kept-open AMQP connection through its sidecar ends, and its sidecar logs it at once (the
    line is written when a connection ends). Runs last: the broker is replaced."""
    assert roundtrip(broker_mesh, "n=1&keep=1")["bodies"]
    before = proxy_log(broker_mesh, "client").count(BROKER_CLUSTER)
    spec = {"action": "pod-kill", "mode": "one", "duration": "60s",
            "selector": {"labelSelectors": {"app": "broker"}}}
    config = chaos_config(broker_mesh, "broker-kill")
    chaos.apply_chaos(chaos_manifest(tmp_path, "kill-broker", "PodChaos", spec),
                      configuration=config)
    try:
        ended = wait_for(lambda: proxy_log(broker_mesh, "client").count(BROKER_CLUSTER) > before,
                         limit_s=10)
    finally:
        chaos.remove_run_chaos(configuration=config)
    assert ended, "the kept connection's line appears when the killed broker's side closes"
