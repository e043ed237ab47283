"""Istio's protocol selection (docs/fidelity.md §2.5) and the TCP listeners the supervisor
plans from it: which Service ports are TCP, the sidecar's arguments, the Kubernetes service
variables the app gets, and the readiness probes the local mesh maps."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import pytest

from localmesh.protocols import TCP_INBOUND_ANNOTATION, port_protocol
from localmesh.rabbitmq import broker_env, node_name
from localmesh.store import ObjectStore
from localmesh.supervisor.probes import ReadinessProbe, amqp_handshake_ok, exec_ok
from localmesh.supervisor.tcpports import plan_tcp_ports
from localmesh.xds import build_shared

pytestmark = pytest.mark.timeout(10)


@pytest.mark.parametrize(("port", "expected"), [
    ({"name": "http", "port": 80}, "http"),
    ({"name": "http-web", "port": 80}, "http"),
    ({"name": "http2", "port": 80}, "http"),
    ({"name": "grpc-web", "port": 80}, "http"),
    ({"name": "grpc-api", "port": 80}, "http"),
    ({"name": "tcp", "port": 5672}, "tcp"),
    ({"name": "tcp-amqp", "port": 5672}, "tcp"),
    ({"name": "tls-db", "port": 5432}, "tcp"),
    ({"name": "https", "port": 443}, "tcp"),
    ({"name": "mysql", "port": 3306}, "tcp"),
    ({"name": "redis", "port": 6379}, "tcp"),
    ({"name": "mongo", "port": 27017}, "tcp"),
    ({"name": "amqp", "port": 5672}, "auto"),
    ({"port": 5672}, "auto"),
    ({"name": "http", "appProtocol": "tcp", "port": 80}, "tcp"),
    ({"name": "tcp", "appProtocol": "http", "port": 80}, "http"),
    ({"name": "dns", "port": 53, "protocol": "UDP"}, "udp"),
    ({"name": "udp-x", "port": 53}, "udp"),
])
def test_istio_protocol_selection(port: dict[str, Any], expected: str) -> None:
    """Istio "Protocol Selection": name ``<protocol>[-<suffix>]`` or appProtocol, appProtocol
    taking precedence; http/http2/grpc/grpc-web HTTP; tcp/tls/https (not decrypted) and the
    experimental mongo/mysql/redis opaque TCP; anything else is auto-detected."""
    assert port_protocol(port) == expected


def svc(name: str, ports: list[dict[str, Any]], selector: dict[str, str],
        namespace: str = "shop") -> dict[str, Any]:
    return {"kind": "Service", "metadata": {"name": name, "namespace": namespace},
            "spec": {"selector": selector, "ports": ports}}


def pod(app: str, namespace: str = "shop") -> dict[str, Any]:
    return {"metadata": {"name": f"{app}-abc-x", "namespace": namespace, "labels": {"app": app}}}


SERVICES = [
    svc("broker", [{"name": "amqp", "appProtocol": "tcp", "port": 5672},
                   {"name": "http-admin", "port": 15672}], {"app": "broker"}),
    svc("orders", [{"name": "http", "port": 8080}], {"app": "orders"}),
    svc("cache", [{"name": "redis", "port": 6379}], {"app": "cache"}, namespace="other"),
]


def test_a_client_pod_gets_an_outbound_listener_per_tcp_port_of_its_namespace() -> None:
    ports = itertools.count(41000)
    plan = plan_tcp_ports(SERVICES, pod("orders"), 8080, lambda: next(ports))
    assert plan.inbound_listen == 0  # orders has no TCP port
    assert [(o.fqdn, o.port, o.listen) for o in plan.outbound] == \
        [("broker.shop.svc.cluster.local", 5672, 41000)]
    assert plan.sidecar_args() == ["--tcp-outbound", "broker.shop.svc.cluster.local:5672=41000"]
    # Kubernetes service variables, pointing at the sidecar's listener.
    assert plan.app_env() == {"BROKER_SERVICE_HOST": "127.0.0.1",
                              "BROKER_SERVICE_PORT_AMQP": "41000",
                              "BROKER_SERVICE_PORT": "41000"}
    assert plan.annotations() == {}


def test_the_broker_pod_gets_an_inbound_listener_for_its_tcp_port() -> None:
    ports = itertools.count(42000)
    plan = plan_tcp_ports(SERVICES, pod("broker"), 5672, lambda: next(ports))
    assert (plan.inbound_port, plan.inbound_listen) == (5672, 42001)
    assert "--tcp-inbound" in plan.sidecar_args()
    assert plan.annotations() == {"meshchaos.io/tcp-inbound-port": "42001"}
    assert sorted(plan.ports) == [42000, 42001]


def test_a_chain_of_http_services_gets_no_tcp_listener() -> None:
    def never() -> int:
        raise AssertionError("no TCP port to listen on, so no port is allocated")

    plan = plan_tcp_ports([SERVICES[1]], pod("orders"), 8080, never)
    assert plan.ports == [] and plan.sidecar_args() == [] and plan.app_env() == {}


def test_the_broker_environment_is_a_node_of_its_own() -> None:
    """Its own node name, ports, epmd and directories; RabbitMQ's documented variables."""
    from pathlib import Path
    env = broker_env({"PATH": "/usr/bin"}, data=Path("/s/data/shop_broker-1"), amqp_port=5000,
                     epmd_port=5001, dist_port=5002, pod="broker-1")
    assert env["RABBITMQ_NODENAME"] == node_name("broker-1") == "rabbit-broker-1@localhost"
    assert (env["RABBITMQ_NODE_PORT"], env["ERL_EPMD_PORT"], env["RABBITMQ_DIST_PORT"]) == \
        ("5000", "5001", "5002")
    assert env["RABBITMQ_MNESIA_BASE"].startswith("/s/data/shop_broker-1/")
    assert env["RABBITMQ_LOG_BASE"].startswith("/s/data/shop_broker-1/")
    assert env["HOME"] == "/s/data/shop_broker-1"
    assert "-start_epmd false" in env["RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS"]
    assert env["MESHCHAOS_BROKER_DATA"] == "/s/data/shop_broker-1"


