"""Load Kubernetes manifests from files and folders, the way ``kubectl apply -f`` reads them.

Folders contribute their ``*.yaml``/``*.yml`` files in sorted order; each file may
hold several YAML documents; empty documents are skipped. Kinds the registry does
not know yet are registered (so they are stored and served, never dropped), every
object is validated strictly (fields a CRD schema does not declare are errors, as
with ``kubectl apply``'s default ``--validate=strict``), and any problem becomes a
:class:`ManifestError` naming the file, the document index, the object
(``Kind namespace/name``) and the field.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from localmesh.documents import KubeObject
from localmesh.errors import ApiError, ManifestError
from localmesh.resources import ResourceRegistry
from localmesh.yamldoc import safe_load_all

__all__ = ["DEFAULT_MANIFESTS", "Manifest", "load_manifests"]

# The reference chain, relative to the repository root (`meshchaos up` and `chaos run`
# are run from there).
DEFAULT_MANIFESTS = Path("fixtures/k8s")



@dataclass(frozen=True)
class Manifest:
    """One object and where it came from."""

    obj: KubeObject
    source: Path
    index: int = 0  # the document's position in its file

    @property
    def label(self) -> str:
        return _label(self.obj)


def _label(obj: KubeObject) -> str:
    meta = obj.get("metadata") or {}
    ns = f"{meta['namespace']}/" if meta.get("namespace") else ""
    return f"{obj.get('kind') or '<no kind>'} {ns}{meta.get('name', '<unnamed>')}"


def _error(source: Path, index: int, what: str, message: str, field: str = "") -> ManifestError:
    where = f" at {field}" if field and field not in message else ""
    return ManifestError(f"{source}: document {index} ({what}){where}: {message}")


def _files(paths: Iterable[Path]) -> list[Path]:
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            files += sorted(p for p in path.iterdir()
                            if p.is_file() and p.suffix in (".yaml", ".yml"))
        elif path.is_file():
            files.append(path)
        else:
            raise ManifestError(f"{path}: no such manifest file or directory")
    return files


def _documents(source: Path) -> list[tuple[int, Any]]:
    try:
        text = source.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{source}: cannot be read: {exc}") from exc
    try:
        return [(i, doc) for i, doc in enumerate(safe_load_all(text)) if doc is not None]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1} column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or exc
        raise ManifestError(f"{source}:{where}: invalid YAML: {problem}") from exc


def _check_shape(source: Path, index: int, doc: Any) -> KubeObject:
    if not isinstance(doc, dict):
        raise _error(source, index, type(doc).__name__,
                     "a manifest document must be a mapping")
    for field in ("apiVersion", "kind"):
        if not isinstance(doc.get(field), str) or not doc[field]:
            raise _error(source, index, _label(doc), f"{field}: Required value", field)
    meta = doc.get("metadata")
    if not isinstance(meta, dict) or not meta.get("name"):
        raise _error(source, index, _label(doc), "metadata.name: Required value",
                     "metadata.name")
    return doc


def load_manifests(paths: Iterable[Path], *, registry: ResourceRegistry | None = None,
                   validate: bool = True) -> list[Manifest]:
    """Read, register and validate every object of ``paths`` (files or folders)."""
    registry = registry if registry is not None else ResourceRegistry.with_builtins()
    if validate:
        # Here, not at module level: jsonschema costs a parse-only caller (the mesh daemon
        # launching its fork servers first thing) a tenth of a second.
        from localmesh.validation import validate_object
    manifests: list[Manifest] = []
    seen: dict[tuple[str, str, str, str], Manifest] = {}
    for source in _files(paths):
        for index, doc in _documents(source):
            obj = _check_shape(source, index, doc)
            registry.register_kind(obj["apiVersion"], obj["kind"])
            if validate:
                try:
                    # kubectl apply validates strictly by default: unknown fields are errors.
                    validate_object(obj, strict=True)
                except ApiError as exc:
                    raise _error(source, index, _label(obj), exc.message, exc.field) from exc
            meta = obj["metadata"]
            key = (obj["apiVersion"].rsplit("/", 1)[0] if "/" in obj["apiVersion"] else "",
                   obj["kind"], str(meta.get("namespace") or ""), str(meta["name"]))
            if key in seen:
                first = seen[key]
                raise _error(source, index, _label(obj), f"duplicates document {first.index} "
                             f"of {first.source}", "metadata.name")
            manifest = Manifest(obj, source, index)
            seen[key] = manifest
            manifests.append(manifest)
    return manifests
