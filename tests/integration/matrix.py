"""The detection matrix: every probe against the correct chain and each defective twin.

One *row* is one local mesh running the reference chain (``fixtures/k8s``) with at most
one hop replaced by a defective twin (``CHAIN_DEFECT``). Every row runs under the same
*scenario* (env overrides on correct hops, identical for the correct row and the twins),
so a difference between rows can only come from the twin:

- pricing works ``PRICING_WORK_MS`` before answering: the probe giving up as a client
  after ``CLIENT_TIMEOUT_MS`` leaves a caller gone while the leaf is still working, which
  is what the orphan-work probe needs (its rule: all work below stops within grace).
  ``PRICING_WORK_MS - CLIENT_TIMEOUT_MS`` exceeds ``GRACE_MS``, so any call to pricing
  under way when the probe leaves outlives the grace unless it is cancelled;
- inventory works ``INVENTORY_WORK_MS`` before calling pricing: the time it has spent is
  then large enough for the add-elapsed twin's error (twice the elapsed time) to stand
  clear of clock noise, and its call to pricing is under way before the probe leaves;
- ratings answers 503 (orders treats it as an optional side call, so users still get
  200): a failing call is what makes an app that retries by itself show it.

inventory calls pricing over gRPC (the chain's gRPC leg), so the budget, cancellation and
trace rows at inventory and pricing judge a gRPC hop. A row may add env to its twin's hop
(as an experiment's ``chain_defect_env`` does): the fresh-deadline twin is only visible
when inventory has less left than the 300 ms route cap Istio puts on a gRPC deadline
(docs/fidelity.md §1.9), so that row's inventory works longer before its call.

Each cell is ``PASS`` or ``FAIL @ <hops>`` (the hops named by the failing checks).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from probes.cancellation import orphan_work
from probes.deadlines import deadline_propagation
from probes.slo import steady_state
from probes.tracing import trace_continuity

__all__ = ["COLUMNS", "EXPECTED", "PROBES", "ROWS", "Cell", "Row", "expected_cell", "render",
           "run_probes", "scenario_env", "table_rows", "with_twin", "write_section"]

PRICING_WORK_MS = 240  # under pricing's 300 ms route timeout: plain traffic still succeeds
INVENTORY_WORK_MS = 15
CLIENT_TIMEOUT_MS = 130  # inventory has called pricing by then (~50 ms in); pricing still works
GRACE_MS = 100.0
# inventory's budget is orders' 400 ms try: after this much work it has ~245 ms left, less
# than the 300 ms cap, so a fresh 30 s deadline reaches pricing as 300 ms, more than it had
FRESH_DEADLINE_INVENTORY_WORK_MS = 150
DEADLINE_TOLERANCE_MS = 10.0  # clock noise on a busy 2-core node (experiments use the same)

COLUMNS = ("trace continuity", "deadline propagation", "orphan work", "steady state")


@dataclass(frozen=True)
class Row:
    """One mesh: the twin's defect and the hop that runs it (``none``: the correct chain)."""

    defect: str
    hop: str | None
    why: str
    env: Mapping[str, str] = field(default_factory=dict)  # extra env of the twin's hop

    @property
    def label(self) -> str:
        return "correct chain" if self.hop is None else f"{self.defect} @ {self.hop}"


@dataclass(frozen=True)
class Cell:
    """What one probe said about one row: passed, and the hops its failing checks named."""

    passed: bool
    hops: frozenset[str] = frozenset()
    reason: str = ""
    checks: tuple[str, ...] = ()  # names of the failing checks, shown but not compared

    def key(self) -> tuple[bool, frozenset[str]]:
        return (self.passed, self.hops)

    def text(self) -> str:
        if self.passed:
            return "PASS"
        named = f" ({', '.join(self.checks)})" if self.checks else ""
        return "FAIL @ " + ", ".join(sorted(self.hops) or ["(no hop)"]) + named


# Trace twins sit at orders: it has two callees, so a hop that breaks propagation breaks
# it for a fan-out. Budget and cancellation twins sit at inventory: the middle of the
# deepest branch, with a caller above and a slow leaf below.
ROWS = (
    Row("none", None, "the reference: every probe passes"),
    Row("drop-traceparent", "orders", "inventory and ratings start new traces"),
    Row("reuse-parent", "orders", "calls carry orders' incoming parent-id"),
    Row("drop-tracestate", "orders", "vendor tracestate lost below orders"),
    Row("drop-b3", "orders", "x-b3-* lost below orders"),
    Row("drop-request-id", "orders", "orders' sidecar mints a new x-request-id"),
    Row("ignore-budget", "inventory", "inventory sends no timeout on its call"),
    Row("add-elapsed", "inventory", "inventory sends budget + elapsed instead of - elapsed"),
    Row("no-cancel", "inventory", "inventory works on after its caller left"),
    Row("cancel-self-only", "inventory", "inventory stops but leaves its call to pricing running"),
    Row("app-retries", "orders", "orders retries the failing ratings itself"),
    Row("grpc-drop-metadata", "inventory", "inventory's gRPC call carries no trace context"),
    Row("grpc-fresh-deadline", "inventory", "inventory gives pricing a fresh 30 s deadline",
        {"CHAIN_WORK_BEFORE": str(FRESH_DEADLINE_INVENTORY_WORK_MS)}),
    Row("no-cancel", "pricing", "pricing, the gRPC server, works on after its call was cancelled"),
)

