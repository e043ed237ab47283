"""Errors of the probes package (the Chaos Toolkit extension).

One tree, rooted at :class:`ProbeError`, which is a Chaos Toolkit
``ActivityFailed`` so chaoslib records any of them as a failed activity
(``status: "failed"``) instead of crashing the run. "Could not measure" raises
one of these; "measured bad" returns data and lets the tolerance decide::

    ProbeError(chaoslib.exceptions.ActivityFailed)
    ├── ConfigurationError       a missing or malformed configuration key / argument
    ├── MeasurementError         the probe's own traffic could not be sent or read
    ├── EvidenceError            access logs / traces / API objects unreadable or absent
    ├── ChaosError               a chaos object could not be applied, confirmed or removed
    │   ├── ChaosNotSelected     Chaos Mesh selected no pod ("no pod is selected")
    │   ├── ChaosNotInjected     a condition wait timed out (object, condition, last status)
    │   └── ChaosNotRemoved      a removal that did not finish in time
    └── SafetyError              refused by the safety rules (namespace allowlist, missing run id)

Messages are lowercase, name the thing and quote the value, like chaoslib's.
"""

from __future__ import annotations

from chaoslib.exceptions import ActivityFailed

__all__ = [
    "ChaosError",
    "ChaosNotInjected",
    "ChaosNotRemoved",
    "ChaosNotSelected",
    "ConfigurationError",
    "EvidenceError",
    "MeasurementError",
    "ProbeError",
    "SafetyError",
]


class ProbeError(ActivityFailed):  # type: ignore[misc]  # chaoslib ships no type hints
    """Root of every error the probes package raises."""


class ConfigurationError(ProbeError, ValueError):
    """Raised when a configuration key or an activity argument is missing or malformed."""


class MeasurementError(ProbeError):
    """Raised when a probe's own traffic could not be sent or its answer not read."""


class EvidenceError(ProbeError):
    """Raised when evidence (access logs, traces, API objects) cannot be read."""


class ChaosError(ProbeError):
    """Raised when a chaos object could not be applied, confirmed or removed."""


class ChaosNotSelected(ChaosError):
    """Raised when Chaos Mesh reports that no pod matched the selector."""


class ChaosNotInjected(ChaosError, TimeoutError):
    """Raised when a chaos object did not reach the awaited condition in time."""


class ChaosNotRemoved(ChaosError, TimeoutError):
    """Raised when a chaos object was still present after the removal wait."""


class SafetyError(ProbeError):
    """Raised when the safety rules refuse an action (namespace allowlist, run id)."""
