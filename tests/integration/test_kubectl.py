"""The real ``kubectl`` against a local mesh, with its defaults (docs/fidelity.md §8).

No ``--validate=false`` and no client-side columns: kubectl reads ``/openapi/v3`` and
validates server-side (§8.1), prints the server's Table columns (§8.2) and its
``delete`` waits until the object is gone (§8.3). The Chaos Mesh manifest is the suite's
own NetworkChaos delay, found by its content in fixtures/chaos (file names change). The
API wants the kubeconfig's bearer token over TLS (§8.4), which kubectl reads from it.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import stat
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from localmesh.kubeconfig import auth_headers, ssl_context
from localmesh.mesh import MeshThread
from localmesh.yamldoc import safe_load_all
from tests.integration.conftest import ROOT, running_mesh, stop_and_reap, write_echo_manifests

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(shutil.which("kubectl") is None, reason="needs kubectl")]

NS = "shop"
# A second workload labelled app=pricing, which the suite's delay manifest selects.
PRICING = f"""
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: pricing
  namespace: shop
spec:
  replicas: 1
  selector:
    matchLabels: {{app: pricing}}
  template:
    metadata:
      labels: {{app: pricing}}
      annotations:
        meshchaos.io/local-command: python {ROOT / "tests" / "data" / "echo_app.py"}
    spec:
      terminationGracePeriodSeconds: 2
      containers:
      - name: pricing
        image: example/echo:1
        ports: [{{containerPort: 8080}}]
---
apiVersion: v1
kind: Service
metadata:
  name: pricing
  namespace: shop
spec:
  selector: {{app: pricing}}
  ports: [{{name: http, port: 8080, targetPort: 8080}}]
"""


def delay_manifest() -> tuple[Path, str]:
    """The NetworkChaos delay manifest of fixtures/chaos and its object's name."""
    for path in sorted((ROOT / "fixtures" / "chaos").glob("*.yaml")):
        for doc in safe_load_all(path.read_text()):
            if (isinstance(doc, dict) and doc.get("kind") == "NetworkChaos"
                    and (doc.get("spec") or {}).get("action") == "delay"
                    and "${" not in json.dumps(doc)):  # applied as it is, no placeholders
                return path, str(doc["metadata"]["name"])
    raise AssertionError("fixtures/chaos has no NetworkChaos delay manifest")


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MeshThread]:
    root = tmp_path_factory.mktemp("kubectl-mesh")
    manifests = write_echo_manifests(root / "manifests", extra=PRICING)
    with running_mesh([manifests], root / "state") as thread:
        yield thread


@pytest.fixture(scope="module")
def kubeconfig(mesh: MeshThread) -> Path:
    path = mesh.mesh.state.path / "kubeconfig"
    assert path.is_file()
    return path


def kubectl(kubeconfig: Path, *args: str, timeout: float = 30,
            check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KUBECONFIG": str(kubeconfig),
           # A cache of its own: another mesh's documents must not be reused.
           "KUBECACHEDIR": str(kubeconfig.parent / "kubectl-cache")}
    done = subprocess.run(["kubectl", "-n", NS, *args], env=env, capture_output=True,
                          text=True, timeout=timeout, check=False)
    if check:
        assert done.returncode == 0, f"kubectl {' '.join(args)}: {done.stderr}{done.stdout}"
    return done


def table(output: str) -> tuple[list[str], list[list[str]]]:
    """kubectl's printed table: the header's column names and the rows' cells. A column
    starts where the header has a word after two or more spaces (kubectl pads with three;
    names such as LAST SEEN hold one)."""
    lines = [line for line in output.splitlines() if line.strip()]
    head = lines[0]
    starts = [0] + [i for i in range(2, len(head)) if head[i] != " " and head[i - 2:i] == "  "]

    def cut(line: str) -> list[str]:
        bounds = [*starts, max(len(line), len(head)) + 1]
        return [line[a:b].strip() for a, b in itertools.pairwise(bounds)]
    return cut(head), [cut(line) for line in lines[1:]]


def pod_names(kubeconfig: Path, app: str) -> list[str]:
    out = kubectl(kubeconfig, "get", "pods", "-l", f"app={app}", "-o", "json").stdout
    return [p["metadata"]["name"] for p in json.loads(out)["items"]
            if not p["metadata"].get("deletionTimestamp")]


