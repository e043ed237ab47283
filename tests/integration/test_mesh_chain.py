"""The reference chain of fixtures/k8s on the session's local mesh (the ``local_mesh``
fixture other integration tests build on): every hop runs, answers through the
ingress, and leaves its traces and access logs where probes read them.
"""

from __future__ import annotations

import json
import ssl
import time
import urllib.request
from typing import Any

import pytest

from localmesh.kubeconfig import auth_headers, ssl_context
from localmesh.mesh import MeshThread
from localmesh.statedir import Endpoints, read_endpoints

pytestmark = [pytest.mark.integration]

HOPS = ("frontend", "orders", "inventory", "pricing", "ratings")


def get_json(url: str, *, host: str | None = None, headers: dict[str, str] | None = None,
             context: ssl.SSLContext | None = None) -> Any:
    req = urllib.request.Request(url, headers={**({"Host": host} if host else {}),
                                               **(headers or {})})
    with urllib.request.urlopen(req, timeout=10, context=context) as resp:
        return json.loads(resp.read())


def test_every_hop_and_the_gateway_are_ready(local_mesh: Endpoints,
                                             local_mesh_thread: MeshThread) -> None:
    kubeconfig = local_mesh_thread.mesh.state.kubeconfig  # the API's token and CA
    pods = get_json(local_mesh.api + "/api/v1/pods", headers=auth_headers(kubeconfig),
                    context=ssl_context(kubeconfig))["items"]
    ready = {p["metadata"]["labels"].get("app") for p in pods
             if any(c["type"] == "Ready" and c["status"] == "True"
                    for c in p["status"]["conditions"])}
    assert set(HOPS) | {"istio-ingressgateway"} <= ready
    for pod in pods:
        if pod["metadata"]["namespace"] == "shop":
            assert [c["name"] for c in pod["status"]["containerStatuses"]][-1] == "istio-proxy"


def test_a_request_through_the_ingress_crosses_the_chain_and_is_traced(
        local_mesh: Endpoints) -> None:
    """Entry traffic: ingress gateway → frontend → orders → …, one trace for all of it."""
    body = get_json(local_mesh.ingress + "/", host="shop.example.com")
    assert body["service"] == "frontend"
    assert [c["status"] for c in body["calls"]] == [200]
    trace_id = body["trace_id"]
    deadline = time.monotonic() + 10
    services: set[str] = set()
    while time.monotonic() < deadline and not set(HOPS) <= services:
        try:
            trace = get_json(f"{local_mesh.traces}/api/traces/{trace_id}")["data"][0]
            services = {p["serviceName"] for p in trace["processes"].values()}
        except (OSError, KeyError, IndexError):
            pass
        time.sleep(0.1)
    assert set(HOPS) <= services


def test_state_dir_publishes_the_endpoints_and_a_kubeconfig(
        local_mesh_thread: MeshThread, local_mesh: Endpoints) -> None:
    """docs/architecture.md "State dir": endpoints.json and kubeconfig of the live mesh."""
    state = local_mesh_thread.mesh.state
    assert read_endpoints(state.path) == local_mesh
    assert f"server: {local_mesh.api}" in state.kubeconfig.read_text()
