"""``meshchaos.io/local-cwd`` is stored as the file has it and resolved where the pod starts.

The annotation is relative to the folder of the manifest file (docs/architecture.md "Pods as
processes"). The mesh once stored it rewritten to an absolute path, so the stored pod
template differed from the file's and ``kubectl apply -f`` of the very files the mesh was
started from rolled every Deployment (a changed template is a new ReplicaSet, Kubernetes
"Deployments": "a Deployment's rollout is triggered if and only if the Deployment's Pod
template is changed"). Now the mesh keeps it and notes the folder beside it, in
``meshchaos.io/local-cwd-base``, which an apply of the file leaves alone (a key the file does
not name); the launch joins the two.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from localmesh.manifests import load_manifests
from localmesh.mesh import prepare_objects
from localmesh.supervisor.podspec import PodPorts, app_launch

ROOT = Path(__file__).resolve().parents[2]
PORTS = PodPorts(app=4001, inbound=4002, outbound=4003, admin=4004)


def _template(obj: dict[str, Any]) -> dict[str, str]:
    annotations: dict[str, str] = obj["spec"]["template"]["metadata"]["annotations"]
    return annotations


def _pod(annotations: dict[str, str]) -> dict[str, Any]:
    return {"metadata": {"name": "orders-0123456789-abcde", "namespace": "shop",
                         "labels": {"app": "orders"},
                         "annotations": {"meshchaos.io/local-command": "python -m x",
                                         **annotations}},
            "spec": {"containers": [{"name": "orders", "ports": [{"containerPort": 8080}]}]}}


def test_the_reference_chain_keeps_its_relative_cwd_and_gains_its_folder() -> None:
    manifests = load_manifests([ROOT / "fixtures" / "k8s"], validate=False)
    deployments = [o for o in prepare_objects(manifests, {}) if o.get("kind") == "Deployment"]
    assert len(deployments) == 5
    for deployment in deployments:
        annotations = _template(deployment)
        assert annotations["meshchaos.io/local-cwd"] == "../.."  # as the file has it
        assert annotations["meshchaos.io/local-cwd-base"] == str(ROOT / "fixtures" / "k8s")


def test_the_files_template_annotations_are_a_subset_of_the_stored_ones() -> None:
    """What `kubectl apply -f` of the same file would send changes nothing stored."""
    for manifest in load_manifests([ROOT / "fixtures" / "k8s"], validate=False):
        if manifest.obj.get("kind") != "Deployment":
            continue
        (stored,) = prepare_objects([manifest], {})
        assert _template(manifest.obj).items() <= _template(stored).items()


def test_a_relative_cwd_starts_at_the_manifests_folder() -> None:
    launch = app_launch(_pod({"meshchaos.io/local-cwd": "../..",
                              "meshchaos.io/local-cwd-base": str(ROOT / "fixtures" / "k8s")}),
                        PORTS, otlp_endpoint="x", sidecar=True, base_dir=Path("/elsewhere"))
    assert launch is not None and launch.cwd == ROOT


def test_without_a_base_it_starts_at_the_meshs_directory() -> None:
    """A Deployment created through the API (no file the mesh read) has no base."""
    launch = app_launch(_pod({"meshchaos.io/local-cwd": "svc"}), PORTS, otlp_endpoint="x",
                        sidecar=True, base_dir=Path("/srv"))
    assert launch is not None and launch.cwd == Path("/srv/svc")


def test_an_absolute_cwd_stands_alone(tmp_path: Path) -> None:
    launch = app_launch(_pod({"meshchaos.io/local-cwd": str(tmp_path),
                              "meshchaos.io/local-cwd-base": "/somewhere/else"}),
                        PORTS, otlp_endpoint="x", sidecar=True, base_dir=Path("/srv"))
    assert launch is not None and launch.cwd == tmp_path
    manifests = load_manifests([ROOT / "fixtures" / "k8s" / "10-frontend.yaml"], validate=False)
    deployment = next(m for m in manifests if m.obj.get("kind") == "Deployment")
    _template(deployment.obj)["meshchaos.io/local-cwd"] = str(tmp_path)
    (stored,) = prepare_objects([deployment], {})
    assert "meshchaos.io/local-cwd-base" not in _template(stored)  # nothing to resolve
