"""Stand-in activities used only to record the journals of this folder with real chaoslib.

They return (or raise) exactly what the real probes and chaos actions do by contract:
probe results built with ``probes.results.probe_result``, chaos objects carrying Chaos
Mesh's ``status.conditions``, errors from ``probes.errors``. The module keeps the fault
state in a global because one ``chaos run`` is one process.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

from probes.errors import ChaosNotSelected, MeasurementError
from probes.results import Check, Evidence, probe_result

_fault = {"on": False}

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"


def _span(span_id: str, parent: str | None, service: str, name: str, start: int,
          duration: int, budget: float | None, code: int | None, flags: str = "-",
          status: str = "ok", cancelled: bool = False, sidecar: bool = False
          ) -> dict[str, Any]:
    """One span in the shape of ``probes.results.waterfall``."""
    return {"span_id": span_id, "parent_id": parent, "service": service, "name": name,
            "kind": "server", "sidecar": sidecar, "start_us": start, "duration_us": duration,
            "budget_ms": budget, "deadline_us": start + int(budget * 1000) if budget else None,
            "status": status, "status_code": code, "response_flags": flags,
            "cancelled": cancelled}


def cascade_trace() -> dict[str, Any]:
    """frontend → orders → inventory → pricing: orders' 300 ms timeout fires, pricing goes on."""
    t0 = 1_764_000_000_000_000
    return {"trace_id": TRACE_ID, "spans": [
        _span("a000000000000001", None, "frontend", "GET /checkout", t0, 320_000, 1000, 504,
              status="error"),
        _span("a000000000000002", "a000000000000001", "orders", "outbound inventory",
              t0 + 2_000, 305_000, 800, 504, "UT", status="error", sidecar=True),
        _span("a000000000000003", "a000000000000002", "inventory", "GET /stock", t0 + 4_000,
              300_000, 300, None, status="cancelled: caller-gone", cancelled=True),
        _span("a000000000000004", "a000000000000003", "pricing", "GET /price", t0 + 6_000,
              800_000, None, 200),
    ]}


def slo_ok() -> dict[str, Any]:
    checks = [Check("p99-latency", True, "<= 1000 ms", "212 ms", hop="frontend"),
              Check("error-rate", True, "<= 1%", "0.0%", hop="frontend")]
    return probe_result("slo", checks, measurements={"requests": 50})


def deadlines() -> dict[str, Any]:
    if not _fault["on"]:
        return probe_result("deadlines", [
            Check("budget-shrinks", True, "< 800 ms", "780 ms", hop="orders"),
            Check("budget-shrinks", True, "< 780 ms", "760 ms", hop="inventory")])
    evidence = Evidence(trace_ids=(TRACE_ID,), log_lines=(
        '[2026-11-26T17:25:03.123Z] "GET /price HTTP/1.1" 200 - via_upstream - "-" 0 12 '
        '800 799 "-" "python" "r1" "pricing:8080" "127.0.0.1:40200"',))
    checks = [
        Check("budget-shrinks", True, "< 800 ms", "780 ms", hop="orders"),
        Check("no-orphan-work", False, "pricing stops after inventory's caller left",
              "pricing worked 495 ms after inventory was cancelled", hop="pricing",
              rule="§1.6 the callee sees 0 DC and must cancel", evidence=evidence),
        Check("answer-within-budget", True, "200 or 504 within 1000 ms", "504 after 320 ms",
              hop="frontend"),
    ]
    return probe_result("deadlines", checks, traces=[cascade_trace()])


def inject(kind: str = "NetworkChaos", all_injected: bool = True) -> dict[str, Any]:
    _fault["on"] = True
    return {"apiVersion": "chaos-mesh.org/v1alpha1", "kind": kind,
            "metadata": {"name": "leaf-delay", "namespace": "shop"},
            "status": {"conditions": [
                {"type": "Selected", "status": "True"},
                {"type": "AllInjected", "status": "True" if all_injected else "False"},
                {"type": "AllRecovered", "status": "False"},
                {"type": "Paused", "status": "False"}]}}


def inject_not_selected() -> dict[str, Any]:
    raise ChaosNotSelected("networkchaos 'shop/leaf-delay': no pod is selected "
                           "(selector app=pricing in namespace 'shop')")


def effect(seen: bool = True) -> dict[str, Any]:
    check = Check("leaf-slowed", seen, ">= 300 ms at pricing", "812 ms" if seen else "4 ms",
                  hop="pricing")
    return probe_result("effect", [check])


def measure_fails() -> dict[str, Any]:
    """Measure fine before the fault, then fail to reach the ingress under it."""
    if not _fault["on"]:
        return slo_ok()
    raise MeasurementError("could not reach the ingress 'http://127.0.0.1:1/' (connection "
                           "refused)")


def remove(fail: bool = False) -> dict[str, Any]:
    if fail:
        raise MeasurementError("networkchaos 'shop/leaf-delay' still present after 30 s")
    _fault["on"] = False
    return {"removed": True}


def terminate_self() -> dict[str, Any]:
    """Send SIGTERM to this process mid-activity, as a CI runner cancelling a job does."""
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(2)
    return {"slept": True}


def leave_gracefully() -> dict[str, Any]:
    """Ask chaoslib to stop now but keep rollbacks (SIGUSR1), as an operator's abort does."""
    from chaoslib.exit import exit_gracefully

    exit_gracefully()
    time.sleep(2)
    return {"slept": True}
