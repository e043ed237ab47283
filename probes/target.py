"""Resolve the experiment configuration into where the probes send traffic and read evidence.

Configuration keys (architecture.md "Experiment configuration keys"): ``target``
(``local`` | ``kubernetes``), ``kubeconfig``, ``namespace``, ``ingress_url``,
``traces_url``, ``traces_api`` (``jaeger`` | ``tempo``), ``meshchaos_state_dir``,
``span_export_lag_s``, ``entry_path``, ``entry_headers``, parsed by :mod:`probes.config`
(which holds every default). On target ``local`` the URLs and the
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

from probes.config import Settings, resolve
from probes.errors import ConfigurationError

__all__ = ["Target", "resolve_target", "target_of"]

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
    entry_path: str = "/"
    entry_headers: Mapping[str, str] | None = None

    def entry_url(self, path: str | None = None) -> str:
        """The URL of the probes' request: ``path`` if given, else the ``entry_path`` key."""
        return self.ingress_url + (path or self.entry_path)

    def request_headers(self, headers: Mapping[str, str] | None) -> dict[str, str]:
        """``entry_headers`` with an activity's own ``headers`` on top."""
        return {**dict(self.entry_headers or {}), **dict(headers or {})}

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


def _require(value: str, key: str, kind: str) -> str:
    if not value:
        raise ConfigurationError(f"configuration key '{key}' is required on target '{kind}'")
    return value


def resolve_target(configuration: Mapping[str, Any] | None) -> Target:
    """Turn a Chaos Toolkit configuration dict into a :class:`Target`."""
    settings = resolve(configuration)
    return target_of(settings)


def target_of(settings: Settings) -> Target:
    """The :class:`Target` of resolved settings (the local mesh's endpoints filled in)."""
    kind = settings.target
    lag = settings.span_export_lag_s or DEFAULT_EXPORT_LAG_S[kind]
    if kind == "local":
        state_dir = Path(settings.state_dir)
        endpoints = _endpoints(state_dir)
        ingress = settings.ingress_url or str(endpoints.get("ingress", "")).rstrip("/")
        traces = settings.traces_url or str(endpoints.get("traces", "")).rstrip("/")
        kubeconfig: str | None = settings.kubeconfig or str(state_dir / "kubeconfig")
    else:
        ingress = _require(settings.ingress_url, "ingress_url", kind)
        traces = _require(settings.traces_url, "traces_url", kind)
        kubeconfig = settings.kubeconfig or None
    return Target(kind, settings.namespace, ingress, traces, settings.traces_api, kubeconfig,
                  span_export_lag_s=lag, entry_path=settings.entry_path,
                  entry_headers=settings.entry_headers)
