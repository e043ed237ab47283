"""Every NetworkChaos/PodChaos/HTTPChaos manifest in the repo is one Chaos Mesh would admit.

The CRD schemas in localmesh/schemas are the API server's part; the webhook rules
(docs/fidelity.md §5.2/§5.3/§5.5) are Chaos Mesh's part. Suite-owned manifests in
fixtures/chaos also carry the safety label and a duration.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from localmesh.chaos import validate_chaos
from localmesh.validation import validate_object

ROOT = Path(__file__).resolve().parents[2]
SKIP_DIRS = {".venv", ".git", ".meshchaos", "node_modules", "runs", "schemas", "__pycache__"}
CHAOS_KINDS = {"NetworkChaos", "PodChaos", "HTTPChaos"}


def _yaml_files() -> list[Path]:
    found = []
    for path in sorted(ROOT.rglob("*")):
        if path.suffix not in (".yaml", ".yml") or not path.is_file():
            continue
        if SKIP_DIRS & set(path.relative_to(ROOT).parts):
            continue
        found.append(path)
    return found


def _chaos_documents() -> list[Any]:
    docs = []
    for path in _yaml_files():
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict) and doc.get("kind") in CHAOS_KINDS:
                name = f"{path.relative_to(ROOT)}:{doc['metadata']['name']}"
                docs.append(pytest.param(doc, id=name))
    return docs


DOCS = _chaos_documents()


def test_the_suite_ships_its_chaos_manifests() -> None:
    """The experiment faults exist (delay, pod-kill, partition, loss, pod-failure, HTTP abort)."""
    names = {p.values[0]["metadata"]["name"] for p in DOCS}
    assert {"delay-target", "pod-kill-target", "partition-target-peer",
            "loss-target-egress", "pod-failure-side-service", "httpchaos-abort-target"} <= names


@pytest.mark.parametrize("doc", DOCS)
def test_chaos_manifest_validates_against_the_crd_schema_and_the_webhook(doc: Any) -> None:
    """CRD openAPIV3Schema + Chaos Mesh webhook rules (§5.2/§5.3) accept the manifest."""
    validate_object(doc)
    validate_chaos(doc)


@pytest.mark.parametrize("doc", [p for p in DOCS if "fixtures/chaos" in str(p.id)])
def test_suite_manifests_carry_the_safety_label_and_a_duration(doc: Any) -> None:
    """Every chaos object the suite creates is labelled managed-by meshchaos and bounded
    in time, so an abort can find it and a forgotten one ends by itself."""
    assert doc["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "meshchaos"
    assert doc["spec"]["duration"]


REFERENCE_HOPS = ("frontend", "orders", "inventory", "pricing", "ratings")
TEMPLATES = sorted((ROOT / "fixtures" / "chaos").glob("*.yaml"))


@pytest.mark.parametrize("path", TEMPLATES, ids=[p.stem for p in TEMPLATES])
def test_suite_templates_are_named_by_role_and_select_the_reference_chain_by_default(
        path: Path) -> None:
    """A template says what it does to whom in role terms (the object it becomes is
    ``<name>-<run id>``, so the name is the file's); apply_chaos re-aims it by Service, and
    its default selector stays the reference chain's, so the file alone is a whole object
    for fixtures/k8s (Chaos Mesh selector: namespaces + labelSelectors, §5.1)."""
    doc = yaml.safe_load(path.read_text())
    assert doc["metadata"]["name"] == path.stem
    assert [hop for hop in REFERENCE_HOPS if hop in path.stem] == []
    target = doc["spec"].get("target")  # HTTPChaos's target is Request|Response, no selector
    selectors = [doc["spec"]["selector"], *([target["selector"]]
                                            if isinstance(target, dict) else [])]
    for selector in selectors:
        assert selector["namespaces"] == ["shop"]
        assert selector["labelSelectors"]["app"] in REFERENCE_HOPS
