"""Deadline rules on calls a VirtualService fault answered in the caller's sidecar.

Envoy's fault filter runs before the router (docs/fidelity.md §2.4): an abort (``FI``) and a
call whose caller left during an injected delay (``0 DI,DC``, no upstream host) never reach
the router, so the router never set ``x-envoy-expected-rq-timeout-ms`` on them. Such a call
passed no budget on because it was never sent, not because the app forgot it.
"""

from __future__ import annotations

import pytest

from probes.checks import deadlines
from probes.checks.calls import held_by_fault_filter, reached_upstream
from probes.evidence.request import CallTree, RequestEvidence
from probes.results import Check
from tests.unit.test_checks_sidecar_only import chain, evidence, line


def _with_stock_call(call_flags: str, code: int) -> RequestEvidence:
    """catalog's call to stock answered by its own sidecar's fault filter: stock saw nothing."""
    held = line("catalog-1-a", at=51, ms=389, code=code, flags=call_flags, callee="stock")
    return evidence(*[r for r in chain().logs if r.upstream_service not in ("stock", "depot")
                      and r.hop not in ("stock", "depot")], held)


def _deadline_propagated(ev: RequestEvidence) -> Check:
    return next(c for c in deadlines.evaluate([ev], CallTree.observe([ev]))
                if c.name == "deadline-propagated")


def test_an_aborted_call_passed_no_budget_on_and_is_not_blamed() -> None:
    """``abortWithStatus`` answers before the router: ``503 FI`` carries no budget."""
    ev = _with_stock_call("FI", 503)
    assert _deadline_propagated(ev).verdict == "held"


@pytest.mark.parametrize("flags", ["DI,DC", "DI,DR"])
def test_a_call_whose_caller_left_during_the_injected_delay_is_not_blamed(flags: str) -> None:
    """``onDestroy`` during the delay: ``0 DI,DC``, or ``0 DI,DR`` when a gRPC caller reset
    its HTTP/2 stream (§1.9); the request was never forwarded."""
    ev = _with_stock_call(flags, 0)
    assert _deadline_propagated(ev).verdict == "held"


def test_a_delayed_call_that_was_forwarded_without_a_budget_is_still_blamed() -> None:
    """``200 DI``: the delay ended and the router sent it on; with no budget that is the
    hop's own omission."""
    delayed = line("catalog-1-a", at=51, ms=640, flags="DI", callee="stock")
    assert reached_upstream(delayed) and not held_by_fault_filter(delayed)
    ev = evidence(*[r for r in chain().logs if r.upstream_service != "stock"], delayed)
    check = _deadline_propagated(ev)
    assert check.verdict == "failed" and check.hop == "catalog"
