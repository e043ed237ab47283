"""Evidence read through the Kubernetes API: istio-proxy logs, mesh config, VirtualServices.

The same calls work against a real cluster and the local mesh (it serves the same API
subset). Every call carries a request timeout; API errors become :class:`EvidenceError`
naming the object.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import yaml

from localmesh.yamldoc import safe_load
from probes.coreapi import core_get, core_get_json
from probes.errors import EvidenceError
from probes.evidence.accesslog import AccessLogRecord, LogFormat, compile_format, parse_lines
from probes.evidence.formats import ISTIO_JSON, ISTIO_TEXT
from probes.evidence.gcpause import gc_paused
from probes.evidence.routes import Route

__all__ = ["MeshSettings", "parse_duration_ms", "parse_mesh_config", "read_access_log_settings",
           "read_mesh_settings", "read_proxy_logs", "read_routes",
           "routes_from_virtual_services"]

HONOR_ANNOTATION = "meshchaos.io/honor-app-envoy-headers"


@dataclass(frozen=True)
class MeshSettings:
    """What the probes need from the mesh config (architecture.md "Mesh config")."""

    access_log_enabled: bool
    log_format: LogFormat
    sampling_percent: float
    honor_app_envoy_headers: bool


def parse_mesh_config(mesh_yaml: str | None,
                      annotations: Mapping[str, str] | None = None) -> MeshSettings:
    """Parse the ``mesh`` key of ConfigMap istio-system/istio."""
    try:
        mesh = safe_load(mesh_yaml or "") or {}
    except yaml.YAMLError as exc:
        raise EvidenceError(f"configmap istio-system/istio key 'mesh' is not YAML: {exc}") from exc
    if not isinstance(mesh, dict):
        raise EvidenceError("configmap istio-system/istio key 'mesh' is not a mapping")
    encoding = str(mesh.get("accessLogEncoding") or "TEXT").upper()
    fmt: str | Mapping[str, str] | None = mesh.get("accessLogFormat") or None
    enabled = bool(mesh.get("accessLogFile"))
    for provider in mesh.get("extensionProviders") or ():
        file_log = provider.get("envoyFileAccessLog") if isinstance(provider, dict) else None
        if file_log and not fmt:
            log_format = file_log.get("logFormat") or {}
            fmt = log_format.get("text") or log_format.get("labels")
            encoding = "JSON" if "labels" in log_format else "TEXT"
            enabled = True
    if encoding == "JSON":
        fmt = json.loads(fmt) if isinstance(fmt, str) else (fmt or ISTIO_JSON)
    sampling = (mesh.get("defaultConfig") or {}).get("tracing", {}).get("sampling", 1.0)
    flag = (annotations or {}).get(HONOR_ANNOTATION, "false")
    return MeshSettings(enabled, compile_format(fmt or ISTIO_TEXT, encoding), float(sampling),
                        str(flag).lower() == "true")


def _api_error(what: str, exc: Exception) -> EvidenceError:
    status = getattr(exc, "status", None)
    detail = f"http {status}" if status else str(exc)
    return EvidenceError(f"could not read {what}: {detail}")


def read_mesh_settings(api_client: Any, *, timeout_s: float = 5.0) -> MeshSettings:
    """Read ConfigMap istio-system/istio (absent → Istio's defaults: no access log)."""
    from kubernetes.client.exceptions import ApiException

    what = "configmap istio-system/istio"
    try:
        cm = core_get_json(api_client, "/api/v1/namespaces/istio-system/configmaps/istio",
                           timeout_s=timeout_s)
    except ApiException as exc:
        if exc.status == 404:
            return parse_mesh_config(None)
        raise _api_error(what, exc) from exc
    except OSError as exc:
        raise _api_error(what, exc) from exc
    except ValueError as exc:
        raise EvidenceError(f"could not read {what}: the API sent no JSON ({exc})") from exc
    return parse_mesh_config((cm.get("data") or {}).get("mesh"),
                             (cm.get("metadata") or {}).get("annotations") or {})


def read_access_log_settings(api_client: Any, *, timeout_s: float, why: str) -> MeshSettings:
    """The mesh settings of a probe that reads access logs: an :class:`EvidenceError` saying
    ``why`` it needs them when the mesh's access log is off."""
    mesh = read_mesh_settings(api_client, timeout_s=timeout_s)
    if not mesh.access_log_enabled:
        raise EvidenceError("the mesh access log is off (istio-system/istio accessLogFile is "
                            f"empty): {why}")
    return mesh


def read_proxy_logs(api_client: Any, namespace: str, log_format: LogFormat, *,
                    since_seconds: int, timeout_s: float = 5.0,
                    ) -> tuple[list[AccessLogRecord], int]:
    """Parse the istio-proxy log of every pod of ``namespace`` written in the last seconds.

    The logs are read concurrently (one request per pod, up to ``_LOG_READERS`` at once),
    then parsed in pod order.
    """
    pods = _sidecar_pods(api_client, namespace, timeout_s)
    if not pods:
        return [], 0
    with ThreadPoolExecutor(max_workers=min(_LOG_READERS, len(pods)),
                            thread_name_prefix="meshchaos-logs") as pool:
        texts = list(pool.map(lambda pod: _proxy_log(api_client, namespace, pod[0],
                                                     since_seconds, timeout_s), pods))
    records: list[AccessLogRecord] = []
    skipped = 0
    with gc_paused():
        for (name, hop), text in zip(pods, texts, strict=True):
            if text is None:
                continue
            got, bad = parse_lines(log_format, namespace, name, text.splitlines(), hop)
            records.extend(got)
            skipped += bad
    return records, skipped


_LOG_READERS = 8


def _sidecar_pods(api_client: Any, namespace: str,
                  timeout_s: float) -> list[tuple[str, str | None]]:
    """``(pod name, app label)`` of each pod of the namespace with an istio-proxy container.

    Read as plain JSON: only three fields are needed, and building the client's models
    of every pod costs more than the request.
    """
    from kubernetes.client.exceptions import ApiException

    try:
        doc = core_get_json(api_client, f"/api/v1/namespaces/{quote(namespace)}/pods",
                            timeout_s=timeout_s)
    except (ApiException, OSError) as exc:
        raise _api_error(f"pods of namespace '{namespace}'", exc) from exc
    except ValueError as exc:
        raise EvidenceError(f"could not read pods of namespace '{namespace}': the API sent "
                            f"no JSON ({exc})") from exc
    pods = []
    for pod in doc.get("items") or ():
        meta, spec = pod.get("metadata") or {}, pod.get("spec") or {}
        if any(c.get("name") == "istio-proxy" for c in spec.get("containers") or ()):
            pods.append((str(meta["name"]), (meta.get("labels") or {}).get("app")))
    return pods


def _proxy_log(api_client: Any, namespace: str, name: str, since_seconds: int,
               timeout_s: float) -> str | None:
    """One pod's istio-proxy log text; None when the pod went away meanwhile."""
    from kubernetes.client.exceptions import ApiException

    try:
        text = core_get(api_client, f"/api/v1/namespaces/{quote(namespace)}/pods/{quote(name)}/log",
                        query={"container": "istio-proxy", "sinceSeconds": max(1, since_seconds)},
                        timeout_s=timeout_s, accept="text/plain").decode(errors="replace")
    except ApiException as exc:
        if exc.status == 404:  # the pod went away (pod-kill): its evidence went with it
            return None
        raise _api_error(f"istio-proxy log of pod '{namespace}/{name}'", exc) from exc
    except OSError as exc:
        raise _api_error(f"istio-proxy log of pod '{namespace}/{name}'", exc) from exc
    return text


_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)$")
_UNIT_MS = {"ns": 1e-6, "us": 1e-3, "µs": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60_000.0,
            "h": 3_600_000.0}


