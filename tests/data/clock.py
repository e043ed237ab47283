"""A wall clock for tests that must let time pass without waiting for it."""

from __future__ import annotations

import time

__all__ = ["JumpClock"]


class JumpClock:
    """Epoch nanoseconds: the real clock plus every :meth:`advance` so far.

    It runs as the real one does (timers, flush pacing and "now" in messages stay true) and
    jumps forward on demand, e.g. past a ``sinceSeconds`` window.
    """

    def __init__(self) -> None:
        self._skew_ns = 0

    def __call__(self) -> int:
        return time.time_ns() + self._skew_ns

    def advance(self, seconds: float) -> None:
        self._skew_ns += int(seconds * 1e9)
