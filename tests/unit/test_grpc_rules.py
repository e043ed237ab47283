"""The pure gRPC rules of the sidecar (docs/fidelity.md §1.9) and Istio's HTTP/2 port
selection (§2.5), checked against the sources' own cases."""

from __future__ import annotations

import pytest

from localmesh.protocols import speaks_http2
from localmesh.sidecar.grpc import (
    format_grpc_timeout,
    grpc_local_reply,
    http_to_grpc_status,
    parse_grpc_timeout,
)
from localmesh.sidecar.upstream import local_reply
from localmesh.store import ObjectStore
from localmesh.xds import build_shared


@pytest.mark.parametrize(("value", "ms"), [
    ("5000m", 5000), ("2S", 2000), ("1M", 60_000), ("1H", 3_600_000),
    ("1500u", 2), ("1n", 1), ("99999999m", 99_999_999),
    # Grpc::Common::getGrpcTimeout: more than 8 digits, no unit, a bad unit, a sign: absent
    ("123456789m", None), ("100", None), ("100x", None), ("m", None), ("-5S", None),
    ("", None), (None, None)])
def test_grpc_timeout_is_read_as_envoy_reads_it(value: str | None, ms: int | None) -> None:
    assert parse_grpc_timeout(value) == ms


@pytest.mark.parametrize(("ms", "text"), [
    (300, "300m"), (99_999_999, "99999999m"), (100_000_000, "100000S"),
    (10**14, "27777777H")])
def test_grpc_timeout_is_written_as_to_grpc_timeout_writes_it(ms: int, text: str) -> None:
    """toGrpcTimeout: ms while it fits 8 digits, then S, M, H (clipped at 8 digits)."""
    assert format_grpc_timeout(ms) == text


def test_http_status_maps_to_grpc_status_as_http_to_grpc_status() -> None:
    assert [http_to_grpc_status(s) for s in (400, 401, 403, 404, 429, 502, 503, 504, 500)] == \
        [13, 16, 7, 12, 14, 14, 14, 14, 2]


@pytest.mark.parametrize(("port", "h2"), [
    ({"port": 80, "name": "grpc"}, True), ({"port": 80, "name": "grpc-api"}, True),
    ({"port": 80, "name": "http2-x"}, True), ({"port": 80, "name": "grpc-web"}, True),
    ({"port": 80, "name": "http"}, False), ({"port": 80, "name": "tcp"}, False),
    ({"port": 80, "name": "grpc", "appProtocol": "http"}, False),  # appProtocol wins
    ({"port": 80, "name": "web", "appProtocol": "grpc"}, True), ({"port": 80}, False)])
def test_istio_gives_http2_clusters_to_grpc_and_http2_ports(port: dict[str, object],
                                                            h2: bool) -> None:
    assert speaks_http2(port) is h2


def test_the_control_plane_lists_a_services_http2_ports() -> None:
    """Istio's setUpstreamProtocol: the cluster of a grpc/http2 port is HTTP/2; the sidecar
    document says which ports those are (``h2_ports``), and no others (§2.5)."""
    store = ObjectStore()
    store.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}})
    store.create({"apiVersion": "v1", "kind": "Service",
                  "metadata": {"name": "ledger", "namespace": "shop"},
                  "spec": {"selector": {"app": "ledger"}, "ports": [
                      {"name": "grpc-api", "port": 9090}, {"name": "http", "port": 8080},
                      {"name": "admin", "appProtocol": "http2", "port": 9091}]}})
    store.create({"apiVersion": "v1", "kind": "Service",
                  "metadata": {"name": "orders", "namespace": "shop"},
                  "spec": {"selector": {"app": "orders"},
                           "ports": [{"name": "http", "port": 8080}]}})
    services = build_shared(store).services
    assert services["ledger.shop.svc.cluster.local"].get("h2_ports") == [9090, 9091]
    assert "h2_ports" not in services["orders.shop.svc.cluster.local"]


def test_a_grpc_status_override_keeps_its_code_and_the_body_as_grpc_message() -> None:
    """``sendLocalReply(code, body, …, grpc_status, …)``: the fault filter's gRPC abort passes
    its code, which wins over ``httpToGrpcStatus(200)`` = 2 (docs/fidelity.md §2.4, §1.9)."""
    reply = grpc_local_reply(local_reply(200, "fault filter abort"), 8)
    assert (reply.status, reply.body) == (200, b"")
    assert reply.headers["grpc-status"] == "8"
    assert reply.headers["grpc-message"] == "fault filter abort"
    assert reply.headers["content-type"] == "application/grpc"
    assert grpc_local_reply(local_reply(200, "x")).headers["grpc-status"] == "2"
