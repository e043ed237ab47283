"""No chaos left behind: an interrupted ``chaos run`` leaves no chaos object and no fault.

One local mesh (the chain of fixtures/k8s, a MeshThread with a state dir of its own) lives
for the module. Each test runs ``chaos run tests/data/interrupt/interrupt-hold.json`` in
a subprocess of its own process group, from the repository root, with
``MESHCHAOS_STATE_DIR`` pointing at that mesh (the local-mesh control reuses it and leaves
it running). The experiment applies the timeout-cascade fault (NetworkChaos delay 1 s on
pricing) and holds it; the test watches the run's log and signals the whole process group,
as Ctrl-C in a terminal does:

- SIGINT right after the injection action starts, during the method after the injection,
  and during the rollbacks: the safety control's handler (probes/controls/safety.py)
  removes the run's chaos objects before chaoslib sees the interrupt;
- SIGKILL during the method: nothing can run in the process, so the object and the fault
  stay; ``meshchaos abort`` removes them, and a short ``spec.duration`` ends them alone.

Every check goes through the official kubernetes client (the state dir's kubeconfig), the
sidecars' admin ``GET /config`` (the fault rules of docs/architecture.md "Sidecar") and a
request through the ingress gateway.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from kubernetes import client as kube_client
from kubernetes import config as kube_config

from localmesh.mesh import MeshThread
from probes import chaos, safety

from .conftest import CHAIN_MANIFESTS, ROOT, stop_and_reap

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EXPERIMENT = ROOT / "tests" / "data" / "interrupt" / "interrupt-hold.json"
FAULTED = "delay-target"  # the manifest the experiment applies (delay 1 s on pricing)
GROUP, VERSION = chaos.GROUP, chaos.VERSION
ADMIN_PORT = "meshchaos.io/admin-port"
LINE_TIMEOUT_S = 40.0  # from the start of `chaos run` to a given log line, on a loaded box
# From the signal to the exit of the run. The experiment holds the fault 45 s: a run that
# swallowed the interrupt is still holding it when this runs out.
EXIT_TIMEOUT_S = 20.0
# Through the ingress the chain answers 200 in 45-185 ms on a loaded 2-core box; with the
# fault (pricing's responses held 1 s) it answers 504 after about 1.7 s. Half-way between.
NORMAL_LATENCY_MS = 600.0


# -- the module's mesh -----------------------------------------------------------------

@dataclass(frozen=True)
class Mesh:
    state_dir: Path
    ingress: str

    @property
    def kubeconfig(self) -> Path:
        return self.state_dir / "kubeconfig"


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    """The chain in a MeshThread whose state dir a `chaos run` finds as a live mesh."""
    state_dir = tmp_path_factory.mktemp("interrupts") / "state"
    thread = MeshThread([CHAIN_MANIFESTS], state_dir)
    try:
        endpoints = thread.start(timeout=60)
        yield Mesh(state_dir.resolve(), str(endpoints.ingress))
    finally:
        stop_and_reap(thread)


@pytest.fixture
def clean_mesh(mesh: Mesh) -> Iterator[Mesh]:
    """The mesh without chaos before and after the test: one test's leftover is not the next's."""
    _remove_suite_chaos(mesh)
    try:
        yield mesh
    finally:
        _remove_suite_chaos(mesh)


def _remove_suite_chaos(mesh: Mesh) -> None:
    chaos.remove_suite_chaos(wait_timeout=20,
                             configuration={"kubeconfig": str(mesh.kubeconfig)})


# -- one `chaos run` in its own process group --------------------------------------------

class ChaosRun:
    """``chaos run`` of the interrupt experiment; its merged output is read line by line."""

    def __init__(self, mesh: Mesh, tmp_path: Path, **env: str) -> None:
        # faulthandler: a run that hangs is dumped (SIGABRT) so the failure shows where
        environ = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONFAULTHANDLER": "1",
                   "MESHCHAOS_STATE_DIR": str(mesh.state_dir), **env}
        environ.pop("KUBECONFIG", None)
        self.journal_path = tmp_path / "journal.json"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "chaostoolkit", "--no-log-file", "run",
             "--journal-path", str(self.journal_path), str(EXPERIMENT)],
            cwd=ROOT, env=environ, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, start_new_session=True)
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    @property
    def output(self) -> str:
        return "\n".join(self.lines[-120:])

    def wait_for(self, pattern: str, timeout: float = LINE_TIMEOUT_S) -> str:
        """The first new output line matching ``pattern``; fails on exit or deadline."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self._queue.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                pytest.fail(f"`chaos run` exited ({self.proc.wait()}) before a line matching "
                            f"{pattern!r}:\n{self.output}")
            self.lines.append(line)
            if regex.search(line):
                return line
        pytest.fail(f"no line matching {pattern!r} within {timeout:g} s:\n{self.output}")

    def journal(self) -> dict[str, Any]:
        assert self.journal_path.is_file(), f"no journal:\n{self.output}"
        doc: dict[str, Any] = json.loads(self.journal_path.read_text())
        return doc

    def signal(self, signum: int) -> None:
        """Signal the whole process group, as a terminal's Ctrl-C does."""
        os.killpg(self.proc.pid, signum)

    def wait_exit(self, timeout: float = EXIT_TIMEOUT_S) -> int:
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGABRT)  # faulthandler prints every thread's stack
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=10)
                self._drain()
            pytest.fail(f"`chaos run` still ran {timeout:g} s after the signal:\n"
                        f"{self.output}")
        self._drain()
        return code

    def _drain(self) -> None:
        self._reader.join(timeout=10)
        while not self._queue.empty():
            line = self._queue.get_nowait()
            if line is not None:
                self.lines.append(line)

    def close(self) -> None:
        """No process of the run outlives its test."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)  # a `sleep` the run left behind
        self._reader.join(timeout=10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@pytest.fixture
def start_run(clean_mesh: Mesh, tmp_path: Path) -> Iterator[Callable[..., ChaosRun]]:
    runs: list[ChaosRun] = []

    def start(**env: str) -> ChaosRun:
        folder = tmp_path / f"run{len(runs)}"
        folder.mkdir()
        run = ChaosRun(clean_mesh, folder, **env)
        runs.append(run)
        return run

    try:
        yield start
    finally:
        for run in runs:
            run.close()


# -- what is left in the cluster and in the data path -------------------------------------

def _api(mesh: Mesh) -> Any:
    config: Any = kube_config  # the kubernetes package types this function loosely
    return config.new_client_from_config(config_file=str(mesh.kubeconfig))


def suite_objects(mesh: Mesh) -> list[dict[str, Any]]:
    """Every NetworkChaos/PodChaos carrying the suite's label, in every namespace."""
    with _api(mesh) as api_client:
        api = kube_client.CustomObjectsApi(api_client)
        found: list[dict[str, Any]] = []
        for plural in chaos.PLURALS.values():
            listing: Any = api.list_cluster_custom_object(
                GROUP, VERSION, plural, label_selector=safety.label_selector(),
                _request_timeout=10)
            found += listing.get("items") or []
        return found


