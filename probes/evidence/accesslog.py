"""Envoy access-log lines → :class:`AccessLogRecord` (docs/fidelity.md §2.3, E-AL).

The format string is *compiled*, never guessed: each ``%OPERATOR(ARG):LEN%`` becomes
one field named by what it means (``request_id``, ``traceparent``, ``response_flags``…),
so the same reader works for Istio's default format, the meshchaos extended format
and any custom ``accessLogFormat`` that keeps the operators the checks need.
TEXT lines are matched with a regex built from the literal text around each operator;
JSON lines are keyed by the format's keys. Envoy prints ``-`` for an empty value.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from typing import Any, Literal

from localmesh.http.grpcstatus import grpc_status_code, parse_grpc_timeout
from probes.errors import ConfigurationError

__all__ = [
    "AccessLogRecord",
    "LogFormat",
    "compile_format",
    "hop_of_pod",
    "parse_lines",
    "parse_traceparent",
]

_OPERATOR = re.compile(r"%([A-Z0-9_]+)(?:\(([^)]*)\))?(?::\d+)?%")
# Reading evidence is not propagating context: a log may hold an *invalid* traceparent the
# checks must see as such, so this is a strict W3C-L1 matcher (§4.1) rather than the OTel
# propagator, which would silently drop it.
_TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")

# Operators with a meaning the checks rely on; the rest are keyed by their own name.
_KNOWN_HEADERS = {
    ":method": "method", ":path": "path", "x-envoy-original-path?:path": "path",
    ":authority": "authority", "x-request-id": "request_id", "traceparent": "traceparent",
    "tracestate": "tracestate", "x-envoy-expected-rq-timeout-ms": "expected_rq_timeout_ms",
    "x-envoy-attempt-count": "attempt_count", "x-b3-traceid": "b3_trace_id",
    "x-b3-spanid": "b3_span_id", "x-b3-sampled": "b3_sampled", "user-agent": "user_agent",
    "x-forwarded-for": "x_forwarded_for",
    "x-envoy-upstream-rq-timeout-ms": "upstream_rq_timeout_ms",
    "grpc-timeout": "grpc_timeout",
}
_KNOWN_RESP_HEADERS = {"x-envoy-upstream-service-time": "upstream_service_time"}
_ALIASES = {"upstream_cluster_raw": "upstream_cluster"}


def _field_name(operator: str, arg: str | None) -> str:
    if operator == "REQ" and arg is not None:
        key = arg.strip().lower()
        return _KNOWN_HEADERS.get(key, f"req.{key}")
    if operator == "RESP" and arg is not None:
        key = arg.strip().lower()
        return _KNOWN_RESP_HEADERS.get(key, f"resp.{key}")
    name = operator.lower()
    return _ALIASES.get(name, name)


@dataclass(frozen=True)
class LogFormat:
    """A compiled access-log format: TEXT (regex + field names) or JSON (key → field)."""

    encoding: Literal["TEXT", "JSON"]
    fields: tuple[str, ...]
    regex: re.Pattern[str] | None = None
    json_keys: Mapping[str, str] = field(default_factory=dict)

    def parse(self, line: str) -> dict[str, str | None] | None:
        """Return the line's fields (``-``/empty → ``None``), or ``None`` if it does not match."""
        if self.regex is not None:
            match = self.regex.match(line.rstrip("\r\n"))
            if match is None:
                return None
            # TEXT values are always strings; "-" is Envoy's empty value.
            return {name: (None if value in _EMPTY else value)
                    for name, value in zip(self.fields, match.groups(), strict=True)}
        try:
            doc = json.loads(line)
        except ValueError:
            return None
        if not isinstance(doc, dict):
            return None
        return {name: _clean(doc.get(key)) for key, name in self.json_keys.items()}


_EMPTY = frozenset(("", "-"))


