"""``meshchaos abort``: remove every chaos object the suite created, and wait until they are gone.

Finds NetworkChaos/PodChaos objects labelled ``app.kubernetes.io/managed-by=meshchaos``
(narrowed by ``--run-id`` and ``--namespace``; all namespaces by default) through the
official Kubernetes client, deletes them, waits until Chaos Mesh has recovered them and
dropped its finalizer, puts back every VirtualService a route fault of the suite edited
(``probes.routefaults``: its spec, labels and annotations as they were), and prints what it
removed and restored. Works on the local mesh (its
kubeconfig in ``.meshchaos/``) and on a real cluster (``--kubeconfig`` or the default).
When no mesh lives in ``--state-dir`` any more, a broker its killed run left running on the
state dir's data is stopped first (and its data removed).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from localmesh.statedir import DEFAULT_STATE_DIR, StateDir
from probes import chaos
from probes.errors import ProbeError

__all__ = ["add_arguments", "main", "run"]

HELP = "remove every chaos object meshchaos created and wait until they are gone"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kubeconfig", type=Path, default=None,
                        help="kubeconfig of the target (default: the local mesh's in "
                             "--state-dir if it runs, else the usual kubeconfig)")
    parser.add_argument("--namespace", default="",
                        help="only this namespace (default: all namespaces)")
    parser.add_argument("--run-id", default="", help="only the objects of this run")
    parser.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR,
                        help="state dir of the local mesh (default: .meshchaos)")
    parser.add_argument("--timeout", type=float, default=120.0,
                        help="seconds to wait for the objects to be gone (default: 120)")


def run(args: argparse.Namespace) -> int:
    """Remove the objects; print one line per object; 0 when all are gone."""
    state = StateDir(args.state_dir)
    if state.live_pid() is None:
        orphans = state.remove_data()
        if orphans:
            print(f"stopped {len(orphans)} broker processes left by a killed run "
                  f"(pids {', '.join(map(str, orphans))})")
    configuration: dict[str, Any] = {"meshchaos_state_dir": str(args.state_dir)}
    if args.kubeconfig is not None:
        configuration["kubeconfig"] = str(args.kubeconfig)
    scope = f"run '{args.run_id}'" if args.run_id else "meshchaos"
    where = f"namespace '{args.namespace}'" if args.namespace else "all namespaces"
    try:
        result = chaos.remove_suite_chaos(run_id=args.run_id, namespace=args.namespace,
                                          wait_timeout=args.timeout,
                                          configuration=configuration)
    except ProbeError as exc:
        print(f"meshchaos abort: {exc}", file=sys.stderr)
        return 1
    for ref in result["removed"]:
        # A route fault's VirtualService is the application's: it is put back, not deleted.
        verb = "restored" if ref["kind"] == "VirtualService" else "removed"
        print(f"{verb} {ref['kind']} {ref['namespace']}/{ref['name']}")
    for ref in result["already_gone"]:
        print(f"already gone {ref['kind']} {ref['namespace']}/{ref['name']}")
    if not result["removed"] and not result["already_gone"]:
        print(f"no chaos objects of {scope} in {where}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="meshchaos abort", description=HELP)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
