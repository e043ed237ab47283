"""Every NetworkChaos/PodChaos manifest in the repo is one Chaos Mesh would admit.

The CRD schemas in localmesh/schemas are the API server's part; the webhook rules
(docs/fidelity.md §5.2/§5.3) are Chaos Mesh's part. Suite-owned manifests in
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
CHAOS_KINDS = {"NetworkChaos", "PodChaos"}


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
    """The five experiment faults exist (delay, pod-kill, partition, loss, pod-failure)."""
    names = {p.values[0]["metadata"]["name"] for p in DOCS}
    assert {"leaf-delay-pricing", "pod-kill-inventory", "partition-inventory-pricing",
            "loss-orders-egress", "pod-failure-ratings"} <= names


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
