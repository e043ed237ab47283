"""Subcommands of the ``meshchaos`` CLI, one module each (see :mod:`meshchaos.cli`).

This package also holds what the local-mesh subcommands share: the state dir
option, API reads, tables and ages.
"""

from __future__ import annotations

import argparse
import json
import time
from calendar import timegm
from pathlib import Path

from localmesh.documents import KubeObject, ObjectMeta
from localmesh.statedir import DEFAULT_STATE_DIR
from meshchaos.errors import MeshApiError

__all__ = ["POD_HEADER", "add_state_dir", "age", "api_get", "plain", "pod_rows",
           "pod_status_word", "table"]


def add_state_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR, metavar="DIR",
                        help=f"state dir of the local mesh (default: {DEFAULT_STATE_DIR})")


def api_get(api: str, path: str, *, timeout: float = 5.0,
            kubeconfig: Path | None = None) -> KubeObject:
    """GET an object or a list from the mesh's API server; a 404 is an empty list.

    ``kubeconfig``: the mesh's, whose CA and bearer token the request uses (the API
    answers 401 without the token).
    """
    # Here, not at module level: the `up` daemon imports this package on its start path.
    import urllib.error
    import urllib.request

    from localmesh.kubeconfig import auth_headers, ssl_context

    headers = auth_headers(kubeconfig) if kubeconfig is not None else {}
    context = ssl_context(kubeconfig) if kubeconfig is not None else None
    try:
        request = urllib.request.Request(f"{api}{path}", headers=headers)
        with urllib.request.urlopen(request, timeout=timeout, context=context) as resp:
            data = json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return {"items": []}
        raise MeshApiError(f"the mesh API at {api} answered {exc.code} to GET {path}") from exc
    except (OSError, ValueError) as exc:
        raise MeshApiError(f"the mesh API at {api} did not answer GET {path}: {exc}") from exc
    return data if isinstance(data, dict) else {}


def age(timestamp: str | None, now: float | None = None) -> str:
    """kubectl's AGE column: 45s, 3m12s, 2h5m, 3d."""
    if not timestamp:
        return "<unknown>"
    try:
        then = timegm(time.strptime(timestamp, "%Y-%m-%dT%H:%M:%SZ"))
    except ValueError:
        return "<unknown>"
    seconds = max(0, int((now if now is not None else time.time()) - then))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60}s" if seconds < 600 else f"{seconds // 60}m"
    if seconds < 86400:
        return f"{seconds // 3600}h{(seconds % 3600) // 60}m"
    return f"{seconds // 86400}d"


def table(header: list[str], rows: list[list[str]]) -> str:
    """Left-aligned columns separated by three spaces, like kubectl."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["   ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
             for r in [header, *rows]]
    return "\n".join(lines)


def pod_status_word(pod: KubeObject) -> str:
    """kubectl's STATUS column: Terminating, a waiting reason, or the phase."""
    meta: ObjectMeta = pod.get("metadata", {})
    if meta.get("deletionTimestamp"):
        return "Terminating"
    status = pod.get("status") or {}
    for container in status.get("containerStatuses") or []:
        waiting = (container.get("state") or {}).get("waiting")
        if waiting and waiting.get("reason"):
            return str(waiting["reason"])
        terminated = (container.get("state") or {}).get("terminated")
        if terminated and terminated.get("reason"):
            return str(terminated["reason"])
    return str(status.get("phase") or "Pending")


def pod_rows(pods: list[KubeObject], now: float | None = None) -> list[list[str]]:
    """Rows of NAMESPACE NAME READY STATUS RESTARTS AGE, as ``kubectl get pods -A``."""
    rows = []
    for pod in pods:
        meta: ObjectMeta = pod.get("metadata") or {}
        containers = (pod.get("status") or {}).get("containerStatuses") or []
        total = len((pod.get("spec") or {}).get("containers") or []) or len(containers)
        ready = sum(1 for c in containers if c.get("ready"))
        restarts = sum(int(c.get("restartCount") or 0) for c in containers)
        rows.append([str(meta.get("namespace", "")), str(meta.get("name", "")),
                     f"{ready}/{total}", pod_status_word(pod), str(restarts),
                     age(meta.get("creationTimestamp"), now)])
    return rows


POD_HEADER = ["NAMESPACE", "NAME", "READY", "STATUS", "RESTARTS", "AGE"]


def plain(doc: str | None) -> str:
    """A module docstring as help text: without the reST double backquotes."""
    return (doc or "").replace("``", "")
