"""/openapi/v2 and /openapi/v3 as kubectl reads them (docs/fidelity.md §8.1).

cli-runtime's ``supportsQueryParamV3``: kubectl leaves validation to the server when the
group version's v3 document has a PATCH operation whose ``x-kubernetes-group-version-kind``
is the object's kind and which lists the ``fieldValidation`` query parameter. Kubernetes
api-concepts, "Field validation": ``Strict`` "will error if any unknown fields are
detected" ("strict decoding error: unknown field").
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from localmesh.apiserver import openapi
from localmesh.apiserver.openapi import unknown_builtin_fields
from localmesh.yamldoc import safe_load_all
from tests.apiserver_helpers import ServedApi, deployment, serve_shop


@pytest.fixture
def api(tmp_path: Path) -> Iterator[ServedApi]:
    with serve_shop(tmp_path) as served:
        yield served


def v3(api: ServedApi, group_version: str) -> dict[str, Any]:
    root = requests.get(f"{api.url}/openapi/v3", timeout=30).json()
    url = root["paths"][group_version]["serverRelativeURL"]
    response = requests.get(f"{api.url}{url}", headers={"Accept": "application/json"},
                            timeout=30)
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "public, immutable"  # a hash URL never changes
    body: dict[str, Any] = response.json()
    return body


def schema(doc: dict[str, Any], name: str) -> dict[str, Any]:
    found: dict[str, Any] = doc["components"]["schemas"][name]
    return found


def patch_operation(doc: dict[str, Any], group: str, kind: str) -> dict[str, Any]:
    for item in doc["paths"].values():
        op = item.get("patch")
        if op and op["x-kubernetes-group-version-kind"]["kind"] == kind \
                and op["x-kubernetes-group-version-kind"]["group"] == group:
            return dict(op)
    raise AssertionError(f"no PATCH operation for {group}/{kind}")


def test_the_v3_root_names_every_served_group_version(api: ServedApi) -> None:
    root = requests.get(f"{api.url}/openapi/v3", timeout=30).json()
    assert {"api/v1", "apis/apps/v1", "apis/chaos-mesh.org/v1alpha1",
            "apis/networking.istio.io/v1", "apis/networking.istio.io/v1alpha3"} <= set(
        root["paths"])
    assert root["paths"]["api/v1"]["serverRelativeURL"].startswith("/openapi/v3/api/v1?hash=")


def test_patch_operations_offer_field_validation_so_kubectl_validates_server_side(
        api: ServedApi) -> None:
    for group_version, group, kind in (("api/v1", "", "Pod"),
                                       ("apis/apps/v1", "apps", "Deployment"),
                                       ("apis/chaos-mesh.org/v1alpha1", "chaos-mesh.org",
                                        "NetworkChaos")):
        op = patch_operation(v3(api, group_version), group, kind)
        assert {"name": "fieldValidation", "in": "query"}.items() <= op["parameters"][0].items()


def test_crd_schemas_are_published_as_kube_apiserver_publishes_them(api: ServedApi) -> None:
    """Named by reversed group, metadata a reference to ObjectMeta, the CRD's own spec."""
    doc = v3(api, "apis/chaos-mesh.org/v1alpha1")
    chaos = schema(doc, "org.chaos-mesh.v1alpha1.NetworkChaos")
    assert chaos["x-kubernetes-group-version-kind"] == [
        {"group": "chaos-mesh.org", "kind": "NetworkChaos", "version": "v1alpha1"}]
    assert chaos["properties"]["metadata"]["allOf"] == [
        {"$ref": "#/components/schemas/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"}]
    assert set(chaos["properties"]["spec"]["required"]) >= {"action", "mode", "selector"}
    assert "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta" in doc["components"]["schemas"]


def test_core_schemas_come_from_the_kubernetes_client_models(api: ServedApi) -> None:
    """JSON names, required fields, IntOrString and descriptions of the upstream models."""
    doc = v3(api, "api/v1")
    container = schema(doc, "io.k8s.api.core.v1.Container")
    assert container["required"] == ["name"]
    assert "imagePullPolicy" in container["properties"]
    port = schema(doc, "io.k8s.api.core.v1.ServicePort")
    assert port["properties"]["targetPort"]["x-kubernetes-int-or-string"] is True
    assert schema(doc, "io.k8s.api.core.v1.ContainerPort")["required"] == ["containerPort"]
    pod = schema(doc, "io.k8s.api.core.v1.Pod")
    assert pod["x-kubernetes-group-version-kind"] == [{"group": "", "kind": "Pod",
                                                       "version": "v1"}]
    assert pod["description"].startswith("Pod is a collection of containers")