def _clean(value: Any) -> str | None:
    if value is None:
        return None
    text = value if isinstance(value, str) else json.dumps(value)
    return None if text in ("", "-") else text


def compile_format(fmt: str | Mapping[str, str], encoding: str = "TEXT") -> LogFormat:
    """Compile an Envoy format (TEXT string, or JSON key → operator map) into a parser."""
    enc = encoding.upper()
    if enc == "JSON":
        if not isinstance(fmt, Mapping):
            raise ConfigurationError(f"json access-log format must be a mapping, got {fmt!r}")
        keys: dict[str, str] = {}
        for key, value in fmt.items():
            match = _OPERATOR.search(str(value))
            keys[key] = _field_name(match.group(1), match.group(2)) if match else key
        return LogFormat("JSON", tuple(keys.values()), json_keys=keys)
    if enc != "TEXT" or not isinstance(fmt, str):
        raise ConfigurationError(f"unsupported access-log encoding {encoding!r} for {fmt!r}")
    return _compile_text(fmt.rstrip("\r\n"))


def _compile_text(fmt: str) -> LogFormat:
    names: list[str] = []
    pattern: list[str] = ["^"]
    pos = 0
    operators = list(_OPERATOR.finditer(fmt))
    if not operators:
        raise ConfigurationError(f"access-log format {fmt!r} has no %OPERATOR%")
    for index, match in enumerate(operators):
        pattern.append(re.escape(fmt[pos:match.start()]))
        nxt = operators[index + 1].start() if index + 1 < len(operators) else len(fmt)
        literal = fmt[match.end():nxt]
        # A value runs up to the next literal character; this keeps the regex linear.
        if literal:
            pattern.append(f"([^{re.escape(literal[0])}]*)")
        elif index + 1 == len(operators):
            pattern.append("(.*)")
        else:
            pattern.append("(.*?)")
        names.append(_field_name(match.group(1), match.group(2)))
        pos = match.end()
    pattern.append(re.escape(fmt[pos:]) + "$")
    return LogFormat("TEXT", tuple(names), regex=re.compile("".join(pattern)))


def parse_traceparent(value: str | None) -> tuple[str, str, bool] | None:
    """Return ``(trace_id, parent_id, sampled)`` of a valid version-00 traceparent, else None."""
    if not value:
        return None
    match = _TRACEPARENT.match(value.strip())
    if match is None or match.group(1) == "ff":
        return None
    trace_id, parent_id = match.group(2), match.group(3)
    if trace_id == "0" * 32 or parent_id == "0" * 16:
        return None
    return trace_id, parent_id, bool(int(match.group(4), 16) & 1)


