"""The store chain's detection matrix: each probe against the correct store chain and its
single-defect twins, from sidecar evidence alone (no app spans, no call tree, other names).

A twin that passes the probe aimed at its bug is a miss; a correct chain or a twin failing
any other probe is a false alarm: both fail the row. Once every row ran, the matrix is
written into its section of ``docs/detection-matrix.md``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from localmesh.mesh import MeshThread
from probes.chaos import apply_chaos

from .conftest import ROOT, stop_and_reap
from .matrix import COLUMNS, Cell, write_section
from .store_matrix import ROWS, StoreRow, configuration, expected_cell, render, run_probes, twin_env

pytestmark = [pytest.mark.integration, pytest.mark.slow]

STORE_MANIFESTS = ROOT / "fixtures" / "store" / "k8s"
MATRIX_DOC = ROOT / "docs" / "detection-matrix.md"


class Observed:
    def __init__(self) -> None:
        self.rows: dict[str, dict[str, Cell]] = {}
        self.began = time.monotonic()


@pytest.fixture(scope="module")
def observed() -> Iterator[Observed]:
    seen = Observed()
    yield seen
    if len(seen.rows) == len(ROWS):
        table = render(seen.rows, seconds=time.monotonic() - seen.began)
        write_section(MATRIX_DOC, "store", table)
        print("\n" + table)


def run_row(row: StoreRow, state_dir: Path) -> tuple[dict[str, Cell], dict[str, object]]:
    thread = MeshThread([STORE_MANIFESTS], state_dir, env_overrides=twin_env(row))
    try:
        thread.start(timeout=60)
        # The scenario's failing side service, applied as an experiment would apply it.
        apply_chaos("pod-failure-side-service.yaml", service="reviews", duration="120s",
                    wait_timeout=15, configuration=configuration(state_dir))
        return run_probes(state_dir)
    finally:
        stop_and_reap(thread)


@pytest.mark.parametrize("row", ROWS, ids=[r.label.replace(" @ ", "@").replace(" ", "-")
                                           for r in ROWS])
def test_each_probe_catches_the_store_twin_aimed_at_it_from_sidecar_evidence_alone(
        row: StoreRow, observed: Observed, tmp_path: Path) -> None:
    """fidelity §3/§4 (trace context), §1.4/§1.5 (budgets), §1.1/§1.6 (caller gone): the
    correct store chain keeps every rule; a twin breaks one rule at one hop, and only the
    probe of that rule fails, naming that hop."""
    cells, results = run_row(row, tmp_path / "state")
    observed.rows[row.label] = cells
    expected = {c: expected_cell(row, c) for c in COLUMNS}
    wrong = {c for c in COLUMNS if cells[c].key() != expected[c].key()}
    details = "\n".join(f"  {c}: expected {expected[c].text()}, observed {cells[c].text()} "
                        f"({cells[c].reason})" for c in sorted(wrong))
    assert not wrong, f"{row.label}:\n{details}"
    for column in COLUMNS:  # the verdicts rest on evidence, never on "held for 0"
        result = results[column]
        assert isinstance(result, dict) and not result.get("inconclusive"), (column, result)
