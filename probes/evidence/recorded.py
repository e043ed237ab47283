"""Recorded evidence on disk: re-judge a run offline, or feed the checks in tests.

Layout of a recorded case directory::

    requests.json          [{"trace_id", "parent_id", "sampled", "tracestate", "request_id",
                             "b3_trace_id", "b3_span_id", "status", "latency_ms", "started_us"}]
    traces.json            a Jaeger query answer {"data": [...]} (or tempo.json: OTLP-JSON)
    logs/<ns>_<pod>.log    each sidecar's istio-proxy log, one access-log line per line
    mesh.yaml              optional: the mesh config (``mesh`` key of istio-system/istio)
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path

from probes.errors import EvidenceError
from probes.evidence.accesslog import AccessLogRecord, LogFormat, compile_format, parse_lines
from probes.evidence.formats import EXTENDED_TEXT
from probes.evidence.kube import parse_mesh_config
from probes.evidence.request import LogIndex, RequestEvidence, SentRequest
from probes.evidence.spans import Span, parse_jaeger, parse_tempo

__all__ = ["RecordedCase", "read_recorded"]


@dataclass
class RecordedCase:
    """One recorded case: what was sent, the spans and the parsed access-log lines."""

    sent: list[SentRequest]
    spans: list[Span]
    logs: list[AccessLogRecord]

    def evidence(self) -> list[RequestEvidence]:
        """Per-request evidence, correlated exactly as a live probe run does it."""
        by_trace: dict[str, list[Span]] = {}
        for span in self.spans:
            by_trace.setdefault(span.trace_id, []).append(span)
        index = LogIndex(self.logs)
        return [RequestEvidence.build(r, by_trace.get(r.trace_id, []), index.for_request(r))
                for r in self.sent]


def _log_format(path: Path) -> LogFormat:
    mesh = path / "mesh.yaml"
    if mesh.exists():
        return parse_mesh_config(mesh.read_text()).log_format
    return compile_format(EXTENDED_TEXT)


def read_recorded(path: Path) -> RecordedCase:
    """Read a recorded case directory (see the module docstring)."""
    try:
        raw = json.loads((path / "requests.json").read_text())
    except (OSError, ValueError) as exc:
        raise EvidenceError(f"recorded case '{path}': unreadable requests.json ({exc})") from exc
    known = {f.name for f in fields(SentRequest)}
    sent = [SentRequest(**{k: v for k, v in r.items() if k in known}) for r in raw]
    spans: list[Span] = []
    if (path / "traces.json").exists():
        spans = parse_jaeger(json.loads((path / "traces.json").read_text()))
    elif (path / "tempo.json").exists():
        spans = parse_tempo(json.loads((path / "tempo.json").read_text()))
    fmt = _log_format(path)
    logs: list[AccessLogRecord] = []
    for log in sorted((path / "logs").glob("*.log")):
        namespace, pod = log.stem.split("_", 1)
        records, _ = parse_lines(fmt, namespace, pod, log.read_text().splitlines())
        logs.extend(records)
    return RecordedCase(sent, spans, logs)
