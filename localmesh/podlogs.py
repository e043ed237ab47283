"""Container logs of local pods, kept the way the kubelet keeps them.

Each container's output lands in ``<state-dir>/pods/<ns>_<pod>/<container>.log``,
one line per output line, prefixed with its receive time in RFC3339Nano so that
``sinceSeconds``, ``tailLines`` and ``timestamps`` work as on a cluster. When a
container restarts its log moves to ``<container>.previous.log`` (``previous=true``).

Writes are buffered and flushed within 100 ms; a read flushes the pod's writers
first, so readers in the same process never miss a line.
"""

from __future__ import annotations

import asyncio
import calendar
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, BinaryIO

from localmesh.errors import BadRequest, NotFound

__all__ = ["LogWriter", "PodLogs", "choose_container", "format_timestamp", "parse_timestamp"]

_FLUSH_EVERY_NS = 100_000_000
_PREVIOUS = ".previous.log"
_BLOCK = 64 * 1024
_STAMP = len("2026-11-26T17:25:03.123456789Z")  # every stored line starts with one


_second_cache: list[tuple[int, str]] = [(-1, "")]


def format_timestamp(epoch_ns: int) -> str:
    """RFC3339 with nine fraction digits, UTC (fixed width, so lines sort as text)."""
    seconds, nanos = divmod(epoch_ns, 1_000_000_000)
    cached_second, prefix = _second_cache[0]
    if cached_second != seconds:  # one strftime per second, not per line
        prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
        _second_cache[0] = (seconds, prefix)
    return f"{prefix}.{nanos:09d}Z"


def parse_timestamp(text: str) -> int:
    """Inverse of :func:`format_timestamp` (epoch nanoseconds)."""
    base, _, fraction = text.rstrip("Z").partition(".")
    seconds = time.strptime(base, "%Y-%m-%dT%H:%M:%S")
    return calendar.timegm(seconds) * 1_000_000_000 + int((fraction or "0").ljust(9, "0")[:9])


def _rfc3339nano(stamp: str) -> str:
    """Go's RFC3339Nano drops trailing zeros of the fraction, as kubectl shows it."""
    base, _, fraction = stamp.rstrip("Z").partition(".")
    fraction = fraction.rstrip("0")
    return f"{base}.{fraction}Z" if fraction else f"{base}Z"