_FAIL_TRACE = {"drop-traceparent", "reuse-parent", "drop-tracestate", "drop-b3",
               "drop-request-id", "grpc-drop-metadata"}
_FAIL_DEADLINE = {"ignore-budget", "add-elapsed", "app-retries", "grpc-fresh-deadline"}
_FAIL_ORPHAN = {"no-cancel", "cancel-self-only"}
EXPECTED: dict[str, tuple[str, ...]] = {  # column -> defects that must fail it (at their hop)
    COLUMNS[0]: tuple(sorted(_FAIL_TRACE)),
    COLUMNS[1]: tuple(sorted(_FAIL_DEADLINE)),
    COLUMNS[2]: tuple(sorted(_FAIL_ORPHAN)),
    COLUMNS[3]: (),  # no twin breaks the SLO: these bugs are invisible to a steady-state check
}


def expected_cell(row: Row, column: str,
                  expected: Mapping[str, tuple[str, ...]] = EXPECTED) -> Cell:
    """FAIL at the twin's hop where ``expected`` aims the column at its defect, else PASS."""
    if row.hop is not None and row.defect in expected[column]:
        return Cell(False, frozenset({row.hop}))
    return Cell(True)


def with_twin(scenario: dict[tuple[str, str], dict[str, str]], row: Row
              ) -> dict[tuple[str, str], dict[str, str]]:
    """A row's env overrides: the scenario every row shares, plus its twin's hop."""
    if row.hop is not None:
        scenario.setdefault(("shop", row.hop), {}).update({**row.env,
                                                           "CHAIN_DEFECT": row.defect})
    return scenario


def scenario_env(row: Row) -> dict[tuple[str, str], dict[str, str]]:
    """The env overrides of one row's mesh: the common scenario plus the twin."""
    return with_twin({
        ("shop", "pricing"): {"CHAIN_WORK_BEFORE": str(PRICING_WORK_MS)},
        ("shop", "inventory"): {"CHAIN_WORK_BEFORE": str(INVENTORY_WORK_MS)},
        ("shop", "ratings"): {"CHAIN_STATUS": "503"},
    }, row)


# A probe waits for each trace to hold every hop (at most 0.6 of its time left): a twin
# that breaks the trace makes it wait that long, so the timeouts stay short.
def _trace(config: dict[str, Any]) -> dict[str, Any]:
    return trace_continuity(requests=4, timeout_s=10.0, configuration=config)


def _deadline(config: dict[str, Any]) -> dict[str, Any]:
    return deadline_propagation(requests=4, tolerance_ms=DEADLINE_TOLERANCE_MS, timeout_s=10.0,
                                configuration=config)


def _orphan(config: dict[str, Any]) -> dict[str, Any]:
    return orphan_work(requests=2, grace_ms=GRACE_MS, client_timeout_ms=CLIENT_TIMEOUT_MS,
                       timeout_s=10.0, configuration=config)


def _steady(config: dict[str, Any]) -> dict[str, Any]:
    # Latency bound: the chain's own work is ~PRICING_WORK_MS; the rest is a busy 2-core box.
    return steady_state(rate=10.0, duration_s=1.5,
                        slo={"min_success": 1.0, "max_p99_ms": 1500, "concurrency": 2},
                        configuration=config)


PROBES: Mapping[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    COLUMNS[0]: _trace, COLUMNS[1]: _deadline, COLUMNS[2]: _orphan, COLUMNS[3]: _steady,
}


def to_cell(result: Mapping[str, Any]) -> Cell:
    # A rule with nothing to judge is no failure (and no pass): the probe's own verdict says
    # whether the rules it rests on were judged.
    failing = [c for c in result["checks"] if c.get("status", "failed" if not c["passed"]
                                                   else "held") == "failed"]
    hops = frozenset(c.get("hop") or "(no hop)" for c in failing)
    return Cell(bool(result["passed"]), hops, str(result.get("reason", "")),
                tuple(f"{c['name']}@{c.get('hop')}" if len(hops) > 1 else str(c["name"])
                      for c in failing))


# The trace and deadline probes send a few plain requests and then mostly wait for
# evidence: they run side by side. Orphan work and steady state measure timing, so each
# runs alone.
_PHASES = ((COLUMNS[0], COLUMNS[1]), (COLUMNS[2],), (COLUMNS[3],))


