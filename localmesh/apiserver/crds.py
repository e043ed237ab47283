"""The CustomResourceDefinitions the API serves: their schemas and printer columns.

Read from the CRD files shipped in ``localmesh/schemas`` (copied verbatim from Chaos
Mesh and Istio, see its SOURCES.md), the way kube-apiserver reads them from the CRD
objects: each served version's ``openAPIV3Schema`` feeds ``/openapi/v2`` and
``/openapi/v3``, its ``additionalPrinterColumns`` the Table output of ``kubectl get``.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from importlib import resources
from typing import Any

from localmesh.jsoncache import cache_file, cached_json
from localmesh.yamldoc import safe_load

__all__ = ["CrdVersion", "crd_version"]


@dataclass(frozen=True)
class CrdVersion:
    """One served version of a CRD."""

    group: str
    kind: str
    version: str
    schema: dict[str, Any]
    printer_columns: tuple[dict[str, Any], ...]


@functools.cache
def _all_versions() -> dict[tuple[str, str, str], CrdVersion]:
    """Every (group, kind, version) the CRD files define.

    Parsed once, on the first OpenAPI or Table request (the 7,000-line DestinationRule CRD
    is most of the cost), not at import.
    """
    found: dict[tuple[str, str, str], CrdVersion] = {}
    folder = resources.files("localmesh.schemas")
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if not entry.name.endswith(".yaml"):
            continue
        crd = _parsed(entry.read_bytes())
        if not isinstance(crd, dict) or crd.get("kind") != "CustomResourceDefinition":
            continue
        spec = crd["spec"]
        group, kind = spec["group"], spec["names"]["kind"]
        for version in spec.get("versions") or []:
            if not version.get("served", True):
                continue
            found[(group, kind, version["name"])] = CrdVersion(
                group, kind, version["name"],
                (version.get("schema") or {}).get("openAPIV3Schema") or {"type": "object"},
                tuple(version.get("additionalPrinterColumns") or ()))
    return found


def _parsed(data: bytes) -> Any:
    """A CRD file's document; its JSON copy in the user's cache (named by content) when
    there is one, as localmesh.validation keeps its schemas: libyaml takes 0.1 s for these."""
    name = f"{hashlib.sha256(data).hexdigest()[:24]}.json"
    return cached_json(cache_file("crds", name), lambda: safe_load(data))


def crd_version(group: str, kind: str, version: str) -> CrdVersion | None:
    """The CRD definition of one kind at one version, or None when no CRD file has it."""
    return _all_versions().get((group, kind, version))
