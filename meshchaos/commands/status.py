"""``meshchaos status``: what the local mesh of a state dir runs.

Shows the endpoints, every pod (phase, ready containers, restarts, age) and the
active chaos objects with their conditions. Exit 0 when a mesh runs, 1 when none
does.
"""

from __future__ import annotations

import argparse
from typing import Any

from localmesh.documents import KubeObject, ObjectMeta
from localmesh.statedir import StateDir, read_endpoints
from meshchaos.commands import POD_HEADER, add_state_dir, age, api_get, plain, pod_rows, table

__all__ = ["HELP", "chaos_rows", "register", "run"]

HELP = "show the local mesh's pods and active chaos"

_CHAOS = ("networkchaos", "podchaos", "httpchaos")


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("status", help=HELP, description=plain(__doc__),
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    add_state_dir(parser)
    parser.set_defaults(func=run)


def chaos_rows(objects: list[KubeObject]) -> list[list[str]]:
    """NAMESPACE KIND NAME ACTION CONDITIONS AGE; conditions as Chaos Mesh names them."""
    rows = []
    for obj in objects:
        meta: ObjectMeta = obj.get("metadata") or {}
        conditions = (obj.get("status") or {}).get("conditions") or []
        shown = ",".join(f"{c.get('type')}={c.get('status')}" for c in conditions) or "-"
        if meta.get("deletionTimestamp"):
            shown += " (deleting)"
        rows.append([str(meta.get("namespace", "")), str(obj.get("kind", "")),
                     str(meta.get("name", "")), str((obj.get("spec") or {}).get("action", "")),
                     shown, age(meta.get("creationTimestamp"))])
    return rows


def run(args: argparse.Namespace) -> int:
    state = StateDir(args.state_dir)
    endpoints = read_endpoints(state.path)
    pods = api_get(endpoints.api, "/api/v1/pods", kubeconfig=state.kubeconfig).get(
        "items") or []
    chaos: list[KubeObject] = []
    for plural in _CHAOS:
        chaos += api_get(endpoints.api, f"/apis/chaos-mesh.org/v1alpha1/{plural}",
                         kubeconfig=state.kubeconfig).get("items") or []
    ready = sum(1 for row in pod_rows(pods) if row[2].split("/")[0] == row[2].split("/")[1])
    print(f"local mesh: running (pid {endpoints.pid}), {ready}/{len(pods)} pods Ready")
    print(f"  API server   {endpoints.api}")
    print(f"  ingress      {endpoints.ingress}")
    print(f"  traces       {endpoints.traces}")
    print(f"  kubeconfig   {state.kubeconfig}")
    print()
    print(table(POD_HEADER, pod_rows(pods)) if pods else "no pods")
    print()
    if chaos:
        print(table(["NAMESPACE", "KIND", "NAME", "ACTION", "CONDITIONS", "AGE"],
                    chaos_rows(chaos)))
    else:
        print("no chaos objects")
    return 0
