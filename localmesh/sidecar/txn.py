"""One downstream request as the sidecar saw it: what the access log and the span read."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

__all__ = ["FLAG_ORDER", "Txn"]

# Envoy's ResponseFlag enum order, which %RESPONSE_FLAGS% follows (docs/fidelity.md §1.6).
FLAG_ORDER = ("LH", "UH", "UT", "LR", "UR", "UF", "UC", "UO", "NR", "DI", "FI", "RL", "UAEX",
              "RLSE", "DC", "URX", "SI", "IH", "DPE", "UMSDR", "RFCF", "NFCF", "DT", "UPE", "NC",
              "OM", "DF", "DO", "DR")
_FLAG_RANK = {f: i for i, f in enumerate(FLAG_ORDER)}


class Txn:
    """Mutable record of one request through one listener.

    Most fields keep their class-level default for most requests: an instance stores
    only what a request sets (no ``__slots__``), which costs less than 21 stores each.
    """

    end = 0.0
    protocol = "HTTP/1.1"  # %PROTOCOL%; a TCP connection's record says "-"
    resp_headers: Mapping[str, str] = MappingProxyType({})  # until a response's own dict
    resp_trailers: Mapping[str, str] = MappingProxyType({})  # HTTP/2 answers' trailers
    status = 0
    flags: tuple[str, ...] | list[str] = ()  # add_flag makes the instance's own list
    details = ""
    transport_failure = ""
    upstream_host = ""
    upstream_cluster = ""
    upstream_local = ""
    downstream_local = ""
    downstream_remote = ""
    route_name = ""
    bytes_received = 0
    bytes_sent = 0
    attempts = 0

    def __init__(self, start: float, start_wall: float, method: str, path: str,
                 authority: str, req_headers: dict[str, str]) -> None:
        self.start = start
        self.start_wall = start_wall
        self.method = method
        self.path = path
        self.authority = authority
        self.req_headers = req_headers

    def add_flag(self, flag: str) -> None:
        if flag not in self.flags:
            self.flags = [*self.flags, flag]

    def flags_text(self) -> str:
        if not self.flags:
            return "-"
        return ",".join(sorted(self.flags, key=lambda f: _FLAG_RANK.get(f, 99)))

    def duration_ms(self) -> int:
        return int((self.end - self.start) * 1000)
