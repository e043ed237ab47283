"""The Envoy access-log formats the probes know by name (docs/fidelity.md §2.3).

``ISTIO_TEXT`` is Istio's default TEXT format; ``EXTENDED_TEXT`` is the format the
meshchaos fixtures configure (architecture.md "Access log"): Istio's format followed
by the traceparent, the expected request timeout and the attempt count.
``MESHCHAOS_TEXT`` (what the fixtures really configure) adds the tracestate and the B3 trace
id. ``ISTIO_JSON`` is Istio's JSON encoding: the same operators keyed by name.
"""

from __future__ import annotations

__all__ = ["EXTENDED_TEXT", "ISTIO_JSON", "ISTIO_TEXT", "MESHCHAOS_TEXT"]

ISTIO_TEXT = (
    '[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" '
    "%RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS% "
    '"%UPSTREAM_TRANSPORT_FAILURE_REASON%" %BYTES_RECEIVED% %BYTES_SENT% %DURATION% '
    '%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% "%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%" '
    '"%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%" %UPSTREAM_CLUSTER_RAW% '
    "%UPSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS% "
    "%REQUESTED_SERVER_NAME% %ROUTE_NAME%\n"
)

EXTENDED_TEXT = (
    ISTIO_TEXT[:-1]
    + ' "%REQ(TRACEPARENT)%" "%REQ(X-ENVOY-EXPECTED-RQ-TIMEOUT-MS)%"'
    + ' "%REQ(X-ENVOY-ATTEMPT-COUNT)%"\n'
)

# What the fixtures' mesh config sets: the extended format plus the W3C tracestate and the B3
# trace id, so that continuity of both header families is visible at every sidecar even when
# the tracing backend drops tracestate (Jaeger keeps it only as an optional tag), and a gRPC
# call's status (a gRPC error is a 200 with grpc-status in its trailers) and deadline
# (docs/fidelity.md §1.9).
MESHCHAOS_TEXT = (EXTENDED_TEXT[:-1] + ' "%REQ(TRACESTATE)%" "%REQ(X-B3-TRACEID)%"'
                  + ' %GRPC_STATUS% "%REQ(GRPC-TIMEOUT)%"\n')

ISTIO_JSON: dict[str, str] = {
    "start_time": "%START_TIME%",
    "route_name": "%ROUTE_NAME%",
    "method": "%REQ(:METHOD)%",
    "path": "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%",
    "protocol": "%PROTOCOL%",
    "response_code": "%RESPONSE_CODE%",
    "response_flags": "%RESPONSE_FLAGS%",
    "response_code_details": "%RESPONSE_CODE_DETAILS%",
    "connection_termination_details": "%CONNECTION_TERMINATION_DETAILS%",
    "bytes_received": "%BYTES_RECEIVED%",
    "bytes_sent": "%BYTES_SENT%",
    "duration": "%DURATION%",
    "upstream_service_time": "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%",
    "x_forwarded_for": "%REQ(X-FORWARDED-FOR)%",
    "user_agent": "%REQ(USER-AGENT)%",
    "request_id": "%REQ(X-REQUEST-ID)%",
    "authority": "%REQ(:AUTHORITY)%",
    "upstream_host": "%UPSTREAM_HOST%",
    "upstream_cluster": "%UPSTREAM_CLUSTER_RAW%",
    "upstream_local_address": "%UPSTREAM_LOCAL_ADDRESS%",
    "downstream_local_address": "%DOWNSTREAM_LOCAL_ADDRESS%",
    "downstream_remote_address": "%DOWNSTREAM_REMOTE_ADDRESS%",
    "requested_server_name": "%REQUESTED_SERVER_NAME%",
    "upstream_transport_failure_reason": "%UPSTREAM_TRANSPORT_FAILURE_REASON%",
}
