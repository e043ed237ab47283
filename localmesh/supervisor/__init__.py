"""Deployments → ReplicaSets → Pods as process groups, readiness, logs (the local kubelet).

``Supervisor`` is resolved on first use: ``python -m localmesh.supervisor.forkserver``
imports this package first, and the fork servers (which preload what the pods run, on
every mesh start's critical path) need none of the supervisor's own modules.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from localmesh.supervisor.supervisor import Supervisor

__all__ = ["Supervisor"]


def __getattr__(name: str) -> Any:
    if name == "Supervisor":
        from localmesh.supervisor.supervisor import Supervisor

        return Supervisor
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