def test_only_rabbitmqs_own_checks_become_a_handshake() -> None:
    mapped = ReadinessProbe.of({"readinessProbe": {"exec": {"command": [
        "rabbitmq-diagnostics", "-q", "ping"]}}})
    assert mapped.handshake == "amqp"
    other = ReadinessProbe.of({"readinessProbe": {"exec": {"command": ["test", "-e", "/x"]}}})
    assert other.handshake == "" and other.command == ("test", "-e", "/x")


async def test_an_exec_probe_succeeds_on_exit_status_zero_only() -> None:
    """Kubernetes exec probe: the command's exit status 0 is success."""
    assert await exec_ok(("true",))
    assert not await exec_ok(("false",))
    assert not await exec_ok(("/nonexistent/command",))
    assert not await exec_ok(("sleep", "5"), within=0.1)


async def test_the_amqp_handshake_needs_connection_start() -> None:
    """AMQP 0-9-1 §4.2.2: the server answers the protocol header with Connection.Start
    (method frame, channel 0, class 10, method 10); anything else is not ready."""
    async def server(answer: bytes) -> asyncio.Server:
        async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            assert await r.readexactly(8) == b"AMQP\x00\x00\x09\x01"
            w.write(answer)
            await w.drain()
            w.close()
        return await asyncio.start_server(handle, "127.0.0.1", 0)

    start = bytes([1, 0, 0, 0, 0, 0, 10, 0, 10, 0, 10]) + b"\x00" * 8
    good = await server(start)
    http = await server(b"HTTP/1.1 400 Bad Request\r\n\r\n")
    try:
        assert await amqp_handshake_ok(good.sockets[0].getsockname()[1])
        assert not await amqp_handshake_ok(http.sockets[0].getsockname()[1])
    finally:
        good.close()
        http.close()
    assert not await amqp_handshake_ok(1, within=0.5)  # nothing listens on port 1


def test_the_control_plane_tells_callers_where_each_endpoint_takes_tcp() -> None:
    """The sidecar document: a Service's TCP ports (§2.5), and per endpoint the port a
    caller's sidecar connects to: the pod's inbound TCP listener, or, for a pod without a
    sidecar, its app (Istio sends plain TCP to a pod outside the mesh)."""
    store = ObjectStore()
    store.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}})
    store.create({"apiVersion": "v1", **SERVICES[0]})
    store.create({"apiVersion": "v1", **SERVICES[1]})
    for name, pod_annotations in (
            ("broker-a", {"meshchaos.io/app-port": "40001", "meshchaos.io/inbound-port": "40002",
                          TCP_INBOUND_ANNOTATION: "40003"}),
            ("broker-b", {"meshchaos.io/app-port": "40011"})):  # no sidecar injected
        store.create({"apiVersion": "v1", "kind": "Pod",
                      "metadata": {"name": name, "namespace": "shop",
                                   "labels": {"app": "broker"}, "annotations": pod_annotations},
                      "spec": {"containers": [{"name": "rabbitmq", "image": "rabbitmq"}]}})
    services = build_shared(store).services
    broker = services["broker.shop.svc.cluster.local"]
    assert broker.get("tcp_ports") == [5672]  # the http-admin port stays HTTP
    assert {e["pod"]: e.get("tcp_port") for e in broker["endpoints"]} == \
        {"broker-a": 40003, "broker-b": 40011}
    assert "tcp_ports" not in services["orders.shop.svc.cluster.local"]
