"""Read traces back from a Jaeger-style or Tempo query API, with a bounded wait.

Spans are exported in batches off the hot path, so a trace fills in over time. The
reader polls every outstanding trace in rounds until each one holds every expected
hop (then one settle round, to catch late retries), or the wait ends. A trace that
never appears is "could not measure"; a trace that stays partial is evidence.

Polls are cheap when nothing changed: batched reads send the ``ETag`` of the previous
answer for the same ids as ``If-None-Match``, and a ``304`` reuses the spans parsed then
(the local mesh's trace store answers so; a Jaeger that sends no ETag is read in full).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import requests

from probes.errors import EvidenceError
from probes.evidence.gcpause import gc_paused
from probes.evidence.spans import Span, parse_jaeger, parse_tempo

__all__ = ["TraceReader"]

# Trace ids per Jaeger search: keeps the query string well under URL limits, and a
# poll re-reads only the batches in which something changed.
_BATCH = 20
_REMEMBERED = 64  # batches whose last answer is kept for conditional polls


class TraceReader:
    """``GET <traces_url>/api/traces/<id>`` for Jaeger's or Tempo's API."""

    def __init__(self, url: str, api: str = "jaeger", *, timeout_s: float = 5.0) -> None:
        self.url = url.rstrip("/")
        self.api = api
        self.timeout_s = timeout_s
        self.batch_size = _BATCH
        self.session = requests.Session()
        self.session.trust_env = False
        # ids of one batch -> (ETag of the last answer, the spans parsed from it)
        self._seen: dict[tuple[str, ...], tuple[str, list[Span]]] = {}

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> TraceReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def fetch(self, trace_id: str) -> list[Span]:
        """The trace's spans; ``[]`` when the API does not know it (yet)."""
        try:
            resp = self.session.get(f"{self.url}/api/traces/{trace_id}", timeout=self.timeout_s)
        except requests.RequestException as exc:
            raise EvidenceError(f"trace api '{self.url}' unreachable: {exc}") from exc
        if resp.status_code == 404:
            return []
        if resp.status_code != 200:
            raise EvidenceError(f"trace api '{self.url}' answered {resp.status_code} for trace "
                                f"{trace_id}: {resp.text[:200]!r}")
        spans = self._decode(resp, trace_id, parse_tempo if self.api == "tempo" else parse_jaeger)
        return [s for s in spans if s.trace_id == trace_id]

    def fetch_many(self, trace_ids: Sequence[str]) -> dict[str, list[Span]]:
        """Several traces at once: Jaeger's search takes repeated ``traceID`` parameters
        (one round trip per batch); Tempo has no such call, so it is asked trace by trace."""
        if self.api == "tempo":
            return {t: self.fetch(t) for t in trace_ids}
        found: dict[str, list[Span]] = {t: [] for t in trace_ids}
        for start in range(0, len(trace_ids), self.batch_size):
            batch = tuple(trace_ids[start:start + self.batch_size])
            for span in self._search(batch):
                if span.trace_id in found:
                    found[span.trace_id].append(span)
        return found

    def _decode(self, resp: requests.Response, what: str,
                parse: Callable[[Any], list[Span]]) -> list[Span]:
        """A trace answer's spans (decoded with the cyclic GC paused, see gcpause)."""
        with gc_paused():
            try:
                doc: Any = json.loads(resp.content)
            except ValueError as exc:
                raise EvidenceError(f"trace api '{self.url}' sent non-JSON for {what}") from exc
            return parse(doc)

    def _search(self, batch: tuple[str, ...]) -> list[Span]:
        """One Jaeger search by ids, conditional on the previous answer for the same ids."""
        previous = self._seen.get(batch)
        headers = {"If-None-Match": previous[0]} if previous else {}
        try:
            resp = self.session.get(f"{self.url}/api/traces", params={"traceID": list(batch)},
                                    headers=headers, timeout=self.timeout_s)
        except requests.RequestException as exc:
            raise EvidenceError(f"trace api '{self.url}' unreachable: {exc}") from exc
        if resp.status_code == 304 and previous:
            return previous[1]
        if resp.status_code == 404:  # as fetch(): none of them is known (yet)
            return []
        if resp.status_code != 200:
            raise EvidenceError(f"trace api '{self.url}' answered {resp.status_code} for "
                                f"{len(batch)} trace ids: {resp.text[:200]!r}")
        spans = self._decode(resp, f"{len(batch)} trace ids", parse_jaeger)
        tag = resp.headers.get("ETag")
        if tag:
            if len(self._seen) >= _REMEMBERED:  # a long wait polls ever smaller batches
                self._seen.clear()
            self._seen[batch] = (tag, spans)
        return spans

    def wait_for(self, trace_ids: Sequence[str], hops: Iterable[str], *, wait_s: float,
                 poll_s: float = 0.2, settle_s: float = 0.4) -> dict[str, list[Span]]:
        """Poll until every trace holds an app SERVER span of every hop, or ``wait_s`` ends."""
        expected = set(hops)
        found: dict[str, list[Span]] = {t: [] for t in trace_ids}
        complete_at: dict[str, float] = {}
        end = time.monotonic() + wait_s
        while True:
            now = time.monotonic()
            pending = [t for t in trace_ids
                       if t not in complete_at or now - complete_at[t] < settle_s]
            if not pending or now >= end:
                return found
            found.update(self.fetch_many(pending))
            for trace_id in pending:
                have = {s.hop for s in found[trace_id] if not s.sidecar and s.kind == "server"}
                if expected <= have:
                    complete_at.setdefault(trace_id, time.monotonic())
            time.sleep(min(poll_s, max(0.0, end - time.monotonic())))
