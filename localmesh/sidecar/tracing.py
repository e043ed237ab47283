"""Envoy's OpenTelemetry tracer, reduced to what a sidecar does (docs/fidelity.md §3).

- :func:`parse_traceparent` follows Envoy's extractor, not the W3C grammar: exactly
  55 chars, 2/32/16/2 hex parts, uppercase hex accepted, version ``ff`` accepted,
  all-zero ids rejected, sampled = ``flags & 1``.
- A present but invalid ``traceparent`` yields no span and no injection: the
  headers pass through unchanged (Envoy's ``NullSpan``).
- No ``traceparent``: a new trace, sampled with the mesh sampling percentage.
- Injection (``Span::injectContext``) writes version ``00`` and the sampled bit only
  (:func:`format_traceparent`: a random-trace-id bit is dropped), and the sidecar sets
  ``tracestate`` to the span's: the incoming fields joined with ``,``, or empty for a
  trace it started; of two ``traceparent`` fields the first counts
  (``Sidecar._trace``; docs/fidelity.md §3).

Spans are plain :class:`Span` records; :class:`SpanExporter` turns batches of them
into one OTLP/HTTP protobuf request off the request path
(hand-encoded, see :mod:`localmesh.sidecar.otlp_wire`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from dataclasses import dataclass, field
from typing import NamedTuple

from localmesh.http.client import ConnectionPool
from localmesh.http.errors import HttpError
from localmesh.sidecar.ids import random_hex
from localmesh.sidecar.otlp_wire import SpanEncoder

__all__ = ["KIND_CLIENT", "KIND_SERVER", "Span", "SpanContext", "SpanExporter",
           "new_span_id", "new_trace_id", "parse_traceparent"]

log = logging.getLogger("localmesh.sidecar.tracing")

# opentelemetry.proto.trace.v1.Span.SpanKind
KIND_SERVER = 2
KIND_CLIENT = 3
# Spans encoded between two yields to the loop: ~1 ms of work at most on this box.
_ENCODE_SLICE = 64
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16
# 2/32/16/2 hex digits, either case: the shape Envoy's extractor accepts (§3).
_TRACEPARENT = re.compile(r"[0-9a-fA-F]{2}-[0-9a-fA-F]{32}-[0-9a-fA-F]{16}-[0-9a-fA-F]{2}")


class SpanContext(NamedTuple):
    """An extracted ``traceparent`` (a tuple: built on every inbound request)."""

    trace_id: str  # 32 lowercase hex
    span_id: str  # 16 lowercase hex
    sampled: bool


def new_trace_id() -> str:
    value = random_hex(32)
    return value if value != _ZERO_TRACE else new_trace_id()  # all-zero ids are invalid


def new_span_id() -> str:
    value = random_hex(16)
    return value if value != _ZERO_SPAN else new_span_id()


def parse_traceparent(value: str) -> SpanContext | None:
    """Envoy's extractor: ``None`` for anything it rejects (§3)."""
    if len(value) != 55 or _TRACEPARENT.fullmatch(value) is None:
        return None
    trace_id, span_id = value[3:35].lower(), value[36:52].lower()
    if trace_id == _ZERO_TRACE or span_id == _ZERO_SPAN:
        return None
    return SpanContext(trace_id, span_id, bool(int(value[53:], 16) & 1))


def format_traceparent(trace_id: str, span_id: str, sampled: bool) -> str:
    return f"00-{trace_id}-{span_id}-{'01' if sampled else '00'}"


@dataclass(slots=True)
class Span:
    trace_id: str
    span_id: str
    parent_id: str
    name: str
    kind: int
    start_ns: int
    end_ns: int = 0
    attributes: dict[str, str | int | float] = field(default_factory=dict)
    error: bool = False
    # Attributes that come first and that many spans share (the sidecar's identity):
    # one dict, never mutated, encoded once per exporter. Not repeated in ``attributes``.
    shared: dict[str, str | int | float] = field(default_factory=dict)


