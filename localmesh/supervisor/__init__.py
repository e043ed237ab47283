"""Deployments → ReplicaSets → Pods as process groups, readiness, logs (the local kubelet)."""

from localmesh.supervisor.supervisor import Supervisor

__all__ = ["Supervisor"]
