"""Server-side printing: ``meta.k8s.io/v1`` Table answers, the columns ``kubectl get`` shows.

kubectl asks every ``get`` with ``Accept: application/json;as=Table;v=v1;g=meta.k8s.io``
and prints the rows the server computed ("Receiving resources as Tables",
https://kubernetes.io/docs/reference/using-api/api-concepts/#receiving-resources-as-tables).
The columns and cells follow kube-apiserver's printers
(``pkg/printers/internalversion/printers.go``: pods, deployments, replicasets, services,
events, namespaces, configmaps, secrets, serviceaccounts, endpoints) and, for custom
kinds, the CRD's ``additionalPrinterColumns`` (apiextensions-apiserver's
``tableconvertor``), Name and Age when a CRD declares none (docs/fidelity.md §8.2).
Every built-in row is computed with the wide columns; kubectl hides ``priority: 1``
columns unless ``-o wide``.
"""

from __future__ import annotations

import re
import time
from calendar import timegm
from collections.abc import Callable, Mapping
from typing import Any

from localmesh.apiserver.crds import crd_version
from localmesh.apiserver.paths import Target
from localmesh.documents import KubeObject

__all__ = ["human_duration", "table_version", "to_table"]

Column = dict[str, Any]
Cells = list[Any]

_NAME_DOC = ("Name must be unique within a namespace. Is required when creating resources, "
             "although some resources may allow a client to request the generation of an "
             "appropriate name automatically.")
_AGE_DOC = ("CreationTimestamp is a timestamp representing the server time when this object "
            "was created.")


def table_version(accept: str) -> str | None:
    """The Table version an Accept header asks for first (``v1``/``v1beta1``), or None.

    A clause is ``application/json;as=Table;v=v1;g=meta.k8s.io``; clients list the Table
    versions they read before plain ``application/json``.
    """
    for clause in accept.split(","):
        media, *params = (p.strip() for p in clause.split(";"))
        if media not in ("application/json", "*/*"):
            continue
        options = dict(p.split("=", 1) for p in params if "=" in p)
        if options.get("as") == "Table" and options.get("g") == "meta.k8s.io" \
                and options.get("v") in ("v1", "v1beta1"):
            return options["v"]
        if not options.get("as"):
            return None  # a plain object comes first
    return None


def human_duration(seconds: float) -> str:
    """apimachinery's ``duration.HumanDuration``, which every AGE cell is written with."""
    whole = int(seconds)
    if whole < -1:
        return "<invalid>"
    if whole < 0:
        return "0s"
    if whole < 120:
        return f"{whole}s"
    minutes = whole // 60
    if minutes < 10:
        return f"{minutes}m" if whole % 60 == 0 else f"{minutes}m{whole % 60}s"
    if minutes < 180:
        return f"{minutes}m"
    hours = whole // 3600
    if hours < 8:
        return f"{hours}h" if minutes % 60 == 0 else f"{hours}h{minutes % 60}m"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        return f"{hours // 24}d" if hours % 24 == 0 else f"{hours // 24}d{hours % 24}h"
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    if hours < 24 * 365 * 8:
        years, days = hours // 24 // 365, (hours // 24) % 365
        return f"{years}y" if days == 0 else f"{years}y{days}d"
    return f"{hours // 24 // 365}y"


_FRACTION = re.compile(r"\.\d+")


def _since(timestamp: Any, now: float) -> str:
    """``translateTimestampSince``: ``<unknown>`` for no time, else the age."""
    if not isinstance(timestamp, str) or not timestamp:
        return "<unknown>"
    try:
        then = timegm(time.strptime(_FRACTION.sub("", timestamp), "%Y-%m-%dT%H:%M:%SZ"))
    except ValueError:
        return "<invalid>"
    return human_duration(now - then)


def _col(name: str, description: str, *, type_: str = "string", fmt: str = "",
         priority: int = 0) -> Column:
    return {"name": name, "type": type_, "format": fmt, "description": description,
            "priority": priority}


def _name_col() -> Column:
    return _col("Name", _NAME_DOC, fmt="name")


def _age_col() -> Column:
    return _col("Age", _AGE_DOC)


def _meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    meta = obj.get("metadata")
    return meta if isinstance(meta, dict) else {}