def parse_duration_ms(value: Any) -> int:
    """``"0.5s"`` → 500; unset → 0 (Istio: no timeout, §2.1)."""
    if not value:
        return 0
    match = _DURATION.match(str(value).strip())
    if match is None:
        raise EvidenceError(f"unparseable duration {value!r} in a VirtualService")
    return round(float(match.group(1)) * _UNIT_MS[match.group(2)])


def routes_from_virtual_services(items: Iterable[Mapping[str, Any]]) -> list[Route]:
    """Normalise VirtualService HTTP routes (keyed by destination service short name)."""
    routes: list[Route] = []
    for vs in items:
        name = f"{vs['metadata'].get('namespace', '')}/{vs['metadata']['name']}"
        spec = vs.get("spec") or {}
        for http in spec.get("http") or ():
            dests = http.get("route") or [{}]
            host = str((dests[0].get("destination") or {}).get("host")
                       or (spec.get("hosts") or ["?"])[0])
            retries = http.get("retries") or {}
            retry_on = str(retries.get("retryOn") or "")
            routes.append(Route(name, host.split(".", 1)[0], parse_duration_ms(http.get("timeout")),
                                int(retries.get("attempts") or 0),
                                parse_duration_ms(retries.get("perTryTimeout")),
                                tuple(t for t in retry_on.split(",") if t)))
    return routes


def read_routes(api_client: Any, namespace: str, *, timeout_s: float = 5.0) -> list[Route]:
    """Read the namespace's VirtualServices (networking.istio.io v1, then v1beta1)."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    custom = client.CustomObjectsApi(api_client)
    last: Exception | None = None
    for version in ("v1", "v1beta1", "v1alpha3"):
        try:
            doc = custom.list_namespaced_custom_object("networking.istio.io", version, namespace,
                                                       "virtualservices",
                                                       _request_timeout=timeout_s)
        except ApiException as exc:
            if exc.status == 404:
                last = exc
                continue
            raise _api_error(f"virtualservices of namespace '{namespace}'", exc) from exc
        except OSError as exc:
            raise _api_error(f"virtualservices of namespace '{namespace}'", exc) from exc
        items = doc.get("items") if isinstance(doc, dict) else None
        return routes_from_virtual_services(items or ())
    raise _api_error(f"virtualservices of namespace '{namespace}'", last or Exception("none"))