def _int(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        return None


@lru_cache(maxsize=8192)  # lines of one burst share their millisecond stamps
def _start_us(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return int(datetime.fromisoformat(value).timestamp() * 1_000_000)
    except ValueError:
        return None


@dataclass(frozen=True)
class AccessLogRecord:
    """One access-log line of one sidecar, normalised."""

    namespace: str
    pod: str
    hop: str
    line: str
    fields: Mapping[str, str | None]
    start_us: int | None
    duration_ms: int | None
    response_code: int | None
    flags: frozenset[str]
    direction: Literal["inbound", "outbound", "unknown"]
    trace_id: str | None
    parent_id: str | None
    sampled: bool | None

    @property
    def request_id(self) -> str | None:
        return self.fields.get("request_id")

    @property
    def expected_rq_timeout_ms(self) -> int | None:
        return _int(self.fields.get("expected_rq_timeout_ms"))

    @property
    def grpc_status(self) -> int | None:
        """``%GRPC_STATUS%`` as a code (any of Envoy's three formats); None for HTTP lines,
        or when the format lacks it (docs/fidelity.md §1.9)."""
        raw = self.fields.get("grpc_status")
        code = grpc_status_code(raw)
        # Envoy prints "InvalidCode" for a code above 16: a status, and not OK
        return 2 if code is None and raw else code

    @property
    def grpc_timeout_ms(self) -> int | None:
        """The ``grpc-timeout`` the request carried, in ms (Envoy's parsing, §1.9)."""
        return parse_grpc_timeout(self.fields.get("grpc_timeout"))

    @property
    def budget_ms(self) -> int | None:
        """The budget the request arrived with: ``x-envoy-expected-rq-timeout-ms``, and for a
        gRPC call its ``grpc-timeout`` when smaller (the caller's sidecar writes both from
        the same expected timeout, §1.9)."""
        budgets = [b for b in (self.expected_rq_timeout_ms, self.grpc_timeout_ms)
                   if b is not None]
        return min(budgets) if budgets else None

    @property
    def attempt(self) -> int | None:
        return _int(self.fields.get("attempt_count"))

    @property
    def end_us(self) -> int | None:
        if self.start_us is None or self.duration_ms is None:
            return None
        return self.start_us + self.duration_ms * 1000

    @property
    def upstream_service(self) -> str | None:
        """The destination service of an outbound line (``outbound|8080||orders.shop…``)."""
        cluster = self.fields.get("upstream_cluster") or ""
        if cluster.startswith("outbound|"):
            return cluster.rsplit("|", 1)[-1].split(".", 1)[0] or None
        authority = self.fields.get("authority")
        return authority.split(":", 1)[0].split(".", 1)[0] if authority else None

    @property
    def downstream_disconnected(self) -> bool:
        """``0 DC``/``0 DR``: the caller went away before a response (§1.6)."""
        return bool(self.flags & {"DC", "DR"}) or self.response_code == 0

    @classmethod
    def build(cls, namespace: str, pod: str, line: str, fields: Mapping[str, str | None],
              hop: str | None = None) -> AccessLogRecord:
        cluster = fields.get("upstream_cluster") or ""
        hop = hop or hop_of_pod(pod)
        direction: Literal["inbound", "outbound", "unknown"] = (
            "inbound" if cluster.startswith("inbound|")
            else "outbound" if cluster.startswith("outbound|") else "unknown")
        authority = (fields.get("authority") or "").split(":", 1)[0].split(".", 1)[0]
        if direction == "unknown" and authority:
            # No upstream was picked (503 UH, NR): the cluster prints "-". A request for
            # another service than the pod's own left through its outbound listener.
            direction = "inbound" if authority == hop else "outbound"
        flags = fields.get("response_flags")
        context = parse_traceparent(fields.get("traceparent"))
        return cls(namespace=namespace, pod=pod, hop=hop, line=line,
                   fields=fields,
                   start_us=_start_us(fields.get("start_time")),
                   duration_ms=_int(fields.get("duration")),
                   response_code=_int(fields.get("response_code")),
                   flags=frozenset(flags.split(",")) if flags else frozenset(),
                   direction=direction,
                   trace_id=context[0] if context else None,
                   parent_id=context[1] if context else None,
                   sampled=context[2] if context else None)


def hop_of_pod(pod: str) -> str:
    """The workload of a Deployment pod: ``orders-5d4f9c7b8-x2x9q`` → ``orders``."""
    parts = pod.split("-")
    return "-".join(parts[:-2]) if len(parts) > 2 else pod


def parse_lines(fmt: LogFormat, namespace: str, pod: str, lines: Iterable[str],
                hop: str | None = None) -> tuple[list[AccessLogRecord], int]:
    """Parse one sidecar's log; return the records and how many lines did not match."""
    records: list[AccessLogRecord] = []
    skipped = 0
    for line in lines:
        if not line.strip():
            continue
        fields = fmt.parse(line)
        if fields is None:
            skipped += 1  # sidecar diagnostics share the istio-proxy log (architecture.md)
            continue
        records.append(AccessLogRecord.build(namespace, pod, line.rstrip("\n"), fields, hop))
    return records, skipped
