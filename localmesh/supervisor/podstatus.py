"""A pod's ``status`` as the kubelet reports it, composed from its containers' states."""

from __future__ import annotations

from localmesh.documents import KubeObject
from localmesh.store import now_rfc3339
from localmesh.supervisor.container import ContainerRun

__all__ = ["PodStatus"]



class PodStatus:
    """Composes one pod's status; conditions keep their lastTransitionTime across writes."""

    def __init__(self) -> None:
        self.start_time = now_rfc3339()
        self._conditions: dict[str, KubeObject] = {}

    def compose(self, containers: list[ContainerRun]) -> KubeObject:
        all_ready = bool(containers) and all(c.ready for c in containers)
        started = bool(containers) and all(c.ever_started or c.paused for c in containers)
        unready = sorted(c.name for c in containers if not c.ready)
        return {
            "phase": "Running" if started else "Pending",
            "conditions": [
                self._condition("PodScheduled", True, unready),
                self._condition("Initialized", True, unready),
                self._condition("ContainersReady", all_ready, unready),
                self._condition("Ready", all_ready, unready),
            ],
            "hostIP": "127.0.0.1",
            "podIP": "127.0.0.1",
            "podIPs": [{"ip": "127.0.0.1"}],
            "startTime": self.start_time,
            "qosClass": "BestEffort",
            "containerStatuses": [c.status() for c in containers],
        }

    def _condition(self, type_: str, ok: bool, unready: list[str]) -> KubeObject:
        value = "True" if ok else "False"
        previous = self._conditions.get(type_)
        if previous is None or previous["status"] != value:
            previous = {"type": type_, "status": value, "lastProbeTime": None,
                        "lastTransitionTime": now_rfc3339()}
            if not ok and type_ in ("Ready", "ContainersReady"):
                previous["reason"] = "ContainersNotReady"
                previous["message"] = f"containers with unready status: [{' '.join(unready)}]"
            self._conditions[type_] = previous
        return dict(previous)