class SpanExporter:
    """Batches finished spans and posts them as OTLP/HTTP protobuf.

    A batch leaves ``linger`` seconds after its first span ended, but no sooner than
    ``min_interval`` after the previous POST (or at once when it reaches ``max_batch``).
    A quiet sidecar's spans reach the trace store tens of milliseconds after they end, so
    the probes' wait for evidence stays short; a busy one posts at most every
    ``min_interval``, so a saturated mesh does not spend its CPU on POSTs of a few spans
    each. A span is sent at most ``max(linger, min_interval)`` after it ends (plus the
    POST); an idle exporter never wakes up. (Envoy's own OpenTelemetry tracer flushes on a
    fixed ``flush_interval_ms``, 5 s by default: the probes' ``span_export_lag_s`` covers
    that on a cluster.)
    """

    def __init__(self, endpoint: str, service_name: str, resource: dict[str, str], *,
                 headers: tuple[tuple[str, str], ...] = (),
                 linger: float = 0.02, min_interval: float = 0.06, max_batch: int = 512,
                 max_queue: int = 20_000) -> None:
        self.endpoint = endpoint.rstrip("/")
        # Sent on every POST: the mesh's receiver wants its bearer token (docs/fidelity.md
        # §8.5). A secret: never logged; failures name the endpoint and status only.
        self.headers = headers
        self._post_headers = {"content-type": "application/x-protobuf",
                              **{name.lower(): value for name, value in headers}}
        self._encoder = SpanEncoder({"service.name": service_name, **resource})
        self._queue: list[Span] = []
        # id(shared dict) -> (that dict, its encoded fields); holding the dict keeps the id valid.
        self._shared: dict[int, tuple[dict[str, str | int | float], bytes]] = {}
        self._linger = linger
        self._min_interval = min_interval
        self._last_post = -min_interval  # loop time of the previous batch's POST
        self._max_batch = max_batch
        self._max_queue = max_queue
        self._pool = ConnectionPool(max_idle_per_host=2)
        self._task: asyncio.Task[None] | None = None
        self._pending = asyncio.Event()  # a span is queued
        self._full = asyncio.Event()  # a whole batch is queued
        self.exported = 0
        self.dropped = 0
        self.failed_batches = 0

    def add(self, span: Span) -> None:
        queue = self._queue
        if len(queue) >= self._max_queue:
            self.dropped += 1
            return
        queue.append(span)
        if len(queue) == 1:
            self._pending.set()
        elif len(queue) >= self._max_batch:
            self._full.set()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._pending.wait()
            wait = max(self._linger, self._last_post + self._min_interval - loop.time())
            if len(self._queue) < self._max_batch:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._full.wait(), wait)
            # Cleared before the flush: a span queued while a batch is on the wire sets
            # them again (or is taken by the same flush), so none waits for a later one.
            self._pending.clear()
            self._full.clear()
            self._last_post = loop.time()
            await self.flush()

    async def flush(self) -> None:
        """Send everything queued now, in batches."""
        while self._queue:
            batch, self._queue = self._queue[:self._max_batch], self._queue[self._max_batch:]
            if not self.endpoint:
                continue
            body = await self._encode(batch)
            try:
                resp = await self._pool.request(
                    "POST", f"{self.endpoint}/v1/traces",
                    dict(self._post_headers), body, timeout=5.0, connect_timeout=1.0)
                if resp.status >= 300:
                    raise HttpError(f"OTLP endpoint {self.endpoint} answered {resp.status}")
                self.exported += len(batch)
            except (HttpError, OSError, TimeoutError) as exc:
                # The trace backend being away must not hurt traffic: count and move on.
                self.failed_batches += 1
                log.warning("span export to %s failed: %s", self.endpoint, exc)

    async def _encode(self, batch: list[Span]) -> bytes:
        """Encode in slices, yielding between them: requests in flight share this loop."""
        enc = self._encoder
        shared = self._shared_fields
        encoded: list[bytes] = []
        for i in range(0, len(batch), _ENCODE_SLICE):
            encoded += [enc.span(s.trace_id, s.span_id, s.parent_id, s.name, s.kind,
                                 s.start_ns, s.end_ns, s.attributes, s.error, shared(s.shared))
                        for s in batch[i:i + _ENCODE_SLICE]]
            await asyncio.sleep(0)
        return enc.request(encoded)

    def _shared_fields(self, attrs: dict[str, str | int | float]) -> bytes:
        if not attrs:
            return b""
        hit = self._shared.get(id(attrs))
        if hit is not None and hit[0] is attrs:
            return hit[1]
        data = self._encoder.attribute_fields(attrs)
        if len(self._shared) < 64:
            self._shared[id(attrs)] = (attrs, data)
        return data

    async def stop(self) -> None:
        """Stop the timer and send what is left."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.flush()
        await self._pool.close()


# Wall-clock nanoseconds for span times: the builtin itself, no Python frame per call.
now_ns = time.time_ns
