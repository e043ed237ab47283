"""Probes: what the callers' sidecars logged for their calls toward one service.

Both send their own requests through the ingress and read the evidence back from the
``istio-proxy`` access logs only (correlated by trace id and ``x-request-id``, as the other
probes do), so they judge any mesh whatever its apps export, and need no trace backend.

- :func:`flagged_calls` counts the outbound lines toward ``service`` that carry a response
  flag (default ``FI``, a VirtualService abort, docs/fidelity.md §2.4): the proof that a
  fault on that route is felt by its callers, from the proxies and not from the apps.
- :func:`side_call_fallback` judges every hop whose calls toward ``service`` failed: it
  must still answer 2xx (its fallback) within the budget its inbound sidecar announced.

Usage::

    {"type": "probe", "name": "confirm-the-side-calls-are-aborted",
     "tolerance": {"type": "jsonpath", "path": "$.passed", "expect": true},
     "provider": {"type": "python", "module": "probes.sidecalls", "func": "flagged_calls",
                  "arguments": {"service": "${side_service}", "flag": "FI"}}}
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from probes import _common
from probes.checks import sidecalls as rules
from probes.deadline import Deadline
from probes.errors import ConfigurationError
from probes.evidence.readback import read_back_logs
from probes.evidence.request import RequestEvidence
from probes.results import probe_result
from probes.target import Target, resolve_target

__all__ = ["flagged_calls", "side_call_fallback"]


def flagged_calls(service: str = "", flag: str = "FI", caller: str = "", requests: int = 10,
                  min_ratio: float = 0.0, min_lines: int = 1, path: str = "",
                  headers: dict[str, str] | None = None, timeout_s: float = 30.0,
                  configuration: dict[str, Any] | None = None,
                  secrets: dict[str, Any] | None = None) -> dict[str, Any]:
    """Count the callers' outbound access-log lines toward ``service`` flagged ``flag``.

    ``flag``: one Envoy response flag or several joined by ``,`` (any of them counts).
    ``caller``: only that hop's lines (default: every hop's). Passes when at least
    ``min_lines`` lines carry the flag and they are at least ``min_ratio`` (0..1) of the
    lines toward ``service``; no line toward it at all is *not judged* (nobody called it).
    ``measurements`` has the counts, the status/flag mix and the flagged callers.
    """
    if not service:
        raise ConfigurationError("flagged_calls needs 'service' (e.g. \"${side_service}\")")
    flags = [f.strip() for f in str(flag).split(",") if f.strip()]
    if not flags:
        raise ConfigurationError(f"flagged_calls: argument 'flag' names no response flag, "
                                 f"got {flag!r}")
    if not 0.0 <= float(min_ratio) <= 1.0:
        raise ConfigurationError(f"flagged_calls: argument 'min_ratio' is {min_ratio!r}, not "
                                 "a share in [0, 1]")
    deadline = Deadline(timeout_s, "flagged_calls")
    target = resolve_target(configuration)
    evidence, lines = _logged(target, configuration, requests, path, headers, deadline)
    count = rules.count_flagged(evidence, service, flags, caller)
    check = rules.flagged_check(count, float(min_ratio), int(min_lines), caller)
    return probe_result("flagged-calls", [check],
                        measurements={**count.as_json(), "requests_sent": len(evidence),
                                      "log_lines": lines,
                                      "statuses": _statuses(evidence)})


def side_call_fallback(service: str = "", requests: int = 5, tolerance_ms: float = 10.0,
                       path: str = "", headers: dict[str, str] | None = None,
                       timeout_s: float = 30.0, configuration: dict[str, Any] | None = None,
                       secrets: dict[str, Any] | None = None) -> dict[str, Any]:
    """Check that each hop whose calls toward ``service`` failed still answered its caller
    2xx within the budget it was given (``x-envoy-expected-rq-timeout-ms`` of its inbound
    line; ``tolerance_ms`` absorbs the log's millisecond resolution).

    Judged from the sidecars alone: a hop's inbound line and the outbound lines it logged
    while serving it. A request in which no call toward ``service`` failed is not judged;
    when none was, the result is inconclusive (the side call never failed). A second check,
    ``aborted-call-not-served``, holds when ``service`` itself logged no inbound request for
    the calls its callers' sidecars aborted (``FI``: never sent, docs/fidelity.md §2.4); it
    is not judged where no call was aborted (another failure than a fault's abort).
    """
    if not service:
        raise ConfigurationError("side_call_fallback needs 'service' (e.g. "
                                 "\"${side_service}\")")
    deadline = Deadline(timeout_s, "side_call_fallback")
    target = resolve_target(configuration)
    evidence, lines = _logged(target, configuration, requests, path, headers, deadline)
    checks = [rules.fallback_check(evidence, service, tolerance_ms),
              rules.not_served_check(evidence, service)]
    return probe_result("side-call-fallback", checks, require=["side-call-fallback"],
                        measurements={"requests": len(evidence), "log_lines": lines,
                                      "statuses": _statuses(evidence)})


def _statuses(evidence: Sequence[RequestEvidence]) -> dict[str, int]:
    mix: dict[str, int] = {}
    for ev in evidence:
        key = str(ev.sent.status) if ev.sent.status is not None else "error"
        mix[key] = mix.get(key, 0) + 1
    return mix


def _logged(target: Target, configuration: dict[str, Any] | None, requests: int, path: str,
            headers: dict[str, str] | None,
            deadline: Deadline) -> tuple[list[RequestEvidence], int]:
    """Send ``requests`` and read back each one's access-log lines."""
    if requests <= 0:
        raise ConfigurationError(f"requests must be positive, got {requests!r}")
    sent = _common.send_requests(target.entry_url(path), configuration, requests,
                                 target.request_headers(headers), timeout_s=10.0,
                                 deadline=deadline)
    return read_back_logs(target, sent, deadline)
