"""``Upstream``, the planner's answer to "where does this request go, under which policy",
is built by keyword only and carries every duration in one unit (ms)."""

from __future__ import annotations

import dataclasses
import inspect
import random

import pytest

from localmesh.sidecar.config import DEFAULT_RETRY
from localmesh.sidecar.upstream import Upstream, backoff_s


def test_upstream_takes_keyword_arguments_only() -> None:
    params = inspect.signature(Upstream).parameters.values()
    assert {p.kind for p in params} == {inspect.Parameter.KEYWORD_ONLY}
    with pytest.raises(TypeError):
        Upstream("c", [], ("c", ""), 1000.0, 0.0, 0.0, DEFAULT_RETRY, "a", True, True)  # type: ignore[misc]


def test_upstream_durations_are_all_in_milliseconds() -> None:
    names = [f.name for f in dataclasses.fields(Upstream)]
    durations = [n for n in names if n.endswith(("_ms", "_s", "_us"))]
    assert durations == ["connect_timeout_ms", "timeout_ms", "per_try_timeout_ms"]


def test_retry_backoff_draws_whole_ms_below_an_interval_that_doubles_from_25_to_250_ms() -> None:
    """docs/fidelity.md §1.3 (DOC≠CODE, the code is followed): Envoy's
    JitteredExponentialBackOffStrategy::nextBackOffMs returns ``random() % interval`` with the
    interval starting at the 25 ms base and doubling per retry, capped at 10 x base."""
    random.seed(7)
    for retry, interval_ms in ((1, 25), (2, 50), (3, 100), (4, 200), (5, 250), (9, 250)):
        draws = [backoff_s(retry) * 1000 for _ in range(2000)]
        assert all(0 <= d < interval_ms and abs(d - round(d)) < 1e-9 for d in draws), retry
        assert max(draws) >= interval_ms - 2 and min(draws) <= 1, retry
