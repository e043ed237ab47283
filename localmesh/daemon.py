"""The local mesh in a process of its own: ``meshchaos up`` run as a daemon and watched.

``meshchaos up --detach`` and the local-mesh control of ``chaos run`` both use it:
:meth:`MeshDaemon.launch` starts ``python -m meshchaos.commands.up up --notify-fd N …``
and returns at once, so the caller can do something else while the pods start (the
control imports the Kubernetes client meanwhile); :meth:`MeshDaemon.wait_ready` relays
the daemon's progress lines and returns its summary once every pod is Ready.

An *owned* daemon (``owned=True``, the control's) dies with its parent: it asks Linux for
SIGTERM when the process that launched it dies (``--parent``, ``PR_SET_PDEATHSIG``), so a
``chaos run`` killed with SIGKILL still leaves no mesh (and so no fault) behind. It leads
a session of its own either way: a terminal's Ctrl-C reaches ``chaos`` (whose safety
control removes the run's chaos through the mesh's API first), and ``chaos`` stops the
mesh afterwards with :meth:`MeshDaemon.stop`.

It lives in ``localmesh`` (the lowest layer) so that both the probes' control and the
command line can use it without importing each other; the process it starts is the
command line's ``up`` module, named in :data:`UP_MODULE` and run by name, never imported.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from localmesh.errors import MeshError
from localmesh.statedir import StateDir, pid_alive

__all__ = ["DAEMON_LOG", "UP_MODULE", "MeshDaemon", "descendants"]

DAEMON_LOG = "up.log"
# What the daemon runs (``python -m UP_MODULE up …``): the command line's up module alone,
# with no other subcommand's imports on its start.
UP_MODULE = "meshchaos.commands.up"
_STOP_TIMEOUT_S = 30.0


def descendants(root: int) -> list[int]:
    """Every live process below ``root`` (read from /proc; pods lead their own sessions
    but stay children of the mesh's fork servers)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[-1].split()
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    found: list[int] = []
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


class MeshDaemon:
    """One ``meshchaos up`` daemon: launch, wait until Ready, stop."""

    def __init__(self, manifests: Sequence[Path], state_dir: Path, *,
                 set_env: Sequence[str] = (), ready_timeout: float = 60.0,
                 owned: bool = False) -> None:
        self.manifests = [Path(p).resolve() for p in manifests]
        self.state = StateDir(state_dir)
        self.set_env = list(set_env)
        self.ready_timeout = ready_timeout
        self.owned = owned
        self.proc: subprocess.Popen[bytes] | _Forked | None = None
        self._read_fd = -1
        self._buffer = b""
        self._lock = threading.Lock()

    @property
    def log_path(self) -> Path:
        return self.state.path / DAEMON_LOG

    def command(self, notify_fd: int) -> list[str]:
        command = [sys.executable, "-m", UP_MODULE, "up", "--state-dir",
                   str(self.state.path), "--notify-fd", str(notify_fd),
                   "--ready-timeout", str(self.ready_timeout)]
        if self.owned:
            command += ["--parent", str(os.getpid())]
        for path in self.manifests:
            command += ["--manifests", str(path)]
        for value in self.set_env:
            command += ["--set-env", value]
        return command

    def launch(self, serve: Callable[[int], int] | None = None) -> int:
        """Start the daemon without waiting for it; return its pid.

        Call it from the thread that stays alive as long as the mesh should (the main
        thread): Linux sends an owned daemon its death signal when that *thread* ends.
        With ``serve`` (a single-threaded caller that has the up command loaded: the
        ``meshchaos up --detach`` CLI) the daemon is a fork of this process that calls
        ``serve(notify_fd)``, sparing a second interpreter's start and imports.
        """
        if self.proc is not None:
            raise MeshError("this mesh daemon was launched already")
        self.state.path.mkdir(parents=True, exist_ok=True)
        read_fd, write_fd = os.pipe()
        try:
            if serve is not None:
                self.proc = _Forked(self._fork(serve, read_fd, write_fd))
            else:
                with open(self.log_path, "wb") as log:
                    self.proc = subprocess.Popen(
                        self.command(write_fd), pass_fds=(write_fd,),
                        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                        start_new_session=True)
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)
        self._read_fd = read_fd
        return self.proc.pid

    def _fork(self, serve: Callable[[int], int], read_fd: int, write_fd: int) -> int:
        sys.stdout.flush()
        sys.stderr.flush()
        log = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        pid = os.fork()
        if pid:
            os.close(log)
            return pid
        code = 1
        try:  # the daemon: a session of its own, its output in the log, no way back
            os.setsid()
            os.close(read_fd)
            os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
            os.dup2(log, 1)
            os.dup2(log, 2)
            os.close(log)
            code = serve(write_fd)
        except BaseException:  # noqa: BLE001 - reported in the log, never raised in the CLI
            traceback.print_exc()
        finally:
            with contextlib.suppress(Exception):
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(code)

    def wait_ready(self, progress: Callable[[str], None] | None = None,
                   timeout: float | None = None) -> str:
        """Relay progress lines until every pod is Ready; return the daemon's summary.

        Raises MeshError with the daemon's reason (or the tail of its log) when it could
        not start; the daemon is then stopped.
        """
        if self.proc is None:
            raise MeshError("the mesh daemon was not launched")
        limit = self.ready_timeout + 30 if timeout is None else timeout
        outcome = self._relay(progress or (lambda line: None), time.monotonic() + limit)
        if outcome.get("ok"):
            return str(outcome.get("summary") or "")
        self.stop()
        reason = outcome.get("error") or (
            f"the mesh daemon exited with code {self.proc.poll()} before it was ready")
        tail = _tail(self.log_path)
        detail = f"\nlast lines of {self.log_path}:\n{tail}" if tail and not \
            outcome.get("error") else ""
        raise MeshError(f"{reason}{detail}")

    def _relay(self, progress: Callable[[str], None], deadline: float) -> dict[str, Any]:
        while time.monotonic() < deadline:
            while b"\n" in self._buffer:
                line, self._buffer = self._buffer.split(b"\n", 1)
                message = json.loads(line)
                if "progress" in message:
                    progress(str(message["progress"]))
                else:
                    self._close_pipe()
                    return dict(message)
            if self._read_fd < 0:
                return {}
            ready, _, _ = select.select([self._read_fd], [], [],
                                        max(0.0, min(1.0, deadline - time.monotonic())))
            if not ready:
                continue
            chunk = os.read(self._read_fd, 65536)
            if not chunk:
                self._close_pipe()
                return {}
            self._buffer += chunk
        limit = self.ready_timeout + 30
        return {"ok": False, "error": f"the mesh was not Ready within {limit:.0f}s"}

    def _close_pipe(self) -> None:
        if self._read_fd >= 0:
            os.close(self._read_fd)
            self._read_fd = -1

    def stop(self, timeout: float = _STOP_TIMEOUT_S) -> None:
        """SIGTERM the daemon (it stops every pod, chaos first) and wait until it is gone;
        kill what is left after ``timeout``. Idempotent."""
        with self._lock:
            proc = self.proc
            self._close_pipe()
            if proc is None or proc.returncode is not None:
                return
            family = descendants(proc.pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                for victim in [proc.pid, *family]:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.kill(victim, signal.SIGKILL)
                proc.wait()
            _wait_gone(family, time.monotonic() + 5)
            if self.state.live_pid() is None and self.state.owner_pid() == proc.pid:
                self.state.release()  # what a killed daemon could not remove


class _Forked:
    """The part of ``subprocess.Popen`` a MeshDaemon uses, for a daemon it forked."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            with contextlib.suppress(ChildProcessError):
                pid, status = os.waitpid(self.pid, os.WNOHANG)
                if pid:
                    self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(str(self.pid), timeout or 0.0)
            time.sleep(0.01)
        assert self.returncode is not None
        return self.returncode


def _wait_gone(pids: list[int], deadline: float) -> None:
    while any(pid_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.01)


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").rstrip().splitlines()[-lines:])
    except OSError:
        return ""
