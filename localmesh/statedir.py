"""The state dir of a running local mesh (default ``.meshchaos/``).

It is how a mesh is found from outside its process: ``mesh.pid`` names the
owner, ``endpoints.json`` the URLs it serves, ``kubeconfig`` lets kubectl and the
Kubernetes client reach its API, ``otlp-token`` (0600, like the kubeconfig) is the bearer
token its OTLP receiver wants on every export, ``pods/`` holds container logs and ``mesh.log``
the mesh's own log, ``data/`` the pods' own directories (``MESHCHAOS_DATA_DIR``: the
broker's database), removed with the mesh. A dir whose pid is dead is *stale*: the next
``up`` cleans it. A dir whose pid is alive is *live*: a second ``up`` refuses to touch it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from localmesh.errors import StateDirError
from localmesh.rabbitmq import stop_orphans

__all__ = [
    "DEFAULT_STATE_DIR",
    "Endpoints",
    "StateDir",
    "otlp_auth_headers",
    "pid_alive",
    "process_start_time",
    "read_endpoints",
    "read_otlp_token",
]

DEFAULT_STATE_DIR = Path(".meshchaos")

_PID = "mesh.pid"
_ENDPOINTS = "endpoints.json"
_KUBECONFIG = "kubeconfig"
_OTLP_TOKEN = "otlp-token"
# Everything a mesh writes here; a stale dir loses exactly these, nothing a user put beside them.
_DATA = "data"
_OWNED = (_PID, _ENDPOINTS, _KUBECONFIG, _OTLP_TOKEN, "mesh.log", "pods", _DATA)


@dataclass(frozen=True)
class Endpoints:
    """The URLs a running mesh serves (the content of ``endpoints.json``)."""

    api: str
    ingress: str
    otlp: str
    traces: str
    pid: int
    started: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any], *, source: Path) -> Endpoints:
        try:
            return cls(api=str(data["api"]), ingress=str(data["ingress"]),
                       otlp=str(data["otlp"]), traces=str(data["traces"]),
                       pid=int(data["pid"]), started=float(data["started"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise StateDirError(f"{source}: not a meshchaos endpoints file ({exc!r})") from exc


def pid_alive(pid: int) -> bool:
    """True when a process with this pid exists and is not a zombie."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive all the same
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    # The state letter follows the parenthesised command name, which may hold spaces.
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def process_start_time(pid: int) -> float | None:
    """When a process started (epoch seconds), from /proc; None when unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime "))
    except (OSError, StopIteration, ValueError):
        return None
    # Field 22 (starttime, in clock ticks after boot) counts from the state letter as field 3.
    ticks = int(stat.rsplit(")", 1)[-1].split()[19])
    return boot + ticks / os.sysconf("SC_CLK_TCK")


class StateDir:
    """One state dir: claim it for this process, publish endpoints, release it."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path).resolve()

    @property
    def pid_file(self) -> Path:
        return self.path / _PID

    @property
    def endpoints_file(self) -> Path:
        return self.path / _ENDPOINTS

    @property
    def kubeconfig(self) -> Path:
        return self.path / _KUBECONFIG

    @property
    def otlp_token_file(self) -> Path:
        return self.path / _OTLP_TOKEN

    @property
    def pods_dir(self) -> Path:
        return self.path / "pods"

    @property
    def data_dir(self) -> Path:
        return self.path / _DATA

    @property
    def mesh_log(self) -> Path:
        return self.path / "mesh.log"

    def owner_pid(self) -> int | None:
        """The pid written in ``mesh.pid``, or None when there is none (or garbage)."""
        try:
            return int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None

    def live_pid(self) -> int | None:
        """The owner's pid when a live mesh holds this dir, else None.

        A live pid that started after ``mesh.pid`` was written is someone else who got
        the dead owner's number: the dir is stale, and that process is never signalled.
        """
        pid = self.owner_pid()
        if pid is None or not pid_alive(pid):
            return None
        started = process_start_time(pid)
        try:
            written = self.pid_file.stat().st_mtime
        except OSError:
            return None
        # btime has 1 s resolution: allow that much slack.
        if started is not None and started > written + 1.0:
            return None
        return pid

    def claim(self, pid: int | None = None) -> None:
        """Make this dir ours: refuse a live one, clean a stale one, write ``mesh.pid``.

        The pid file is created with O_EXCL so two ``up`` racing on one dir
        cannot both win.
        """
        pid = os.getpid() if pid is None else pid
        live = self.live_pid()
        if live is not None:
            raise StateDirError(
                f"a mesh is already running from state dir {self.path} (pid {live}); "
                f"stop it with `meshchaos down --state-dir {self.path}` or pick another "
                "--state-dir")
        self.clean()
        self.path.mkdir(parents=True, exist_ok=True)
        self.pods_dir.mkdir(exist_ok=True)
        try:
            fd = os.open(self.pid_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError as exc:
            raise StateDirError(
                f"state dir {self.path} was claimed by another mesh while this one "
                "was starting") from exc
        with os.fdopen(fd, "w") as handle:
            handle.write(f"{pid}\n")

    def write_endpoints(self, endpoints: Endpoints) -> None:
        """Publish the endpoints atomically (readers never see half a file)."""
        tmp = self.endpoints_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(endpoints.to_json(), indent=2) + "\n")
        tmp.replace(self.endpoints_file)

    def write_otlp_token(self, token: str) -> None:
        """Publish the OTLP receiver's token for its owner only (0600, atomically): whoever
        can read it can write spans, so it is as private as the kubeconfig."""
        tmp = self.otlp_token_file.with_name(f".{_OTLP_TOKEN}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            handle.write(f"{token}\n")
        tmp.replace(self.otlp_token_file)

    def release(self) -> None:
        """Forget the running mesh (pid, endpoints, kubeconfig, OTLP token) and remove its
        pods' data; logs stay for post-mortems."""
        self.remove_data()
        for name in (_ENDPOINTS, _KUBECONFIG, _OTLP_TOKEN, _PID):
            with contextlib.suppress(FileNotFoundError):
                (self.path / name).unlink()

    def remove_data(self) -> list[int]:
        """Stop any broker process still running on ``data/`` (a killed mesh's), then remove
        the directory; the pids stopped. Callers make sure no live mesh owns the dir."""
        if not self.data_dir.exists():
            return []
        stopped = stop_orphans(self.data_dir)
        shutil.rmtree(self.data_dir, ignore_errors=True)
        return stopped

    def clean(self) -> None:
        """Remove what a previous (dead) mesh left; refuses while the owner lives."""
        live = self.live_pid()
        if live is not None:
            raise StateDirError(f"refusing to clean state dir {self.path}: pid {live} is alive")
        self.remove_data()
        for name in _OWNED:
            target = self.path / name
            if target.is_dir():
                shutil.rmtree(target, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    target.unlink()


def read_endpoints(state_dir: Path) -> Endpoints:
    """Read the endpoints of the live mesh of ``state_dir``; raise when none runs there."""
    sdir = StateDir(state_dir)
    try:
        data = json.loads(sdir.endpoints_file.read_text())
    except FileNotFoundError as exc:
        raise StateDirError(f"no mesh is running from state dir {sdir.path} "
                            f"({sdir.endpoints_file.name} is missing)") from exc
    except (OSError, json.JSONDecodeError) as exc:
        raise StateDirError(f"{sdir.endpoints_file}: unreadable ({exc})") from exc
    if not isinstance(data, dict):
        raise StateDirError(f"{sdir.endpoints_file}: not a JSON object")
    endpoints = Endpoints.from_json(data, source=sdir.endpoints_file)
    if sdir.live_pid() != endpoints.pid:
        raise StateDirError(f"the mesh of state dir {sdir.path} is gone (pid {endpoints.pid} "
                            "is not running); start one with `meshchaos up`")
    return endpoints


def read_otlp_token(state_dir: Path) -> str:
    """The bearer token the OTLP receiver of the mesh of ``state_dir`` wants; raise when
    the file is missing (no mesh there) or unreadable (not its owner)."""
    path = StateDir(state_dir).otlp_token_file
    try:
        token = path.read_text(encoding="ascii").strip()
    except FileNotFoundError as exc:
        raise StateDirError(f"{path} is missing: no mesh is running from state dir "
                            f"{path.parent}") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise StateDirError(f"{path}: unreadable ({exc})") from exc
    if not token:
        raise StateDirError(f"{path} is empty; restart the mesh with `meshchaos up`")
    return token


def otlp_auth_headers(state_dir: Path) -> dict[str, str]:
    """``Authorization: Bearer …`` for a client posting spans to the mesh's receiver."""
    return {"Authorization": f"Bearer {read_otlp_token(state_dir)}"}
