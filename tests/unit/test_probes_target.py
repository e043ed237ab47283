"""Resolving the configuration into a target (architecture.md configuration keys)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from probes.errors import ConfigurationError
from probes.target import resolve_target


def test_local_target_reads_urls_and_kubeconfig_from_the_state_dir(tmp_path: Path) -> None:
    """State dir: endpoints.json {api, ingress, otlp, traces, pid, started} and kubeconfig."""
    (tmp_path / "endpoints.json").write_text(json.dumps({
        "api": "http://127.0.0.1:1", "ingress": "http://127.0.0.1:2/", "otlp": "x",
        "traces": "http://127.0.0.1:3", "pid": 1, "started": 0}))
    target = resolve_target({"meshchaos_state_dir": str(tmp_path)})
    assert (target.kind, target.namespace) == ("local", "shop")
    assert (target.ingress_url, target.traces_url) == ("http://127.0.0.1:2", "http://127.0.0.1:3")
    assert target.kubeconfig == str(tmp_path / "kubeconfig") and target.traces_api == "jaeger"


def test_explicit_keys_win_over_the_state_dir(tmp_path: Path) -> None:
    (tmp_path / "endpoints.json").write_text(json.dumps({"ingress": "http://a", "traces": "b"}))
    target = resolve_target({"meshchaos_state_dir": str(tmp_path), "ingress_url": "http://c",
                             "namespace": "other", "traces_api": "tempo"})
    assert (target.ingress_url, target.namespace, target.traces_api) == (
        "http://c", "other", "tempo")


def test_local_target_without_a_running_mesh_says_how_to_start_one(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="meshchaos up"):
        resolve_target({"meshchaos_state_dir": str(tmp_path / "none")})


@pytest.mark.parametrize(("config", "message"), [
    pytest.param({"target": "kubernetes", "traces_url": "http://t"}, "'ingress_url' is required",
                 id="no-ingress"),
    pytest.param({"target": "kubernetes", "ingress_url": "http://i"}, "'traces_url' is required",
                 id="no-traces"),
    pytest.param({"target": "mars"}, "'target' must be", id="bad-target"),
    pytest.param({"target": "kubernetes", "traces_api": "zipkin"}, "'traces_api' must be",
                 id="bad-api"),
])
def test_bad_configuration_names_the_key(config: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        resolve_target(config)


def test_kubernetes_target_uses_the_given_kubeconfig() -> None:
    target = resolve_target({"target": "kubernetes", "ingress_url": "http://i/",
                             "traces_url": "http://t", "kubeconfig": "/k"})
    assert (target.ingress_url, target.kubeconfig) == ("http://i", "/k")
    with pytest.raises(ConfigurationError, match="cannot load kubeconfig '/k'"):
        target.api_client()


def test_a_cluster_waits_for_envoys_five_second_span_flush_by_default() -> None:
    """Envoy's OpenTelemetry tracer flushes every tracing.opentelemetry.flush_interval_ms
    (default 5000), as does the OpenTelemetry SDK's batch processor (OTEL_BSP_SCHEDULE_DELAY):
    judging a trace sooner on a cluster would judge it before its spans arrived."""
    target = resolve_target({"target": "kubernetes", "ingress_url": "http://i",
                             "traces_url": "http://t"})
    assert target.span_export_lag_s > 5.0


def test_the_local_mesh_exports_within_a_third_of_a_second(tmp_path: Path) -> None:
    (tmp_path / "endpoints.json").write_text(json.dumps({"ingress": "http://a", "traces": "b"}))
    assert resolve_target({"meshchaos_state_dir": str(tmp_path)}).span_export_lag_s == 0.12


def test_the_export_lag_can_be_set_for_a_tuned_cluster() -> None:
    target = resolve_target({"target": "kubernetes", "ingress_url": "http://i",
                             "traces_url": "http://t", "span_export_lag_s": "1.5"})
    assert target.span_export_lag_s == 1.5


@pytest.mark.parametrize("value", ["soon", "0", "-1", "600"])
def test_an_export_lag_that_is_no_sensible_duration_names_the_key_and_value(value: str) -> None:
    with pytest.raises(ConfigurationError, match=f"'span_export_lag_s' must be .* got '{value}'"):
        resolve_target({"target": "kubernetes", "ingress_url": "http://i",
                        "traces_url": "http://t", "span_export_lag_s": value})
