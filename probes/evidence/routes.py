"""A VirtualService HTTP route's timing, as the static audit sees it."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Route"]


@dataclass(frozen=True)
class Route:
    """A VirtualService HTTP route's timing, normalised (ms; 0 = unset)."""

    virtual_service: str
    host: str
    timeout_ms: int
    attempts: int
    per_try_timeout_ms: int
    retry_on: tuple[str, ...]
