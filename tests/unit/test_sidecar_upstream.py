"""``Upstream``, the planner's answer to "where does this request go, under which policy",
is built by keyword only and carries every duration in one unit (ms)."""

from __future__ import annotations

import dataclasses
import inspect

import pytest

from localmesh.sidecar.config import DEFAULT_RETRY
from localmesh.sidecar.upstream import Upstream


def test_upstream_takes_keyword_arguments_only() -> None:
    params = inspect.signature(Upstream).parameters.values()
    assert {p.kind for p in params} == {inspect.Parameter.KEYWORD_ONLY}
    with pytest.raises(TypeError):
        Upstream("c", [], ("c", ""), 1000.0, 0.0, 0.0, DEFAULT_RETRY, "a", True, True)  # type: ignore[misc]


def test_upstream_durations_are_all_in_milliseconds() -> None:
    names = [f.name for f in dataclasses.fields(Upstream)]
    durations = [n for n in names if n.endswith(("_ms", "_s", "_us"))]
    assert durations == ["connect_timeout_ms", "timeout_ms", "per_try_timeout_ms"]
