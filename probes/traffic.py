"""The probes' own traffic: requests through the ingress, each with a fresh trace context.

Every request gets a new sampled W3C ``traceparent`` (random ids from the OpenTelemetry
SDK's id generator), a ``tracestate`` entry naming the run, the matching B3 headers and
its own ``x-request-id``; headers are written by the OpenTelemetry propagators, never
by hand. Load is bounded three ways: request count, duration and concurrency, paced
at a fixed rate.
"""

from __future__ import annotations

import re
import threading
import time
import uuid
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

import requests
from opentelemetry.propagators.b3 import B3MultiFormat
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.trace import (
    NonRecordingSpan,
    SpanContext,
    TraceFlags,
    TraceState,
    set_span_in_context,
)
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from probes.errors import ConfigurationError
from probes.evidence.request import SentRequest

__all__ = ["Load", "fresh_headers", "send_load", "send_one", "state_value"]

_IDS = RandomIdGenerator()
_W3C = TraceContextTextMapPropagator()
_B3 = B3MultiFormat()
_local = threading.local()


def state_value(run_id: str) -> str:
    """A tracestate value for the run id (W3C §4.2 value chars; no ``,`` or ``=``)."""
    value = re.sub(r"[^a-z0-9_\-*/]", "-", run_id.lower())[:64].strip("-")
    return value or "probe"


def fresh_headers(run_id: str, *, sampled: bool = True) -> tuple[dict[str, str], SentRequest]:
    """Headers for one new request and the record of what they say."""
    trace_id, span_id = _IDS.generate_trace_id(), _IDS.generate_span_id()
    context = SpanContext(trace_id, span_id, is_remote=False,
                          trace_flags=TraceFlags(TraceFlags.SAMPLED if sampled else 0),
                          trace_state=TraceState([("meshchaos", state_value(run_id))]))
    ctx = set_span_in_context(NonRecordingSpan(context))
    headers: dict[str, str] = {}
    _W3C.inject(headers, context=ctx)
    _B3.inject(headers, context=ctx)
    request_id = str(uuid.uuid4())
    headers["x-request-id"] = request_id
    sent = SentRequest(trace_id=f"{trace_id:032x}", parent_id=f"{span_id:016x}", sampled=sampled,
                       tracestate=headers.get("tracestate", ""), request_id=request_id,
                       b3_trace_id=headers.get("x-b3-traceid"),
                       b3_span_id=headers.get("x-b3-spanid"))
    return headers, sent


def _session() -> requests.Session:
    session = getattr(_local, "session", None)
    if session is None:
        session = _local.session = requests.Session()
        session.trust_env = False  # the ingress is reached directly, never via a proxy
    return session


def send_one(url: str, run_id: str, *, headers: Mapping[str, str] | None = None,
             timeout_s: float = 5.0, sampled: bool = True) -> SentRequest:
    """Send one GET with a fresh trace context; transport failures are recorded, not raised."""
    trace_headers, sent = fresh_headers(run_id, sampled=sampled)
    all_headers = {**dict(headers or {}), **trace_headers}
    started_us = time.time_ns() // 1000
    begin = time.perf_counter()
    status: int | None = None
    error: str | None = None
    try:
        with _session().get(url, headers=all_headers, timeout=timeout_s, stream=True) as resp:
            status = resp.status_code
            for _ in resp.iter_content(65536):
                pass
    except requests.RequestException as exc:
        error = f"{type(exc).__name__}: {exc}"
    latency = (time.perf_counter() - begin) * 1000
    return replace(sent, status=status, latency_ms=round(latency, 3), started_us=started_us,
                   error=error)


@dataclass(frozen=True)
class Load:
    """A bounded load: at most ``count`` requests, ``rate`` per second, for ``duration_s``."""

    url: str
    run_id: str
    count: int
    rate: float = 10.0
    duration_s: float = 10.0
    concurrency: int = 4
    timeout_s: float = 5.0
    headers: Mapping[str, str] = field(default_factory=dict)
    sampled: bool = True

    def __post_init__(self) -> None:
        for name in ("count", "rate", "duration_s", "concurrency", "timeout_s"):
            value: Any = getattr(self, name)
            if not value or value <= 0:
                raise ConfigurationError(f"load argument '{name}' must be positive, got {value!r}")
        if self.concurrency > 64:
            raise ConfigurationError(f"load concurrency {self.concurrency} is above the bound 64")


def send_load(load: Load) -> list[SentRequest]:
    """Send the load; return one record per request in send order."""
    begin = time.monotonic()
    limit = min(load.count, max(1, int(load.rate * load.duration_s)))
    futures = []
    with ThreadPoolExecutor(max_workers=load.concurrency,
                            thread_name_prefix="meshchaos-load") as pool:
        for index in range(limit):
            # Paced by schedule, not by completion: a slow answer never speeds up the rest.
            delay = begin + index / load.rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            if time.monotonic() - begin > load.duration_s:
                break
            futures.append(pool.submit(send_one, load.url, load.run_id, headers=load.headers,
                                       timeout_s=load.timeout_s, sampled=load.sampled))
    return [f.result() for f in futures]
