"""The broker's manifests (fixtures/broker/k8s) and what the local mesh reads from them:
they validate as an API server would, the AMQP port is a TCP port for Istio (docs/fidelity.md
§2.5), the local command is the broker launcher, readiness is RabbitMQ's own check, and the
reference chain's fixtures/k8s do not include them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from localmesh.errors import ProcessError
from localmesh.manifests import load_manifests
from localmesh.protocols import port_protocol
from localmesh.rabbitmq import SERVER, check_objects, private_home
from localmesh.supervisor.podspec import COMMAND_ANNOTATION
from localmesh.supervisor.probes import ReadinessProbe
from localmesh.validation import validate_object
from tests.unit.test_k8s_manifests import kubernetes_documents, load_objects

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "fixtures" / "broker" / "k8s"
Obj = dict[str, Any]


OBJECTS = load_objects(MANIFESTS)


def one(kind: str, name: str = "broker") -> Obj:
    (obj,) = [o for o in OBJECTS if o["kind"] == kind and o["metadata"]["name"] == name]
    return obj


@pytest.mark.parametrize("path", sorted(MANIFESTS.glob("*")), ids=lambda p: p.name)
def test_every_file_is_yaml_of_kubernetes_objects(path: Path) -> None:
    """kubectl apply -f fixtures/broker/k8s/ reads every file: apiVersion, kind, metadata.name
    and a namespace (the chain's, shop)."""
    for doc in kubernetes_documents(path):
        assert doc["metadata"].get("namespace") == "shop"


def test_the_folder_loads_the_way_meshchaos_up_loads_it() -> None:
    """load_manifests validates every object (DNS-1123 names, selectors matching template
    labels, Service ports), strictly too: no field an API server would drop."""
    manifests = load_manifests([MANIFESTS])
    assert [m.obj for m in manifests] == OBJECTS
    for obj in OBJECTS:
        validate_object(obj)
        validate_object(obj, strict=True)
    assert sorted((o["kind"], o["metadata"]["name"]) for o in OBJECTS) == [
        ("Deployment", "broker"), ("Deployment", "shipping"), ("Service", "broker")]


def test_the_amqp_port_is_opaque_tcp_for_istio() -> None:
    """Istio protocol selection: appProtocol wins over the name; 'tcp' is an opaque TCP
    stream (tcp_proxy), and the name 'amqp' alone would be auto-detected as TCP too."""
    (port,) = one("Service")["spec"]["ports"]
    assert port["port"] == 5672 and port["targetPort"] == 5672
    assert port_protocol(port) == "tcp"
    assert port_protocol({"name": port["name"], "port": 5672}) == "auto"


def test_the_pod_runs_the_broker_launcher_with_a_sidecar() -> None:
    template = one("Deployment")["spec"]["template"]
    assert template["metadata"]["annotations"][COMMAND_ANNOTATION] == \
        "python -m localmesh.rabbitmq"
    assert template["metadata"]["labels"]["sidecar.istio.io/inject"] == "true"
    (container,) = template["spec"]["containers"]
    assert container["ports"][0]["containerPort"] == 5672  # the app's PORT locally


def test_readiness_is_rabbitmqs_own_check_run_as_an_amqp_handshake_locally() -> None:
    """On a cluster: rabbitmq-diagnostics check_port_connectivity (exec). Locally the same
    question (does the AMQP listener accept?) is asked with an AMQP protocol header, which
    answers in a millisecond instead of an Erlang VM start per probe."""
    (container,) = one("Deployment")["spec"]["template"]["spec"]["containers"]
    command = container["readinessProbe"]["exec"]["command"]
    assert command == ["rabbitmq-diagnostics", "-q", "check_port_connectivity"]
    probe = ReadinessProbe.of(container)
    assert probe.handshake == "amqp" and probe.command == ()


def test_the_reference_chain_does_not_include_the_broker() -> None:
    """fixtures/k8s stays the chain it was (experiments unchanged in verdict and speed)."""
    chain = [d for p in sorted((ROOT / "fixtures" / "k8s").glob("*.yaml"))
             for d in yaml.safe_load_all(p.read_text()) if d]
    assert "broker" not in {d["metadata"]["name"] for d in chain}
    assert all(port_protocol(p) == "http" for d in chain if d["kind"] == "Service"
               for p in d["spec"]["ports"])


def test_without_the_package_the_start_fails_naming_the_deployment_and_the_package(
        tmp_path: Path) -> None:
    """LocalMesh.start() checks this before any process starts (localmesh.rabbitmq
    .check_objects): the error says which Deployment needs which Debian package and how to
    install it, instead of a pod that never turns Ready."""
    with pytest.raises(ProcessError) as err:
        check_objects(OBJECTS, server=tmp_path / "rabbitmq-server")
    message = str(err.value)
    assert message.startswith("deployment shop/broker: ")
    assert "Debian's rabbitmq-server package" in message
    assert "apt-get install -y rabbitmq-server" in message
    check_objects([o for o in OBJECTS if o["kind"] != "Deployment"],
                  server=tmp_path / "rabbitmq-server")  # no broker pod, nothing needed


@pytest.mark.skipif(not SERVER.exists(), reason="rabbitmq-server is not installed")
def test_the_private_home_links_only_what_rabbit_and_the_enabled_plugins_need(
        tmp_path: Path) -> None:
    """The launcher's RABBITMQ_HOME: the package's scripts, and in ``plugins`` the closure of
    the ``applications`` lists of rabbit (and of the enabled plugins) instead of all 70."""
    home = private_home(tmp_path / "data", SERVER, [])
    apps = {p.name.rsplit("-", 1)[0] for p in (home / "plugins").iterdir()}
    assert {"rabbit", "rabbit_common", "rabbitmq_prelaunch", "ra", "osiris", "ranch"} <= apps
    assert "rabbitmq_management" not in apps and "cowboy" not in apps
    assert (home / "sbin" / "rabbitmq-server").resolve() == SERVER.resolve()
    with_management = private_home(tmp_path / "other", SERVER, ["rabbitmq_management"])
    more = {p.name.rsplit("-", 1)[0] for p in (with_management / "plugins").iterdir()}
    assert {"rabbitmq_management", "rabbitmq_web_dispatch", "cowboy"} <= more
