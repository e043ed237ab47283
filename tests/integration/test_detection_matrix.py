"""The detection matrix: each probe against the correct chain and against every defective twin.

Each row starts one local mesh (the reference chain of ``fixtures/k8s``, one hop replaced
by a twin through ``CHAIN_DEFECT``) and runs every probe once. The correct chain must pass
every probe; each twin must fail exactly the probe aimed at its bug, with the failing
checks naming the twin's hop — a twin that passes it is a miss, and a twin that fails any
other probe is a false alarm: both fail the row. The rows and the scenario they share are
in :mod:`tests.integration.matrix`; once every row has run, the observed matrix is printed
and written to ``docs/detection-matrix.md`` (the README shows it).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from localmesh.mesh import MeshThread

from .conftest import CHAIN_MANIFESTS, ROOT, stop_and_reap
from .matrix import (
    COLUMNS,
    ROWS,
    Cell,
    Row,
    expected_cell,
    render,
    run_probes,
    scenario_env,
    write_section,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MATRIX_DOC = ROOT / "docs" / "detection-matrix.md"


class Observed:
    """The rows observed so far in this session, and when the first one started."""

    def __init__(self) -> None:
        self.rows: dict[str, dict[str, Cell]] = {}
        self.began = time.monotonic()


@pytest.fixture(scope="module")
def observed() -> Iterator[Observed]:
    """Collects every row; writes the Markdown matrix only when all rows ran (a partial
    run, e.g. ``-k``, must not overwrite the committed table with fewer rows)."""
    seen = Observed()
    yield seen
    if len(seen.rows) == len(ROWS):
        table = render(seen.rows, seconds=time.monotonic() - seen.began)
        write_section(MATRIX_DOC, "reference", table)
        print("\n" + table)


def run_row(row: Row, state_dir: Path) -> dict[str, Cell]:
    thread = MeshThread([CHAIN_MANIFESTS], state_dir, env_overrides=scenario_env(row))
    try:
        thread.start(timeout=60)
        cells, _ = run_probes(state_dir)
    finally:
        stop_and_reap(thread)
    return cells


@pytest.mark.parametrize("row", ROWS, ids=[r.defect if r.hop in (None, "orders", "inventory")
                                           else f"{r.defect}@{r.hop}" for r in ROWS])
def test_each_probe_fails_only_on_the_twin_aimed_at_it_and_names_its_hop(
        row: Row, observed: Observed, tmp_path: Path) -> None:
    """docs/fidelity.md §3/§4 (trace context), §1.4/§1.5/§6 (budgets), §1.1/§1.6 (caller
    gone → work below stops): the correct chain keeps every rule, so every probe passes;
    a twin breaks one rule at one hop, so only the probe of that rule fails, naming it."""
    cells = run_row(row, tmp_path / "state")
    observed.rows[row.label] = cells
    expected = {c: expected_cell(row, c) for c in COLUMNS}
    got = {c: cells[c].key() for c in COLUMNS}
    want = {c: expected[c].key() for c in COLUMNS}
    details = "\n".join(f"  {c}: expected {expected[c].text()}, observed {cells[c].text()} "
                        f"({cells[c].reason})" for c in COLUMNS if got[c] != want[c])
    assert got == want, f"{row.label}:\n{details}"


def test_the_expected_matrix_aims_every_twin_at_exactly_one_probe() -> None:
    """The issues' contract: ten twins (issue 1) and the gRPC leg's (issue 16: trace
    context dropped from the metadata, a fresh deadline, cancellation ignored by the gRPC
    server), each caught by one probe (so each row of the expected matrix has exactly one
    FAIL), and the correct chain passes everything."""
    twins = [(r.defect, r.hop) for r in ROWS if r.hop is not None]
    assert len(twins) == len(set(twins)) == 13
    for row in ROWS:
        failing = [c for c in COLUMNS if not expected_cell(row, c).passed]
        assert len(failing) == (0 if row.hop is None else 1), (row.label, failing)
