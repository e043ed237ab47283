"""``meshchaos up``: start the local mesh from manifests and wait until every pod is Ready.

In the foreground it prints progress, a summary once every pod is Ready, then
serves until Ctrl-C or SIGTERM (``meshchaos down``) and shuts down cleanly.
With ``--detach`` it starts the mesh as a daemon and returns once every pod is
Ready (exit 0), or with the reason it could not start (exit 1).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from localmesh.errors import MeshError, StateDirError
from localmesh.statedir import Endpoints, StateDir
from meshchaos.commands import POD_HEADER, add_state_dir, plain, pod_rows, table

if TYPE_CHECKING:  # the mesh (aiohttp, schemas) loads only where it runs: not for --help
    from localmesh.mesh import LocalMesh

__all__ = ["HELP", "parse_set_env", "register", "run", "summary"]

EnvOverrides = dict[tuple[str, str], dict[str, str]]

HELP = "start the local mesh and wait until every pod is Ready"
DEFAULT_MANIFESTS = Path("fixtures/k8s")
_DETACH_LOG = "up.log"


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("up", help=HELP, description=plain(__doc__),
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--manifests", action="append", type=Path, metavar="DIR",
                        help="manifest file or folder, repeatable (default: "
                             f"{DEFAULT_MANIFESTS} when it exists)")
    add_state_dir(parser)
    parser.add_argument("--detach", action="store_true",
                        help="run the mesh in the background; return once every pod is Ready")
    parser.add_argument("--set-env", action="append", default=[],
                        metavar="NS/DEPLOY:KEY=VALUE",
                        help="set an environment variable of a deployment's app, repeatable")
    parser.add_argument("--ready-timeout", type=float, default=60.0, metavar="SECONDS",
                        help="give up when pods are not Ready after this long (default: 60)")
    parser.add_argument("--notify-fd", type=int, default=None, help=argparse.SUPPRESS)
    parser.set_defaults(func=run)


def parse_set_env(values: list[str]) -> EnvOverrides:
    """``shop/orders:DEFECT=slow`` → {("shop", "orders"): {"DEFECT": "slow"}}."""
    overrides: EnvOverrides = {}
    for value in values:
        target, sep, assignment = value.partition(":")
        namespace, slash, deployment = target.partition("/")
        key, eq, env_value = assignment.partition("=")
        if not (sep and slash and eq and namespace and deployment and key):
            raise MeshError(f"--set-env {value!r}: expected NAMESPACE/DEPLOYMENT:KEY=VALUE, "
                            "e.g. shop/orders:LOG_LEVEL=debug")
        overrides.setdefault((namespace, deployment), {})[key] = env_value
    return overrides


def _manifests(args: argparse.Namespace) -> list[Path]:
    if args.manifests:
        missing = [str(p) for p in args.manifests if not p.exists()]
        if missing:
            raise MeshError(f"--manifests {', '.join(missing)}: no such file or directory "
                            f"(relative to {Path.cwd()})")
        return [p.resolve() for p in args.manifests]
    if DEFAULT_MANIFESTS.is_dir():
        return [DEFAULT_MANIFESTS.resolve()]
    raise MeshError(f"no manifests to start: pass --manifests DIR ({DEFAULT_MANIFESTS} does "
                    f"not exist in {Path.cwd()})")


def run(args: argparse.Namespace) -> int:
    manifests = _manifests(args)
    overrides = parse_set_env(args.set_env)
    state = StateDir(args.state_dir)
    live = state.live_pid()
    if live is not None:
        raise StateDirError(f"a mesh is already running from state dir {state.path} (pid "
                            f"{live}); stop it with `meshchaos down --state-dir {state.path}` "
                            "or pick another --state-dir")
    if args.detach:
        return _detach(args, manifests, state)
    return asyncio.run(_foreground(args, manifests, overrides, state))


# -- foreground -----------------------------------------------------------------------------

class _Notifier:
    """Progress and outcome for a parent that started us with --detach (else stdout only)."""

    def __init__(self, fd: int | None) -> None:
        self.fd = fd

    def send(self, **message: Any) -> None:
        if self.fd is None:
            return
        try:
            os.write(self.fd, (json.dumps(message) + "\n").encode())
        except OSError:
            self.fd = None  # the parent is gone; the daemon goes on regardless

    def progress(self, line: str) -> None:
        print(f"  {line}", flush=True)
        self.send(progress=line)

    def close(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = None


async def _foreground(args: argparse.Namespace, manifests: list[Path],
                      overrides: EnvOverrides, state: StateDir) -> int:
    from localmesh.mesh import LocalMesh

    notifier = _Notifier(args.notify_fd)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"meshchaos up: starting the local mesh from {', '.join(map(str, manifests))}",
          flush=True)
    began = time.monotonic()
    mesh = LocalMesh(manifests, state.path, env_overrides=overrides, progress=notifier.progress,
                     ready_limit_s=args.ready_timeout)
    starting = asyncio.ensure_future(mesh.start())
    stopping = asyncio.ensure_future(stop.wait())
    await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
    if not starting.done():
        starting.cancel()
        with contextlib.suppress(asyncio.CancelledError, MeshError):
            await starting
        await mesh.stop()
        notifier.send(ok=False, error="interrupted while starting")
        print("meshchaos up: interrupted while starting; everything it started is stopped",
              file=sys.stderr)
        return 130
    try:
        endpoints = starting.result()
    except MeshError as exc:
        stopping.cancel()
        notifier.send(ok=False, error=str(exc))
        notifier.close()
        raise
    text = summary(mesh, endpoints, state, time.monotonic() - began, detached=args.detach or
                   args.notify_fd is not None)
    print(text, flush=True)
    notifier.send(ok=True, summary=text)
    notifier.close()
    await stopping
    print("meshchaos up: stopping the mesh...", flush=True)
    await mesh.stop()
    print("meshchaos up: mesh stopped, every pod process is gone", flush=True)
    return 0


def summary(mesh: LocalMesh, endpoints: Endpoints, state: StateDir, took: float, *,
            detached: bool) -> str:
    """The one-screen summary printed once every pod is Ready."""
    pods = mesh.store.list("", "pods")
    stop_hint = (f"meshchaos down --state-dir {state.path}" if detached
                 else f"Ctrl-C here, or `meshchaos down --state-dir {state.path}`")
    lines = [
        f"meshchaos up: the local mesh is up (pid {endpoints.pid}, {len(pods)} pods Ready "
        f"in {took:.1f}s)",
        f"  API server   {endpoints.api}",
        f"  ingress      {endpoints.ingress}",
        f"  OTLP         {endpoints.otlp}",
        f"  traces       {endpoints.traces}  (Jaeger query API)",
        f"  state dir    {state.path}",
        f"  kubeconfig   {state.kubeconfig}",
        "",
        table(POD_HEADER, pod_rows(pods)),
        "",
        "Use kubectl or the Kubernetes client against it:",
        f"  export KUBECONFIG={state.kubeconfig}",
        f"Stop it with: {stop_hint}",
    ]
    return "\n".join(lines)


# -- detached -------------------------------------------------------------------------------

def _detach(args: argparse.Namespace, manifests: list[Path], state: StateDir) -> int:
    """Start ``meshchaos up`` as a daemon and relay its progress until it is Ready."""
    state.path.mkdir(parents=True, exist_ok=True)
    read_fd, write_fd = os.pipe()
    # The daemon runs this module alone: no other subcommand's imports on its start-up path.
    command = [sys.executable, "-m", "meshchaos.commands.up", "up", "--state-dir",
               str(state.path),
               "--notify-fd", str(write_fd), "--ready-timeout", str(args.ready_timeout)]
    for path in manifests:
        command += ["--manifests", str(path)]
    for value in args.set_env:
        command += ["--set-env", value]
    log_path = state.path / _DETACH_LOG
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(command, pass_fds=(write_fd,), stdin=subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    os.close(write_fd)
    print(f"meshchaos up: starting the local mesh in the background (pid {proc.pid})",
          flush=True)
    try:
        outcome = _relay(read_fd, proc, args.ready_timeout + 30)
    except KeyboardInterrupt:
        # Ctrl-C while waiting means "never mind": the half-started daemon goes too.
        _stop_daemon(proc)
        raise
    if outcome.get("ok"):
        print(outcome["summary"], flush=True)
        return 0
    _stop_daemon(proc)
    reason = outcome.get("error") or (
        f"the mesh daemon exited with code {proc.poll()} before it was ready")
    tail = _tail(log_path)
    detail = f"\nlast lines of {log_path}:\n{tail}" if tail and not outcome.get("error") else ""
    raise MeshError(f"{reason}{detail}")


def _stop_daemon(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(15)


def _relay(read_fd: int, proc: subprocess.Popen[bytes], limit_s: float) -> dict[str, Any]:
    """Print the daemon's progress; return its outcome message (or {} when it died)."""
    deadline = time.monotonic() + limit_s
    buffer = b""
    with os.fdopen(read_fd, "rb", 0) as pipe:
        while time.monotonic() < deadline:
            chunk = _read_some(pipe.fileno(), deadline)
            if chunk is None:
                continue
            if not chunk:
                return {}
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                message = json.loads(line)
                if "progress" in message:
                    print(f"  {message['progress']}", flush=True)
                else:
                    return dict(message)
    return {"ok": False, "error": f"the mesh was not Ready within {limit_s:.0f}s"}


def _read_some(fd: int, deadline: float) -> bytes | None:
    ready, _, _ = select.select([fd], [], [], max(0.0, min(1.0, deadline - time.monotonic())))
    return os.read(fd, 65536) if ready else None


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").rstrip().splitlines()[-lines:])
    except OSError:
        return ""


def _daemon_main() -> int:
    """``python -m meshchaos.commands.up up ...``: what ``--detach`` runs in the daemon."""
    parser = argparse.ArgumentParser(prog="meshchaos")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args()
    try:
        return int(args.func(args))
    except MeshError as exc:
        print(f"meshchaos up: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(_daemon_main())
