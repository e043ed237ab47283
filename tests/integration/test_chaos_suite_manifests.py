"""The suite's own Chaos Mesh manifests (fixtures/chaos) on the reference chain.

Each one is applied with the suite's action against the session's local mesh
(fixtures/k8s), must select the pods of the app it names, reach AllInjected
(docs/fidelity.md §5.4) and go away cleanly; the pod faults must have their effect
(§5.3: pod-kill → a new pod name; pod-failure → unreachable, then back).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from localmesh.mesh import MeshThread
from probes import chaos

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _config(thread: MeshThread, run_id: str) -> dict[str, Any]:
    return {"kubeconfig": str(Path(thread.mesh.state.kubeconfig)), "run_id": run_id}


def _live_pods(thread: MeshThread, app: str) -> list[dict[str, Any]]:
    return [p for p in thread.mesh.store.list("", "pods", "shop", label_selector=f"app={app}")
            if not p["metadata"].get("deletionTimestamp")]


@pytest.mark.parametrize(("manifest", "apps"), [
    pytest.param("delay-target.yaml", {"pricing"}, id="delay"),
    pytest.param("loss-target-egress.yaml", {"orders"}, id="loss"),
    pytest.param("partition-target-peer.yaml", {"inventory", "pricing"}, id="partition"),
])
def test_network_manifest_injects_on_the_chain_and_goes_away(
        local_mesh_thread: MeshThread, manifest: str, apps: set[str]) -> None:
    """§5.2/§5.4: selected (and target) pods get records, all Injected; delete recovers."""
    config = _config(local_mesh_thread, f"m{int(time.time() * 1000) % 10**6}")
    result = chaos.apply_chaos(manifest, duration="30s", configuration=config)
    try:
        expected = {f"shop/{p['metadata']['name']}" for app in apps
                    for p in _live_pods(local_mesh_thread, app)}
        assert {r["id"] for r in result["records"]} == expected
        assert {r["phase"] for r in result["records"]} == {"Injected"}
    finally:
        removed = chaos.remove_run_chaos(configuration=config)
    assert [r["name"] for r in removed["removed"]] == [result["name"]]


def test_pod_kill_inventory_replaces_the_pod(local_mesh_thread: MeshThread) -> None:
    """§5.3 pod-kill: the Deployment's replacement has a new name and becomes Ready."""
    [old] = [p["metadata"]["name"] for p in _live_pods(local_mesh_thread, "inventory")]
    config = _config(local_mesh_thread, "killinv")
    chaos.apply_chaos("pod-kill-target.yaml", configuration=config)
    try:
        deadline = time.monotonic() + 30
        while True:
            fresh = [p for p in _live_pods(local_mesh_thread, "inventory")
                     if p["metadata"]["name"] != old and any(
                         c.get("type") == "Ready" and c.get("status") == "True"
                         for c in (p.get("status") or {}).get("conditions") or [])]
            if fresh:
                break
            assert time.monotonic() < deadline, "no Ready replacement of the killed pod"
            time.sleep(0.1)
    finally:
        chaos.remove_run_chaos(configuration=config)


def test_pod_failure_ratings_recovers_after_its_duration(local_mesh_thread: MeshThread) -> None:
    """§5.3 pod-failure with a duration: injected, then TimeUp recovers it; AllRecovered."""
    config = _config(local_mesh_thread, "failrat")
    result = chaos.apply_chaos("pod-failure-side-service.yaml", duration="2s", configuration=config)
    store = local_mesh_thread.mesh.store
    try:
        deadline = time.monotonic() + 20
        while True:
            obj = store.get("chaos-mesh.org", "podchaos", "shop", result["name"])
            conditions = {c["type"]: c["status"] for c in obj["status"]["conditions"]}
            if conditions.get("AllRecovered") == "True":
                break
            assert time.monotonic() < deadline, conditions
            time.sleep(0.1)
        assert obj["status"]["experiment"]["desiredPhase"] == "Stop"
    finally:
        chaos.remove_run_chaos(configuration=config)


def _raw_get(port: int) -> bytes:
    """One request on a fresh connection, read until the server closes it."""
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nhost: ratings:8080\r\nconnection: close\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
        return data


def test_httpchaos_abort_on_ratings_cuts_its_requests_off_until_removed(
        local_mesh_thread: MeshThread) -> None:
    """§5.5: the HTTPChaos template reaches AllInjected on the side service's pods, and a
    request arriving at a pod's inbound gets no answer at all (the connection is closed, as
    chaos-tproxy's abort drops it); once removed, the same request is answered again."""
    config = _config(local_mesh_thread, f"h{int(time.time() * 1000) % 10**6}")
    [pod] = _live_pods(local_mesh_thread, "ratings")
    inbound = int(pod["metadata"]["annotations"]["meshchaos.io/inbound-port"])
    assert _raw_get(inbound).startswith(b"HTTP/1.1 ")
    result = chaos.apply_chaos("httpchaos-abort-target.yaml", duration="30s",
                               configuration=config)
    try:
        assert result["records"] == [{"id": f"shop/{pod['metadata']['name']}",
                                      "selectorKey": ".", "phase": "Injected"}]
        assert result["notes"] == []
        assert _raw_get(inbound) == b""
    finally:
        removed = chaos.remove_run_chaos(configuration=config)
    assert [r["name"] for r in removed["removed"]] == [result["name"]]
    assert _raw_get(inbound).startswith(b"HTTP/1.1 ")
