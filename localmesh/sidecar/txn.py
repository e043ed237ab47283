"""One downstream request as the sidecar saw it: what the access log and the span read."""

from __future__ import annotations

__all__ = ["FLAG_ORDER", "Txn"]

# Envoy's ResponseFlag enum order, which %RESPONSE_FLAGS% follows (mesh-semantics.md §1.6).
FLAG_ORDER = ("LH", "UH", "UT", "LR", "UR", "UF", "UC", "UO", "NR", "DI", "FI", "RL", "UAEX",
              "RLSE", "DC", "URX", "SI", "IH", "DPE", "UMSDR", "RFCF", "NFCF", "DT", "UPE", "NC",
              "OM", "DF", "DO", "DR")
_FLAG_RANK = {f: i for i, f in enumerate(FLAG_ORDER)}


class Txn:
    """Mutable record of one request through one listener."""

    __slots__ = ("attempts", "authority", "bytes_received", "bytes_sent", "details",
                 "downstream_local", "downstream_remote", "end", "flags", "method", "path",
                 "req_headers", "resp_headers", "route_name", "start", "start_wall", "status",
                 "transport_failure", "upstream_cluster", "upstream_host", "upstream_local")

    def __init__(self, start: float, start_wall: float, method: str, path: str,
                 authority: str, req_headers: dict[str, str]) -> None:
        self.start = start
        self.start_wall = start_wall
        self.end = 0.0
        self.method = method
        self.path = path
        self.authority = authority
        self.req_headers = req_headers
        self.resp_headers: dict[str, str] = {}
        self.status = 0
        self.flags: list[str] = []
        self.details = ""
        self.transport_failure = ""
        self.upstream_host = ""
        self.upstream_cluster = ""
        self.upstream_local = ""
        self.downstream_local = ""
        self.downstream_remote = ""
        self.route_name = ""
        self.bytes_received = 0
        self.bytes_sent = 0
        self.attempts = 0

    def add_flag(self, flag: str) -> None:
        if flag not in self.flags:
            self.flags.append(flag)

    def flags_text(self) -> str:
        if not self.flags:
            return "-"
        return ",".join(sorted(self.flags, key=lambda f: _FLAG_RANK.get(f, 99)))

    def duration_ms(self) -> int:
        return int((self.end - self.start) * 1000)
