"""Where pod logs come from: the protocol the API server reads container logs through."""

from __future__ import annotations

from typing import Protocol

__all__ = ["LogSource"]


class LogSource(Protocol):
    """Container logs of the pods the supervisor runs (``PodLogs`` implements it)."""

    def read(self, namespace: str, pod: str, container: str | None, *,
             since_seconds: int | None, tail_lines: int | None, timestamps: bool,
             previous: bool) -> str:
        """Return the log text; raise NotFound/BadRequest as the kubelet would."""
        ...
