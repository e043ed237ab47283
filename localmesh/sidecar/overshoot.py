"""A bounded record of how much longer than asked each fault hold lasted.

docs/architecture.md "Fault rules": a hold is never shorter than asked, so every
overshoot (actual - asked) is ≥ 0; how far above 0 it goes is the injection's
accuracy. The record is a fixed-size ring of the most recent values in whole µs,
so memory stays constant and the hot path costs one store and two additions.
"""

from __future__ import annotations

from array import array
from typing import Any

__all__ = ["OvershootRing"]

WINDOW = 1024


class OvershootRing:
    """The last ``size`` (≥ 1) overshoots in µs, and how many were ever recorded."""

    __slots__ = ("_next", "_values", "count")

    def __init__(self, size: int = WINDOW) -> None:
        self._values = array("q", bytes(8 * size))
        self._next = 0
        self.count = 0

    def record(self, asked_s: float, actual_s: float) -> None:
        """One hold that was asked for ``asked_s`` and lasted ``actual_s`` seconds."""
        self._values[self._next] = round((actual_s - asked_s) * 1e6)
        self._next = (self._next + 1) % len(self._values)
        self.count += 1

    def recent(self) -> list[int]:
        """The values still in the window, oldest first."""
        size = len(self._values)
        if self.count < size:
            return self._values[:self.count].tolist()
        return (self._values[self._next:] + self._values[:self._next]).tolist()

    def snapshot(self) -> dict[str, Any]:
        """For ``GET /stats``: totals, order statistics of the window, and the window itself."""
        values = self.recent()
        out: dict[str, Any] = {"count": self.count, "window": len(values)}
        if values:
            ordered = sorted(values)
            last = len(ordered) - 1
            out.update(min=ordered[0], p50=ordered[min(last, len(ordered) // 2)],
                       p99=ordered[min(last, int(0.99 * len(ordered)))], max=ordered[-1])
        out["recent_us"] = values
        return out
