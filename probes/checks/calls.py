"""A hop's runs as its sidecars saw them: each inbound request and the calls made under it.

Any mesh has this evidence, whatever the apps are written in: the inbound sidecar logs
the request a hop received (with the budget its caller's sidecar gave it,
``x-envoy-expected-rq-timeout-ms``, docs/fidelity.md §1.5) and the outbound sidecar logs
every request the hop's app made (with the budget that sidecar set for it). An outbound
line belongs to the inbound request of the same pod that was open when it started; with
several open (retried attempts), to the latest one that started before it.
"""

from __future__ import annotations

from dataclasses import dataclass

from probes.evidence.accesslog import AccessLogRecord
from probes.evidence.request import HopEvidence

__all__ = ["FAILED_FLAGS", "NOT_SENT_FLAGS", "SidecarRun", "failed", "held_by_fault_filter",
           "reached_upstream", "sidecar_runs"]

# Response flags of a call that did not succeed (Envoy's access-log flags, §2.3).
FAILED_FLAGS = frozenset({"UT", "UF", "UH", "URX", "UC", "UO", "NR", "DC", "DR", "LR",
                          "UPE", "UMSDR"})


# The call never reached an upstream: no healthy host, no route, no cluster, overflow, or
# the connection failed. Such a call passed nothing on to a callee.
NOT_SENT_FLAGS = frozenset({"UH", "NR", "NC", "UO", "UF"})


def reached_upstream(call: AccessLogRecord) -> bool:
    """The outbound sidecar sent the call to a callee (it was not refused before that, nor
    answered by a VirtualService fault before its router ran)."""
    return not call.flags & NOT_SENT_FLAGS and not held_by_fault_filter(call)


def held_by_fault_filter(call: AccessLogRecord) -> bool:
    """Envoy's fault filter answered the call before the router (docs/fidelity.md §2.4): an
    abort (``FI``), or a caller that left during an injected delay (``DI`` with ``DC``, or
    ``DR`` for an HTTP/2 caller's RST_STREAM, §1.9, and no upstream host). The router never
    ran, so no budget or attempt was sent on."""
    flags = call.flags
    if "FI" in flags:
        return True
    return ("DI" in flags and bool(flags & {"DC", "DR"})
            and not call.fields.get("upstream_host"))


@dataclass(frozen=True)
class SidecarRun:
    """One inbound request of a hop and the outbound calls its app made while serving it."""

    inbound: AccessLogRecord
    calls: tuple[AccessLogRecord, ...]

    @property
    def budget_ms(self) -> int | None:
        return self.inbound.budget_ms

    @property
    def start_us(self) -> int:
        return self.inbound.start_us or 0

    @property
    def deadline_us(self) -> int | None:
        budget = self.budget_ms
        return None if budget is None else self.start_us + budget * 1000

    def left_ms(self, at_us: int) -> float:
        """Budget left at ``at_us`` (the budget must be known)."""
        assert self.budget_ms is not None
        return self.budget_ms - (at_us - self.start_us) / 1000


def failed(call: AccessLogRecord) -> bool:
    """The call got no good answer: no response, a 5xx, a failure flag, or a gRPC status
    other than OK (a gRPC error travels in a 200's trailers, docs/fidelity.md §1.9)."""
    code = call.response_code
    if code is None or code == 0 or code >= 500 or bool(call.flags & FAILED_FLAGS):
        return True
    grpc_status = call.grpc_status
    return grpc_status is not None and grpc_status != 0


def sidecar_runs(hop: HopEvidence, slack_us: int = 2000) -> list[SidecarRun]:
    """The hop's inbound requests (in start order) with the outbound calls made under each.

    ``slack_us`` absorbs the millisecond resolution of ``%START_TIME%``/``%DURATION%``.
    """
    inbound = sorted((r for r in hop.logs_in if r.start_us is not None),
                     key=lambda r: r.start_us or 0)
    calls: dict[int, list[AccessLogRecord]] = {id(r): [] for r in inbound}
    for call in sorted(hop.logs_out, key=lambda r: r.start_us or 0):
        owner = _owner(inbound, call, slack_us)
        if owner is not None:
            calls[id(owner)].append(call)
    return [SidecarRun(r, tuple(calls[id(r)])) for r in inbound]


def _owner(inbound: list[AccessLogRecord], call: AccessLogRecord,
           slack_us: int) -> AccessLogRecord | None:
    start = call.start_us
    if start is None:
        return None
    owner = None
    for record in inbound:
        begin = record.start_us or 0
        end = record.end_us if record.end_us is not None else begin
        if record.pod == call.pod and begin - slack_us <= start <= end + slack_us:
            owner = record  # the latest one that started before the call
    return owner
