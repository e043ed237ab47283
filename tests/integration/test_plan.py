"""``meshchaos plan`` on both chains, from a shell, and one planned experiment run for real.

The reference chain (fixtures/k8s, namespace shop) runs as a live mesh (a MeshThread, as
`meshchaos up` would leave one); the plan observes its call graph, finds its budget
consistent (fixtures/k8s/20-traffic.yaml's table: every callee ends before its caller's
try) and exits 0. The store chain (fixtures/store/k8s, namespace store) has no mesh
running: the plan starts one for the duration, stops it, and reports the four inner routes
that outlive their caller's try ("deliberately longer than the edge", its 20-traffic.yaml)
with exit 1. Every file written passes the real ``chaos validate``; one planned experiment of
each chain runs with ``chaos run`` and reaches its verdict.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from localmesh.statedir import StateDir
from reports.model import load_journal
from reports.verdict import Outcome, compute_verdict
from tests.integration.conftest import running_mesh

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
CHAIN = ROOT / "fixtures" / "k8s"
STORE = ROOT / "fixtures" / "store" / "k8s"
RUN_LIMIT_S = 30.0


def meshchaos(*args: str, timeout: float = 90, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "meshchaos.cli", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **env})


def chaos(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """The real chaostoolkit CLI, in a process group killed if it overruns."""
    proc = subprocess.Popen([sys.executable, "-m", "chaostoolkit", "--no-log-file", *args],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        out, _ = proc.communicate(timeout=15)
        pytest.fail(f"chaos {' '.join(args)} overran {timeout} s:\n{out[-3000:]}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, "")


def plan_of(out: Path) -> dict[str, Any]:
    return json.loads((out / "plan.json").read_text())  # type: ignore[no-any-return]


def assert_every_file_validates(out: Path, plan: dict[str, Any]) -> None:
    files = sorted(p.name for p in out.glob("*--*.json"))
    assert files == sorted(e["file"] for e in plan["experiments"])
    for name in files:
        result = chaos("validate", str(out / name), timeout=60)
        assert result.returncode == 0, f"{name}:\n{result.stdout[-2000:]}"
        assert "experiment syntax and semantic look valid" in result.stdout, name


def run_planned(path: Path, tmp_path: Path) -> Outcome:
    """``chaos run`` one planned experiment with its own defaults (the journal and report
    go to tmp_path); bounded by RUN_LIMIT_S."""
    journal = tmp_path / f"{path.stem}.journal.json"
    result = chaos("run", "--journal-path", str(journal), "--var",
                   f"report_dir={tmp_path / 'reports'}", str(path), timeout=RUN_LIMIT_S)
    assert journal.is_file(), result.stdout[-3000:]
    verdict = compute_verdict(load_journal(journal))
    assert "meshchaos verdict:" in result.stdout, result.stdout[-3000:]
    return verdict.outcome


@pytest.fixture(scope="module")
def shop_mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A live reference-chain mesh; yields its state dir."""
    state = tmp_path_factory.mktemp("plan-shop") / "state"
    with running_mesh([CHAIN], state):
        yield state


