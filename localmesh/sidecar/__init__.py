"""The Envoy emulation, one process per pod (``python -m localmesh.sidecar``).

Modules, one job each:

- ``config``: the pushed configuration document, parsed and checked;
- ``proxy``: the listeners (inbound, outbound/ingress, admin) and per-request flow;
- ``routing``: host lookup, route match, destination and endpoint choice;
- ``upstream``: Envoy's router: tries, timers, retries, local replies;
- ``headers``: §1.7 sanitising, peer metadata id, request ids;
- ``tracing`` / ``otlp_wire``: Envoy's OpenTelemetry tracer, batched OTLP export;
- ``accesslog`` / ``txn``: the access log line of one request;
- ``faults``: Chaos Mesh network faults on this pod's egress.
"""

from localmesh.sidecar.config import SidecarConfig, parse_config
from localmesh.sidecar.proxy import Sidecar

__all__ = ["Sidecar", "SidecarConfig", "parse_config"]
