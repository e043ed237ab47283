"""probes.chaos.apply_chaos with the HTTPChaos template, through the official Kubernetes
client against the local API and the local Chaos Mesh controller (docs/fidelity.md §5.5),
and the Istio limit it carries into the report's run notes on a cluster.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from probes import chaos
from reports.markdown import render_markdown
from reports.verdict import compute_verdict
from tests.apiserver_helpers import namespace, pod
from tests.unit.test_actions_chaos import GROUP, Cluster, running_cluster
from tests.unit.test_verdict_journals import journal

TEMPLATE = "httpchaos-abort-target.yaml"
APP_PORT = 41005  # where the supervisor says the stock pod's app listens on loopback


def _sidecar_pod(name: str, ns: str, labels: dict[str, str], port: int) -> dict[str, Any]:
    """A pod as the supervisor publishes one with a sidecar: its ports as annotations."""
    obj = pod(name, ns, labels=labels)
    obj["metadata"]["annotations"] = {"meshchaos.io/app-port": str(APP_PORT),
                                      "meshchaos.io/inbound-port": str(APP_PORT + 1)}
    obj["spec"]["containers"][0]["ports"] = [{"containerPort": port}]
    return obj


@pytest.fixture
def store_ns(tmp_path: Path) -> Iterator[Cluster]:
    """Namespace 'store': stock's pods are tier=stock behind Service port 80 → 9000."""
    with running_cluster(tmp_path) as cluster:
        cluster.store.create(namespace("store"))
        cluster.store.create(_sidecar_pod("stock-7f9-a", "store", {"tier": "stock"}, 9000))
        cluster.store.create({"apiVersion": "v1", "kind": "Service",
                              "metadata": {"name": "stock", "namespace": "store"},
                              "spec": {"selector": {"tier": "stock"},
                                       "ports": [{"port": 80, "targetPort": 9000}]}})
        yield cluster


def _config(cluster: Cluster, **extra: Any) -> dict[str, Any]:
    return cluster.config(namespace="store", allowed_namespaces="store", **extra)


def test_service_aims_the_template_at_the_services_pods_and_container_port(
        store_ns: Cluster) -> None:
    """apply_chaos keeps the reviewed template (target, path, abort) and aims it: selector from
    the Service, port from its targetPort (HTTPChaos intercepts a container port, CMW "port:
    the TCP port that the target service listens on"); injected means AllInjected=True."""
    result = chaos.apply_chaos(TEMPLATE, service="stock", configuration=_config(store_ns))
    assert (result["kind"], result["name"]) == ("HTTPChaos", "httpchaos-abort-target-t1")
    assert result["records"] == [{"id": "store/stock-7f9-a", "selectorKey": ".",
                                  "phase": "Injected"}]
    stored = store_ns.store.get(GROUP, "httpchaos", "store", result["name"])
    assert stored["spec"]["selector"] == {"namespaces": ["store"],
                                          "labelSelectors": {"tier": "stock"}}
    assert (stored["spec"]["port"], stored["spec"]["target"], stored["spec"]["abort"]) == \
        (9000, "Request", True)
    assert stored["metadata"]["labels"]["meshchaos.io/run-id"] == "t1"
    [rule] = store_ns.xds.http_faults["store/stock-7f9-a"]
    assert rule["selector"] == {"port": APP_PORT, "path": "*"} and rule["abort"] is True
    assert result["notes"] == []  # the local mesh applies it: no Istio limit to report


def test_latency_sets_the_httpchaos_delay_duration(store_ns: Cluster) -> None:
    """HTTPChaos's `delay` is a duration string (CRD), not NetworkChaos's block."""
    result = chaos.apply_chaos(TEMPLATE, service="stock", latency="250ms",
                               configuration=_config(store_ns, dry_run="true"))
    assert result["dry_run"] is True
    assert "delay: 250ms" in result["manifest"] and "port: 9000" in result["manifest"]


def test_the_runs_rollback_removes_the_httpchaos_object(store_ns: Cluster) -> None:
    """remove_run_chaos lists every chaos kind the suite creates, HTTPChaos included."""
    result = chaos.apply_chaos(TEMPLATE, service="stock", configuration=_config(store_ns))
    removed = chaos.remove_run_chaos(configuration=_config(store_ns))
    assert {"kind": "HTTPChaos", "namespace": "store", "name": result["name"]} in \
        removed["removed"]
    assert store_ns.store.list(GROUP, "httpchaos", "store") == []
    assert store_ns.xds.http_faults["store/stock-7f9-a"] == []


def test_on_a_cluster_the_result_and_the_report_carry_the_istio_limit(
        store_ns: Cluster) -> None:
    """Chaos Mesh's maintainers: "HTTP Chaos now don't compatible with istio"
    (chaos-mesh/chaos-mesh#3873; also #4389, #3904): a run that applies HTTPChaos on the
    kubernetes target says so in its run notes (docs/fidelity.md §5.5)."""
    result = chaos.apply_chaos(TEMPLATE, service="stock",
                               configuration=_config(store_ns, target="kubernetes"))
    assert result["notes"] == [chaos.HTTPCHAOS_ISTIO_NOTE]
    recorded = copy.deepcopy(journal("pass"))
    injection = next(r for r in recorded["run"]
                     if (r.get("activity") or {}).get("name") == "inject-leaf-delay")
    injection["output"] = {**injection["output"], **result}
    verdict = compute_verdict(recorded)
    assert f"inject-leaf-delay: {chaos.HTTPCHAOS_ISTIO_NOTE}" in verdict.notes
    assert chaos.HTTPCHAOS_ISTIO_NOTE in render_markdown(verdict)
