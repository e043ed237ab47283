"""One container of a local pod: its process, its restarts and its status entry.

The state machine is the kubelet's, reduced to what a process can show:
``waiting`` (ContainerCreating, CrashLoopBackOff, NoLocalCommand) → ``running``
→ ``terminated`` (exit code, signal) → restarted with ``restartCount + 1`` after a
back-off that doubles while the container keeps crashing soon after start.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from dataclasses import dataclass, field

from localmesh.documents import KubeObject
from localmesh.podlogs import LogWriter
from localmesh.store import now_rfc3339
from localmesh.supervisor.spawner import Child

__all__ = ["BackOff", "ContainerRun", "exit_state", "pump_lines"]


PAUSE_IMAGE = "gcr.io/google-containers/pause:latest"


@dataclass
class BackOff:
    """Restart delays: immediate first, then doubling while crashes come quickly."""

    base: float = 0.2
    cap: float = 10.0
    # A container that ran this long is healthy again: the next crash restarts at once.
    stable_after: float = 10.0
    _streak: int = 0

    def next_delay(self, ran_for: float) -> float:
        if ran_for >= self.stable_after:
            self._streak = 0
        self._streak += 1
        if self._streak == 1:
            return 0.0
        return float(min(self.base * 2 ** (self._streak - 2), self.cap))


def exit_state(code: int, started_at: str) -> KubeObject:
    """The ``terminated`` state of a process that exited with ``code`` (negative = signal)."""
    exit_code = 128 - code if code < 0 else code
    terminated: KubeObject = {"exitCode": exit_code,
                              "reason": "Completed" if code == 0 else "Error",
                              "startedAt": started_at, "finishedAt": now_rfc3339()}
    if code < 0:
        terminated["signal"] = -code
    return {"terminated": terminated}


@dataclass
class ContainerRun:
    """Status and process of one container."""

    name: str
    image: str
    restart_count: int = 0
    state: KubeObject = field(default_factory=lambda: {"waiting": {"reason": "ContainerCreating"}})
    last_state: KubeObject = field(default_factory=dict)
    ready: bool = False
    child: Child | None = None
    started_mono: float = 0.0
    paused: bool = False  # pod-failure: the pause image runs instead
    ever_started: bool = False
    backoff: BackOff = field(default_factory=BackOff)

    def mark_running(self, child: Child) -> None:
        self.child = child
        self.started_mono = time.monotonic()
        self.state = {"running": {"startedAt": now_rfc3339()}}
        self.ready = False
        self.ever_started = True

    def mark_exited(self, code: int) -> None:
        started = (self.state.get("running") or {}).get("startedAt", now_rfc3339())
        self.last_state = exit_state(code, started)
        self.state = self.last_state
        self.child = None
        self.ready = False

    def mark_waiting(self, reason: str, message: str = "") -> None:
        waiting: KubeObject = {"reason": reason}
        if message:
            waiting["message"] = message
        self.state = {"waiting": waiting}
        self.ready = False

    def mark_paused(self) -> None:
        """The pause image runs in place of the container (Chaos Mesh pod-failure)."""
        self.paused = True
        self.child = None
        self.restart_count += 1
        self.state = {"running": {"startedAt": now_rfc3339()}}
        self.ready = False

    def status(self) -> KubeObject:
        running = "running" in self.state
        entry: KubeObject = {
            "name": self.name,
            "image": PAUSE_IMAGE if self.paused else self.image,
            "imageID": "",
            "ready": self.ready,
            "started": running,
            "restartCount": self.restart_count,
            "state": self.state,
            "lastState": self.last_state,
        }
        if self.child is not None:
            entry["containerID"] = f"localmesh://{self.child.pid}"
        return entry

    @property
    def running(self) -> bool:
        return self.child is not None and self.child.returncode is None


async def pump_lines(read_fd: int, writer: LogWriter) -> None:
    """Copy a pipe into a container log, one entry per line, until EOF."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 20)
    pipe = os.fdopen(read_fd, "rb", 0)
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), pipe)
    try:
        while True:
            try:
                line = await reader.readline()
            except ValueError:  # a line longer than the limit: log it in pieces
                line = await reader.read(1 << 20)
            if not line:
                break
            writer.write_line(line.decode("utf-8", errors="replace"))
    finally:
        transport.close()
        with contextlib.suppress(Exception):
            writer.flush()