class LogWriter:
    """Appends timestamped lines to one container's log file.

    Lines are buffered; the buffer is flushed when 100 ms have passed since the last
    flush, and otherwise by a timer on the running loop (or at once without a loop),
    so another process reading the file lags by 100 ms at most. ``clock_ns`` gives the
    receive time (epoch ns) each line is stamped with.
    """

    def __init__(self, path: Path, clock_ns: Callable[[], int] = time.time_ns) -> None:
        self.path = path
        self._clock_ns = clock_ns
        self._file: IO[str] | None = None
        self._last_flush = 0
        self._flush_timer: asyncio.TimerHandle | None = None

    def write_line(self, text: str) -> None:
        """Append one output line (a trailing newline is dropped), stamped with now."""
        now = self._clock_ns()
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("a", encoding="utf-8", errors="replace")
        line = text.rstrip("\r\n").replace("\n", "\\n")
        self._file.write(f"{format_timestamp(now)} {line}\n")
        if now - self._last_flush >= _FLUSH_EVERY_NS:
            self.flush()
        elif self._flush_timer is None:
            self._schedule_flush()

    def _schedule_flush(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop in this thread: nobody would flush later
            self.flush()
            return
        self._flush_timer = loop.call_later(_FLUSH_EVERY_NS / 1e9, self.flush)

    def flush(self) -> None:
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        if self._file is not None:
            self._file.flush()
            self._last_flush = self._clock_ns()

    def close(self) -> None:
        """Flush and close; a later write_line reopens the (possibly new) file."""
        self.flush()
        if self._file is not None:
            self._file.close()
            self._file = None


class PodLogs:
    """The LogSource of local pods, and the writers the supervisor feeds output into.

    ``clock_ns`` is the wall clock (epoch ns) lines are stamped with and ``sinceSeconds``
    is measured on.
    """

    def __init__(self, state_dir: Path, *, clock_ns: Callable[[], int] = time.time_ns) -> None:
        self.root = Path(state_dir) / "pods"
        self._clock_ns = clock_ns
        self._writers: dict[tuple[str, str, str], LogWriter] = {}

    def _dir(self, namespace: str, pod: str) -> Path:
        return self.root / f"{namespace}_{pod}"

    def writer(self, namespace: str, pod: str, container: str) -> LogWriter:
        """The writer of one container (created once; the file exists from now on)."""
        key = (namespace, pod, container)
        writer = self._writers.get(key)
        if writer is None:
            path = self._dir(namespace, pod) / f"{container}.log"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()
            writer = self._writers[key] = LogWriter(path, self._clock_ns)
        return writer

    def rotate_previous(self, namespace: str, pod: str, container: str) -> None:
        """Keep the current log as the previous instance's (a container restarted)."""
        writer = self.writer(namespace, pod, container)
        writer.close()
        current = writer.path
        current.replace(current.with_name(f"{container}{_PREVIOUS}"))
        current.touch()

    def close(self, namespace: str | None = None, pod: str | None = None) -> None:
        """Close the writers of one pod (or all): flushes what they buffered."""
        for (ns, name, container), writer in list(self._writers.items()):
            if namespace is None or (ns == namespace and name == pod):
                writer.close()
                del self._writers[(ns, name, container)]

    def containers(self, namespace: str, pod: str) -> list[str]:
        folder = self._dir(namespace, pod)
        return sorted(p.name[:-4] for p in folder.glob("*.log") if not p.name.endswith(_PREVIOUS))

    def read(self, namespace: str, pod: str, container: str | None, *,
             since_seconds: int | None = None, tail_lines: int | None = None,
             timestamps: bool = False, previous: bool = False) -> str:
        """Return a container's log as ``kubectl logs`` shows it."""
        if not self._dir(namespace, pod).is_dir():
            raise NotFound(f'pods "{pod}" not found', kind="pods", name=pod)
        container = self._resolve(namespace, pod, container)
        for (ns, name, _), writer in self._writers.items():
            if ns == namespace and name == pod:
                writer.flush()
        suffix = _PREVIOUS if previous else ".log"
        path = self._dir(namespace, pod) / f"{container}{suffix}"
        if previous and not path.exists():
            raise BadRequest(f'previous terminated container "{container}" in pod "{pod}" '
                             "not found")
        cutoff = (format_timestamp(self._clock_ns() - since_seconds * 1_000_000_000)
                  if since_seconds else None)
        tail = tail_lines if tail_lines is not None and tail_lines >= 0 else None
        lines = _select_lines(path, cutoff, tail)
        if timestamps:
            out = [f"{_rfc3339nano(line[:_STAMP])}{line[_STAMP:]}" for line in lines]
        else:
            out = [line[_STAMP + 1:] for line in lines]
        return "".join(line + "\n" for line in out)

    def _resolve(self, namespace: str, pod: str, container: str | None) -> str:
        return choose_container(pod, self.containers(namespace, pod), container)


def _select_lines(path: Path, cutoff: str | None, tail: int | None) -> list[str]:
    """The stored lines at or after ``cutoff``, the last ``tail`` of them.

    Access logs grow to hundreds of thousands of lines in a run, so neither option
    scans the whole file: lines are in time order, so the first recent line is found
    by bisecting byte offsets, and the tail is read backwards in blocks.
    """
    with path.open("rb") as handle:
        size = handle.seek(0, os.SEEK_END)
        start = _first_line_at_or_after(handle, size, cutoff.encode()) if cutoff else 0
        if tail is None:
            handle.seek(start)
            data = handle.read(size - start)
        else:
            data = _last_lines(handle, start, size, tail)
    lines = data.decode("utf-8", errors="replace").split("\n")
    if lines and not lines[-1]:
        lines.pop()
    return lines


def _line_start(handle: BinaryIO, offset: int) -> int:
    """Offset of the first line that starts at or after ``offset``."""
    if offset == 0:
        return 0
    handle.seek(offset - 1)
    handle.readline()  # ends exactly at offset when offset - 1 is a newline
    return handle.tell()


def _first_line_at_or_after(handle: BinaryIO, size: int, cutoff: bytes) -> int:
    # Stamps are fixed-width UTC text, so comparing bytes compares times.
    low, high = 0, size
    while low < high:
        middle = (low + high) // 2
        begin = _line_start(handle, middle)
        handle.seek(begin)
        line = handle.readline()
        if not line or line[:len(cutoff)] >= cutoff:
            high = middle
        else:
            low = middle + 1
    return _line_start(handle, low)


def _last_lines(handle: BinaryIO, start: int, end: int, count: int) -> bytes:
    if count == 0:
        return b""
    position, chunks, newlines = end, [], 0
    while position > start and newlines <= count:
        step = min(_BLOCK, position - start)
        position -= step
        handle.seek(position)
        chunk = handle.read(step)
        chunks.append(chunk)
        newlines += chunk.count(b"\n")
    data = b"".join(reversed(chunks))
    lines = data.split(b"\n")
    if lines and not lines[-1]:
        lines.pop()
    return b"".join(line + b"\n" for line in lines[-count:])


def choose_container(pod: str, names: list[str], container: str | None) -> str:
    """Resolve a log request's container as the API server does: the only one, or by name."""
    if container is None:
        if len(names) == 1:
            return names[0]
        raise BadRequest(f"a container name must be specified for pod {pod}, "
                         f"choose one of: [{' '.join(names)}]")
    if container not in names:
        raise BadRequest(f"container {container} is not valid for pod {pod}")
    return container
