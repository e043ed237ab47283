"""PodLogs keeps container output the way the kubelet does (architecture.md, "Container logs").

``<state-dir>/pods/<ns>_<pod>/<container>.log``, one line per output line stored with
its receive time, so ``sinceSeconds``/``tailLines``/``timestamps``/``previous`` work.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from localmesh.errors import BadRequest, NotFound
from localmesh.podlogs import PodLogs, format_timestamp, parse_timestamp
from tests.data.clock import JumpClock

POD = "orders-5d4f9c7b8-x2x9q"


@pytest.fixture
def clock() -> JumpClock:
    return JumpClock()


@pytest.fixture
def logs(tmp_path: Path, clock: JumpClock) -> PodLogs:
    return PodLogs(tmp_path, clock_ns=clock)


def _read(logs: PodLogs, container: str | None = "istio-proxy", **kw: object) -> str:
    options: dict[str, object] = {"since_seconds": None, "tail_lines": None,
                                  "timestamps": False, "previous": False}
    options.update(kw)
    return logs.read("shop", POD, container, **options)  # type: ignore[arg-type]


def test_lines_land_in_the_container_file_and_read_back_in_order(
        logs: PodLogs, tmp_path: Path) -> None:
    """The file is <state>/pods/<ns>_<pod>/<container>.log, one line per write."""
    writer = logs.writer("shop", POD, "istio-proxy")
    for n in range(3):
        writer.write_line(f"line {n}\n")
    assert _read(logs) == "line 0\nline 1\nline 2\n"
    assert (tmp_path / "pods" / f"shop_{POD}" / "istio-proxy.log").is_file()


def test_tail_lines_keeps_the_last_lines(logs: PodLogs) -> None:
    """tailLines=N returns the last N lines; 0 returns nothing."""
    writer = logs.writer("shop", POD, "istio-proxy")
    for n in range(100):
        writer.write_line(f"line {n}")
    assert _read(logs, tail_lines=2) == "line 98\nline 99\n"
    assert _read(logs, tail_lines=0) == ""


def test_timestamps_prefix_rfc3339_nano_utc(logs: PodLogs) -> None:
    """timestamps=true prefixes each line with its RFC3339Nano receive time, as the kubelet."""
    before = time.time_ns()
    logs.writer("shop", POD, "istio-proxy").write_line("hello")
    line = _read(logs, timestamps=True)
    match = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{1,9})?Z) hello\n", line)
    assert match, line
    assert abs(parse_timestamp(match.group(1)) - before) < 5_000_000_000


def test_since_seconds_keeps_only_recent_lines(logs: PodLogs, clock: JumpClock) -> None:
    """sinceSeconds=1 drops a line written more than a second earlier."""
    writer = logs.writer("shop", POD, "istio-proxy")
    writer.write_line("old")
    clock.advance(1.2)
    writer.write_line("new")
    assert _read(logs, since_seconds=1) == "new\n"
    assert _read(logs, since_seconds=60) == "old\nnew\n"


def test_previous_reads_the_log_before_the_restart(logs: PodLogs) -> None:
    """After rotate_previous the old instance's lines are the previous log."""
    writer = logs.writer("shop", POD, "app")
    writer.write_line("crashed here")
    logs.rotate_previous("shop", POD, "app")
    writer.write_line("started again")
    assert _read(logs, "app", previous=True) == "crashed here\n"
    assert _read(logs, "app") == "started again\n"


def test_previous_without_a_restart_is_a_bad_request(logs: PodLogs) -> None:
    """The kubelet answers 'previous terminated container ... not found'."""
    logs.writer("shop", POD, "app").write_line("x")
    with pytest.raises(BadRequest, match='previous terminated container "app"'):
        _read(logs, "app", previous=True)


def test_unknown_container_is_a_bad_request_naming_it(logs: PodLogs) -> None:
    """'container X is not valid for pod Y', as the API server words it."""
    logs.writer("shop", POD, "app")
    with pytest.raises(BadRequest, match=f"container nope is not valid for pod {POD}"):
        _read(logs, "nope")


