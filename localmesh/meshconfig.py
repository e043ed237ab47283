"""Istio's mesh configuration, read from the store the way istiod reads it.

Sources (docs/architecture.md "Mesh config"):
- ConfigMap ``istio`` in ``istio-system``, key ``mesh`` (YAML MeshConfig):
  ``defaultConfig.tracing.sampling`` (percent, default 1.0 as Istio),
  ``accessLogFile`` (non-empty = on), ``accessLogEncoding``, ``accessLogFormat``,
  ``extensionProviders[].envoyFileAccessLog``, ``connectTimeout`` (default 10s,
  docs/fidelity.md §2.1);
- ``Telemetry`` objects: ``accessLogging[].providers[].name`` enables a provider
  (``envoy`` = Istio's built-in file log), ``disabled: true`` turns it off,
  ``tracing[].randomSamplingPercentage`` overrides sampling. The root namespace
  (``istio-system``) applies mesh-wide, a namespace's own objects override it;
- the ConfigMap annotation ``meshchaos.io/honor-app-envoy-headers: "true"``: the
  §1.7 switch (default off = app x-envoy-* headers stripped, as a real sidecar).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any

import yaml

from localmesh.documents import AccessLogEncoding, MeshDoc
from localmesh.errors import Invalid, NotFound
from localmesh.store import ObjectStore
from localmesh.yamldoc import safe_load

__all__ = ["HONOR_ANNOTATION", "MeshConfig", "parse_duration_ms"]

HONOR_ANNOTATION = "meshchaos.io/honor-app-envoy-headers"
ROOT_NAMESPACE = "istio-system"
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)\s*$")
_UNIT_MS = {"ns": 1e-6, "us": 1e-3, "µs": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60_000.0,
            "h": 3_600_000.0}


def parse_duration_ms(value: Any, where: str) -> float:
    """A protobuf/Go duration (``10s``, ``250ms``, ``1.5s``) in milliseconds."""
    m = _DURATION.match(str(value))
    if m is None:
        raise Invalid(f"{where}: not a duration: {value!r}", field=where)
    return float(m.group(1)) * _UNIT_MS[m.group(2)]


@dataclass(frozen=True)
class MeshConfig:
    """The mesh-wide settings the sidecars need."""

    honor_app_envoy_headers: bool = False
    sampling_percent: float = 1.0
    access_log_enabled: bool = False
    access_log_encoding: AccessLogEncoding = "TEXT"
    access_log_format: str = ""
    connect_timeout_ms: float = 10_000.0
    providers: tuple[tuple[str, str], ...] = ()  # (name, text format) of envoyFileAccessLog
    telemetry: tuple[tuple[str, dict[str, Any]], ...] = ()  # (namespace, spec)

    @classmethod
    def from_store(cls, store: ObjectStore) -> MeshConfig:
        """Read the ``istio`` ConfigMap and the Telemetry objects (defaults when absent)."""
        try:
            cm = store.get("", "configmaps", ROOT_NAMESPACE, "istio")
        except NotFound:
            cm = {}
        mesh = cls._mesh_doc(cm)
        annotations = (cm.get("metadata") or {}).get("annotations") or {}
        tracing = ((mesh.get("defaultConfig") or {}).get("tracing") or {})
        sampling = float(tracing.get("sampling", 1.0))
        encoding: AccessLogEncoding = (
            "JSON" if str(mesh.get("accessLogEncoding") or "").upper() == "JSON" else "TEXT")
        connect = mesh.get("connectTimeout")
        providers = []
        for p in mesh.get("extensionProviders") or []:
            file_log = (p or {}).get("envoyFileAccessLog")
            if file_log is not None:
                text = ((file_log.get("logFormat") or {}).get("text")) or ""
                providers.append((str(p.get("name", "")), str(text)))
        telemetry = tuple((t["metadata"].get("namespace", ""), t.get("spec") or {})
                          for t in store.list("telemetry.istio.io", "telemetries"))
        return cls(
            honor_app_envoy_headers=str(annotations.get(HONOR_ANNOTATION, "")).lower() == "true",
            sampling_percent=sampling,
            access_log_enabled=bool(mesh.get("accessLogFile")),
            access_log_encoding=encoding,
            access_log_format=str(mesh.get("accessLogFormat") or ""),
            connect_timeout_ms=parse_duration_ms(connect, "mesh.connectTimeout")
            if connect else 10_000.0,
            providers=tuple(providers), telemetry=telemetry)

    @staticmethod
    def _mesh_doc(cm: dict[str, Any]) -> dict[str, Any]:
        raw = (cm.get("data") or {}).get("mesh")
        if not raw:
            return {}
        try:
            doc = safe_load(raw)
        except yaml.YAMLError as exc:
            raise Invalid(f"configmap istio-system/istio: data.mesh is not YAML: {exc}",
                          field="data.mesh") from None
        if doc is None:
            return {}
        if not isinstance(doc, dict):
            raise Invalid("configmap istio-system/istio: data.mesh must be a mapping",
                          field="data.mesh")
        return doc

    def for_namespace(self, namespace: str) -> MeshConfig:
        """Apply the root Telemetry objects, then the namespace's own (no workload selectors)."""
        out = self
        for scope in (ROOT_NAMESPACE, namespace):
            for ns, spec in self.telemetry:
                if ns == scope and not spec.get("selector"):
                    out = out._with_telemetry(spec)
        return out

    def _with_telemetry(self, spec: dict[str, Any]) -> MeshConfig:
        out = self
        for entry in spec.get("accessLogging") or []:
            if entry.get("disabled") is True:
                out = replace(out, access_log_enabled=False)
                continue
            for p in entry.get("providers") or []:
                name = str((p or {}).get("name", ""))
                fmt = dict(self.providers).get(name)
                if name == "envoy":
                    out = replace(out, access_log_enabled=True)
                elif fmt is not None:
                    out = replace(out, access_log_enabled=True, access_log_encoding="TEXT",
                                  access_log_format=fmt)
        for entry in spec.get("tracing") or []:
            pct = entry.get("randomSamplingPercentage")
            if pct is not None:
                out = replace(out, sampling_percent=float(pct))
        return out

    def to_doc(self, otlp_endpoint: str,
               otlp_headers: dict[str, str] | None = None) -> MeshDoc:
        """The ``mesh`` block of a sidecar configuration document (``otlp_headers``: what
        each span export carries, the receiver's bearer token)."""
        return {
            "honor_app_envoy_headers": self.honor_app_envoy_headers,
            "sampling_percent": self.sampling_percent,
            "access_log": {"enabled": self.access_log_enabled,
                           "encoding": self.access_log_encoding,
                           "format": self.access_log_format},
            "connect_timeout_ms": self.connect_timeout_ms,
            "otlp_endpoint": otlp_endpoint,
            "otlp_headers": dict(otlp_headers or {}),
        }