def names(objects: list[dict[str, Any]]) -> list[str]:
    return sorted(f"{o['kind']} {o['metadata']['namespace']}/{o['metadata']['name']}"
                  for o in objects)


def sidecar_faults(mesh: Mesh) -> dict[str, list[dict[str, Any]]]:
    """Each pod's fault rules, read from its sidecar's admin ``GET /config`` (non-empty only)."""
    with _api(mesh) as api_client:
        pods: list[Any] = kube_client.CoreV1Api(api_client).list_pod_for_all_namespaces(
            _request_timeout=10).items
    faults: dict[str, list[dict[str, Any]]] = {}
    admins = 0
    for pod in pods:
        port = (pod.metadata.annotations or {}).get(ADMIN_PORT)
        if not port or pod.metadata.deletion_timestamp is not None:
            continue
        admins += 1
        status, body = _get("127.0.0.1", int(port), "/config")
        assert status == 200, f"admin GET /config of {pod.metadata.name}: {status} {body!r}"
        rules = json.loads(body)["faults"]
        if rules:
            faults[f"{pod.metadata.namespace}/{pod.metadata.name}"] = rules
    assert admins >= 6, f"only {admins} pods with a sidecar admin port (the chain has 6)"
    return faults


def fault_ids(mesh: Mesh) -> list[str]:
    """The ids of every fault rule in the data path (one per object and pod)."""
    return sorted(r["id"] for rules in sidecar_faults(mesh).values() for r in rules)


def _get(host: str, port: int, path: str, headers: dict[str, str] | None = None,
         timeout: float = 10) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def ingress_latency_ms(mesh: Mesh, tries: int = 3) -> tuple[int, float]:
    """The fastest of a few requests through the ingress: (its status, its latency in ms).

    The fastest, so that a busy box's scheduling hiccup is not taken for a fault: a delay
    fault slows every request, not just some.
    """
    url = urlsplit(mesh.ingress)
    best: tuple[int, float] | None = None
    for _ in range(tries):
        started = time.perf_counter()
        status, _body = _get(url.hostname or "127.0.0.1", url.port or 80, "/",
                             headers={"Host": "shop.example.com"})
        took = (time.perf_counter() - started) * 1000
        if best is None or took < best[1]:
            best = (status, took)
    assert best is not None
    return best


