"""Every VirtualService a route-fault experiment writes is one Istio's CRD schema admits.

A route fault is not a manifest of its own: the action edits the application's
VirtualService (docs/fidelity.md §2.4). So what must validate is the object as the action
leaves it, for each experiment that applies one and on each chain it runs on by ``--var``
(the reference chain's defaults, the store chain's targets). The action runs for real,
through the official client, against the local API subset on loopback; the stored object
is then checked against the served version's ``openAPIV3Schema`` of
``networking.istio.io_virtualservices.yaml`` in /work/shared/schemas (the API server's own
copy, localmesh/schemas, where /work/shared is absent), with no field a structural schema
would prune.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from localmesh.validation import validate_object
from probes import routefaults
from tests.apiserver_helpers import namespace
from tests.unit.test_actions_chaos import running_cluster
from tests.unit.test_k8s_manifests import unknown_fields

ROOT = Path(__file__).resolve().parents[2]
SHARED = Path("/work/shared/schemas")
SCHEMAS = SHARED if SHARED.is_dir() else ROOT / "localmesh" / "schemas"
ISTIO = "networking.istio.io"
# Each chain: its manifests, its namespace and the service keys the experiments take there
# (the store's are those of tests/integration/test_experiments_store.py).
CHAINS = {
    "reference": ("fixtures/k8s", "shop", {}),
    "store": ("fixtures/store/k8s", "store",
              {"fault-delay-beyond-timeout": {"target_service": "warehouse",
                                              "target_caller": "stock"},
               "fault-abort-side-hop": {"side_service": "reviews"}}),
}


def _route_fault_actions() -> list[Any]:
    cases = []
    for path in sorted((ROOT / "experiments").glob("*.json")):
        doc = json.loads(path.read_text())
        defaults = {k: v.get("default", "") for k, v in doc["configuration"].items()}
        for action in doc["method"]:
            if action["provider"].get("func") != "apply_route_fault":
                continue
            for chain, (manifests, ns, targets) in CHAINS.items():
                keys = {**defaults, **targets.get(path.stem, {})}
                args = {k: _substitute(v, keys) for k, v in action["provider"]["arguments"].items()}
                cases.append(pytest.param(manifests, ns, args, id=f"{path.stem}-{chain}"))
    return cases


def _substitute(value: Any, keys: dict[str, str]) -> Any:
    """chaoslib's ``${key}`` substitution, for the keys the experiments use."""
    if isinstance(value, str) and value.startswith("${") and value.endswith("}"):
        return keys[value[2:-1]]
    return value


def _virtual_service(manifests: str, name: str) -> dict[str, Any]:
    for path in sorted((ROOT / manifests).glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict) and doc.get("kind") == "VirtualService" and \
                    doc["metadata"]["name"] == name:
                return dict(doc)
    raise AssertionError(f"no VirtualService {name} in {manifests}")


def _schema() -> dict[str, Any]:
    crd = yaml.safe_load((SCHEMAS / "networking.istio.io_virtualservices.yaml").read_text())
    (served,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1" and v["served"]]
    schema: dict[str, Any] = served["schema"]["openAPIV3Schema"]
    return schema


CASES = _route_fault_actions()


def test_both_route_fault_experiments_are_covered_on_both_chains() -> None:
    assert {p.id for p in CASES} == {"fault-delay-beyond-timeout-reference",
                                     "fault-delay-beyond-timeout-store",
                                     "fault-abort-side-hop-reference",
                                     "fault-abort-side-hop-store"}


@pytest.mark.parametrize(("manifests", "ns", "args"), CASES)
def test_the_edited_virtual_service_validates_against_istios_crd_schema(
        manifests: str, ns: str, args: dict[str, Any], tmp_path: Path) -> None:
    name = args["virtual_service"]
    with running_cluster(tmp_path) as cluster:
        if ns != "shop":
            cluster.store.create(namespace(ns))
        cluster.store.create(_virtual_service(manifests, name))
        routefaults.apply_route_fault(**{**args, "settle_s": 0},
                                      configuration=cluster.config(namespace=ns))
        edited = cluster.store.get(ISTIO, "virtualservices", ns, name)
    fault = edited["spec"]["http"][0]["fault"]
    assert fault and set(fault) <= {"delay", "abort"}
    schema = _schema()
    jsonschema.validators.validator_for(schema)(schema).validate({"spec": edited["spec"]})
    assert list(unknown_fields(edited["spec"], schema["properties"]["spec"], "spec")) == []
    validate_object(edited)  # the CEL duration rule and Istio's webhook bounds (§2.4)
