"""load_manifests reads files and folders as ``kubectl apply -f`` does, and names what is wrong."""

from __future__ import annotations

from pathlib import Path

import pytest

from localmesh.errors import ManifestError
from localmesh.manifests import load_manifests
from localmesh.resources import ResourceRegistry

SERVICE = """\
apiVersion: v1
kind: Service
metadata: {name: orders, namespace: shop}
spec:
  ports: [{port: 8080, name: http}]
"""
VS_ZERO = """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: orders, namespace: shop}
spec:
  hosts: [orders]
  http:
  - route: [{destination: {host: orders}}]
    timeout: 0s
"""


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_folder_files_are_read_sorted_with_every_document(tmp_path: Path) -> None:
    """*.yaml and *.yml in name order, multi-document, empty documents skipped, others ignored."""
    _write(tmp_path / "b.yml", SERVICE)
    _write(tmp_path / "a.yaml", "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n"
                                "---\n---\n" + "apiVersion: v1\nkind: ConfigMap\n"
                                "metadata: {name: istio, namespace: shop}\n")
    _write(tmp_path / "notes.txt", "not a manifest")
    manifests = load_manifests([tmp_path])
    assert [(m.source.name, m.index, m.label) for m in manifests] == [
        ("a.yaml", 0, "Namespace shop"), ("a.yaml", 2, "ConfigMap shop/istio"),
        ("b.yml", 0, "Service shop/orders")]


def test_unknown_kinds_are_registered_and_kept(tmp_path: Path) -> None:
    """A kind the registry does not know is registered (never dropped)."""
    registry = ResourceRegistry.with_builtins()
    path = _write(tmp_path / "w.yaml", "apiVersion: example.com/v1\nkind: Widget\n"
                                       "metadata: {name: w, namespace: shop}\n")
    [manifest] = load_manifests([path], registry=registry)
    assert manifest.obj["kind"] == "Widget"
    rtype = registry.by_kind("example.com", "Widget")
    assert rtype is not None and rtype.plural == "widgets"


def test_invalid_object_names_file_document_object_and_field(tmp_path: Path) -> None:
    """A schema failure reports the file, document index, Kind ns/name and the field."""
    path = _write(tmp_path / "routes.yaml", SERVICE + "---\n" + VS_ZERO)
    with pytest.raises(ManifestError) as caught:
        load_manifests([path])
    message = str(caught.value)
    assert str(path) in message
    assert "document 1" in message
    assert "VirtualService shop/orders" in message
    assert "spec.http[0].timeout '0s' must be at least 1ms" in message


def test_broken_yaml_names_file_and_line(tmp_path: Path) -> None:
    """YAML syntax errors carry the line of the problem."""
    path = _write(tmp_path / "bad.yaml", SERVICE + "---\nkind: {a: b\nmetadata: x: y\n")
    with pytest.raises(ManifestError, match=r"bad\.yaml: line 8 column 9: invalid YAML"):
        load_manifests([path])


def test_document_without_kind_is_refused(tmp_path: Path) -> None:
    """apiVersion and kind are required, as kubectl requires them."""
    path = _write(tmp_path / "x.yaml", "apiVersion: v1\nmetadata: {name: x}\n")
    with pytest.raises(ManifestError, match=r"document 0 \(<no kind> x\): kind: Required value"):
        load_manifests([path])


def test_document_that_is_not_a_mapping_is_refused(tmp_path: Path) -> None:
    """A list or scalar at the top of a document is no object."""
    path = _write(tmp_path / "x.yaml", "- a\n- b\n")
    with pytest.raises(ManifestError, match="must be a mapping"):
        load_manifests([path])


def test_the_same_object_twice_is_refused(tmp_path: Path) -> None:
    """Two documents naming the same object would silently overwrite each other."""
    _write(tmp_path / "a.yaml", SERVICE)
    _write(tmp_path / "b.yaml", SERVICE)
    with pytest.raises(ManifestError, match=r"b\.yaml: document 0 .*duplicates document 0"):
        load_manifests([tmp_path])


def test_missing_path_is_refused(tmp_path: Path) -> None:
    """A path that does not exist is named in the error."""
    with pytest.raises(ManifestError, match="nowhere"):
        load_manifests([tmp_path / "nowhere"])


def test_project_chaos_and_k8s_fixtures_pass_the_api_servers_checks() -> None:
    """The shipped manifests (fixtures/chaos, fixtures/k8s) load and validate."""
    root = Path(__file__).resolve().parents[2] / "fixtures"
    folders = [f for f in (root / "chaos", root / "k8s") if any(f.glob("*.y*ml"))]
    assert folders, "fixtures/chaos holds the Chaos Mesh manifests experiments use"
    manifests = load_manifests(folders)
    kinds = {m.obj["kind"] for m in manifests}
    assert {"NetworkChaos", "PodChaos"} <= kinds


def test_a_misspelt_field_is_refused_like_kubectl_apply(tmp_path: Path) -> None:
    """kubectl apply validates strictly by default: an undeclared field is an error."""
    path = _write(tmp_path / "vs.yaml", VS_ZERO.replace("timeout: 0s", "timout: 1s"))
    with pytest.raises(ManifestError, match=r'vs\.yaml: document 0 \(VirtualService shop/orders\)'
                       r': .*unknown field "spec\.http\[0\]\.timout"'):
        load_manifests([path])
