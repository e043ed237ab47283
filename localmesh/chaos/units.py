"""Parsing of the string-typed quantities in Chaos Mesh specs.

Chaos Mesh keeps durations, percentages and rates as strings and checks them in
its admission webhook (docs/fidelity.md §5.2/§5.3): durations are Go
``time.ParseDuration`` strings (``"300ms"``, ``"1m30s"``), percentages are
``"0"`` to ``"100"``, bandwidth rates are tc units where ``bit`` counts bits and
``bps`` counts **bytes** per second. Each parser raises ``ChaosSpecError`` (a
``ValueError``) with the reason, ``UnknownMode`` for a selector mode that does not exist;
the admission hook turns it into an ``Invalid`` naming the field.
"""

from __future__ import annotations

import re

from localmesh.errors import ChaosSpecError, UnknownMode

__all__ = ["parse_duration_ms", "parse_mode_value", "parse_percent", "parse_rate_bytes_per_s"]

_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(ns|us|µs|ms|s|m|h)")
_UNIT_MS = {"ns": 1e-6, "us": 1e-3, "µs": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}
# tc's rate units: SI prefixes (powers of 1000); "bit" is bits/s, "bps" is bytes/s.
_RATE = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(bit|kbit|mbit|gbit|tbit|bps|kbps|mbps|gbps|tbps)$")
_RATE_BYTES = {
    "bit": 1 / 8, "kbit": 1e3 / 8, "mbit": 1e6 / 8, "gbit": 1e9 / 8, "tbit": 1e12 / 8,
    "bps": 1.0, "kbps": 1e3, "mbps": 1e6, "gbps": 1e9, "tbps": 1e12,
}
MODES = ("one", "all", "fixed", "fixed-percent", "random-max-percent")


def parse_duration_ms(text: str) -> float:
    """Parse a Go duration string into milliseconds (``"0"`` is allowed, as in Go)."""
    if text == "0":
        return 0.0
    pos, total = 0, 0.0
    while pos < len(text):
        match = _DURATION_PART.match(text, pos)
        if match is None:
            raise ChaosSpecError("is not a duration")
        total += float(match.group(1)) * _UNIT_MS[match.group(2)]
        pos = match.end()
    if pos == 0:
        raise ChaosSpecError("is not a duration")
    return total


def parse_percent(text: str) -> float:
    """Parse a percentage string in [0, 100]."""
    try:
        value = float(text)
    except ValueError:
        raise ChaosSpecError("is not a percentage") from None
    if not 0.0 <= value <= 100.0:
        raise ChaosSpecError("is not a percentage between 0 and 100")
    return value


def parse_rate_bytes_per_s(text: str) -> float:
    """Parse a tc rate (``"1mbps"`` = 1,000,000 bytes/s, ``"8mbit"`` = 1,000,000 bytes/s)."""
    match = _RATE.match(text.strip().lower())
    if match is None:
        raise ChaosSpecError("is not a rate (units bit, kbit, mbit, gbit, tbit, bps, kbps, "
                         "mbps, gbps, tbps)")
    value = float(match.group(1)) * _RATE_BYTES[match.group(2)]
    if value <= 0:
        raise ChaosSpecError("is not a positive rate")
    return value


def parse_mode_value(mode: str, value: str) -> float:
    """Check a selector mode against its value; return the number the mode uses (0 if none).

    Chaos Mesh (``pkg/selector/generic/mode.go``): ``fixed`` needs an integer > 0,
    and both percentage modes an integer percentage in (0, 100] (``strconv.Atoi``; the
    webhook refuses ``random-max-percent`` with 0 too).
    """
    if mode not in MODES:
        raise UnknownMode(f"is not a mode (one of {', '.join(MODES)})")
    if mode in ("one", "all"):
        return 0.0
    if mode == "fixed":
        try:
            number = int(value)
        except ValueError:
            raise ChaosSpecError("is not an integer (mode 'fixed')") from None
        if number <= 0:
            raise ChaosSpecError("must be greater than 0 (mode 'fixed')")
        return float(number)
    try:
        percent = int(value)
    except ValueError:
        raise ChaosSpecError(f"is not an integer percentage (mode '{mode}')") from None
    if not 0 < percent <= 100:
        raise ChaosSpecError(f"must be in (0, 100] (mode '{mode}')")
    return float(percent)