def test_apply_with_default_validation_creates_the_delay_chaos(kubeconfig: Path) -> None:
    """`kubectl apply -f fixtures/chaos/<delay>.yaml` with default validation works; the
    server validates strictly (a misspelt field is refused by name, not ignored)."""
    path, name = delay_manifest()
    done = kubectl(kubeconfig, "apply", "-f", str(path))
    assert f"networkchaos.chaos-mesh.org/{name} created" in done.stdout
    assert "openapi" not in done.stderr
    kubectl(kubeconfig, "wait", f"networkchaos/{name}", "--for=condition=AllInjected",
            "--timeout=20s")
    misspelt = path.read_text().replace(f"name: {name}", f"name: {name}-typo").replace(
        "  action: delay", "  action: delay\n  actoin: delay")
    refused = subprocess.run(["kubectl", "apply", "-f", "-"], input=misspelt, text=True,
                             capture_output=True, timeout=30, check=False,
                             env={**os.environ, "KUBECONFIG": str(kubeconfig)})
    assert refused.returncode != 0
    assert 'strict decoding error: unknown field "spec.actoin"' in refused.stderr


def test_get_prints_the_columns_a_cluster_prints(kubeconfig: Path) -> None:
    """Server-side Tables: pods READY/STATUS/RESTARTS, the workloads' and services'
    columns, and the NetworkChaos printer columns of its CRD (action, duration)."""
    header, rows = table(kubectl(kubeconfig, "get", "pods").stdout)
    assert header == ["NAME", "READY", "STATUS", "RESTARTS", "AGE"]
    assert {tuple(r[1:4]) for r in rows} == {("2/2", "Running", "0")}
    wide, _ = table(kubectl(kubeconfig, "get", "pods", "-o", "wide").stdout)
    assert wide[:7] == ["NAME", "READY", "STATUS", "RESTARTS", "AGE", "IP", "NODE"]
    header, rows = table(kubectl(kubeconfig, "get", "deployments").stdout)
    assert header == ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"]
    assert ["echo", "1/1", "1", "1"] in [r[:4] for r in rows]
    header, _ = table(kubectl(kubeconfig, "get", "replicasets").stdout)
    assert header == ["NAME", "DESIRED", "CURRENT", "READY", "AGE"]
    header, rows = table(kubectl(kubeconfig, "get", "services").stdout)
    assert header == ["NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "AGE"]
    assert rows[0][:2] == ["echo", "ClusterIP"] and rows[0][4] == "8080/TCP"
    _, name = delay_manifest()
    header, rows = table(kubectl(kubeconfig, "get", "networkchaos").stdout)
    assert header == ["NAME", "ACTION", "DURATION"]
    assert [name, "delay", "120s"] in rows
    header, _ = table(kubectl(kubeconfig, "get", "events").stdout)
    assert header == ["LAST SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"]


def test_describe_and_logs(mesh: MeshThread, kubeconfig: Path) -> None:
    """describe renders the pod and the chaos object; logs reads the app's container."""
    [pod] = pod_names(kubeconfig, "echo")
    described = kubectl(kubeconfig, "describe", "pod", pod).stdout
    assert f"Name:         {pod}" in described and "Running" in described
    _, name = delay_manifest()
    assert "Experiment has started" in kubectl(kubeconfig, "describe", "networkchaos",
                                               name).stdout
    app_port = mesh.mesh.store.get("", "pods", NS, pod)["metadata"]["annotations"][
        "meshchaos.io/app-port"]
    with urllib.request.urlopen(f"http://127.0.0.1:{app_port}/from-kubectl-test",
                                timeout=5) as response:
        assert response.status == 200
    deadline = time.monotonic() + 5
    while "handled GET /from-kubectl-test" not in (
            logs := kubectl(kubeconfig, "logs", pod, "-c", "echo").stdout):
        assert time.monotonic() < deadline, f"the request never reached the log: {logs}"
        time.sleep(0.05)


def test_explain_reads_the_published_schemas(kubeconfig: Path) -> None:
    """explain finds core kinds (from the client models) and CRDs (their openAPIV3Schema)."""
    chaos = kubectl(kubeconfig, "explain", "networkchaos.spec.delay").stdout
    assert "KIND:       NetworkChaos" in chaos and "latency\t<string> -required-" in chaos
    ports = kubectl(kubeconfig, "explain", "pods.spec.containers.ports").stdout
    assert "containerPort\t<integer> -required-" in ports


def test_patch_scale_rollout_and_wait(kubeconfig: Path) -> None:
    """patch (strategic merge), scale, rollout status and wait on a Deployment."""
    kubectl(kubeconfig, "patch", "deployment", "echo", "-p",
            '{"metadata":{"labels":{"tier":"edge"}}}')
    labels = json.loads(kubectl(kubeconfig, "get", "deployment", "echo", "-o",
                                "json").stdout)["metadata"]["labels"]
    assert labels["tier"] == "edge"
    kubectl(kubeconfig, "scale", "deployment/echo", "--replicas=2")
    rolled = kubectl(kubeconfig, "rollout", "status", "deployment/echo", "--timeout=40s",
                     timeout=50)
    assert 'deployment "echo" successfully rolled out' in rolled.stdout
    kubectl(kubeconfig, "wait", "deployment/echo", "--for=condition=Available",
            "--timeout=20s")
    assert len(pod_names(kubeconfig, "echo")) == 2
    kubectl(kubeconfig, "scale", "deployment/echo", "--replicas=1")


def test_server_dry_runs_write_nothing(kubeconfig: Path) -> None:
    """`--dry-run=server` (dryRun=All) is answered as a write and changes nothing."""
    _, name = delay_manifest()
    before = kubectl(kubeconfig, "get", "networkchaos", name, "-o", "json").stdout
    done = kubectl(kubeconfig, "delete", "networkchaos", name, "--dry-run=server")
    assert "(server dry run)" in done.stdout
    created = kubectl(kubeconfig, "create", "configmap", "dry", "--from-literal=a=b",
                      "--dry-run=server")
    assert "configmap/dry created (server dry run)" in created.stdout
    assert kubectl(kubeconfig, "get", "configmap", "dry", check=False).returncode != 0
    after = kubectl(kubeconfig, "get", "networkchaos", name, "-o", "json").stdout
    assert json.loads(after)["metadata"] == json.loads(before)["metadata"]


def test_the_api_wants_the_kubeconfigs_token(mesh: MeshThread, kubeconfig: Path) -> None:
    """Only the owner gets in (docs/fidelity.md §8.4): the kubeconfig is 0600 and holds the
    token and CA; without the token, or with another, the API answers 401 Unauthorized."""
    assert stat.S_IMODE(kubeconfig.stat().st_mode) == 0o600
    assert mesh.mesh.endpoints is not None
    url = f"{mesh.mesh.endpoints.api}/api/v1/pods"
    assert url.startswith("https://127.0.0.1:")
    context = ssl_context(kubeconfig)
    for headers in ({}, {"Authorization": "Bearer not-the-token"}):
        request = urllib.request.Request(url, headers=headers)
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=5, context=context)
        status = json.loads(refused.value.read())
        assert (refused.value.code, status["kind"], status["reason"]) == (
            401, "Status", "Unauthorized")
    request = urllib.request.Request(url, headers=auth_headers(kubeconfig))
    with urllib.request.urlopen(request, timeout=5, context=context) as response:
        assert response.status == 200
    wrong = kubectl(kubeconfig, "--token=not-the-token", "get", "pods", check=False)
    assert wrong.returncode != 0 and "Unauthorized" in wrong.stderr + wrong.stdout


