"""The probes' own traffic: fresh W3C/B3/x-request-id per request, bounded load."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from probes.errors import ConfigurationError
from probes.evidence.accesslog import parse_traceparent
from probes.traffic import Load, fresh_headers, send_load, send_one, state_value
from tests.data.evidence.fakecluster import Fake, serve


def test_each_request_gets_a_fresh_sampled_context_in_every_format() -> None:
    """§4.1: version 00, lowercase hex, sampled flag; §3: B3 and x-request-id agree."""
    first, sent = fresh_headers("run-7")
    second, _ = fresh_headers("run-7")
    context = parse_traceparent(first["traceparent"])
    assert context == (sent.trace_id, sent.parent_id, True)
    assert first["tracestate"] == "meshchaos=run-7" == sent.tracestate
    assert (first["x-b3-traceid"], first["x-b3-spanid"], first["x-b3-sampled"]) == (
        sent.trace_id, sent.parent_id, "1")
    assert first["x-request-id"] == sent.request_id
    assert first["traceparent"] != second["traceparent"]
    assert first["x-request-id"] != second["x-request-id"]


def test_unsampled_context_sets_flags_zero() -> None:
    headers, sent = fresh_headers("r", sampled=False)
    assert headers["traceparent"].endswith("-00") and not sent.sampled


def test_run_ids_become_valid_tracestate_values() -> None:
    """§4.2: a value has no ',' or '='; keys/values stay short."""
    assert state_value("Run=1,x") == "run-1-x"
    assert state_value("===") == "probe"


def test_send_one_records_status_latency_and_the_headers_arrive(tmp_path: Path) -> None:
    with serve(tmp_path) as running:
        sent = send_one(running.url + "/", "r1", headers={"x-extra": "1"})
        received = running.fake.received[-1]
    assert sent.status == 200 and sent.latency_ms is not None and sent.error is None
    assert received["traceparent"].split("-")[1] == sent.trace_id
    assert received["x-extra"] == "1" and received["x-request-id"] == sent.request_id


def test_transport_failures_are_recorded_not_raised() -> None:
    sent = send_one("http://127.0.0.1:9/", "r1", timeout_s=0.5)
    assert sent.status is None and sent.error and "ConnectionError" in sent.error


def test_load_is_bounded_by_count_and_paced_by_rate(tmp_path: Path) -> None:
    with serve(tmp_path) as running:
        begin = time.monotonic()
        sent = send_load(Load(url=running.url + "/", run_id="r", count=6, rate=20.0,
                              duration_s=5, concurrency=2))
        took = time.monotonic() - begin
    assert len(sent) == 6 and all(r.status == 200 for r in sent)
    assert took >= 5 / 20.0  # six requests at 20/s span at least 0.25 s
    assert len({r.trace_id for r in sent}) == 6


@pytest.mark.parametrize("field", ["count", "rate", "duration_s", "concurrency", "timeout_s"])
def test_load_bounds_must_be_positive(field: str) -> None:
    args = {"url": "http://x", "run_id": "r", "count": 1, field: 0}
    with pytest.raises(ConfigurationError, match=field):
        Load(**args)  # type: ignore[arg-type]


def test_concurrency_has_an_upper_bound() -> None:
    with pytest.raises(ConfigurationError, match="above the bound"):
        Load(url="http://x", run_id="r", count=1, concurrency=500)


def test_fake_ingress_can_fail_first(tmp_path: Path) -> None:
    with serve(tmp_path, Fake(fail_first=1)) as running:
        assert send_one(running.url + "/", "r").status == 503
        assert send_one(running.url + "/", "r").status == 200