def assert_no_chaos_left(mesh: Mesh, run: ChaosRun) -> None:
    assert names(suite_objects(mesh)) == [], run.output
    assert sidecar_faults(mesh) == {}, run.output
    status, took = ingress_latency_ms(mesh)
    assert status == 200 and took < NORMAL_LATENCY_MS, (status, took)


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() >= deadline:
            pytest.fail(f"{what} not within {timeout:g} s")
        time.sleep(0.1)


def run_id_of(run: ChaosRun) -> str:
    line = run.wait_for(r"meshchaos run id '[0-9a-f]+'")
    found = re.search(r"meshchaos run id '([0-9a-f]+)'", line)
    assert found is not None
    return found.group(1)


def event_reasons(mesh: Mesh, namespace: str, name: str) -> list[str]:
    """The reasons of the events Chaos Mesh recorded on one object."""
    with _api(mesh) as api_client:
        events: list[Any] = kube_client.CoreV1Api(api_client).list_namespaced_event(
            namespace, field_selector=f"involvedObject.name={name}", _request_timeout=10).items
    return [str(e.reason) for e in events]


def conditions(obj: dict[str, Any]) -> dict[str, str]:
    return {c["type"]: c["status"] for c in (obj.get("status") or {}).get("conditions") or []}


# -- SIGINT: the safety control takes the chaos away ---------------------------------------

def assert_interrupted_by_the_handler(run: ChaosRun, run_id: str, removed: list[str],
                                      signum: signal.Signals = signal.SIGINT) -> None:
    """The interrupt reached chaoslib (status interrupted), after the safety control's handler
    had removed ``removed``; a removal rollback, if one ran, found nothing left to remove."""
    names_removed = ", ".join(removed) or "none left"
    assert (f"removed the chaos objects of run '{run_id}' on {signum.name}: {names_removed}"
            in run.output), run.output
    journal = run.journal()
    assert journal["status"] == "interrupted", run.output
    for rollback in journal.get("rollbacks") or []:
        if rollback["activity"]["name"] == "remove-this-runs-chaos":
            assert rollback["output"]["removed"] == [], rollback["output"]


@pytest.mark.parametrize("after_s", [0.0, 0.1, 0.2], ids=["at-once", "100ms", "200ms"])
def test_sigint_right_after_the_injection_action_starts_leaves_no_chaos(
        start_run: Callable[..., ChaosRun], clean_mesh: Mesh, after_s: float) -> None:
    """Ctrl-C while ``apply_chaos`` runs (the first kubernetes call of the run: client import,
    create, wait for AllInjected): the run stops at once, no object is left, no sidecar keeps
    a rule and the chain answers at its normal speed (Chaos Mesh §5.4: a deleted object is
    recovered before its finalizer goes)."""
    run = start_run()
    run_id = run_id_of(run)
    run.wait_for(r"Action: slow-pricing-beyond-its-callers-timeout")
    time.sleep(after_s)
    run.signal(signal.SIGINT)
    run.wait_exit()
    line = re.search(rf"removed the chaos objects of run '{run_id}' on SIGINT: (.*)",
                     run.output)
    assert line is not None, run.output
    assert line.group(1) in ("none left", f"NetworkChaos shop/{FAULTED}-{run_id}")
    assert_interrupted_by_the_handler(run, run_id, [] if line.group(1) == "none left"
                                      else [f"NetworkChaos shop/{FAULTED}-{run_id}"])
    assert_no_chaos_left(clean_mesh, run)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_an_interrupt_during_the_method_after_injection_removes_the_object_and_the_fault(
        start_run: Callable[..., ChaosRun], clean_mesh: Mesh, signum: signal.Signals) -> None:
    """Ctrl-C (or a SIGTERM from a CI runner) while the fault is held: the safety control's
    handler removes the injected object (its log names it) before chaoslib sees the
    interrupt (KeyboardInterrupt / InterruptExecution); the data path is clean."""
    run = start_run()
    run_id = run_id_of(run)
    run.wait_for(r"Probe: hold-the-fault")
    assert names(suite_objects(clean_mesh)) == [f"NetworkChaos shop/{FAULTED}-{run_id}"]
    assert sidecar_faults(clean_mesh), "the fault is not in the data path: nothing to undo"
    run.signal(signum)
    run.wait_exit()
    assert_interrupted_by_the_handler(run, run_id, [f"NetworkChaos shop/{FAULTED}-{run_id}"],
                                      signum)
    assert_no_chaos_left(clean_mesh, run)


