"""The orphan-work probe end to end on a loopback target."""

from __future__ import annotations

from pathlib import Path

import pytest

from probes.cancellation import orphan_work
from probes.errors import ConfigurationError
from tests.data.evidence.fakecluster import Fake, serve


def test_orphan_probe_counts_orphans_of_the_cancel_self_only_twin(tmp_path: Path) -> None:
    """§1.6: after a 504 UT no downstream request may complete; orphans are counted per hop."""
    with serve(tmp_path, Fake(case="cancel-self-only")) as running:
        result = orphan_work(requests=1, timeout_s=30,
                             configuration=running.configuration(run_id="run-1"))
    assert result["passed"] is False and "orphan-work at orders" in result["reason"]
    assert result["measurements"]["orphaned_requests"] == {"inventory": 1, "pricing": 1}
    assert result["traces"][0]["spans"]


def test_orphan_probe_passes_when_the_chain_cancels(tmp_path: Path) -> None:
    with serve(tmp_path, Fake(case="timeout-correct")) as running:
        result = orphan_work(requests=1, timeout_s=30,
                             configuration=running.configuration(run_id="run-1"))
    assert result["passed"] is True, result["reason"]


def test_orphan_probe_without_a_timeout_is_inconclusive(tmp_path: Path) -> None:
    """Nothing timed out, so nothing could be orphaned: the probe proves nothing and says
    so (passed false, inconclusive names the reason), it does not pass."""
    with serve(tmp_path, Fake(case="correct")) as running:
        result = orphan_work(requests=1, timeout_s=30, configuration=running.configuration())
    assert result["passed"] is False
    assert "timed out" in result["inconclusive"] and "inconclusive" in result["reason"]


def test_a_client_timeout_that_cannot_fit_the_probe_deadline_is_refused(tmp_path: Path) -> None:
    with serve(tmp_path) as running, pytest.raises(ConfigurationError, match="too short"):
        orphan_work(requests=4, client_timeout_ms=2000, timeout_s=3,
                    configuration=running.configuration())
