"""Which protocol the mesh gives a Service port, as Istio's protocol selection does.

docs/fidelity.md §2.5 (Istio "Protocol Selection"): ``appProtocol`` wins over the port
name; a name is read as ``<protocol>[-<suffix>]``. ``http``, ``http2``, ``grpc`` and
``grpc-web`` are HTTP; ``tcp``, ``tls``, ``https`` (the sidecar does not decrypt) and the
experimental ``mongo``, ``mysql``, ``redis`` (opaque TCP unless istiod enables them) are
proxied as an opaque TCP stream (Envoy ``tcp_proxy``); ``udp`` (or ``protocol: UDP``) is not
proxied. Anything else (no name, ``amqp``, ``web``) is *auto-detected* by Istio: it sniffs
the first bytes and treats what is not HTTP as TCP. The local mesh cannot sniff an
``HTTP_PROXY`` request, so an auto port gets both paths: HTTP through ``HTTP_PROXY`` as
before, and a TCP listener that carries any other protocol the way Istio's sniffing would.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

__all__ = ["GRPC_CODES", "HTTP2_PROTOCOLS", "HTTP_PROTOCOLS", "TCP_INBOUND_ANNOTATION",
           "TCP_PROTOCOLS", "Protocol", "carries_tcp", "port_protocol", "speaks_http2"]

# Written on a pod by the supervisor, read by the control plane: the loopback port of the
# pod's inbound TCP listener, which callers' sidecars connect to for its TCP ports.
TCP_INBOUND_ANNOTATION = "meshchaos.io/tcp-inbound-port"

# Istio's grpc.SupportedGRPCStatus (pkg/util/grpc): the names a VirtualService's
# ``fault.abort.grpcStatus`` may carry and the code each stands for (gRPC's
# doc/statuscodes.md); istiod's webhook refuses any other name (docs/fidelity.md §2.4).
GRPC_CODES: Mapping[str, int] = {name: code for code, name in enumerate((
    "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
    "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
    "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
    "UNAUTHENTICATED"))}

Protocol = Literal["http", "tcp", "auto", "udp"]

HTTP_PROTOCOLS = frozenset({"http", "http2", "grpc", "grpc-web"})
TCP_PROTOCOLS = frozenset({"tcp", "tls", "https", "mongo", "mysql", "redis"})
# Istio's Protocol.IsHTTP2(): the sidecar speaks HTTP/2 to these ports' endpoints.
HTTP2_PROTOCOLS = frozenset({"http2", "grpc", "grpc-web"})


def port_protocol(port: Mapping[str, Any]) -> Protocol:
    """The protocol Istio selects for one entry of a Service's ``spec.ports``."""
    if str(port.get("protocol") or "TCP").upper() != "TCP":
        return "udp"  # UDP and SCTP: not proxied
    app = str(port.get("appProtocol") or "").strip().lower()
    name = str(port.get("name") or "").strip().lower()
    declared = app or name
    if not declared:
        return "auto"
    if app:
        candidates = [app]
    else:
        # "grpc-web" is a protocol of its own; any other "<protocol>-<suffix>" is its prefix.
        candidates = ["grpc-web"] if name.startswith("grpc-web") else [name.split("-", 1)[0]]
    for proto in candidates:
        if proto in HTTP_PROTOCOLS:
            return "http"
        if proto in TCP_PROTOCOLS:
            return "tcp"
        if proto == "udp":
            return "udp"
    return "auto"


def carries_tcp(protocol: Protocol) -> bool:
    """The sidecar opens a TCP listener for this port (explicit TCP, or auto-detected)."""
    return protocol in ("tcp", "auto")


def speaks_http2(port: Mapping[str, Any]) -> bool:
    """Istio gives this Service port an HTTP/2 cluster (``setUpstreamProtocol`` with
    ``IsHTTP2``: ``appProtocol``, else the port name's prefix, is ``http2``/``grpc``/
    ``grpc-web``; docs/fidelity.md §2.5)."""
    if port_protocol(port) != "http":
        return False
    app = str(port.get("appProtocol") or "").strip().lower()
    if app:
        return app in HTTP2_PROTOCOLS
    name = str(port.get("name") or "").strip().lower()
    return ("grpc-web" if name.startswith("grpc-web") else name.split("-", 1)[0]) \
        in HTTP2_PROTOCOLS
