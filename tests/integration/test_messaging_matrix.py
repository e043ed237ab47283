"""The messaging detection matrix (tests/integration/messaging_matrix.py): the correct chain
passes both columns, each messaging twin fails the columns aimed at its bug at its hop and
no other; the table is written to docs/detection-matrix.md with MESHCHAOS_WRITE_MATRIX=1.

AMQP 0-9-1 delivers at least once (RabbitMQ "Consumer Acknowledgements"), W3C Trace Context:
AMQP carries the context in the message, RabbitMQ's per-message TTL bounds a message's life
(docs/fidelity.md §9.2-9.4).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from localmesh.mesh import MeshThread
from localmesh.rabbitmq import SERVER

from .conftest import CHAIN_MANIFESTS, ROOT, stop_and_reap
from .matrix import Cell, Row, write_section
from .messaging_matrix import COLUMNS, ROWS, expected_cell, render, run_probes, scenario_env

pytestmark = [pytest.mark.integration, pytest.mark.slow,
              pytest.mark.skipif(not os.access(SERVER, os.X_OK),
                                 reason=f"{SERVER} missing: apt-get install -y rabbitmq-server")]

BROKER_MANIFESTS = ROOT / "fixtures" / "broker" / "k8s"
MATRIX_DOC = ROOT / "docs" / "detection-matrix.md"


@pytest.fixture(scope="module")
def observed() -> Iterator[dict[str, dict[str, Cell]]]:
    rows: dict[str, dict[str, Cell]] = {}
    began = time.monotonic()
    yield rows
    if len(rows) == len(ROWS):
        table = render(rows, seconds=time.monotonic() - began)
        write_section(MATRIX_DOC, "messaging", table)
        print("\n" + table)


@pytest.mark.parametrize("row", ROWS, ids=[r.defect for r in ROWS])
def test_the_message_flow_probe_fails_only_on_the_twin_aimed_at_it_and_names_its_hop(
        row: Row, observed: dict[str, dict[str, Cell]], tmp_path: Path) -> None:
    thread = MeshThread([CHAIN_MANIFESTS, BROKER_MANIFESTS], tmp_path / "state",
                        env_overrides=scenario_env(row))
    try:
        thread.start(timeout=60)
        cells = run_probes(str(tmp_path / "state"))
    finally:
        stop_and_reap(thread)
    observed[row.label] = cells
    got = {c: cells[c].key() for c in COLUMNS}
    want = {c: expected_cell(row, c).key() for c in COLUMNS}
    details = "\n".join(f"  {c}: expected {expected_cell(row, c).text()}, observed "
                        f"{cells[c].text()} ({cells[c].reason})" for c in COLUMNS
                        if got[c] != want[c])
    assert got == want, f"{row.label}:\n{details}"


def test_every_messaging_twin_but_ack_before_work_is_a_row() -> None:
    from fixtures.chain.defects import Defect

    amqp = {d.value for d in Defect if d.value.startswith("amqp-")}
    assert {r.defect for r in ROWS if r.hop} == amqp - {"amqp-ack-before-work"}
    for row in ROWS:
        failing = [c for c in COLUMNS if not expected_cell(row, c).passed]
        assert bool(failing) == (row.hop is not None), row.label
