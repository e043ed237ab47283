"""Deadline-propagation checks on recorded evidence, and the static VirtualService audit."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from probes.checks import deadlines
from probes.evidence.kube import routes_from_virtual_services
from probes.evidence.recorded import read_recorded
from probes.evidence.request import RequestEvidence
from probes.evidence.routes import Route
from tests.reference_chain import REFERENCE_CHAIN

DATA = Path(__file__).resolve().parents[1] / "data" / "evidence"


def evidence(case: str) -> list[RequestEvidence]:
    return read_recorded(DATA / case).evidence()


def failing(case: str, target: str = "local") -> dict[str, tuple[str | None, str]]:
    checks = deadlines.evaluate(evidence(case), REFERENCE_CHAIN, target=target)
    return {c.name: (c.hop, str(c.observed)) for c in checks if not c.passed}


def test_correct_chain_shrinks_its_budget_at_every_hop() -> None:
    """§1.5: expected = min(expected, global - elapsed); every budget fits its caller's."""
    assert failing("correct") == {}


@pytest.mark.parametrize("case", ["drop-traceparent", "reuse-parent", "drop-tracestate",
                                  "drop-b3", "drop-request-id", "retries-correct",
                                  "retried-midchain"])
def test_context_twins_keep_their_deadlines(case: str) -> None:
    """Twins whose bug is about trace context must not fail the deadline rules."""
    assert failing(case) == {}


def test_a_hop_run_twice_by_mesh_retries_is_judged_per_run() -> None:
    """§1.3: a retried hop runs again with its own budget; each run's calls are judged
    against that run's start, never against the first run's (no crying wolf)."""
    (ev,) = evidence("retried-midchain")
    runs = deadlines.invocations(ev.hop("inventory"))
    assert len(runs) == 2 and all(len(run.calls) == 1 for run in runs)
    assert failing("retried-midchain") == {}


def test_add_elapsed_twin_gives_its_callee_more_than_it_has_left() -> None:
    """§1.5 / §6: a callee's budget never exceeds what its caller had left."""
    found = failing("add-elapsed")
    assert found["budget-within-remaining"][0] == "orders"
    assert found["sent-within-remaining"][0] == "orders"
    assert set(found) == {"budget-within-remaining", "sent-within-remaining"}


def test_ignore_budget_twin_sends_no_timeout_downstream() -> None:
    """§1.4/§6: a hop with a budget passes what is left as x-envoy-upstream-rq-timeout-ms."""
    found = failing("ignore-budget")
    assert set(found) == {"deadline-propagated"}
    assert found["deadline-propagated"][0] == "orders"


def test_app_retries_twin_is_reported_as_retry_amplification() -> None:
    """§2.2: the mesh already retries twice; an app retrying on top multiplies attempts."""
    found = failing("app-retries")
    assert set(found) == {"retry-amplification"}
    assert found["retry-amplification"][0] == "orders"


def test_stripped_timeout_headers_are_reported_with_the_local_switch() -> None:
    """§1.7: external requests lose x-envoy-expected-rq-timeout-ms (cleanInternalHeaders)."""
    hop, observed = failing("stripped")["headers-stripped"]
    assert hop == "frontend"
    assert "meshchaos.io/honor-app-envoy-headers" in observed


def test_stripped_timeout_headers_name_the_istiod_switch_on_a_cluster() -> None:
    """§1.7.6: PILOT_SIDECAR_USE_REMOTE_ADDRESS "helps to retain the timeout headers"."""
    assert "PILOT_SIDECAR_USE_REMOTE_ADDRESS" in failing("stripped", "kubernetes")[
        "headers-stripped"][1]


def test_no_budget_anywhere_is_not_judged_by_any_deadline_rule() -> None:
    """No hop got a budget and no sidecar set one: no deadline rule may say "held"."""
    ev = evidence("correct")
    for request in ev:
        for hop in request.hops.values():
            hop.app_server = [replace(s, attributes={
                k: v for k, v in s.attributes.items() if k != "meshchaos.budget_ms"})
                for s in hop.app_server]
            hop.sidecar_out, hop.logs_in, hop.logs_out = [], [], []
    checks = {c.name: c for c in deadlines.evaluate(ev, REFERENCE_CHAIN)}
    for name in ("budget-within-remaining", "deadline-propagated", "no-call-after-deadline"):
        assert checks[name].verdict == "not judged", name
        assert "no hop received a budget" in checks[name].observed
    assert not any(c.passed for c in checks.values() if c.verdict == "not judged")


def _vs(name: str, host: str, timeout: str | None = None, attempts: int | None = None,
        per_try: str | None = None, retry_on: str | None = None) -> dict[str, object]:
    http: dict[str, object] = {"route": [{"destination": {"host": host}}]}
    if timeout:
        http["timeout"] = timeout
    if attempts is not None:
        http["retries"] = {"attempts": attempts, "perTryTimeout": per_try, "retryOn": retry_on}
    return {"metadata": {"name": name, "namespace": "shop"},
            "spec": {"hosts": [host], "http": [http]}}


GOOD = [_vs("frontend", "frontend", "1s"), _vs("orders", "orders", "800ms"),
        _vs("inventory", "inventory.shop.svc.cluster.local", "500ms", 2, "150ms", "5xx,reset"),
        _vs("pricing", "pricing", "0.3s"), _vs("ratings", "ratings", "300ms")]


def _audit(items: list[dict[str, object]]) -> dict[str, tuple[str | None, str]]:
    checks = deadlines.evaluate_routes(routes_from_virtual_services(items), REFERENCE_CHAIN)
    return {c.name: (c.hop, str(c.observed)) for c in checks if not c.passed}


def test_virtual_services_with_shrinking_timeouts_pass_the_audit() -> None:
    """§2.1: the VS timeout acts in the client sidecar; each callee's is shorter."""
    assert _audit(GOOD) == {}


def test_callee_timeout_longer_than_its_callers_is_an_inversion() -> None:
    """§2.1 + §1.1: a callee allowed longer than its caller outlives the caller's timeout."""
    items = [*GOOD[:3], _vs("pricing", "pricing", "2s"), GOOD[4]]
    hop, observed = _audit(items)["timeout-inversion"]
    assert hop == "pricing" and "2000 ms" in observed


def test_retries_that_cannot_fit_the_route_timeout_are_reported() -> None:
    """§1.2: "The global timeout bounds all tries" — 3 x 200 ms cannot fit 500 ms."""
    items = [*GOOD[:2], _vs("inventory", "inventory", "500ms", 2, "200ms", "5xx"), *GOOD[3:]]
    found = _audit(items)
    assert set(found) == {"retries-fit-timeout"}
    assert found["retries-fit-timeout"][0] == "inventory"


def test_per_try_timeout_without_a_retriable_condition_is_reported() -> None:
    """§1.2: a per-try timeout is retried only with 5xx, gateway-error or reset in retryOn."""
    items = [*GOOD[:2], _vs("inventory", "inventory", "500ms", 2, "100ms",
                            "connect-failure,refused-stream"), *GOOD[3:]]
    assert set(_audit(items)) == {"per-try-retried"}


def test_route_audit_reports_every_offending_route() -> None:
    routes = [Route("shop/a", "pricing", 500, 3, 200, ("5xx",)),
              Route("shop/b", "ratings", 400, 1, 300, ("5xx",))]
    found = deadlines.audit_routes(routes, REFERENCE_CHAIN)
    assert [f.hop for f in found["retries-fit-timeout"]] == ["pricing", "ratings"]