def _timed(probe: Callable[[dict[str, Any]], dict[str, Any]],
           config: dict[str, Any]) -> tuple[dict[str, Any], float]:
    began = time.monotonic()
    result = probe(dict(config))
    return result, round(time.monotonic() - began, 2)


def run_probes(state_dir: Path) -> tuple[dict[str, Cell], dict[str, float]]:
    """Every probe once against the mesh of ``state_dir``; cells and seconds per probe."""
    config: dict[str, Any] = {"target": "local", "meshchaos_state_dir": str(state_dir),
                              "run_id": "detection-matrix"}
    cells: dict[str, Cell] = {}
    seconds: dict[str, float] = {}
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="matrix-probe") as pool:
        for phase in _PHASES:
            futures = {c: pool.submit(_timed, PROBES[c], config) for c in phase}
            for column, future in futures.items():
                result, seconds[column] = future.result()
                cells[column] = to_cell(result)
    return cells, seconds


def table_rows(rows: Sequence[Row], columns: Sequence[str],
               observed: Mapping[str, Mapping[str, Cell]],
               expected: Callable[[Row, str], Cell]) -> list[str]:
    """The Markdown rows of a matrix (a cell that differs from the expected one in bold), then
    the line that says whether observed equals expected."""
    lines, wrong = [], 0
    for row in rows:
        if row.label not in observed:
            continue
        texts = []
        for column in columns:
            cell, want = observed[row.label][column], expected(row, column)
            text = cell.text()
            if cell.key() != want.key():
                wrong += 1
                text = f"**{text}** (expected {want.text()})"
            texts.append(text)
        lines.append(f"| {row.label} | " + " | ".join(texts) + " |")
    return [*lines, "", "Observed equals expected." if not wrong else
            f"**{wrong} cell(s) differ from the expected matrix** (in bold): the test fails."]


def render(observed: Mapping[str, Mapping[str, Cell]], seconds: float | None = None) -> str:
    """The observed matrix as Markdown (rows in ROWS order)."""
    lines = [
        "# Detection matrix",
        "",
        "Generated by `tests/integration/test_detection_matrix.py` (run with "
        "`MESHCHAOS_WRITE_MATRIX=1`) from a real run on the local mesh: each row is one "
        "mesh running the reference chain, with the named hop replaced by a defective "
        "twin (`CHAIN_DEFECT`). A cell is `PASS`, or `FAIL @ <hop>` with the hop "
        "named by the probe's failing checks. The test asserts this table equals the expected "
        "one, so a missed twin and a false alarm both fail it.",
        "",
        "| row | " + " | ".join(COLUMNS) + " |",
        "|---|" + "---|" * len(COLUMNS),
    ]
    lines += table_rows(ROWS, COLUMNS, observed, expected_cell)
    lines += [
        "",
        "Scenario, identical in every row (env overrides on correct hops): pricing works "
        f"{PRICING_WORK_MS} ms, inventory works {INVENTORY_WORK_MS} ms before its call, ratings "
        "answers 503 (an optional side call of orders). Probes: trace continuity (4 sampled "
        "requests + 1 unsampled), deadline propagation (4 requests, tolerance "
        f"{DEADLINE_TOLERANCE_MS:g} ms), orphan work (2 requests the probe gives up on after "
        f"{CLIENT_TIMEOUT_MS} ms, grace {GRACE_MS:g} ms), steady state (10 req/s for 1.5 s, "
        "every request 2xx, p99 <= 1500 ms).",
        "",
        "Why each twin sits where it does:",
        "",
    ]
    lines += [f"- `{r.label}`: {r.why}." for r in ROWS]
    if seconds is not None:
        lines += ["", f"Whole matrix: {seconds:.0f} s on a shared 2-core box."]
    return "\n".join(lines) + "\n"


WRITE_MATRIX_ENV = "MESHCHAOS_WRITE_MATRIX"


def write_section(doc: Path, name: str, text: str) -> None:
    """Replace (or append) the section ``name`` of the matrix document, between its markers,
    so the reference and the store matrices each rewrite only their own table. Only when
    MESHCHAOS_WRITE_MATRIX=1: a plain test run must leave the committed tree unchanged."""
    if os.environ.get(WRITE_MATRIX_ENV) != "1":
        return
    begin, end = f"<!-- matrix:{name} -->", f"<!-- /matrix:{name} -->"
    block = f"{begin}\n{text}{end}\n"
    current = doc.read_text() if doc.exists() else ""
    if begin in current and end in current:
        head, rest = current.split(begin, 1)
        tail = rest.split(end, 1)[1].lstrip("\n")
        doc.write_text(head + block + (("\n" + tail) if tail else ""))
    else:
        doc.write_text(current + ("\n" if current and not current.endswith("\n\n") else "")
                       + block)
