"""The store chain's detection matrix: every probe against the correct store chain and each
of its single-defect twins, judged from the sidecars alone.

The store chain (``fixtures/store``) exports no spans, forwards trace headers by hand, runs
two hops in Node.js and lives in namespace ``store`` under other names than the reference
chain, so every cell here is earned from access logs and sidecar spans, as on a user's
mesh. The probes get nothing but configuration keys (namespace, entry path, headers): no
call tree, no hop names.

Scenario, identical in every row:

- every probe request carries ``x-store-slow-ms: LEAF_SLOW_MS``: the leaf (warehouse) works
  that long, so the probe giving up as a client after ``CLIENT_TIMEOUT_MS`` leaves every
  hop with work below it still running (what the orphan-work probe needs);
- every pod of ``reviews`` (catalog's optional side call) fails (a real PodChaos
  pod-failure through the probes' own action): catalog answers with its fallback, and an
  app that retries by itself shows it on that failing call.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from probes.cancellation import orphan_work
from probes.deadlines import deadline_propagation
from probes.slo import steady_state
from probes.tracing import trace_continuity

from .matrix import COLUMNS, Cell, table_rows, to_cell

__all__ = ["EXPECTED", "ROWS", "StoreRow", "configuration", "expected_cell", "render",
           "run_probes", "twin_env"]

NAMESPACE = "store"
ENTRY_PATH = "/api/items/42"
LEAF_SLOW_MS = 260
CLIENT_TIMEOUT_MS = 130
GRACE_MS = 100.0
DEADLINE_TOLERANCE_MS = 10.0


@dataclass(frozen=True)
class StoreRow:
    defect: str
    hop: str | None
    why: str

    @property
    def label(self) -> str:
        return "correct store chain" if self.hop is None else f"{self.defect} @ {self.hop}"


ROWS = (
    StoreRow("none", None, "the reference: every probe passes"),
    StoreRow("drop-traceparent", "gateway", "the Node.js edge sends no traceparent: catalog's "
             "sidecar starts a new trace"),
    StoreRow("drop-traceparent", "catalog", "stock and reviews start new traces below the "
             "fan-out"),
    StoreRow("stale-budget", "catalog", "catalog forwards the budget it got, 25 ms of work "
             "later"),
    StoreRow("stale-budget", "stock", "the threaded hop forwards a stale budget to the leaf"),
    StoreRow("app-retries", "catalog", "catalog retries the failing reviews itself"),
    StoreRow("leak-call", "catalog", "catalog stops but leaves its call to stock open"),
    StoreRow("leak-call", "stock", "stock stops but leaves its call to the slow leaf open"),
)

_COLUMN_OF = {"drop-traceparent": COLUMNS[0], "stale-budget": COLUMNS[1],
              "app-retries": COLUMNS[1], "leak-call": COLUMNS[2]}
EXPECTED: dict[str, tuple[str, ...]] = {
    column: tuple(sorted({d for d, c in _COLUMN_OF.items() if c == column}))
    for column in COLUMNS}


def expected_cell(row: StoreRow, column: str) -> Cell:
    if row.hop is not None and _COLUMN_OF.get(row.defect) == column:
        return Cell(False, frozenset({row.hop}))
    return Cell(True)


def twin_env(row: StoreRow) -> dict[tuple[str, str], dict[str, str]]:
    return {} if row.hop is None else {(NAMESPACE, row.hop): {"STORE_DEFECT": row.defect}}


def configuration(state_dir: Path) -> dict[str, Any]:
    """Only keys a user would pass with --var: nothing names a hop."""
    return {"target": "local", "meshchaos_state_dir": str(state_dir), "run_id": "store-matrix",
            "namespace": NAMESPACE, "allowed_namespaces": NAMESPACE, "entry_path": ENTRY_PATH,
            "entry_headers": json.dumps({"x-store-slow-ms": str(LEAF_SLOW_MS)})}


def _trace(config: dict[str, Any]) -> dict[str, Any]:
    return trace_continuity(requests=4, timeout_s=10.0, configuration=config)


def _deadline(config: dict[str, Any]) -> dict[str, Any]:
    return deadline_propagation(requests=4, tolerance_ms=DEADLINE_TOLERANCE_MS, timeout_s=10.0,
                                configuration=config)


def _orphan(config: dict[str, Any]) -> dict[str, Any]:
    return orphan_work(requests=2, grace_ms=GRACE_MS, client_timeout_ms=CLIENT_TIMEOUT_MS,
                       timeout_s=10.0, configuration=config)


def _steady(config: dict[str, Any]) -> dict[str, Any]:
    return steady_state(rate=10.0, duration_s=1.0,
                        slo={"min_success": 1.0, "max_p99_ms": 1500, "concurrency": 4},
                        configuration=config)


PROBES: Mapping[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    COLUMNS[0]: _trace, COLUMNS[1]: _deadline, COLUMNS[2]: _orphan, COLUMNS[3]: _steady,
}
_PHASES = ((COLUMNS[0], COLUMNS[1]), (COLUMNS[2],), (COLUMNS[3],))


def run_probes(state_dir: Path) -> tuple[dict[str, Cell], dict[str, Any]]:
    """Every probe once; the cells and the raw results (for the failure message)."""
    config = configuration(state_dir)
    cells: dict[str, Cell] = {}
    results: dict[str, Any] = {}
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="store-matrix") as pool:
        for phase in _PHASES:
            futures = {c: pool.submit(PROBES[c], dict(config)) for c in phase}
            for column, future in futures.items():
                results[column] = future.result()
                cells[column] = to_cell(results[column])
    return cells, results


def render(observed: Mapping[str, Mapping[str, Cell]], seconds: float | None = None) -> str:
    lines = [
        "## The store chain: a mesh we did not write",
        "",
        "Generated by `tests/integration/test_store_detection_matrix.py`: each row is one local "
        "mesh running `fixtures/store` (namespace `store`; gateway and warehouse in Node.js, "
        "catalog, stock and reviews in Python's standard library; no hop exports a span, trace "
        "headers are forwarded by hand), with the named hop replaced by its twin "
        "(`STORE_DEFECT`). The probes are given only `namespace`, `entry_path` and "
        "`entry_headers`: the call tree is read from the sidecars' evidence, and every verdict "
        "rests on the sidecars' access logs and spans.",
        "",
        "| row | " + " | ".join(COLUMNS) + " |",
        "|---|" + "---|" * len(COLUMNS),
    ]
    lines += table_rows(ROWS, COLUMNS, observed, expected_cell)
    lines += [
        "",
        f"Scenario, identical in every row: every probe request asks the leaf to work "
        f"{LEAF_SLOW_MS} ms (`x-store-slow-ms`, an `entry_headers` key), and every reviews pod "
        "fails (PodChaos pod-failure), so catalog answers with its fallback. Probes: trace "
        "continuity (4 sampled + 1 unsampled), deadline propagation (4 requests, tolerance "
        f"{DEADLINE_TOLERANCE_MS:g} ms), orphan work (2 requests the probe leaves after "
        f"{CLIENT_TIMEOUT_MS} ms, grace {GRACE_MS:g} ms), steady state (10 req/s for 1 s).",
        "",
    ]
    lines += [f"- `{r.label}`: {r.why}." for r in ROWS]
    if seconds is not None:
        lines += ["", f"Whole store matrix: {seconds:.0f} s on a shared 2-core box."]
    return "\n".join(lines) + "\n"