def _section(obj: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = obj.get(key)
    return value if isinstance(value, dict) else {}


def _labels(selector: Any) -> str:
    """``labels.FormatLabels``: ``a=b,c=d``, ``<none>`` when empty."""
    if not isinstance(selector, dict) or not selector:
        return "<none>"
    return ",".join(f"{k}={v}" for k, v in sorted(selector.items()))


def _label_selector(selector: Any) -> str:
    """``metav1.FormatLabelSelector`` for matchLabels (and matchExpressions by operator)."""
    if not isinstance(selector, dict):
        return "<none>"
    parts = [f"{k}={v}" for k, v in sorted((selector.get("matchLabels") or {}).items())]
    for expr in selector.get("matchExpressions") or []:
        values = ",".join(expr.get("values") or [])
        op = {"In": "in", "NotIn": "notin"}.get(expr.get("operator", ""), "")
        if op:
            parts.append(f"{expr.get('key')} {op} ({values})")
        elif expr.get("operator") == "Exists":
            parts.append(str(expr.get("key")))
        elif expr.get("operator") == "DoesNotExist":
            parts.append(f"!{expr.get('key')}")
    return ",".join(parts) or "<none>"


def _containers_and_images(template_spec: Mapping[str, Any]) -> tuple[str, str]:
    containers = [c for c in template_spec.get("containers") or [] if isinstance(c, dict)]
    return (",".join(str(c.get("name", "")) for c in containers),
            ",".join(str(c.get("image", "")) for c in containers))


# -- pods ---------------------------------------------------------------------------

_POD_COLUMNS = [
    _name_col(),
    _col("Ready", "The aggregate readiness state of this pod for accepting traffic."),
    _col("Status", "The aggregate status of the containers in this pod."),
    _col("Restarts", "The number of times the containers in this pod have been restarted "
         "and when the last container in this pod has restarted."),
    _age_col(),
    _col("IP", "IP address allocated to the pod. Routable at least within the cluster.",
         priority=1),
    _col("Node", "NodeName is a request to schedule this pod onto a specific node.",
         priority=1),
    _col("Nominated Node", "nominatedNodeName is set only when this pod preempts other "
         "pods on the node.", priority=1),
    _col("Readiness Gates", "If specified, all readiness gates will be evaluated for pod "
         "readiness.", priority=1),
]


def _pod_reason(pod: Mapping[str, Any]) -> str:
    """printPod's STATUS: phase, the status reason, a container's waiting/terminated reason."""
    status = _section(pod, "status")
    reason = str(status.get("reason") or status.get("phase") or "Pending")
    running = False
    for container in reversed(status.get("containerStatuses") or []):
        state = container.get("state") or {}
        waiting, terminated = state.get("waiting"), state.get("terminated")
        if waiting and waiting.get("reason"):
            reason = str(waiting["reason"])
        elif terminated and terminated.get("reason"):
            reason = str(terminated["reason"])
        elif terminated:
            reason = (f"Signal:{terminated['signal']}" if terminated.get("signal")
                      else f"ExitCode:{terminated.get('exitCode', 0)}")
        elif container.get("ready") and state.get("running") is not None:
            running = True
    if reason == "Completed" and running:
        ready = any(c.get("type") == "Ready" and c.get("status") == "True"
                    for c in status.get("conditions") or [])
        reason = "Running" if ready else "NotReady"
    if _meta(pod).get("deletionTimestamp"):
        reason = "Unknown" if status.get("reason") == "NodeLost" else "Terminating"
    return reason


def _pod_cells(pod: Mapping[str, Any], now: float) -> Cells:
    status, spec = _section(pod, "status"), _section(pod, "spec")
    statuses = [c for c in status.get("containerStatuses") or [] if isinstance(c, dict)]
    ready = sum(1 for c in statuses if c.get("ready"))
    restarts = sum(int(c.get("restartCount") or 0) for c in statuses)
    finished = [str(((c.get("lastState") or {}).get("terminated") or {}).get("finishedAt"))
                for c in statuses
                if ((c.get("lastState") or {}).get("terminated") or {}).get("finishedAt")]
    restart_cell = str(restarts)
    if finished:
        restart_cell = f"{restarts} ({_since(max(finished), now)} ago)"
    gates = spec.get("readinessGates") or []
    conditions = {c.get("type"): c.get("status") for c in status.get("conditions") or []}
    gates_cell = "<none>"
    if gates:
        met = sum(1 for g in gates if conditions.get(g.get("conditionType")) == "True")
        gates_cell = f"{met}/{len(gates)}"
    return [_meta(pod).get("name"), f"{ready}/{len(spec.get('containers') or [])}",
            _pod_reason(pod), restart_cell, _since(_meta(pod).get("creationTimestamp"), now),
            status.get("podIP") or "<none>", spec.get("nodeName") or "<none>",
            status.get("nominatedNodeName") or "<none>", gates_cell]


# -- workloads ------------------------------------------------------------------------

_WORKLOAD_WIDE = [
    _col("Containers", "Names of each container in the template.", priority=1),
    _col("Images", "Images referenced by each container in the template.", priority=1),
    _col("Selector", "Label selector for pods. Existing ReplicaSets whose pods are selected "
         "by this will be the ones affected by this deployment.", priority=1),
]
_DEPLOYMENT_COLUMNS = [
    _name_col(),
    _col("Ready", "Number of the pod with ready state"),
    _col("Up-to-date", "Total number of non-terminated pods targeted by this deployment that "
         "have the desired template spec.", type_="integer"),
    _col("Available", "Total number of available pods (ready for at least minReadySeconds) "
         "targeted by this deployment.", type_="integer"),
    _age_col(), *_WORKLOAD_WIDE,
]
_REPLICASET_COLUMNS = [
    _name_col(),
    _col("Desired", "Replicas is the number of desired replicas.", type_="integer"),
    _col("Current", "Replicas is the most recently observed number of replicas.",
         type_="integer"),
    _col("Ready", "The number of ready replicas for this replica set.", type_="integer"),
    _age_col(), *_WORKLOAD_WIDE,
]


def _workload_wide(obj: Mapping[str, Any]) -> Cells:
    spec = _section(obj, "spec")
    template = _section(_section(spec, "template"), "spec")
    names, images = _containers_and_images(template)
    return [names, images, _label_selector(spec.get("selector"))]


def _deployment_cells(obj: Mapping[str, Any], now: float) -> Cells:
    spec, status = _section(obj, "spec"), _section(obj, "status")
    desired = int(spec.get("replicas", 1) or 0)
    return [_meta(obj).get("name"), f"{int(status.get('readyReplicas') or 0)}/{desired}",
            int(status.get("updatedReplicas") or 0), int(status.get("availableReplicas") or 0),
            _since(_meta(obj).get("creationTimestamp"), now), *_workload_wide(obj)]


def _replicaset_cells(obj: Mapping[str, Any], now: float) -> Cells:
    spec, status = _section(obj, "spec"), _section(obj, "status")
    return [_meta(obj).get("name"), int(spec.get("replicas", 1) or 0),
            int(status.get("replicas") or 0), int(status.get("readyReplicas") or 0),
            _since(_meta(obj).get("creationTimestamp"), now), *_workload_wide(obj)]


# -- services, endpoints ----------------------------------------------------------------

_SERVICE_COLUMNS = [
    _name_col(),
    _col("Type", "type determines how the Service is exposed."),
    _col("Cluster-IP", "clusterIP is the IP address of the service."),
    _col("External-IP", "externalIPs is a list of IP addresses for which nodes in the "
         "cluster will also accept traffic for this service."),
    _col("Port(s)", "The list of ports that are exposed by this service."),
    _age_col(),
    _col("Selector", "Route service traffic to pods with label keys and values matching "
         "this selector.", priority=1),
]


def _external_ip(spec: Mapping[str, Any], status: Mapping[str, Any]) -> str:
    kind = spec.get("type") or "ClusterIP"
    external = [str(ip) for ip in spec.get("externalIPs") or []]
    if kind == "ExternalName":
        return str(spec.get("externalName") or "<none>")
    if kind == "LoadBalancer":
        ingress = [str(i.get("ip") or i.get("hostname"))
                   for i in _section(status, "loadBalancer").get("ingress") or []]
        return ",".join(ingress + external) or "<pending>"
    return ",".join(external) or "<none>"


def _ports(spec: Mapping[str, Any]) -> str:
    parts = []
    for port in spec.get("ports") or []:
        protocol = port.get("protocol") or "TCP"
        if port.get("nodePort"):
            parts.append(f"{port.get('port')}:{port['nodePort']}/{protocol}")
        else:
            parts.append(f"{port.get('port')}/{protocol}")
    return ",".join(parts) or "<none>"


def _service_cells(obj: Mapping[str, Any], now: float) -> Cells:
    spec, status = _section(obj, "spec"), _section(obj, "status")
    return [_meta(obj).get("name"), spec.get("type") or "ClusterIP",
            spec.get("clusterIP") or "<none>", _external_ip(spec, status), _ports(spec),
            _since(_meta(obj).get("creationTimestamp"), now), _labels(spec.get("selector"))]


_ENDPOINTS_COLUMNS = [_name_col(), _col("Endpoints", "Endpoints is the list of endpoints."),
                      _age_col()]


def _endpoints_cells(obj: Mapping[str, Any], now: float) -> Cells:
    """formatEndpoints: ip:port pairs, the first three then ``+ N more...``."""
    pairs: list[str] = []
    for subset in obj.get("subsets") or []:
        ports = [p.get("port") for p in subset.get("ports") or []] or [None]
        for address in subset.get("addresses") or []:
            pairs += [f"{address.get('ip')}:{p}" if p else str(address.get("ip"))
                      for p in ports]
    cell = ",".join(pairs[:3]) + (f" + {len(pairs) - 3} more..." if len(pairs) > 3 else "")
    return [_meta(obj).get("name"), cell or "<none>",
            _since(_meta(obj).get("creationTimestamp"), now)]


# -- events ---------------------------------------------------------------------------

_EVENT_COLUMNS = [
    _col("Last Seen", "The time at which the most recent occurrence of this event was "
         "recorded."),
    _col("Type", "Type of this event (Normal, Warning), new types could be added in the "
         "future"),
    _col("Reason", "This should be a short, machine understandable string that gives the "
         "reason for the transition into the object's current status."),
    _col("Object", "The object that this event is about."),
    _col("Subobject", "If referring to a piece of an object instead of an entire object, "
         "this string should contain a valid JSON/Go field access statement.", priority=1),
    _col("Source", "The component reporting this event. Short, machine understandable "
         "string.", priority=1),
    _col("Message", "A human-readable description of the status of this operation."),
    _col("First Seen", "The time at which the event was first recorded.", priority=1),
    _col("Count", "The number of times this event has occurred.", priority=1),
    _col("Name", _NAME_DOC, fmt="name", priority=1),
]


def _event_cells(obj: Mapping[str, Any], now: float) -> Cells:
    first = (_since(obj["firstTimestamp"], now) if obj.get("firstTimestamp")
             else _since(obj.get("eventTime"), now))
    last = _since(obj["lastTimestamp"], now) if obj.get("lastTimestamp") else first
    count = int(obj.get("count") or 0) or 1
    series = _section(obj, "series")
    if series:
        last, count = _since(series.get("lastObservedTime"), now), int(series.get("count") or 1)
    involved = _section(obj, "involvedObject")
    kind = str(involved.get("kind") or "").lower()
    target = f"{kind}/{involved['name']}" if involved.get("name") else kind
    source = _section(obj, "source")
    component = source.get("component") or obj.get("reportingComponent") or ""
    host = source.get("host") or obj.get("reportingInstance") or ""
    return [last, obj.get("type"), obj.get("reason"), target, involved.get("fieldPath", ""),
            ", ".join(str(p) for p in (component, host) if p), str(obj.get("message") or
                                                                    "").strip(),
            first, count, _meta(obj).get("name")]


# -- the other core kinds -------------------------------------------------------------------

def _simple(*columns: tuple[str, str, str, Callable[[Mapping[str, Any]], Any]],
            ) -> tuple[list[Column], Callable[[Mapping[str, Any], float], Cells]]:
    """A Name + columns + Age printer."""
    defs = [_name_col(), *(_col(n, d, type_=t) for n, d, t, _ in columns), _age_col()]

    def cells(obj: Mapping[str, Any], now: float) -> Cells:
        return [_meta(obj).get("name"), *(f(obj) for _, _, _, f in columns),
                _since(_meta(obj).get("creationTimestamp"), now)]
    return defs, cells


_PRINTERS: dict[tuple[str, str], tuple[list[Column],
                                       Callable[[Mapping[str, Any], float], Cells]]] = {
    ("", "pods"): (_POD_COLUMNS, _pod_cells),
    ("apps", "deployments"): (_DEPLOYMENT_COLUMNS, _deployment_cells),
    ("apps", "replicasets"): (_REPLICASET_COLUMNS, _replicaset_cells),
    ("", "services"): (_SERVICE_COLUMNS, _service_cells),
    ("", "endpoints"): (_ENDPOINTS_COLUMNS, _endpoints_cells),
    ("", "events"): (_EVENT_COLUMNS, _event_cells),
    ("", "namespaces"): _simple(("Status", "The status of the namespace", "string",
                                 lambda o: _section(o, "status").get("phase") or "Active")),
    ("", "configmaps"): _simple(("Data", "Data contains the configuration data.", "integer",
                                 lambda o: len(o.get("data") or {})
                                 + len(o.get("binaryData") or {}))),
    ("", "secrets"): _simple(("Type", "The type of the secret", "string",
                              lambda o: o.get("type") or "Opaque"),
                             ("Data", "The number of keys in the secret", "integer",
                              lambda o: len(o.get("data") or {}))),
    ("", "serviceaccounts"): _simple(("Secrets", "Secrets is a list of the secrets in the "
                                      "same namespace that pods running using this "
                                      "ServiceAccount are allowed to use.", "integer",
                                      lambda o: len(o.get("secrets") or []))),
}


# -- custom kinds ---------------------------------------------------------------------------

_PATH_PART = re.compile(r"\.([^.\[\]]+)|\[(\d+)\]")


def _json_path(obj: Any, path: str) -> Any:
    """A CRD printer column's simple JSONPath (``.spec.action``, ``.a.b[0].c``), or None."""
    value = obj
    text = path.strip()
    if text.startswith("{") and text.endswith("}"):
        text = text[1:-1]
    for match in _PATH_PART.finditer(text):
        key, index = match.groups()
        if key is not None and isinstance(value, dict):
            value = value.get(key)
        elif index is not None and isinstance(value, list) and int(index) < len(value):
            value = value[int(index)]
        else:
            return None
        if value is None:
            return None
    return value


def _custom_cell(column: Mapping[str, Any], obj: Mapping[str, Any], now: float) -> Any:
    """The tableconvertor's cell: strings printed, dates as ages, others as JSON values."""
    value = _json_path(obj, str(column.get("jsonPath", "")))
    if value is None:
        return None
    kind = column.get("type")
    if kind == "date":
        return _since(value, now) if isinstance(value, str) else "<invalid>"
    if kind == "string":
        return value if isinstance(value, str) else _go_print(value)
    if kind == "integer":
        return int(value) if isinstance(value, int | float) and not isinstance(value, bool) \
            else None
    if kind == "number":
        return value if isinstance(value, int | float) and not isinstance(value, bool) \
            else None
    if kind == "boolean":
        return value if isinstance(value, bool) else None
    return value


def _go_print(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + " ".join(_go_print(v) for v in value) + "]"
    if isinstance(value, dict):
        return "map[" + " ".join(f"{k}:{_go_print(v)}" for k, v in sorted(value.items())) + "]"
    return str(value)


def _custom_printer(target: Target) -> tuple[list[Column],
                                             Callable[[Mapping[str, Any], float], Cells]]:
    crd = crd_version(target.rtype.group, target.rtype.kind, target.version)
    declared = list(crd.printer_columns) if crd is not None else []
    if not declared:  # a CRD without printer columns prints Name and Age
        declared = [{"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp",
                     "description": _AGE_DOC}]
    columns = [_name_col(), *(
        _col(str(c["name"]), str(c.get("description") or ""), type_=str(c.get("type")),
             fmt=str(c.get("format") or ""), priority=int(c.get("priority") or 0))
        for c in declared)]

    def cells(obj: Mapping[str, Any], now: float) -> Cells:
        return [_meta(obj).get("name"), *(_custom_cell(c, obj, now) for c in declared)]
    return columns, cells


# -- the Table ----------------------------------------------------------------------------

def _row_object(obj: KubeObject, include: str, version: str) -> KubeObject | None:
    if include == "None":
        return None
    if include == "Object":
        return obj
    return {"kind": "PartialObjectMetadata", "apiVersion": f"meta.k8s.io/{version}",
            "metadata": obj.get("metadata") or {}}


def to_table(target: Target, objects: list[KubeObject], *, version: str = "v1",
             include_object: str = "PartialObjectMetadata", resource_version: str = "",
             now: float | None = None) -> KubeObject:
    """The Table of ``objects`` (one row each) as kube-apiserver renders it."""
    rtype = target.rtype
    columns, cells = _PRINTERS.get((rtype.group, rtype.plural)) or _custom_printer(target)
    at = time.time() if now is None else now
    rows = []
    for obj in objects:
        row: KubeObject = {"cells": cells(obj, at)}
        if (shown := _row_object(obj, include_object, version)) is not None:
            row["object"] = shown
        rows.append(row)
    metadata = {"resourceVersion": resource_version} if resource_version else {}
    return {"kind": "Table", "apiVersion": f"meta.k8s.io/{version}", "metadata": metadata,
            "columnDefinitions": [dict(c) for c in columns], "rows": rows}
