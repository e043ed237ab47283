"""``meshchaos up``: start the local mesh from manifests and wait until every pod is Ready.

In the foreground it prints progress, a summary once every pod is Ready, then
serves until Ctrl-C or SIGTERM (``meshchaos down``) and shuts down cleanly.
With ``--detach`` it starts the mesh as a daemon and returns once every pod is
Ready (exit 0), or with the reason it could not start (exit 1).
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import gc
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from localmesh.daemon import MeshDaemon
from localmesh.errors import MeshError, StateDirError
from localmesh.manifests import DEFAULT_MANIFESTS
from localmesh.statedir import Endpoints, StateDir
from meshchaos.commands import POD_HEADER, add_state_dir, plain, pod_rows, table
from meshchaos.errors import MeshchaosError, UsageError

if TYPE_CHECKING:  # the mesh (aiohttp, schemas) loads only where it runs: not for --help
    from localmesh.mesh import LocalMesh
    from localmesh.supervisor.spawner import ForkServer

__all__ = ["HELP", "parse_set_env", "register", "run", "summary"]

EnvOverrides = dict[tuple[str, str], dict[str, str]]

HELP = "start the local mesh and wait until every pod is Ready"


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
    # The pid of a process this mesh must not outlive (the local-mesh control's chaos run).
    parser.add_argument("--parent", type=int, default=None, help=argparse.SUPPRESS)
    parser.set_defaults(func=run)


def parse_set_env(values: list[str]) -> EnvOverrides:
    """``store/catalog:DEFECT=slow`` → {("store", "catalog"): {"DEFECT": "slow"}}."""
    overrides: EnvOverrides = {}
    for value in values:
        target, sep, assignment = value.partition(":")
        namespace, slash, deployment = target.partition("/")
        key, eq, env_value = assignment.partition("=")
        if not (sep and slash and eq and namespace and deployment and key):
            raise UsageError(f"--set-env {value!r}: expected NAMESPACE/DEPLOYMENT:KEY=VALUE, "
                            "e.g. shop/orders:LOG_LEVEL=debug")
        overrides.setdefault((namespace, deployment), {})[key] = env_value
    return overrides


def _manifests(args: argparse.Namespace) -> list[Path]:
    if args.manifests:
        missing = [str(p) for p in args.manifests if not p.exists()]
        if missing:
            raise UsageError(f"--manifests {', '.join(missing)}: no such file or directory "
                            f"(relative to {Path.cwd()})")
        return [p.resolve() for p in args.manifests]
    if DEFAULT_MANIFESTS.is_dir():
        return [DEFAULT_MANIFESTS.resolve()]
    raise UsageError(f"no manifests to start: pass --manifests DIR ({DEFAULT_MANIFESTS} does "
                    f"not exist in {Path.cwd()})")


def run(args: argparse.Namespace) -> int:
    # Starting the mesh imports and builds a large heap that lives as long as the mesh:
    # the cyclic collector sweeping it meanwhile cost ~0.13 s of the start (one full pass
    # alone 80 ms). It runs again, over what is allocated after, once the mesh is up.
    gc.disable()
    if args.parent is not None:
        _die_with(args.parent)
    manifests = _manifests(args)
    overrides = parse_set_env(args.set_env)
    state = StateDir(args.state_dir)
    live = state.live_pid()
    if live is not None:
        raise StateDirError(f"a mesh is already running from state dir {state.path} (pid "
                            f"{live}); stop it with `meshchaos down --state-dir {state.path}` "
                            "or pick another --state-dir")
    if args.detach:
        return _detach(args, manifests, overrides, state)
    # Once the mesh is stopped nothing is left to collect: exit without sweeping the heap
    # (aiohttp, schemas, the store), which costs a stopping `chaos run` a few tenths.
    atexit.register(gc.freeze)
    return asyncio.run(_foreground(args, manifests, overrides, state))


def _die_with(parent: int) -> None:
    """SIGTERM (a clean stop) when ``parent`` dies; exit at once if it is already gone."""
    from localmesh.supervisor.forkserver import set_parent_death_signal

    set_parent_death_signal(signal.SIGTERM)
    if os.getppid() != parent:
        raise SystemExit(1)


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
    began = time.monotonic()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    forkservers = _launch_forkservers(manifests)
    await asyncio.sleep(0)  # the fork servers' processes start on this turn of the loop
    # While they import what the pods run, this process imports the mesh (aiohttp, the
    # API server, the controllers): half a second of CPU each, side by side on two cores.
    # A stop asked meanwhile is seen below; the mesh then stops these servers too.
    from localmesh.mesh import LocalMesh

    notifier = _Notifier(args.notify_fd)
    print(f"meshchaos up: starting the local mesh from {', '.join(map(str, manifests))}",
          flush=True)
    mesh = LocalMesh(manifests, state.path, env_overrides=overrides, progress=notifier.progress,
                     ready_limit_s=args.ready_timeout, forkservers=forkservers)
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
    gc.freeze()  # everything allocated so far stays: out of the collector's passes
    gc.enable()
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


def _launch_forkservers(manifests: list[Path]) -> dict[str, ForkServer]:
    """The mesh's fork servers, launched from a parse-only read of the manifests; none when
    they do not parse (the mesh's own start reports why, naming file and field)."""
    from localmesh.manifests import load_manifests
    from localmesh.supervisor.spawner import launch_forkservers

    try:
        parsed = load_manifests(manifests, validate=False)
    except MeshError:
        return {}
    return launch_forkservers([m.obj for m in parsed])


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
        f"  OTLP         {endpoints.otlp}  (bearer token in {state.otlp_token_file})",
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

def _detach(args: argparse.Namespace, manifests: list[Path], overrides: EnvOverrides,
            state: StateDir) -> int:
    """Start ``meshchaos up`` as a daemon and relay its progress until it is Ready."""
    daemon = MeshDaemon(manifests, state.path, set_env=args.set_env,
                        ready_timeout=args.ready_timeout)

    def serve(notify_fd: int) -> int:
        args.notify_fd = notify_fd
        return asyncio.run(_foreground(args, manifests, overrides, state))

    pid = daemon.launch(serve)
    print(f"meshchaos up: starting the local mesh in the background (pid {pid})", flush=True)
    try:
        text = daemon.wait_ready(lambda line: print(f"  {line}", flush=True))
    except KeyboardInterrupt:
        # Ctrl-C while waiting means "never mind": the half-started daemon goes too.
        daemon.stop(15)
        raise
    print(text, flush=True)
    return 0


def _daemon_main() -> int:
    """``python -m meshchaos.commands.up up ...``: what ``--detach`` runs in the daemon."""
    parser = argparse.ArgumentParser(prog="meshchaos")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args()
    try:
        return int(args.func(args))
    except (MeshError, MeshchaosError) as exc:
        print(f"meshchaos up: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    code = _daemon_main()
    # The mesh is stopped and its state dir released: flush the logs and end without
    # tearing down an interpreter that holds the whole mesh (``chaos run`` waits for it).
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