def test_plan_on_the_live_reference_chain_finds_a_consistent_budget(
        shop_mesh: Path, tmp_path: Path) -> None:
    out = tmp_path / "plan"
    result = meshchaos("plan", "--state-dir", str(shop_mesh), "--namespace", "shop",
                       "--out", str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "namespace shop, 5 services, 5 edges (observed), 0 findings" in result.stdout
    assert f"planned on the live local mesh of state dir {shop_mesh}" in result.stdout
    plan = plan_of(out)
    # The fan-out's order is the order the sidecars' evidence showed it: compare as a set.
    assert {(e["caller"], e["callee"], e["virtual_service"], e["bound_ms"])
            for e in plan["edges"]} == {
        ("ingress", "frontend", "frontend-ingress", 3000),
        ("frontend", "orders", "orders", 1800),
        ("orders", "ratings", "ratings", 400),
        ("orders", "inventory", "inventory", 800),
        ("inventory", "pricing", "pricing", 300)}
    assert plan["findings"] == []
    assert {e["file"] for e in plan["experiments"]} == {
        "pod-kill-midchain--frontend-to-orders.json",
        "timeout-cascade--orders-to-ratings.json", "sidecar-failure--orders-to-ratings.json",
        "pod-kill-midchain--orders-to-inventory.json",
        "timeout-cascade--inventory-to-pricing.json",
        "partition-leaf--inventory-to-pricing.json"}
    assert "## Findings (0)" in (out / "plan.md").read_text()
    assert_every_file_validates(out, plan)

    # Not the template's own edge (inventory -> pricing): the plan's defaults aim it.
    planned = out / "timeout-cascade--orders-to-ratings.json"
    config = json.loads(planned.read_text())["configuration"]
    assert {k: config[k]["default"] for k in ("namespace", "target_service", "target_caller",
                                              "meshchaos_state_dir")} == {
        "namespace": "shop", "target_service": "ratings", "target_caller": "orders",
        "meshchaos_state_dir": str(shop_mesh)}
    assert run_planned(planned, tmp_path) is Outcome.PASS
    assert StateDir(shop_mesh).live_pid() is not None  # the live mesh was reused, not stopped


def test_plan_on_the_store_chain_starts_a_mesh_and_reports_its_backstop_routes(
        tmp_path: Path) -> None:
    out, state = tmp_path / "plan", tmp_path / "state"
    result = meshchaos("plan", "--state-dir", str(state), "--manifests", str(STORE),
                       "--namespace", "store", "--entry-path", "/api/items/42", "--out", str(out))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "namespace store, 5 services, 5 edges (observed), 4 findings" in result.stdout
    assert "starting one from" in result.stderr
    assert StateDir(state).live_pid() is None  # the mesh lived for the plan only
    plan = plan_of(out)
    assert sorted((f["rule"], f["edge"], f["values"]["callee_bound"],
                   f["values"]["caller_deadline"]) for f in plan["findings"]) == [
        ("timeout-inversion", "catalog -> reviews", "3s", "2s"),
        ("timeout-inversion", "catalog -> stock", "3.6s", "2s"),
        ("timeout-inversion", "gateway -> catalog", "4s", "1.5s"),
        ("timeout-inversion", "stock -> warehouse", "3s", "1.8s")]
    gateway = next(f for f in plan["findings"] if f["edge"] == "gateway -> catalog")
    assert gateway["objects"] == ["VirtualService 'catalog' (store)",
                                  "VirtualService 'gateway-ingress' (store)"]
    assert "finding [timeout-inversion] VirtualService 'catalog' (store): the route to " \
           "catalog waits up to 4s" in result.stdout
    assert {e["file"] for e in plan["experiments"]} == {
        "pod-kill-midchain--gateway-to-catalog.json", "pod-kill-midchain--catalog-to-stock.json",
        "timeout-cascade--catalog-to-reviews.json", "sidecar-failure--catalog-to-reviews.json",
        "timeout-cascade--stock-to-warehouse.json", "partition-leaf--stock-to-warehouse.json"}
    assert_every_file_validates(out, plan)

    # The mesh the plan used is gone: the experiment's local-mesh control starts one from
    # the manifests the plan wrote into it, and the partition below stock holds (stock and
    # the hops above it fail within their timeouts, nothing is orphaned).
    planned = out / "partition-leaf--stock-to-warehouse.json"
    config = json.loads(planned.read_text())["configuration"]
    assert config["meshchaos_manifests"]["default"] == str(STORE)
    assert config["entry_path"]["default"] == "/api/items/42"
    assert run_planned(planned, tmp_path) is Outcome.PASS


def test_plan_through_a_kubeconfig_observes_with_the_given_ingress_and_trace_urls(
        shop_mesh: Path, tmp_path: Path) -> None:
    """Target kubernetes: the local mesh's API stands in for a cluster's (it serves the same
    subset). With the ingress and trace URLs the graph is observed and the experiments aim
    at that cluster; without them the VirtualServices alone give '* -> service' edges."""
    kubeconfig = shop_mesh / "kubeconfig"
    endpoints = json.loads((shop_mesh / "endpoints.json").read_text())
    out = tmp_path / "plan"
    observed = meshchaos("plan", "--kubeconfig", str(kubeconfig), "--namespace", "shop",
                         "--ingress-url", endpoints["ingress"], "--traces-url",
                         endpoints["traces"], "--out", str(out),
                         MESHCHAOS_SPAN_EXPORT_LAG_S="0.2")  # the local mesh exports fast
    assert observed.returncode == 0, observed.stdout + observed.stderr
    assert "5 edges (observed), 0 findings" in observed.stdout
    config = json.loads((out / "sidecar-failure--orders-to-ratings.json").read_text())[
        "configuration"]
    assert {k: config[k]["default"] for k in ("target", "kubeconfig", "ingress_url",
                                              "traces_url", "side_service")} == {
        "target": "kubernetes", "kubeconfig": str(kubeconfig),
        "ingress_url": endpoints["ingress"], "traces_url": endpoints["traces"],
        "side_service": "ratings"}
    assert_every_file_validates(out, plan_of(out))

    static = meshchaos("plan", "--kubeconfig", str(kubeconfig), "--namespace", "shop",
                       "--out", str(out), MESHCHAOS_INGRESS_URL="", MESHCHAOS_TRACES_URL="")
    assert static.returncode == 0, static.stdout + static.stderr
    assert "5 edges (virtual-services)" in static.stdout
    assert "configuration key 'ingress_url' is required on target 'kubernetes'" in static.stdout
    plan = plan_of(out)
    assert [e["file"] for e in plan["experiments"]] == [
        "pod-kill-midchain--any-to-inventory.json", "pod-kill-midchain--any-to-orders.json",
        "pod-kill-midchain--any-to-ratings.json"]
    assert sorted(p.name for p in out.glob("*--*.json")) == [e["file"] for e in
                                                             plan["experiments"]]


def test_a_namespace_without_services_is_an_error_naming_it(shop_mesh: Path,
                                                             tmp_path: Path) -> None:
    result = meshchaos("plan", "--state-dir", str(shop_mesh), "--namespace", "nothing-here",
                       "--out", str(tmp_path / "plan"))
    assert result.returncode == 2, result.stdout + result.stderr
    assert "namespace 'nothing-here' has no Service" in result.stderr
    assert not (tmp_path / "plan").exists()


def test_an_unreachable_api_is_an_error_naming_the_kubeconfig(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "gone",
        "clusters": [{"name": "gone", "cluster": {"server": "http://127.0.0.1:9"}}],
        "contexts": [{"name": "gone", "context": {"cluster": "gone", "user": "u"}}],
        "users": [{"name": "u", "user": {}}]}))
    result = meshchaos("plan", "--kubeconfig", str(kubeconfig), "--namespace", "shop",
                       "--out", str(tmp_path / "plan"))
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"kubeconfig '{kubeconfig}'" in result.stderr
    assert "http://127.0.0.1:9" in result.stderr