def test_v2_is_swagger_json_and_an_unserved_type_is_406(api: ServedApi) -> None:
    swagger = requests.get(f"{api.url}/openapi/v2", headers={"Accept": "application/json"},
                           timeout=30).json()
    assert swagger["swagger"] == "2.0"
    deployment_schema = swagger["definitions"]["io.k8s.api.apps.v1.DeploymentSpec"]
    assert deployment_schema["properties"]["selector"] == {
        "$ref": "#/definitions/io.k8s.apimachinery.pkg.apis.meta.v1.LabelSelector"}
    xml = requests.get(f"{api.url}/openapi/v2", timeout=30, headers={"Accept": "text/xml"})
    assert (xml.status_code, xml.json()["reason"]) == (406, "NotAcceptable")


def test_an_unknown_group_version_is_404(api: ServedApi) -> None:
    response = requests.get(f"{api.url}/openapi/v3/apis/example.com/v1", timeout=30)
    assert (response.status_code, response.json()["reason"]) == (404, "NotFound")


def test_strict_field_validation_names_an_unknown_field_of_a_core_kind(
        api: ServedApi) -> None:
    """fieldValidation=Strict (what kubectl sends) refuses a misspelt Deployment field by
    its path; without it the object is accepted as before."""
    body = deployment("orders")
    body["spec"]["template"]["spec"]["containers"][0]["imagePullPolcy"] = "Always"
    url = f"{api.url}/apis/apps/v1/namespaces/shop/deployments"
    refused = requests.post(url, json=body, params={"fieldValidation": "Strict"}, timeout=30)
    assert refused.status_code == 400
    assert refused.json()["message"] == (
        'Deployment in version "v1" cannot be handled as a Deployment: strict decoding '
        'error: unknown field "spec.template.spec.containers[0].imagePullPolcy"')
    assert requests.post(url, json=body, timeout=30).status_code == 201


def test_every_shipped_core_manifest_passes_strict_validation() -> None:
    """kubectl apply -f fixtures/... sends fieldValidation=Strict: no shipped Deployment,
    Service, ConfigMap or Namespace may carry a field its schema does not declare."""
    root = Path(__file__).resolve().parents[2]
    checked = 0
    for path in sorted(root.glob("fixtures/**/*.yaml")):
        for doc in safe_load_all(path.read_text()):
            if isinstance(doc, dict) and doc.get("apiVersion") in ("v1", "apps/v1"):
                assert unknown_builtin_fields(doc) == [], f"{path}: {doc['kind']}"
                checked += 1
    assert checked >= 20  # the reference chain's and the store chain's manifests


def test_strict_patches_are_checked_by_the_fields_they_write(api: ServedApi) -> None:
    """kubectl apply of an existing object is a PATCH with fieldValidation=Strict: a
    misspelt field in it is refused; strategic-merge directives are not fields."""
    url = f"{api.url}/apis/apps/v1/namespaces/shop/deployments"
    assert requests.post(url, json=deployment("orders"), timeout=30).status_code == 201
    strategic = {"Content-Type": "application/strategic-merge-patch+json"}
    good = {"spec": {"replicas": 2, "template": {"spec": {
        "$setElementOrder/containers": [{"name": "app"}],
        "containers": [{"name": "app", "image": "local/app:2"}]}}}}
    assert requests.patch(f"{url}/orders", json=good, headers=strategic, timeout=30,
                          params={"fieldValidation": "Strict"}).status_code == 200
    typo = {"spec": {"replcas": 3}}
    refused = requests.patch(f"{url}/orders", json=typo, headers=strategic, timeout=30,
                             params={"fieldValidation": "Strict"})
    assert refused.status_code == 400
    assert 'unknown field "spec.replcas"' in refused.json()["message"]
    chaos = {"apiVersion": "chaos-mesh.org/v1alpha1", "kind": "NetworkChaos",
             "metadata": {"name": "slow", "namespace": "shop"},
             "spec": {"action": "delay", "mode": "all", "selector": {"namespaces": ["shop"]},
                      "delay": {"latency": "10ms"}}}
    api.store.create(chaos)
    merge = {"Content-Type": "application/merge-patch+json"}
    refused = requests.patch(
        f"{api.url}/apis/chaos-mesh.org/v1alpha1/namespaces/shop/networkchaos/slow",
        json={"metadata": {"labels": {"a": "b"}}, "spec": {"delay": {"latncy": "5ms"}}},
        headers=merge, params={"fieldValidation": "Strict"}, timeout=30)
    assert refused.status_code == 400
    assert 'unknown field "spec.delay.latncy"' in refused.json()["message"]