def test_a_second_ctrl_c_while_the_first_one_cleans_up_still_leaves_no_chaos(
        start_run: Callable[..., ChaosRun], clean_mesh: Mesh) -> None:
    """An impatient operator presses Ctrl-C twice, 0.1 s apart, while the fault is held: the
    second interrupt may cut the first one's removal short, yet the run still ends promptly
    and the after-experiment hooks leave no object and no fault behind."""
    run = start_run()
    run_id = run_id_of(run)
    run.wait_for(r"Probe: hold-the-fault")
    assert names(suite_objects(clean_mesh)) == [f"NetworkChaos shop/{FAULTED}-{run_id}"]
    run.signal(signal.SIGINT)
    time.sleep(0.1)
    run.signal(signal.SIGINT)
    run.wait_exit()
    assert run.journal()["status"] == "interrupted", run.output
    assert_no_chaos_left(clean_mesh, run)


def test_sigint_during_the_rollbacks_leaves_no_chaos(
        start_run: Callable[..., ChaosRun], clean_mesh: Mesh) -> None:
    """Ctrl-C in the rollbacks before the removal rollback ran (chaoslib then skips the
    remaining rollbacks): the handler removes what that rollback would have removed."""
    run = start_run(MESHCHAOS_INTERRUPT_HOLD_S="0", MESHCHAOS_INTERRUPT_ROLLBACK_HOLD_S="45")
    run_id = run_id_of(run)
    run.wait_for(r"Rollback: hold-before-removal")
    assert names(suite_objects(clean_mesh)) == [f"NetworkChaos shop/{FAULTED}-{run_id}"]
    run.signal(signal.SIGINT)
    run.wait_exit()
    assert_interrupted_by_the_handler(run, run_id, [f"NetworkChaos shop/{FAULTED}-{run_id}"])
    assert "Rollback: remove-this-runs-chaos" not in run.output
    assert_no_chaos_left(clean_mesh, run)


# -- SIGKILL: nothing runs in the process; abort and duration clean up ---------------------

def test_a_sigkilled_runs_chaos_stays_until_meshchaos_abort_removes_it(
        start_run: Callable[..., ChaosRun], clean_mesh: Mesh) -> None:
    """SIGKILL cannot be handled: the object and the fault outlive the run; ``meshchaos
    abort`` deletes every object labelled managed-by=meshchaos and waits until Chaos Mesh
    has recovered them (§5.4 finalizer)."""
    run = start_run()
    run_id = run_id_of(run)
    run.wait_for(r"Probe: hold-the-fault")
    run.signal(signal.SIGKILL)
    assert run.wait_exit() == -signal.SIGKILL
    assert names(suite_objects(clean_mesh)) == [f"NetworkChaos shop/{FAULTED}-{run_id}"]
    assert fault_ids(clean_mesh) == [f"shop/{FAULTED}-{run_id}"]
    status, took = ingress_latency_ms(clean_mesh, tries=1)
    assert status != 200 or took >= NORMAL_LATENCY_MS, (status, took)

    abort = subprocess.run(
        [sys.executable, "-m", "meshchaos.cli", "abort", "--kubeconfig",
         str(clean_mesh.kubeconfig), "--timeout", "20"],
        cwd=ROOT, capture_output=True, text=True, timeout=40, check=False)
    assert abort.returncode == 0, abort.stderr
    assert f"removed NetworkChaos shop/{FAULTED}-{run_id}" in abort.stdout
    assert_no_chaos_left(clean_mesh, run)


def test_a_sigkilled_runs_chaos_with_a_short_duration_recovers_by_itself(
        start_run: Callable[..., ChaosRun], clean_mesh: Mesh) -> None:
    """``spec.duration`` is the last safety net: once creationTimestamp + duration passed,
    Chaos Mesh's desired phase is Stop (event TimeUp) and every record is recovered
    (AllRecovered=True, §5.4), with no client left to ask for it. The object stays (only a
    delete removes it); its fault does not."""
    run = start_run(MESHCHAOS_INTERRUPT_CHAOS_DURATION="6s")
    run_id = run_id_of(run)
    name = f"{FAULTED}-{run_id}"
    run.wait_for(r"Probe: hold-the-fault")
    run.signal(signal.SIGKILL)
    assert run.wait_exit() == -signal.SIGKILL
    assert fault_ids(clean_mesh) == [f"shop/{name}"]  # the 6 s have not passed yet

    def recovered() -> bool:
        objects = suite_objects(clean_mesh)
        assert names(objects) == [f"NetworkChaos shop/{name}"], names(objects)
        return conditions(objects[0]).get("AllRecovered") == "True"

    wait_until(recovered, timeout=20, what="AllRecovered=True after the 6 s duration")
    obj = suite_objects(clean_mesh)[0]
    assert obj["metadata"].get("deletionTimestamp") is None
    assert obj["status"]["experiment"]["desiredPhase"] == "Stop"
    assert "TimeUp" in event_reasons(clean_mesh, "shop", name)
    assert sidecar_faults(clean_mesh) == {}
    status, took = ingress_latency_ms(clean_mesh)
    assert status == 200 and took < NORMAL_LATENCY_MS, (status, took)