def older_kubectls() -> list[str]:
    """kubectl 1.27/1.28 beside the machine's kubectl (Cloud SDK ships several), which read
    /openapi/v2 as protobuf for validation and explain."""
    found = shutil.which("kubectl")
    folder = Path(os.path.realpath(found)).parent if found else None
    return [str(folder / f"kubectl.{v}") for v in ("1.27", "1.28")
            if folder is not None and (folder / f"kubectl.{v}").is_file()]


@pytest.mark.skipif(not older_kubectls(), reason="no kubectl 1.27/1.28 on this machine")
def test_older_kubectl_reads_the_protobuf_openapi_v2(kubeconfig: Path) -> None:
    """kubectl ≤ 1.28 asks /openapi/v2 for gnostic's protobuf Document (§8.1): with it,
    apply validates server-side from its paths, and explain reads its definitions."""
    env = {**os.environ, "KUBECONFIG": str(kubeconfig),
           "KUBECACHEDIR": str(kubeconfig.parent / "kubectl-cache-old")}
    def run(binary: str, *args: str,
            stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([binary, "-n", NS, *args], env=env, input=stdin, text=True,
                              capture_output=True, timeout=30, check=False)
    for binary in older_kubectls():
        typo = run(binary, "create", "-f", "-", stdin=json.dumps({
            "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "old-typo"},
            "dataa": {"a": "b"}}))
        assert typo.returncode != 0 and 'unknown field "dataa"' in typo.stderr, binary
        explained = run(binary, "explain", "pods.spec.containers.ports")
        assert explained.returncode == 0 and "containerPort" in explained.stdout, binary
        listed = run(binary, "get", "deployments")
        assert listed.stdout.split()[:5] == ["NAME", "READY", "UP-TO-DATE", "AVAILABLE",
                                              "AGE"], binary


def test_delete_returns_once_the_object_is_gone(kubeconfig: Path) -> None:
    """`kubectl delete networkchaos X` returns within 2 s, after the controller recovered
    the fault and dropped its finalizer; `delete --wait` of a pod returns once it is gone."""
    _, name = delay_manifest()
    started = time.monotonic()
    done = kubectl(kubeconfig, "delete", "networkchaos", name, "--wait=true", timeout=10)
    elapsed = time.monotonic() - started
    assert f'networkchaos.chaos-mesh.org "{name}" deleted' in done.stdout
    assert elapsed < 2.0, f"kubectl delete took {elapsed:.2f} s"
    gone = kubectl(kubeconfig, "get", "networkchaos", name, check=False)
    assert gone.returncode != 0 and "NotFound" in gone.stderr
    [pod, *_] = pod_names(kubeconfig, "pricing")
    started = time.monotonic()
    kubectl(kubeconfig, "delete", "pod", pod, "--wait=true", timeout=20)
    assert time.monotonic() - started < 10
    assert pod not in pod_names(kubeconfig, "pricing")


def test_applying_the_files_a_mesh_started_from_rolls_no_pod(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    """`kubectl apply -f fixtures/k8s/` on a mesh started from fixtures/k8s changes no pod
    template, so no Deployment rolls (Kubernetes "Deployments": a rollout is triggered if and
    only if the pod template changes): the mesh stores `meshchaos.io/local-cwd` as the files
    have it (relative) and notes their folder beside it. A rollout kubectl asks for then starts
    pods that still find their working directory (the chain's `python -m fixtures.chain`
    runs from the repository root, or the pod never turns Ready)."""
    root = tmp_path_factory.mktemp("kubectl-chain")
    chain = MeshThread([ROOT / "fixtures" / "k8s"], root / "state")
    chain.start(timeout=60)
    try:
        config = chain.mesh.state.kubeconfig

        def pods_and_sets() -> tuple[list[str], list[str]]:
            pods = json.loads(kubectl(config, "get", "pods", "-o", "json").stdout)["items"]
            sets = json.loads(kubectl(config, "get", "rs", "-o", "json").stdout)["items"]
            return (sorted(p["metadata"]["uid"] for p in pods),
                    sorted(s["metadata"]["name"] for s in sets))
        before = pods_and_sets()
        env = {**os.environ, "KUBECONFIG": str(config),
               "KUBECACHEDIR": str(config.parent / "kubectl-cache")}
        # The first adds kubectl's last-applied annotation (Deployment metadata, not the
        # template); the second finds nothing to change at all.
        for verb in ("configured", "unchanged"):
            # No -n: the files name their namespaces (shop and istio-system).
            applied = subprocess.run(["kubectl", "apply", "-f", str(ROOT / "fixtures" / "k8s")],
                                     env=env, capture_output=True, text=True, timeout=60,
                                     check=False)
            assert applied.returncode == 0, applied.stderr
            assert f"deployment.apps/ratings {verb}" in applied.stdout
        time.sleep(0.5)  # a rollout would have made its ReplicaSet by now
        assert pods_and_sets() == before
        kubectl(config, "rollout", "restart", "deployment/ratings")
        rolled = kubectl(config, "rollout", "status", "deployment/ratings", "--timeout=40s",
                         timeout=50)
        assert 'deployment "ratings" successfully rolled out' in rolled.stdout
    finally:
        stop_and_reap(chain)
