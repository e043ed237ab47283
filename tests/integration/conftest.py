"""Shared fixtures of the integration suite: a local mesh started once per session.

``local_mesh`` runs the reference chain (``fixtures/k8s``) in a MeshThread and
yields its :class:`~localmesh.statedir.Endpoints`; ``local_mesh_thread`` gives the
MeshThread itself (``.mesh.store``, ``.mesh.supervisor``, ``.run(coro)``,
``.mesh.state.path``); ``running_mesh`` starts one of a test's own manifests the same way.
``echo_manifests`` writes a tiny mesh of the test echo app
for tests that need one of their own. ``run_chaos`` runs ``chaos run`` as a user would and
judges its journal.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import pytest

from localmesh.mesh import MeshThread
from localmesh.statedir import Endpoints
from reports.model import load_journal
from reports.verdict import Outcome, compute_verdict
from tests.mesh_manifests import ACCESS_LOGS, ingress_route, mesh_preamble

ROOT = Path(__file__).resolve().parents[2]
CHAIN_MANIFESTS = ROOT / "fixtures" / "k8s"
ECHO_APP = ROOT / "tests" / "data" / "echo_app.py"
ECHO_HOST = "echo.shop.svc.cluster.local"  # the Host the echo manifests' ingress routes


def descendants(root: int) -> list[int]:
    """Every live process below ``root``, read from /proc (no psutil)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[-1].split()
            except OSError:
                continue
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def alive(pid: int) -> bool:
    """True for a running (not zombie) process."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


def kill_groups(pids: list[int]) -> None:
    """Last resort in teardown: no process may outlive its test."""
    for pid in pids:
        if alive(pid):
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)


def write_echo_manifests(folder: Path, *, replicas: int = 1, extra: str = "") -> Path:
    """A namespace ``shop`` with sidecar injection, the echo app as Deployment + Service,
    access logs on (the mesh config ConfigMap), and a Gateway with a VirtualService that
    routes the Host ``echo.shop.svc.cluster.local`` from the ingress to echo (an Istio
    gateway routes nothing else: docs/fidelity.md §1.6)."""
    folder.mkdir(parents=True, exist_ok=True)
    mesh_config = ACCESS_LOGS + "defaultConfig:\n  tracing:\n    sampling: 100\n"
    (folder / "mesh.yaml").write_text(mesh_preamble("shop", mesh_config) + textwrap.dedent(f"""\
        apiVersion: apps/v1
        kind: Deployment
        metadata:
          name: echo
          namespace: shop
        spec:
          replicas: {replicas}
          selector:
            matchLabels: {{app: echo}}
          template:
            metadata:
              labels: {{app: echo}}
              annotations:
                meshchaos.io/local-command: python {ECHO_APP}
            spec:
              terminationGracePeriodSeconds: 2
              containers:
              - name: echo
                image: example/echo:1
                ports: [{{containerPort: 8080}}]
                env:
                - {{name: GREETING, value: hello}}
                readinessProbe:
                  httpGet: {{path: /healthz, port: 8080}}
                  periodSeconds: 1
        ---
        apiVersion: v1
        kind: Service
        metadata:
          name: echo
          namespace: shop
        spec:
          selector: {{app: echo}}
          ports: [{{name: http, port: 8080, targetPort: 8080}}]
        ---
        """) + ingress_route("shop", "echo", gateway="echo-gateway", name="echo-ingress",
                             host=ECHO_HOST) + extra)
    return folder


@pytest.fixture
def echo_manifests(tmp_path: Path) -> Path:
    return write_echo_manifests(tmp_path / "manifests")


@pytest.fixture(scope="session")
def local_mesh_thread(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MeshThread]:
    """The reference chain of fixtures/k8s, running for the whole session."""
    if not CHAIN_MANIFESTS.is_dir():
        raise RuntimeError(f"{CHAIN_MANIFESTS} is missing: the local_mesh fixture runs it")
    state_dir = tmp_path_factory.mktemp("local-mesh") / "state"
    with running_mesh([CHAIN_MANIFESTS], state_dir) as thread:
        yield thread


@contextlib.contextmanager
def running_mesh(manifests: list[Path], state_dir: Path) -> Iterator[MeshThread]:
    """A MeshThread of these manifests, started (every pod Ready, 60 s at most); stopped when
    the block ends, and whatever of its processes survived killed (stop_and_reap)."""
    thread = MeshThread(manifests, state_dir)
    thread.start(timeout=60)
    try:
        yield thread
    finally:
        stop_and_reap(thread)


def stop_and_reap(thread: MeshThread) -> None:
    """Stop a MeshThread; then kill whatever of its processes survived (none should)."""
    supervisor = thread.mesh.supervisor
    pids = supervisor.all_pids() if supervisor is not None else []
    for server in supervisor.forkserver_pids if supervisor is not None else []:
        pids += descendants(server)
    thread.stop()
    kill_groups(pids)


@pytest.fixture(scope="session")
def local_mesh(local_mesh_thread: MeshThread) -> Endpoints:
    """Endpoints (api, ingress, otlp, traces) of the session's local mesh."""
    endpoints = local_mesh_thread.mesh.endpoints
    assert endpoints is not None
    return endpoints


def run_chaos(args: Sequence[str], tmp_path: Path, env: Mapping[str, str], *,
              timeout_s: float, name: str) -> tuple[Outcome, str, str, int]:
    """``chaos run --journal-path <tmp_path>/journal.json <args>`` from the repository root
    with ``env``, in a process group of its own; the verdict of its journal, that verdict's
    line with the run's report from ``<tmp_path>/reports`` (the output's tail without one),
    the run's output and its exit code. A run over ``timeout_s`` fails the test (``name``
    says which) and is killed, its local mesh with it."""
    journal = tmp_path / "journal.json"
    proc = subprocess.Popen([sys.executable, "-m", "chaostoolkit", "--no-log-file", "run",
                             "--journal-path", str(journal), *args], cwd=ROOT, env=dict(env),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            out, _ = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
        pytest.fail(f"{name} overran {timeout_s} s:\n{out[-3000:]}")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert journal.is_file(), out[-3000:]
    verdict = compute_verdict(load_journal(journal))
    report = sorted((tmp_path / "reports").glob("*/report.md"))
    summary = f"{verdict.line()}\n{report[-1].read_text()[:4000] if report else out[-3000:]}"
    return verdict.outcome, summary, out, proc.returncode
