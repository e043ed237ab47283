"""The deadline probes end to end on a loopback target."""

from __future__ import annotations

from pathlib import Path

from probes.deadlines import deadline_propagation, virtual_service_audit
from tests.data.evidence.fakecluster import Fake, serve


def test_deadline_probe_passes_a_correct_chain(tmp_path: Path) -> None:
    """§1.5: budgets shrink at every hop of the correct chain."""
    with serve(tmp_path, Fake(case="correct")) as running:
        result = deadline_propagation(requests=1, timeout_s=30,
                                      configuration=running.configuration(run_id="run-1"))
    assert result["passed"] is True, result["reason"]
    assert result["measurements"]["honor_app_envoy_headers"] is True


def test_deadline_probe_names_the_add_elapsed_hop(tmp_path: Path) -> None:
    """§1.5 / §6: a hop that adds the elapsed time hands its callee more than it has."""
    with serve(tmp_path, Fake(case="add-elapsed")) as running:
        result = deadline_propagation(requests=1, timeout_s=30,
                                      configuration=running.configuration(run_id="run-1"))
    assert result["passed"] is False
    assert "budget-within-remaining at orders" in result["reason"]


def test_virtual_service_audit_reports_an_inversion(tmp_path: Path) -> None:
    """§2.1: a callee's VS timeout must be shorter than its caller's."""
    def vs(host: str, timeout: str) -> dict[str, object]:
        return {"metadata": {"name": host, "namespace": "shop"},
                "spec": {"hosts": [host], "http": [
                    {"route": [{"destination": {"host": host}}], "timeout": timeout}]}}

    fake = Fake(virtual_services=[vs("orders", "500ms"), vs("inventory", "2s")])
    with serve(tmp_path, fake) as running:
        result = virtual_service_audit(configuration=running.configuration())
    assert result["passed"] is False
    assert "timeout-inversion at inventory" in result["reason"]
    assert len(result["measurements"]["routes"]) == 2


def test_the_call_tree_can_come_from_the_configuration(tmp_path: Path) -> None:
    """A two-hop tree given once in the experiment's configuration applies to every probe."""
    def vs(host: str, timeout: str) -> dict[str, object]:
        return {"metadata": {"name": host, "namespace": "shop"},
                "spec": {"hosts": [host], "http": [
                    {"route": [{"destination": {"host": host}}], "timeout": timeout}]}}

    fake = Fake(virtual_services=[vs("orders", "500ms"), vs("inventory", "2s")])
    tree = {"entry": "orders", "calls": {"orders": ["ratings"]}}  # inventory is not called
    with serve(tmp_path, fake) as running:
        result = virtual_service_audit(configuration=running.configuration(call_tree=tree))
    assert result["passed"] is True, result["reason"]
