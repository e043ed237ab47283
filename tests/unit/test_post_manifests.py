"""The post office's manifests (fixtures/post/k8s) validate as an API server and Istio's CRDs
would have them, read the sidecars as the reference chain's do, and run each app by the same
command locally and on a cluster."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from localmesh.manifests import load_manifests
from localmesh.protocols import port_protocol
from localmesh.validation import validate_object
from tests.unit.test_k8s_manifests import (
    CRD_FILES,
    crd_schema,
    kubernetes_documents,
    load_objects,
    unknown_fields,
    validator,
)

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "fixtures" / "post" / "k8s"
OBJECTS = load_objects(MANIFESTS)
APPS = ("post-api", "mailer", "smtp", "broker")


def one(kind: str, name: str, objects: list[dict[str, Any]] = OBJECTS) -> dict[str, Any]:
    (obj,) = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    return obj


@pytest.mark.parametrize("path", sorted(MANIFESTS.glob("*")), ids=lambda p: p.name)
def test_every_file_is_yaml_of_kubernetes_objects(path: Path) -> None:
    for doc in kubernetes_documents(path):
        assert doc["kind"] == "Namespace" or doc["metadata"].get("namespace") in (
            "post", "istio-system")


def test_the_folder_loads_the_way_meshchaos_up_loads_it() -> None:
    assert [m.obj for m in load_manifests([MANIFESTS])] == OBJECTS
    for obj in OBJECTS:
        validate_object(obj)
        validate_object(obj, strict=True)
    assert sorted(o["metadata"]["name"] for o in OBJECTS if o["kind"] == "Deployment") == sorted(
        APPS)


ISTIO = [o for o in OBJECTS if (o["apiVersion"].split("/")[0], o["kind"]) in CRD_FILES]


@pytest.mark.parametrize("obj", ISTIO, ids=lambda o: f"{o['kind']}/{o['metadata']['name']}")
def test_istio_objects_validate_against_the_crd_schema(obj: dict[str, Any]) -> None:
    group, version = obj["apiVersion"].split("/")
    schema = crd_schema(group, obj["kind"], version)
    validator(group, obj["kind"], version).validate({"spec": obj["spec"]})
    assert list(unknown_fields(obj["spec"], schema["properties"]["spec"], "spec")) == []


def test_mesh_config_and_telemetry_are_the_reference_chains() -> None:
    reference = load_objects(ROOT / "fixtures" / "k8s")
    for kind, name in (("ConfigMap", "istio"), ("Telemetry", "mesh-default")):
        assert one(kind, name) == one(kind, name, reference)


def test_the_broker_is_the_chains_broker_in_namespace_post_with_an_opaque_tcp_port() -> None:
    chain_broker = load_objects(ROOT / "fixtures" / "broker" / "k8s")
    ours, theirs = one("Deployment", "broker"), one("Deployment", "broker", chain_broker)
    assert ours["spec"] == theirs["spec"]
    (port,) = one("Service", "broker")["spec"]["ports"]
    assert port_protocol(port) == "tcp"


@pytest.mark.parametrize("name", ("post-api", "mailer", "smtp"))
def test_each_app_runs_the_same_command_locally_and_on_a_cluster_and_starts_correct(
        name: str) -> None:
    template = one("Deployment", name)["spec"]["template"]
    (container,) = template["spec"]["containers"]
    assert template["metadata"]["annotations"]["meshchaos.io/local-command"] == " ".join(
        container["command"])
    assert (ROOT / container["command"][1]).is_file()
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env.get("POST_DEFECT", "none") == "none"
    assert container["readinessProbe"]["httpGet"]["path"] == "/healthz"


def test_the_mailer_has_no_service_and_the_ingress_routes_to_post_api_without_retries() -> None:
    assert [o for o in OBJECTS if o["kind"] == "Service" and o["metadata"]["name"] == "mailer"] \
        == []
    (route,) = one("VirtualService", "post-ingress")["spec"]["http"]
    assert route["route"][0]["destination"]["host"] == "post-api"
    assert route["retries"] == {"attempts": 0}  # a retried publish is a second letter
