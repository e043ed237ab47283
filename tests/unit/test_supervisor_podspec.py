"""From a pod object to its processes: the annotation contract and the environment.

docs/architecture.md "Pods as processes": ``meshchaos.io/local-command`` split with
shlex, a leading python/python3 replaced with the mesh's interpreter, optional
``meshchaos.io/local-cwd``; the app environment; no sidecar → no HTTP_PROXY.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import pytest

from localmesh.errors import ProcessError
from localmesh.supervisor.container import BackOff, exit_state
from localmesh.supervisor.podspec import (
    PodPorts,
    app_launch,
    preload_trees,
    service_name,
    sidecar_launch,
)

PORTS = PodPorts(app=4001, inbound=4002, outbound=4003, admin=4004)


def pod(command: str | None = "python -m fixtures.chain --x 'a b'", *,
        labels: dict[str, str] | None = None, cwd: str | None = None) -> dict[str, Any]:
    annotations = {}
    if command is not None:
        annotations["meshchaos.io/local-command"] = command
    if cwd is not None:
        annotations["meshchaos.io/local-cwd"] = cwd
    return {"metadata": {"name": "orders-0123456789-abcde", "namespace": "shop",
                         "labels": labels if labels is not None else {"app": "orders"},
                         "annotations": annotations},
            "spec": {"containers": [
                {"name": "orders", "ports": [{"containerPort": 8080}],
                 "env": [{"name": "LEVEL", "value": "debug"}, {"name": "PORT", "value": "80"},
                         {"name": "FROM_SECRET", "valueFrom": {"secretKeyRef": {}}}]},
                {"name": "istio-proxy"}]}}


def test_python_command_runs_in_this_interpreter_with_shell_quoting_kept() -> None:
    launch = app_launch(pod(), PORTS, otlp_endpoint="http://127.0.0.1:9", sidecar=True,
                        base_dir=Path("/tmp"))
    assert launch is not None and launch.python
    assert launch.argv == [sys.executable, "-m", "fixtures.chain", "--x", "a b"]
    assert launch.container == "orders" and launch.cwd == Path("/tmp")


def test_other_commands_are_executed_as_written() -> None:
    launch = app_launch(pod("/usr/bin/env FOO=1 ./server"), PORTS, otlp_endpoint="x",
                        sidecar=True, base_dir=Path("/srv"))
    assert launch is not None and not launch.python
    assert launch.argv == ["/usr/bin/env", "FOO=1", "./server"]


def test_env_contract_overrides_the_manifest_and_skips_value_from() -> None:
    """The supervisor's PORT wins over the manifest's (it picks the real port); only
    literal ``value`` entries are supported."""
    launch = app_launch(pod(), PORTS, otlp_endpoint="http://127.0.0.1:9", sidecar=True,
                        base_dir=Path("/tmp"))
    assert launch is not None
    env = launch.env
    assert env["PORT"] == "4001" and env["LEVEL"] == "debug" and "FROM_SECRET" not in env
    assert env["POD_NAME"] == "orders-0123456789-abcde" and env["POD_NAMESPACE"] == "shop"
    assert env["OTEL_SERVICE_NAME"] == "orders"
    assert env["HTTP_PROXY"] == "http://127.0.0.1:4003" and env["NO_PROXY"] == ""


def test_the_app_gets_the_receivers_token_as_otel_exporter_otlp_headers() -> None:
    """OpenTelemetry's SDK environment variables: OTEL_EXPORTER_OTLP_HEADERS is a
    comma-separated list of key=value pairs, values URL-encoded (the space as %20); an
    exporter built with no ``headers`` reads it (docs/fidelity.md §8.5)."""
    launch = app_launch(pod(), PORTS, otlp_endpoint="http://127.0.0.1:9", sidecar=True,
                        base_dir=Path("/tmp"), otlp_token="tok-_en")
    assert launch is not None
    assert launch.env["OTEL_EXPORTER_OTLP_HEADERS"] == "authorization=Bearer%20tok-_en"
    assert "tok-_en" not in " ".join(launch.argv)  # argv is world-readable in /proc
    bare = app_launch(pod(), PORTS, otlp_endpoint="x", sidecar=True, base_dir=Path("/tmp"))
    assert bare is not None and "OTEL_EXPORTER_OTLP_HEADERS" not in bare.env


def test_without_a_sidecar_there_is_no_proxy() -> None:
    launch = app_launch(pod(), PORTS, otlp_endpoint="x", sidecar=False, base_dir=Path("/"))
    assert launch is not None
    assert "HTTP_PROXY" not in launch.env and "http_proxy" not in launch.env


def test_no_annotation_means_no_app_process() -> None:
    assert app_launch(pod(None), PORTS, otlp_endpoint="x", sidecar=True,
                      base_dir=Path("/")) is None


def test_local_cwd_is_relative_to_the_base_dir() -> None:
    launch = app_launch(pod(cwd="svc/orders"), PORTS, otlp_endpoint="x", sidecar=True,
                        base_dir=Path("/srv"))
    assert launch is not None and launch.cwd == Path("/srv/svc/orders")


def test_a_broken_command_line_names_the_pod_and_the_annotation() -> None:
    with pytest.raises(ProcessError, match=re.escape(
            "orders-0123456789-abcde: annotation meshchaos.io/local-command")):
        app_launch(pod("python -c 'unclosed"), PORTS, otlp_endpoint="x", sidecar=True,
                   base_dir=Path("/"))


def test_sidecar_arguments_follow_the_contract() -> None:
    launch = sidecar_launch(pod(), PORTS, base_dir=Path("/"))
    args = launch.argv
    assert args[:3] == [sys.executable, "-m", "localmesh.sidecar"]
    flags = dict(zip(args[3::2], args[4::2], strict=True))
    assert flags == {"--pod": "orders-0123456789-abcde", "--namespace": "shop",
                     "--service": "orders", "--mode": "sidecar", "--inbound-port": "4002",
                     "--outbound-port": "4003", "--admin-port": "4004", "--app-port": "4001",
                     "--ready-fd": "3"}
    gateway = sidecar_launch(pod(labels={"app": "istio-ingressgateway",
                                         "istio": "ingressgateway"}), PORTS, base_dir=Path("/"))
    assert "gateway" in gateway.argv


def test_service_name_falls_back_to_the_deployment_name() -> None:
    assert service_name(pod(labels={})) == "orders"


def test_preload_trees_name_the_apps_python_packages_only() -> None:
    """Only ``python -m <package>`` apps can be preloaded; scripts and binaries cannot."""
    assert preload_trees([pod(), pod("python app.py"), pod("./server")]) == ["fixtures.chain"]


def test_backoff_restarts_at_once_then_doubles_and_resets_after_a_stable_run() -> None:
    """Kubelet-like crash back-off, scaled to seconds for a local mesh."""
    backoff = BackOff(base=0.2, cap=1.0, stable_after=10.0)
    assert [backoff.next_delay(0.1) for _ in range(5)] == [0.0, 0.2, 0.4, 0.8, 1.0]
    assert backoff.next_delay(30.0) == 0.0


def test_exit_state_reports_signals_as_128_plus_n() -> None:
    state = exit_state(-9, "2026-11-26T17:00:00Z")["terminated"]
    assert state["exitCode"] == 137 and state["signal"] == 9 and state["reason"] == "Error"
    assert exit_state(0, "2026-11-26T17:00:00Z")["terminated"]["reason"] == "Completed"
