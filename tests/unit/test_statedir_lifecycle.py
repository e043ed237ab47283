"""The state dir: claimed by one live mesh, cleaned when its owner is dead.

docs/architecture.md "State dir": ``mesh.pid`` (a dead pid = stale dir, cleaned by
the next ``up``), ``endpoints.json`` with api/ingress/otlp/traces/pid/started.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from localmesh.errors import StateDirError
from localmesh.statedir import Endpoints, StateDir, pid_alive, read_endpoints


@pytest.fixture
def sleeper() -> Iterator[int]:
    """A live process that is not us (an owner of a state dir)."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def endpoints(pid: int) -> Endpoints:
    return Endpoints(api="http://127.0.0.1:1", ingress="http://127.0.0.1:2",
                     otlp="http://127.0.0.1:3", traces="http://127.0.0.1:4", pid=pid,
                     started=1.5)


def test_claim_writes_the_pid_and_creates_the_pods_dir(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "s")
    state.claim()
    assert state.pid_file.read_text().strip() == str(os.getpid())
    assert state.pods_dir.is_dir()
    assert state.live_pid() == os.getpid()


def test_claim_of_a_live_dir_refuses_naming_pid_and_dir(tmp_path: Path, sleeper: int) -> None:
    """A second ``up`` on a live state dir refuses with a message naming pid and dir."""
    state = StateDir(tmp_path / "s")
    state.claim(pid=sleeper)
    with pytest.raises(StateDirError) as info:
        StateDir(tmp_path / "s").claim()
    assert f"pid {sleeper}" in str(info.value) and str(state.path) in str(info.value)
    assert "meshchaos down" in str(info.value)
    assert state.owner_pid() == sleeper


def test_stale_dir_is_cleaned_but_foreign_files_stay(tmp_path: Path) -> None:
    """A dead owner pid marks the dir stale: the mesh's files go, a user's file stays."""
    state = StateDir(tmp_path / "s")
    (state.pods_dir / "shop_old").mkdir(parents=True)
    state.pid_file.write_text(f"{dead_pid()}\n")
    state.endpoints_file.write_text("{}")
    (state.path / "notes.txt").write_text("mine")
    assert state.live_pid() is None
    state.claim()
    assert not (state.pods_dir / "shop_old").exists()
    assert not state.endpoints_file.exists()
    assert (state.path / "notes.txt").read_text() == "mine"
    assert state.owner_pid() == os.getpid()


def test_garbage_pid_file_counts_as_stale(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "s")
    state.path.mkdir()
    state.pid_file.write_text("not a pid")
    assert state.owner_pid() is None
    state.claim()
    assert state.owner_pid() == os.getpid()


def test_endpoints_round_trip_and_release_keeps_logs(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "s")
    state.claim()
    state.write_endpoints(endpoints(os.getpid()))
    assert json.loads(state.endpoints_file.read_text())["ingress"] == "http://127.0.0.1:2"
    assert read_endpoints(state.path) == endpoints(os.getpid())
    state.mesh_log.write_text("log")
    state.release()
    assert not state.pid_file.exists() and not state.endpoints_file.exists()
    assert state.mesh_log.exists()


def test_read_endpoints_says_no_mesh_runs_when_missing_or_dead(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "s")
    with pytest.raises(StateDirError, match="no mesh is running from state dir"):
        read_endpoints(state.path)
    state.path.mkdir()
    state.write_endpoints(endpoints(dead_pid()))
    with pytest.raises(StateDirError,
                       match=r"is gone \(pid \d+ is not running\); start one with `meshchaos up`"):
        read_endpoints(state.path)
    state.endpoints_file.write_text("[1, 2]")
    with pytest.raises(StateDirError, match="not a JSON object"):
        read_endpoints(state.path)


def test_a_zombie_is_not_alive() -> None:
    """A child that exited but was not reaped yet is dead for our purposes."""
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    try:
        for _ in range(200):  # the child needs a moment to exit
            if not pid_alive(pid):
                break
            time.sleep(0.01)
        assert not pid_alive(pid)
    finally:
        os.waitpid(pid, 0)
    assert not pid_alive(-1) and not pid_alive(0)


def test_a_reused_pid_does_not_make_a_dir_live(tmp_path: Path, sleeper: int) -> None:
    """A live process that started after mesh.pid was written got a dead owner's number:
    the dir is stale, and nothing would signal that process."""
    state = StateDir(tmp_path / "s")
    state.path.mkdir()
    state.pid_file.write_text(f"{sleeper}\n")
    old = time.time() - 120
    os.utime(state.pid_file, (old, old))
    assert pid_alive(sleeper) and state.live_pid() is None
    state.claim()
    assert state.owner_pid() == os.getpid()