def test_unknown_pod_is_not_found(logs: PodLogs) -> None:
    """A pod with no log folder does not exist."""
    with pytest.raises(NotFound, match="ghost"):
        logs.read("shop", "ghost", "app", since_seconds=None, tail_lines=None,
                  timestamps=False, previous=False)


def test_the_only_container_is_the_default(logs: PodLogs) -> None:
    """Without container=, a single-container pod's log is read; two need a choice."""
    logs.writer("shop", POD, "app").write_line("only")
    assert _read(logs, None) == "only\n"
    logs.writer("shop", POD, "istio-proxy")
    with pytest.raises(BadRequest, match=r"choose one of: \[app istio-proxy\]"):
        _read(logs, None)


def test_buffered_lines_are_flushed_before_a_read_and_on_close(
        logs: PodLogs, tmp_path: Path) -> None:
    """Writes are buffered, yet a reader in the process sees every line; close flushes."""
    writer = logs.writer("shop", POD, "app")
    for n in range(50):
        writer.write_line(f"l{n}")
    assert _read(logs, "app", tail_lines=1) == "l49\n"
    writer.write_line("last")
    logs.close("shop", POD)
    path = tmp_path / "pods" / f"shop_{POD}" / "app.log"
    assert path.read_text().splitlines()[-1].endswith(" last")


def test_timestamps_format_and_parse_round_trip() -> None:
    """The stored stamp keeps nanoseconds, fixed width, UTC."""
    stamp = format_timestamp(1_795_000_000_123_456_789)
    assert stamp.endswith(".123456789Z") and len(stamp) == 30
    assert parse_timestamp(stamp) == 1_795_000_000_123_456_789


def test_since_and_tail_combine_over_a_long_log(logs: PodLogs, clock: JumpClock) -> None:
    """sinceSeconds bounds the window first, tailLines then keeps the last lines of it."""
    writer = logs.writer("shop", POD, "istio-proxy")
    for n in range(3000):
        writer.write_line(f"old {n} " + "x" * 200)
    clock.advance(1.2)
    for n in range(40):
        writer.write_line(f"new {n}")
    recent = _read(logs, since_seconds=1)
    assert recent.splitlines() == [f"new {n}" for n in range(40)]
    assert _read(logs, since_seconds=1, tail_lines=2) == "new 38\nnew 39\n"
    assert len(_read(logs, since_seconds=1, tail_lines=500).splitlines()) == 40
    assert _read(logs, tail_lines=41).splitlines()[0].startswith("old 2999 ")


def test_unusual_text_survives_the_round_trip(logs: PodLogs) -> None:
    """Carriage returns, non-ASCII and embedded newlines stay on their own log line."""
    writer = logs.writer("shop", POD, "app")
    writer.write_line("progress 10%\rprogress 20%")
    writer.write_line("déjà vu ✓")
    writer.write_line("two\nparts")
    assert _read(logs, "app").split("\n") == [
        "progress 10%\rprogress 20%", "déjà vu ✓", "two\\nparts", ""]
    assert _read(logs, "app", tail_lines=1) == "two\\nparts\n"


async def test_lines_reach_the_file_within_100ms_on_a_running_loop(
        logs: PodLogs, tmp_path: Path) -> None:
    """Another process reading the file (evidence readers) lags by 100 ms at most."""
    import asyncio

    writer = logs.writer("shop", POD, "istio-proxy")
    writer.write_line("first")  # flushed at once: nothing was flushed before
    writer.write_line("second")  # buffered, a timer flushes it
    path = tmp_path / "pods" / f"shop_{POD}" / "istio-proxy.log"
    await asyncio.sleep(0.3)  # no read() in between: only the timer can have flushed
    assert path.read_text().splitlines()[-1].endswith(" second")
    logs.close()