def test_the_cached_schemas_are_the_walked_ones(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The first mesh walks the client models and keeps the result in the user's cache;
    the next one reads exactly that back."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    build = openapi._builtin_components.__wrapped__
    walked = build()
    [cached] = (tmp_path / "meshchaos" / "openapi").iterdir()
    assert build() == walked == openapi._walk_models()
    assert cached.name.startswith("core-")


def _fields(data: bytes) -> list[tuple[int, Any]]:
    """Protocol buffer wire format, read generically: (field number, value) pairs; a
    length-delimited value stays bytes (a string or a nested message)."""
    found: list[tuple[int, Any]] = []
    at = 0

    def varint() -> int:
        nonlocal at
        shift = result = 0
        while True:
            byte = data[at]
            at += 1
            result |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return result
    while at < len(data):
        key = varint()
        number, wire = key >> 3, key & 7
        if wire == 0:
            found.append((number, varint()))
        elif wire == 2:
            size = varint()
            found.append((number, data[at:at + size]))
            at += size
        elif wire == 1:
            found.append((number, data[at:at + 8]))
            at += 8
        else:
            raise AssertionError(f"unexpected wire type {wire}")
    return found


def _named(message: bytes) -> tuple[str, bytes]:
    """A gnostic Named* message: name (1) and value (2)."""
    parts = dict(_fields(message))
    return parts[1].decode(), parts[2]


def test_v2_protobuf_is_gnostics_document(api: ServedApi) -> None:
    """openapi_v2.Document (gnostic-models OpenAPIv2.proto): swagger = 1, definitions = 9
    (NamedSchema: name 1, Schema 2; Schema.type = 22, .properties = 25, vendor extensions
    = 31 as NamedAny with YAML), paths = 8 with the PATCH operation (8) carrying the
    fieldValidation query parameter kubectl ≤ 1.28 looks for. Served with kube-openapi's
    reply type, which Go's mime parser accepts ("@" is not allowed there)."""
    response = requests.get(f"{api.url}/openapi/v2", timeout=30, headers={
        "Accept": "application/com.github.proto-openapi.spec.v2@v1.0+protobuf"})
    assert response.headers["Content-Type"] == (
        "application/com.github.proto-openapi.spec.v2.v1.0+protobuf")
    document = _fields(response.content)
    assert (1, b"2.0") in document
    [definitions] = [v for n, v in document if n == 9]
    schemas = dict(_named(v) for _, v in _fields(definitions))
    pod = dict((n, v) for n, v in _fields(schemas["io.k8s.api.core.v1.Pod"]))
    assert dict(_fields(pod[22])) == {1: b"object"}
    assert {_named(v)[0] for _, v in _fields(pod[25])} >= {"apiVersion", "spec", "status"}
    name, extension = _named(pod[31])
    assert name == "x-kubernetes-group-version-kind"
    assert yaml.safe_load(dict(_fields(extension))[2]) == [
        {"group": "", "kind": "Pod", "version": "v1"}]
    [paths] = [v for n, v in document if n == 8]
    items = dict(_named(v) for n, v in _fields(paths) if n == 2)
    patch = dict(_fields(items["/api/v1/namespaces/{namespace}/pods/{name}"]))[8]
    [parameter] = [v for n, v in _fields(patch) if n == 8]
    query = dict(_fields(dict(_fields(dict(_fields(dict(_fields(parameter))[1]))[2]))[3]))
    assert (query[2], query[4]) == (b"query", b"fieldValidation")
