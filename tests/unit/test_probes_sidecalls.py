"""The side-call probes end to end against a loopback target that serves recorded evidence.

``tests/data/evidence/fakecluster`` plays the ingress, the Kubernetes API (pods, their
``istio-proxy`` logs, the mesh ConfigMap) and the trace query API; every request the probe
really sends gets the recorded case's lines under its own ids. The cases were recorded from
the local mesh with a VirtualService abort on ``ratings`` (docs/fidelity.md §2.4), so the
probes read exactly what Envoy's fault filter leaves in the caller's log: ``503 FI
fault_filter_abort`` with no upstream host, and nothing at ratings.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from probes import _common
from probes.deadline import Deadline
from probes.errors import ConfigurationError
from probes.sidecalls import flagged_calls, side_call_fallback
from tests.data.evidence.fakecluster import HERE, Fake, serve


def recorded(case: str, **more: object) -> Fake:
    """A fake serving ``case`` with the mesh config it was recorded under."""
    mesh = HERE / case / "mesh.yaml"
    kwargs: dict[str, object] = {"case": case, **more}
    if mesh.exists():
        kwargs["mesh_yaml"] = mesh.read_text()
    return Fake(**kwargs)  # type: ignore[arg-type]


def test_flagged_calls_finds_every_probe_request_aborted_at_the_caller(tmp_path: Path) -> None:
    with serve(tmp_path, recorded("live-side-aborted-correct")) as running:
        result = flagged_calls(service="ratings", flag="FI", requests=4, min_ratio=1.0,
                               configuration=running.configuration())
    assert result["passed"] is True, result["reason"]
    got = result["measurements"]
    assert (got["lines"], got["flagged"], got["flagged_requests"]) == (4, 4, 4)
    assert got["callers"] == {"orders": 4} and got["outcomes"] == {"503 FI": 4}
    assert got["statuses"] == {"200": 4}


def test_flagged_calls_fails_where_no_fault_was_felt(tmp_path: Path) -> None:
    """The recorded correct chain without a fault: ratings answered ``200``."""
    with serve(tmp_path, recorded("correct")) as running:
        result = flagged_calls(service="ratings", requests=2,
                               configuration=running.configuration())
    assert result["passed"] is False
    assert "0/2 outbound lines to ratings flagged FI" in result["reason"]


def test_side_call_fallback_names_the_caller_that_failed_its_whole_request(
        tmp_path: Path) -> None:
    with serve(tmp_path, recorded("live-side-aborted-no-fallback", status=503)) as running:
        result = side_call_fallback(service="ratings", requests=2,
                                    configuration=running.configuration())
    assert result["passed"] is False
    assert result["reason"].startswith("side-call-fallback: side-call-fallback at orders: "
                                       "orders answered 503 after its call to ratings failed")


def test_side_call_fallback_holds_for_the_correct_caller(tmp_path: Path) -> None:
    with serve(tmp_path, recorded("live-side-aborted-correct")) as running:
        result = side_call_fallback(service="ratings", requests=2,
                                    configuration=running.configuration())
    assert result["passed"] is True, result["reason"]
    assert [(c["name"], c["status"]) for c in result["checks"]] == [
        ("side-call-fallback", "held"), ("aborted-call-not-served", "held")]


@pytest.mark.parametrize(("call", "message"), [
    (lambda: flagged_calls(), "flagged_calls needs 'service'"),
    (lambda: flagged_calls(service="ratings", flag=" , "), "argument 'flag' names no"),
    (lambda: flagged_calls(service="ratings", min_ratio=90), "argument 'min_ratio' is 90"),
    (lambda: side_call_fallback(), "side_call_fallback needs 'service'"),
])
def test_bad_arguments_are_refused_naming_the_argument(call: object, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        call()  # type: ignore[operator]


def test_an_exact_client_timeout_below_50_ms_is_kept(tmp_path: Path) -> None:
    """orphan_work's ``client_timeout_ms`` is the user leaving at that moment: 20 ms must
    not become the 50 ms floor that only guards a share of the probe's time cut too small."""
    with serve(tmp_path, Fake(delay_s=0.3)) as running:
        begin = time.monotonic()
        sent = _common.send_requests(running.url + "/", None, 2, None, timeout_s=0.02,
                                     deadline=Deadline(10, "test"), exact_timeout=True)
        took = time.monotonic() - begin
    assert [r.status for r in sent] == [None, None]
    assert all(r.latency_ms is not None and r.latency_ms < 45 for r in sent), sent
    assert took < 0.3
