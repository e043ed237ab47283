"""A probe's own deadline: Chaos Toolkit does not enforce ``timeout`` for python providers."""

from __future__ import annotations

import time

from probes.errors import MeasurementError

__all__ = ["Deadline"]


class Deadline:
    """Monotonic deadline shared by every step of one probe run."""

    def __init__(self, seconds: float, what: str) -> None:
        if seconds <= 0:
            raise MeasurementError(f"{what}: timeout must be positive, got {seconds!r}")
        self.what = what
        self.seconds = seconds
        self.at = time.monotonic() + seconds

    def remaining(self) -> float:
        return max(0.0, self.at - time.monotonic())

    def expired(self) -> bool:
        return time.monotonic() >= self.at

    def check(self, step: str) -> float:
        """Return the seconds left, or raise naming the step that ran out of time."""
        left = self.remaining()
        if left <= 0:
            raise MeasurementError(f"{self.what}: probe deadline of {self.seconds:g} s passed "
                                   f"while {step}")
        return left
