"""``meshchaos up --detach`` / ``status`` / ``down`` from a shell, with a temp state dir.

Every test runs the real console entry point in a subprocess and checks, through
/proc, that no process of the mesh outlives ``down``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from localmesh.kubeconfig import auth_headers, ssl_context
from tests.integration.conftest import ROOT, alive, descendants, kill_groups, write_echo_manifests

pytestmark = [pytest.mark.integration]


def meshchaos(*args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "meshchaos.cli", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def state_dir(tmp_path: Path) -> Iterator[Path]:
    state = tmp_path / "state"
    try:
        yield state
    finally:
        # Whatever a failed test left running is stopped here, and checked gone.
        pid_file = state / "mesh.pid"
        if pid_file.exists():
            pid = int(pid_file.read_text())
            if alive(pid):
                family = [pid, *descendants(pid)]
                meshchaos("down", "--state-dir", str(state))
                kill_groups([p for p in family if alive(p)])


def test_up_detach_status_down_leave_no_process_behind(tmp_path: Path, state_dir: Path) -> None:
    """up --detach returns once every pod is Ready with the summary; status lists the pods;
    down stops the daemon and every process it started."""
    manifests = write_echo_manifests(tmp_path / "m", replicas=2)
    up = meshchaos("up", "--detach", "--manifests", str(manifests), "--state-dir",
                   str(state_dir), "--set-env", "shop/echo:GREETING=bonjour")
    assert up.returncode == 0, up.stdout + up.stderr
    assert "the local mesh is up" in up.stdout
    assert f"export KUBECONFIG={state_dir.resolve() / 'kubeconfig'}" in up.stdout
    assert "Ready" in up.stdout  # progress lines relayed from the daemon
    endpoints = json.loads((state_dir / "endpoints.json").read_text())
    daemon = endpoints["pid"]
    family = [daemon, *descendants(daemon)]
    assert len(family) >= 7  # daemon, fork server, two pods of app and sidecar, gateway
    assert (state_dir / "kubeconfig").exists()
    token_file = state_dir / "otlp-token"  # the receiver's token, the owner's alone
    assert f"(bearer token in {token_file.resolve()})" in up.stdout
    assert token_file.stat().st_mode & 0o777 == 0o600
    req = urllib.request.Request(endpoints["ingress"] + "/env",
                                 headers={"Host": "echo.shop.svc.cluster.local"})
    with urllib.request.urlopen(req, timeout=5) as resp:
        assert json.loads(resp.read())["GREETING"] == "bonjour"  # --set-env reached the app

    status = meshchaos("status", "--state-dir", str(state_dir))
    assert status.returncode == 0, status.stderr
    assert "3/3 pods Ready" in status.stdout
    assert status.stdout.count("2/2     Running") == 2
    assert "no chaos objects" in status.stdout

    chaos = {"apiVersion": "chaos-mesh.org/v1alpha1", "kind": "NetworkChaos",
             "metadata": {"name": "echo-delay", "namespace": "shop"},
             "spec": {"action": "delay", "mode": "all", "duration": "60s",
                      "selector": {"namespaces": ["shop"], "labelSelectors": {"app": "echo"}},
                      "delay": {"latency": "10ms"}}}
    req = urllib.request.Request(
        endpoints["api"] + "/apis/chaos-mesh.org/v1alpha1/namespaces/shop/networkchaos",
        data=json.dumps(chaos).encode(), method="POST",
        headers={"Content-Type": "application/json",
                 **auth_headers(state_dir / "kubeconfig")})  # the mesh's token, from up
    with urllib.request.urlopen(req, timeout=5, context=ssl_context(state_dir / "kubeconfig")):
        pass
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        status = meshchaos("status", "--state-dir", str(state_dir))
        if "AllInjected=True" in status.stdout:
            break
        time.sleep(0.2)
    chaos_line = next(line for line in status.stdout.splitlines() if "echo-delay" in line)
    assert "NetworkChaos" in chaos_line and "delay" in chaos_line
    assert "AllInjected=True" in chaos_line

    down = meshchaos("down", "--state-dir", str(state_dir))
    assert down.returncode == 0, down.stderr
    assert "every process is gone" in down.stdout
    assert not [pid for pid in family if alive(pid)]
    assert not (state_dir / "mesh.pid").exists() and not token_file.exists()

    again = meshchaos("down", "--state-dir", str(state_dir))
    assert again.returncode == 0 and "nothing to stop" in again.stdout
    gone = meshchaos("status", "--state-dir", str(state_dir))
    assert gone.returncode == 1 and "no mesh is running" in gone.stderr


def test_second_up_refuses_naming_pid_and_dir_and_stale_dir_is_cleaned(
        tmp_path: Path, state_dir: Path) -> None:
    """A live state dir is refused (pid and dir named); a dead owner's dir is cleaned."""
    manifests = write_echo_manifests(tmp_path / "m")
    state_dir.mkdir(parents=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (state_dir / "mesh.pid").write_text(f"{dead.pid}\n")
    (state_dir / "endpoints.json").write_text('{"api": "http://127.0.0.1:1"}')
    up = meshchaos("up", "--detach", "--manifests", str(manifests), "--state-dir",
                   str(state_dir))
    assert up.returncode == 0, up.stdout + up.stderr
    daemon = json.loads((state_dir / "endpoints.json").read_text())["pid"]
    second = meshchaos("up", "--detach", "--manifests", str(manifests), "--state-dir",
                       str(state_dir))
    assert second.returncode == 1
    assert f"pid {daemon}" in second.stderr and str(state_dir.resolve()) in second.stderr
    assert alive(daemon)
    assert meshchaos("down", "--state-dir", str(state_dir)).returncode == 0


def test_up_with_an_invalid_manifest_fails_naming_file_object_and_field(
        tmp_path: Path, state_dir: Path) -> None:
    """The user sees which file, object and field are wrong; nothing keeps running."""
    manifests = write_echo_manifests(tmp_path / "m", extra="""---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: broken
  namespace: shop
spec:
  replicas: -1
  selector: {matchLabels: {app: broken}}
  template:
    metadata: {labels: {app: broken}}
    spec:
      containers: [{name: broken, image: x}]
""")
    up = meshchaos("up", "--detach", "--manifests", str(manifests), "--state-dir",
                   str(state_dir))
    assert up.returncode == 1
    assert "mesh.yaml" in up.stderr and "Deployment shop/broken" in up.stderr
    assert "spec.replicas" in up.stderr
    assert not (state_dir / "mesh.pid").exists()


def test_up_in_the_foreground_stops_cleanly_on_sigterm(tmp_path: Path, state_dir: Path) -> None:
    """Foreground until SIGTERM, then a clean shutdown: exit 0 and no process left."""
    manifests = write_echo_manifests(tmp_path / "m")
    proc = subprocess.Popen([sys.executable, "-m", "meshchaos.cli", "up", "--manifests",
                             str(manifests), "--state-dir", str(state_dir)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    family: list[int] = []
    try:
        deadline = time.monotonic() + 60
        assert proc.stdout is not None
        lines = []
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            lines.append(line)
            if "Stop it with" in line or not line:
                break
        assert any("the local mesh is up" in line for line in lines), "".join(lines)
        family = [proc.pid, *descendants(proc.pid)]
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0, out
        assert "every pod process is gone" in out
        assert not [pid for pid in family if alive(pid)]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        kill_groups([pid for pid in family if alive(pid) and pid != os.getpid()])


def test_bad_set_env_is_a_usage_error_that_shows_the_expected_form(state_dir: Path) -> None:
    """A malformed --set-env names the value and the expected shape."""
    result = meshchaos("up", "--manifests", str(ROOT / "tests" / "data"), "--state-dir",
                       str(state_dir), "--set-env", "echo=1")
    assert result.returncode == 1
    assert "'echo=1'" in result.stderr and "NAMESPACE/DEPLOYMENT:KEY=VALUE" in result.stderr


def test_a_killed_mesh_takes_its_pods_along_and_down_cleans_the_stale_dir(
        tmp_path: Path, state_dir: Path) -> None:
    """PR_SET_PDEATHSIG: a mesh killed with SIGKILL (no chance to clean up) leaves no pod
    process behind; ``down`` then reports the dead pid and removes the stale state."""
    manifests = write_echo_manifests(tmp_path / "m")
    up = meshchaos("up", "--detach", "--manifests", str(manifests), "--state-dir",
                   str(state_dir))
    assert up.returncode == 0, up.stdout + up.stderr
    daemon = json.loads((state_dir / "endpoints.json").read_text())["pid"]
    family = descendants(daemon)
    assert len(family) >= 4
    os.kill(daemon, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(alive(p) for p in [daemon, *family]):
        time.sleep(0.05)
    assert not [p for p in [daemon, *family] if alive(p)]
    down = meshchaos("down", "--state-dir", str(state_dir))
    assert down.returncode == 0
    assert f"pid {daemon} is gone" in down.stdout and "stale" in down.stdout
    assert not (state_dir / "mesh.pid").exists()


_OWNER = """
import sys, time
from pathlib import Path
from localmesh.daemon import MeshDaemon
daemon = MeshDaemon([Path(sys.argv[1])], Path(sys.argv[2]), owned=True)
daemon.launch()
daemon.wait_ready()
print("ready", flush=True)
time.sleep(120)
"""


def test_a_mesh_owned_by_a_killed_chaos_run_stops_with_it_and_releases_its_dir(
        tmp_path: Path, state_dir: Path) -> None:
    """No chaos left behind even on SIGKILL: the mesh a ``chaos run`` starts (an owned
    MeshDaemon) gets SIGTERM from Linux when that run dies (PR_SET_PDEATHSIG), stops every
    pod (faults die with their sidecars) and gives the state dir up for the next ``up``."""
    manifests = write_echo_manifests(tmp_path / "m")
    owner = subprocess.Popen([sys.executable, "-c", _OWNER, str(manifests), str(state_dir)],
                             cwd=ROOT, stdout=subprocess.PIPE, text=True,
                             start_new_session=True)
    try:
        assert owner.stdout is not None
        assert owner.stdout.readline().strip() == "ready"
        daemon = json.loads((state_dir / "endpoints.json").read_text())["pid"]
        family = [daemon, *descendants(daemon)]
        assert len(family) >= 4  # daemon, fork servers, the echo pod's app and sidecar
        owner.kill()
        owner.wait(10)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and any(alive(p) for p in family):
            time.sleep(0.05)
        assert not [p for p in family if alive(p)]
        assert not (state_dir / "mesh.pid").exists()  # a clean stop, not a stale dir
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait(10)
        if owner.stdout is not None:
            owner.stdout.close()
