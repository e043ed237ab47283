"""Every experiment, unedited, against a chain that is not the reference: the store chain
(fixtures/store: Node.js and Python stdlib hops, no OpenTelemetry, namespace ``store``,
ingress prefix ``/api/``), pointed at it with ``chaos run --var`` only, as the README's worked
example does (issue 13: "The six experiments run unedited against a chain of one's own via
``--var`` only, with correct verdicts").

The correct chain PASSes every experiment; a twin of one's own, started with ``mesh_set_env``,
FAILs the experiment aimed at its bug and the reason names its hop. Each run is a real
``chaos run`` with its own state dir, so the local-mesh control starts and stops a store mesh
for it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from reports.verdict import Outcome
from tests.integration.conftest import run_chaos
from tests.store_chain import STORE, STORE_VARS

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RUN_TIMEOUT_S = 100.0  # under the per-test timeout of 120 s


def chaos_run(experiment: str, tmp_path: Path, **variables: str) -> tuple[Outcome, str, str]:
    """``chaos run --var …`` from the repository root; the verdict, its line plus the report,
    and the run's output."""
    given = {**STORE, **STORE_VARS[experiment], "meshchaos_state_dir": str(tmp_path / "state"),
             "report_dir": str(tmp_path / "reports"), **variables}
    args = [arg for key, value in given.items() for arg in ("--var", f"{key}={value}")]
    # Nothing from the environment may aim the run elsewhere: --var alone points it.
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESHCHAOS_")}
    outcome, summary, out, code = run_chaos([*args, f"experiments/{experiment}.json"],
                                            tmp_path, env, timeout_s=RUN_TIMEOUT_S,
                                            name=experiment)
    assert (code == 0) is (outcome is Outcome.PASS), summary
    return outcome, summary, out


# What a run must say besides its verdict: timeout-cascade's delay is twice the stock ->
# warehouse route timeout the cluster holds (docs/fidelity.md §2.1: the route acts in the
# caller's sidecar), not a number written for the reference chain.
SAYS = {"timeout-cascade": "delay 7000 ms = 2 x stock->warehouse timeout 3500 ms",
        "fault-delay-beyond-timeout": "VirtualService 'store/warehouse': delay 7000 ms = 2 x "
                                      "stock->warehouse timeout 3500 ms",
        # the abort lands on the store's own side route, named by --var side_service alone
        "fault-abort-side-hop": "VirtualService 'store/reviews': route 'reviews-v1' now has "
                                'fault {"abort": {"httpStatus": 503'}


@pytest.mark.parametrize("experiment", sorted(STORE_VARS))
def test_each_experiment_passes_on_the_correct_store_chain_by_var_alone(
        experiment: str, tmp_path: Path) -> None:
    outcome, summary, out = chaos_run(experiment, tmp_path)
    assert outcome is Outcome.PASS, summary
    assert SAYS.get(experiment, "") in out


# One twin per STORE_DEFECT (fixtures/store/README.md), each with the experiment aimed at
# its bug and the first finding that must name its hop.
TWINS = [
    # fidelity §1.1/§1.6: the caller's sidecar gave up and reset the stream; the hop must
    # close its own call, which its outbound access-log line shows it did not.
    ("timeout-cascade", "store/catalog:STORE_DEFECT=leak-call",
     "orphan-work at catalog: catalog did not cancel its call to stock"),
    # fidelity §1.4/§1.5: the budget a hop passes on must shrink by the time it spent.
    ("deadline-headers-audit", "store/stock:STORE_DEFECT=stale-budget",
     "budget-within-remaining at stock: stock gave warehouse a budget of"),
    # fidelity §1.3/§2.2: retries are the route's; a second call with the same
    # x-request-id after a failure is the app's own.
    ("sidecar-failure", "store/catalog:STORE_DEFECT=app-retries",
     "retry-amplification at catalog: catalog called reviews again itself"),
    # fidelity §4.1: a hop that drops traceparent makes its callee's sidecar start a trace.
    ("deadline-headers-audit", "store/gateway:STORE_DEFECT=drop-traceparent",
     "same-trace at gateway: catalog joined a new trace"),
]


@pytest.mark.parametrize(("experiment", "twin", "finding"), TWINS,
                         ids=[f"{twin.split(':')[0]}-{twin.rsplit('=', 1)[1]}-{experiment}"
                              for experiment, twin, _ in TWINS])
def test_a_twin_of_ones_own_fails_the_experiment_aimed_at_its_bug_naming_its_hop(
        experiment: str, twin: str, finding: str, tmp_path: Path) -> None:
    """mesh_set_env runs the twin on the local mesh, the rest of the chain unchanged."""
    outcome, summary, _ = chaos_run(experiment, tmp_path, mesh_set_env=twin)
    assert outcome is Outcome.FAIL, summary
    assert finding in summary.split("\n", 1)[0], summary
