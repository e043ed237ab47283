"""Resolve the experiment configuration into where the probes send traffic and read evidence.

Configuration keys (architecture.md "Experiment configuration keys"): ``target``
(``local`` | ``kubernetes``), ``kubeconfig``, ``namespace`` (default ``shop``),
``ingress_url``, ``traces_url``, ``traces_api`` (``jaeger`` | ``tempo``),
``meshchaos_state_dir``, ``span_export_lag_s``. On target ``local`` the URLs and the
kubeconfig come from the state dir of the running mesh (``endpoints.json``,
``kubeconfig``); explicit keys win.

``span_export_lag_s`` is how long after a span ends it can take to show in the trace
query API. The local mesh exports within 20 to 60 ms of a span's end; on a cluster
Envoy's OpenTelemetry tracer and the OpenTelemetry SDKs flush every 5 s by default
(``tracing.opentelemetry.flush_interval_ms``, ``OTEL_BSP_SCHEDULE_DELAY``), and the
collector and backend add their own delay, so waiting less judges traces before they
are complete.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from probes.errors import ConfigurationError

__all__ = ["Target", "resolve_target"]

DEFAULT_NAMESPACE = "shop"
DEFAULT_STATE_DIR = ".meshchaos"
# Export interval + encode/POST/ingest margin, per target (see the module docstring).
DEFAULT_EXPORT_LAG_S = {"local": 0.12, "kubernetes": 7.0}


@dataclass(frozen=True)
class Target:
    """Where one probe run sends traffic and reads evidence."""

    kind: str
    namespace: str
    ingress_url: str
    traces_url: str
    traces_api: str
    kubeconfig: str | None
    span_export_lag_s: float = DEFAULT_EXPORT_LAG_S["local"]

    def api_client(self) -> Any:
        """A Kubernetes ``ApiClient`` for this target's kubeconfig (default: the usual one)."""
        from kubernetes import config as kube_config  # slow import, only when evidence is read
        from kubernetes.config.config_exception import ConfigException

        try:
            return kube_config.new_client_from_config(  # type: ignore[no-untyped-call]
                config_file=self.kubeconfig)
        except (ConfigException, OSError) as exc:
            raise ConfigurationError(
                f"cannot load kubeconfig {self.kubeconfig or '(default)'!r}: {exc}") from exc


def _endpoints(state_dir: Path) -> Mapping[str, Any]:
    path = state_dir / "endpoints.json"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ConfigurationError(f"no local mesh runs from state dir '{state_dir}' ({path.name} "
                                 "is missing): start one with `meshchaos up`") from exc
    except (OSError, ValueError) as exc:
        raise ConfigurationError(f"unreadable endpoints file '{path}': {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigurationError(f"endpoints file '{path}' is not a JSON object")
    return data


def _require(config: Mapping[str, Any], key: str, kind: str) -> str:
    value = config.get(key)
    if not value:
        raise ConfigurationError(f"configuration key '{key}' is required on target '{kind}'")
    return str(value).rstrip("/")


def resolve_target(configuration: Mapping[str, Any] | None) -> Target:
    """Turn a Chaos Toolkit configuration dict into a :class:`Target`."""
    config = dict(configuration or {})
    kind = str(config.get("target", "local"))
    namespace = str(config.get("namespace") or DEFAULT_NAMESPACE)
    api = str(config.get("traces_api") or "jaeger").lower()
    if api not in ("jaeger", "tempo"):
        raise ConfigurationError(f"configuration key 'traces_api' must be 'jaeger' or 'tempo', "
                                 f"got {api!r}")
    if kind == "local":
        state_dir = Path(str(config.get("meshchaos_state_dir") or DEFAULT_STATE_DIR))
        endpoints = _endpoints(state_dir)
        kubeconfig = config.get("kubeconfig") or str(state_dir / "kubeconfig")
        return Target(kind, namespace,
                      str(config.get("ingress_url") or endpoints.get("ingress", "")).rstrip("/"),
                      str(config.get("traces_url") or endpoints.get("traces", "")).rstrip("/"),
                      api, str(kubeconfig), _export_lag(config, kind))
    if kind == "kubernetes":
        return Target(kind, namespace, _require(config, "ingress_url", kind),
                      _require(config, "traces_url", kind), api,
                      str(config["kubeconfig"]) if config.get("kubeconfig") else None,
                      _export_lag(config, kind))
    raise ConfigurationError(f"configuration key 'target' must be 'local' or 'kubernetes', "
                             f"got {kind!r}")


def _export_lag(config: Mapping[str, Any], kind: str) -> float:
    raw = config.get("span_export_lag_s")
    if raw is None or raw == "":
        return DEFAULT_EXPORT_LAG_S[kind]
    try:
        value = float(raw)
    except (TypeError, ValueError):
        value = -1.0
    if not 0 < value <= 60:
        raise ConfigurationError(f"configuration key 'span_export_lag_s' must be seconds in "
                                 f"(0, 60], got {raw!r}")
    return value
