"""``meshchaos down``: stop the local mesh of a state dir and wait until every process is gone.

The mesh gets SIGTERM and stops its pods (chaos recovered first); when it does
not finish within ``--timeout`` it and every process it started are killed.
Nothing running is not an error: ``down`` says so and cleans stale files. Either way the
pods' data (``<state-dir>/data``, the broker's database) is removed, and a broker a killed
mesh left running on it is stopped first.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import time
from typing import Any

from localmesh.daemon import descendants
from localmesh.statedir import StateDir, pid_alive
from meshchaos.commands import add_state_dir, plain
from meshchaos.errors import StopError

__all__ = ["HELP", "descendants", "register", "run"]

HELP = "stop the local mesh and every process it started"


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("down", help=HELP, description=plain(__doc__),
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    add_state_dir(parser)
    parser.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS",
                        help="kill what is left after this long (default: 30)")
    parser.set_defaults(func=run)


def _wait_gone(pids: list[int], deadline: float) -> list[int]:
    while time.monotonic() < deadline:
        left = [p for p in pids if pid_alive(p)]
        if not left:
            return []
        time.sleep(0.05)
    return [p for p in pids if pid_alive(p)]


def run(args: argparse.Namespace) -> int:
    state = StateDir(args.state_dir)
    pid = state.live_pid()
    if pid is None:
        pid = state.owner_pid()
        had_files = state.pid_file.exists() or state.endpoints_file.exists()
        orphans = state.remove_data()
        if orphans:
            print(f"meshchaos down: stopped {len(orphans)} broker processes a killed mesh left "
                  f"running (pids {', '.join(map(str, orphans))})")
        if had_files:
            state.release()
            print(f"meshchaos down: no mesh is running from {state.path} (pid {pid} is gone); "
                  "removed its stale state")
        else:
            print(f"meshchaos down: no mesh is running from {state.path}; nothing to stop")
        return 0
    family = descendants(pid)
    print(f"meshchaos down: stopping the mesh (pid {pid}, {len(family)} processes)...",
          flush=True)
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + args.timeout
    left = _wait_gone([pid, *family], deadline)
    if left:
        print(f"meshchaos down: {len(left)} processes still running after {args.timeout:.0f}s;"
              " killing them", flush=True)
        for victim in left:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(victim, signal.SIGKILL)
        left = _wait_gone(left, time.monotonic() + 5)
    if left:
        raise StopError(f"processes {left} of the mesh survived SIGKILL")
    state.release()  # what a killed mesh could not remove; the logs stay for post-mortems
    print(f"meshchaos down: the mesh of {state.path} is stopped; every process is gone")
    return 0
