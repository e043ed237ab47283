"""The W3C harness's edge cases at the sidecar, resolved as Envoy's OpenTelemetry tracer does
(docs/fidelity.md §3, §4).

The official harness (w3c/trace-context ``test/test.py``) found four results the sidecar
changes; each test below sends that case to a sidecar's inbound listener (the harness's path
to a service behind the mesh) and reads what the app on loopback received, field line by field
line. Each says which W3C clause Envoy's behaviour obeys or breaks.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import pytest

from tests.conformance.conftest import NS, Sidecars, config, endpoint
from tests.conformance.rawapp import RawApp, RawRequest, send_raw

APP = f"app.{NS}.svc.cluster.local"
TRACE = "12345678901234567890123456789012"  # the harness's ids
PARENT = "1234567890123456"
TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-(0[01])")


@pytest.fixture
async def behind_sidecar(sidecars: Sidecars) -> AsyncIterator[tuple[int, RawApp]]:
    """(the sidecar's inbound port, the app behind it)."""
    app = RawApp()
    await app.start()
    try:
        sc = await sidecars.start("app-1", "app", app_port=app.port)
        services = {APP: {"name": "app", "namespace": NS, "ports": [8080],
                          "endpoints": [endpoint("app-1", sc.ports["inbound"])]}}
        resp = await sc.push(config("app-1", "app", services=services, app_port=app.port))
        assert resp.status == 200
        yield sc.ports["inbound"], app
    finally:
        await app.stop()


async def _send(behind: tuple[int, RawApp], *fields: tuple[str, str]) -> RawRequest:
    """Send one request with these field lines (in order); what the app received."""
    port, app = behind
    lines = ["GET /test HTTP/1.1", "host: app:8080", *(f"{k}: {v}" for k, v in fields), "", ""]
    status, _ = await send_raw(port, "\r\n".join(lines).encode())
    assert status == 200
    return app.seen[-1]


def _context(seen: RawRequest) -> tuple[str, str, str]:
    """(trace id, parent id, flags) of the one traceparent line the app received."""
    match = TRACEPARENT.fullmatch(seen.one("traceparent"))
    assert match is not None, seen.values("traceparent")
    trace, parent, flags = match.groups()
    return trace, parent, flags


async def test_the_random_trace_id_flag_is_dropped_as_envoy_writes_only_sampled(
        behind_sidecar: tuple[int, RawApp]) -> None:
    """Envoy's ``Span::injectContext`` writes the flags as ``{sampled()}``: ``-02`` (Level 2's
    random-trace-id bit, W3C-L2 §3.2.2.5) reaches the app as ``-00`` and ``-03`` as ``-01``.
    This keeps Level 1's "Other Flags … Vendors MUST set those to zero" and breaks Level 2's
    rule that the random flag is propagated unchanged while the trace id is kept (§4.1)."""
    for sent, received in (("02", "00"), ("03", "01"), ("01", "01"), ("ff", "01")):
        seen = await _send(behind_sidecar, ("traceparent", f"00-{TRACE}-{PARENT}-{sent}"))
        trace, parent, flags = _context(seen)
        assert (trace, flags) == (TRACE, received), sent
        assert parent != PARENT  # the sidecar's own span is the app's parent


async def test_version_ff_is_accepted_and_sent_on_as_version_00_with_the_same_trace(
        behind_sidecar: tuple[int, RawApp]) -> None:
    """Envoy's ``SpanContextExtractor::extractSpanContext`` checks length, dashes, hex and
    all-zero ids but not the version, so ``ff-…`` is continued and re-emitted as ``00-`` with
    the same trace id. This breaks W3C §3.2.2.1 "Version ``ff`` is invalid" (and the harness's
    ``test_traceparent_version_0xff``, which expects a new trace id)."""
    seen = await _send(behind_sidecar, ("traceparent", f"ff-{TRACE}-{PARENT}-01"),
                       ("tracestate", "foo=1"))
    trace, parent, flags = _context(seen)
    assert (trace, flags) == (TRACE, "01") and parent != PARENT
    assert seen.one("tracestate") == "foo=1"  # continued: its tracestate goes with it


async def test_a_tracestate_without_traceparent_is_replaced_by_an_empty_one(
        behind_sidecar: tuple[int, RawApp]) -> None:
    """No ``traceparent``: Envoy starts a trace, and ``injectContext`` sets ``tracestate`` to
    the new span's, which is empty. That obeys W3C §4 "No traceparent Received" step 3 ("If a
    ``tracestate`` header is received without an accompanying ``traceparent`` header, it is
    invalid and MUST be discarded") and the harness's
    ``test_tracestate_included_traceparent_missing``; it sends the empty header §3.3.1.1 says
    vendors SHOULD avoid (and MUST accept)."""
    first = await _send(behind_sidecar, ("tracestate", "foo=1"))
    second = await _send(behind_sidecar, ("tracestate", "foo=1,bar=2"))
    for seen in (first, second):
        trace, _, _ = _context(seen)
        assert trace != TRACE
        assert seen.values("tracestate") == [""]
    assert _context(first)[0] != _context(second)[0]  # a new trace each time


async def test_a_continued_trace_without_tracestate_carries_an_empty_one(
        behind_sidecar: tuple[int, RawApp]) -> None:
    """Envoy's ``injectContext`` sets ``tracestate`` unconditionally (the span's, empty when
    none came): the app sees an empty ``tracestate`` beside the continued ``traceparent``."""
    seen = await _send(behind_sidecar, ("traceparent", f"00-{TRACE}-{PARENT}-01"))
    assert _context(seen)[0] == TRACE
    assert seen.values("tracestate") == [""]


async def test_two_traceparent_lines_continue_the_first_as_envoys_header_map_reads_it(
        behind_sidecar: tuple[int, RawApp]) -> None:
    """``traceparent`` is no inline header of Envoy's map, so two lines stay two entries; the
    extractor reads the first (``TraceContextHandler::get``: ``results[0]``) and
    ``injectContext`` replaces both with one (``setReferenceKey``). The app sees a single line
    continuing the first trace. This breaks the harness's ``test_traceparent_duplicated``,
    which expects a restart; W3C's text has no rule for two ``traceparent`` fields."""
    other = "12345678901234567890123456789011"
    seen = await _send(behind_sidecar, ("traceparent", f"00-{other}-{PARENT}-01"),
                       ("traceparent", f"00-{TRACE}-{PARENT}-01"))
    trace, parent, flags = _context(seen)
    assert (trace, flags) == (other, "01") and parent != PARENT


async def test_two_traceparent_lines_with_an_invalid_first_pass_through_unparsed(
        behind_sidecar: tuple[int, RawApp]) -> None:
    """An invalid first ``traceparent`` fails Envoy's extraction: a ``NullSpan``, nothing is
    injected and the fields pass through (§3 "an invalid traceparent passes through"); the
    local HTTP layer forwards them joined as one line (RFC 9110 §5.3), Envoy as two."""
    bad, good = f"00-{TRACE}-{PARENT}-0x", f"00-{TRACE}-{PARENT}-01"
    seen = await _send(behind_sidecar, ("traceparent", bad), ("traceparent", good),
                       ("tracestate", "foo=1"))
    assert seen.values("traceparent") == [f"{bad}, {good}"]
    assert seen.values("tracestate") == ["foo=1"]


async def test_several_tracestate_lines_are_combined_with_commas_in_order(
        behind_sidecar: tuple[int, RawApp]) -> None:
    """Envoy's extractor joins every ``tracestate`` field with ``,`` in arrival order and
    ``injectContext`` sends that one value: W3C §3.3.1.1 "When receiving multiple
    ``tracestate`` header fields, they MUST be combined into a single header" (RFC 7230
    §3.2.2), obeyed (the harness's ``test_tracestate_multiple_headers_different_keys``)."""
    seen = await _send(behind_sidecar, ("traceparent", f"00-{TRACE}-{PARENT}-00"),
                       ("tracestate", "foo=1,bar=2"), ("tracestate", "rojo=1,congo=2"),
                       ("tracestate", "baz=3"))
    assert _context(seen)[0] == TRACE
    assert seen.values("tracestate") == ["foo=1,bar=2,rojo=1,congo=2,baz=3"]
