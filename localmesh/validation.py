"""Validate objects the way the Kubernetes API server would before storing them.

Custom objects of ``chaos-mesh.org`` and ``networking.istio.io`` are checked
against the ``openAPIV3Schema`` of their CRD (``localmesh/schemas``), plus the
one family of CEL rules those schemas carry that matters to timeouts:
``duration(self) >= duration('1ms')`` on every Istio duration, which is what
makes a real API server reject ``timeout: 0s`` (schemas/SOURCES.md). Other CEL
rules (wildcard hosts in a few DestinationRule maps) are not evaluated.

Core kinds get the checks of their Go validation that our manifests can trip:
DNS-1123 names, a Deployment's selector matching its template labels,
containers with names, Services with ports.

Every failure is an :class:`~localmesh.errors.Invalid` whose message names the
kind, the object, the field path and the bad value, and whose ``field`` is the
dotted path (``spec.http[0].timeout``).
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Callable, Iterator, Mapping
from importlib import resources
from typing import Any

import jsonschema

from localmesh.documents import KubeObject
from localmesh.errors import BadRequest, Invalid
from localmesh.jsoncache import cache_file, cached_json
from localmesh.protocols import GRPC_CODES
from localmesh.resources import split_api_version
from localmesh.selectors import match_expressions, match_labels
from localmesh.store import ObjectStore
from localmesh.yamldoc import safe_load

__all__ = [
    "check_unknown_fields",
    "install_validation",
    "parse_go_duration",
    "prune_unknown_fields",
    "validate_object",
]


_SCHEMA_FILES = {
    ("chaos-mesh.org", "NetworkChaos"): "chaos-mesh.org_networkchaos.yaml",
    ("chaos-mesh.org", "PodChaos"): "chaos-mesh.org_podchaos.yaml",
    ("chaos-mesh.org", "HTTPChaos"): "chaos-mesh.org_httpchaos.yaml",
    ("networking.istio.io", "VirtualService"): "networking.istio.io_virtualservices.yaml",
    ("networking.istio.io", "DestinationRule"): "networking.istio.io_destinationrules.yaml",
}

_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS1123_SUBDOMAIN = re.compile(
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
# Kinds whose names must be a DNS-1123 label (no dots), as in Go's validation.
_LABEL_NAMED = {("", "Namespace"), ("", "Service")}

_DURATION_RULE = re.compile(r"^duration\(self\)\s*>=\s*duration\('([^']+)'\)$")
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_UNIT_NS = {"ns": 1, "us": 1_000, "µs": 1_000, "μs": 1_000, "ms": 1_000_000,
            "s": 1_000_000_000, "m": 60_000_000_000, "h": 3_600_000_000_000}


# -- schemas --------------------------------------------------------------------

@functools.cache
def _crd_schemas(filename: str) -> dict[str, KubeObject]:
    """Map each served version of a CRD file to its openAPIV3Schema."""
    data = resources.files("localmesh.schemas").joinpath(filename).read_bytes()

    def parse() -> dict[str, KubeObject]:
        # libyaml parses the 7,000-line DestinationRule CRD ~8x faster than pure Python, and
        # still takes 0.17 s of CPU for the five CRDs: every mesh start after the first reads
        # the JSON copy instead (40x faster).
        crd = safe_load(data)
        return {v["name"]: v["schema"]["openAPIV3Schema"] for v in crd["spec"]["versions"]}

    # The copy is named after the CRD's content.
    digest = hashlib.sha256(data).hexdigest()[:20]
    return cached_json(cache_file("crd-schemas", f"{filename}.{digest}.json"), parse)


@functools.cache
def _validator(filename: str, version: str) -> jsonschema.protocols.Validator:
    schema = _crd_schemas(filename)[version]
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft7Validator)
    return cls(schema)


def _path(parts: Iterator[str | int] | list[str | int]) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _label(obj: Mapping[str, Any]) -> str:
    return f"{obj.get('kind')} '{(obj.get('metadata') or {}).get('name', '')}'"


def _invalid(obj: Mapping[str, Any], field: str, value: Any, reason: str) -> Invalid:
    shown = ":" if value is _MISSING else f" {_show(value)}"
    meta = obj.get("metadata") or {}
    return Invalid(f"{_label(obj)}: {field}{shown} {reason}", kind=str(obj.get("kind", "")),
                   name=str(meta.get("name", "")), field=field)


_MISSING = object()


def _show(value: Any) -> str:
    text = f"'{value}'" if isinstance(value, str) else repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _check_schema(obj: KubeObject, filename: str) -> None:
    _, version = split_api_version(str(obj.get("apiVersion", "")))
    schemas = _crd_schemas(filename)
    if version not in schemas:
        raise _invalid(obj, "apiVersion", obj.get("apiVersion"),
                       f"is not served (versions: {', '.join(schemas)})")
    errors = sorted(_validator(filename, version).iter_errors(obj),
                    key=lambda e: (len(e.absolute_path), _path(list(e.absolute_path))))
    if errors:
        error = errors[0]
        where = list(error.absolute_path)
        if error.validator == "required":
            missing = re.search(r"'([^']+)' is a required property", error.message)
            field = _path([*where, missing.group(1)]) if missing else _path(where)
            raise _invalid(obj, field, _MISSING, "Required value")
        reason = error.message.replace(repr(error.instance), "").strip() or error.message
        raise _invalid(obj, _path(where) or "<root>", error.instance, reason)
    _check_cel_durations(obj, schemas[version], obj, [])


# -- unknown fields ----------------------------------------------------------------

# Every object has these, declared in its CRD schema or not (Istio's declare only spec).
_OBJECT_FIELDS = {"apiVersion", "kind", "metadata"}


def _unknown_fields(schema: Mapping[str, Any], value: Any, where: list[str | int],
                    ) -> Iterator[tuple[list[str | int], dict[str, Any], str]]:
    """(path, parent, key) of every field a structural schema does not declare.

    A node without ``properties`` (or with ``x-kubernetes-preserve-unknown-fields``)
    accepts anything; ``additionalProperties`` makes a map whose values are checked.
    """
    if isinstance(value, dict):
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        keep_all = bool(schema.get("x-kubernetes-preserve-unknown-fields")) or props is None
        for key, child in list(value.items()):
            if props is not None and key in props:
                yield from _unknown_fields(props[key], child, [*where, key])
            elif isinstance(extra, dict):
                yield from _unknown_fields(extra, child, [*where, key])
            elif not keep_all and extra is not True and not (
                    not where and key in _OBJECT_FIELDS):
                yield [*where, key], value, key
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for index, child in enumerate(value):
            yield from _unknown_fields(schema["items"], child, [*where, index])


def _schema_of(obj: KubeObject) -> Mapping[str, Any] | None:
    group, version = split_api_version(str(obj.get("apiVersion", "")))
    filename = _SCHEMA_FILES.get((group, str(obj.get("kind", ""))))
    return _crd_schemas(filename).get(version) if filename else None


def prune_unknown_fields(obj: KubeObject) -> list[str]:
    """Drop fields the CRD schema does not declare, as the API server prunes them.

    Returns the dropped paths. Kinds without a CRD schema are left as they are.
    """
    schema = _schema_of(obj)
    if schema is None:
        return []
    found = list(_unknown_fields(schema, obj, []))
    for _, parent, key in found:
        parent.pop(key, None)
    return [_path(where) for where, _, _ in found]


def check_unknown_fields(obj: KubeObject) -> None:
    """Refuse undeclared fields, as ``fieldValidation=Strict`` (kubectl's default) does."""
    schema = _schema_of(obj)
    if schema is None:
        return
    for where, _, _ in _unknown_fields(schema, obj, []):
        path = _path(where)
        meta = obj.get("metadata") or {}
        raise BadRequest(f'{_label(obj)}: strict decoding error: unknown field "{path}"',
                         kind=str(obj.get("kind", "")), name=str(meta.get("name", "")),
                         field=path)


# -- the CEL duration rule --------------------------------------------------------

def parse_go_duration(text: str) -> int:
    """Parse a Go/CEL duration (``1.5s``, ``100ms``, ``1h2m``) into nanoseconds."""
    raw = text.strip()
    sign = -1 if raw.startswith("-") else 1
    body = raw.lstrip("+-")
    if body == "0":
        return 0
    if not body or _DURATION_PART.sub("", body):
        raise ValueError(f"invalid duration '{text}'")
    total = 0.0
    for number, unit in _DURATION_PART.findall(body):
        total += float(number) * _UNIT_NS[unit]
    return sign * int(total)


def _check_cel_durations(obj: KubeObject, schema: Mapping[str, Any], value: Any,
                         where: list[str | int]) -> None:
    """Walk the instance alongside its schema, evaluating duration minimum rules."""
    for rule in schema.get("x-kubernetes-validations") or []:
        match = _DURATION_RULE.match(str(rule.get("rule", "")))
        if match and isinstance(value, str):
            minimum = match.group(1)
            try:
                too_short = parse_go_duration(value) < parse_go_duration(minimum)
            except ValueError:
                raise _invalid(obj, _path(where), value, "is not a valid duration") from None
            if too_short:
                raise _invalid(obj, _path(where), value, f"must be at least {minimum}")
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        extra = schema.get("additionalProperties")
        for key, child in value.items():
            sub = props.get(key, extra if isinstance(extra, dict) else None)
            if sub is not None:
                _check_cel_durations(obj, sub, child, [*where, key])
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for index, child in enumerate(value):
            _check_cel_durations(obj, schema["items"], child, [*where, index])


# -- core kinds -------------------------------------------------------------------

def _check_name(obj: KubeObject, group: str, kind: str) -> None:
    meta = obj.get("metadata") or {}
    name = meta.get("name")
    if not name:
        if meta.get("generateName"):
            return  # the store picks the name
        raise _invalid(obj, "metadata.name", _MISSING, "Required value")
    as_label = (group, kind) in _LABEL_NAMED
    pattern, limit = (_DNS1123_LABEL, 63) if as_label else (_DNS1123_SUBDOMAIN, 253)
    if not isinstance(name, str) or len(name) > limit or not pattern.match(name):
        what = "DNS-1123 label" if as_label else "DNS-1123 subdomain"
        raise _invalid(obj, "metadata.name", name,
                       f"must be a lowercase RFC 1123 {what} of at most {limit} characters")
    namespace = meta.get("namespace")
    if namespace and (not isinstance(namespace, str) or not _DNS1123_LABEL.match(namespace)):
        raise _invalid(obj, "metadata.namespace", namespace,
                       "must be a lowercase RFC 1123 DNS-1123 label")


def _check_containers(obj: KubeObject, spec: Any, prefix: str, *, need_image: bool) -> None:
    containers = spec.get("containers") if isinstance(spec, dict) else None
    if not isinstance(containers, list) or not containers:
        raise _invalid(obj, f"{prefix}.containers", _MISSING, "Required value")
    seen: set[str] = set()
    for index, container in enumerate(containers):
        where = f"{prefix}.containers[{index}]"
        if not isinstance(container, dict):
            raise _invalid(obj, where, container, "must be an object")
        name = container.get("name")
        if not name:
            raise _invalid(obj, f"{where}.name", _MISSING, "Required value")
        if not isinstance(name, str) or len(name) > 63 or not _DNS1123_LABEL.match(name):
            raise _invalid(obj, f"{where}.name", name, "must be a DNS-1123 label")
        if name in seen:
            raise _invalid(obj, f"{where}.name", name, "Duplicate value")
        seen.add(name)
        if need_image and not container.get("image"):
            raise _invalid(obj, f"{where}.image", _MISSING, "Required value")
        for p_index, port in enumerate(container.get("ports") or []):
            number = port.get("containerPort") if isinstance(port, dict) else None
            if not isinstance(number, int) or not 1 <= number <= 65535:
                raise _invalid(obj, f"{where}.ports[{p_index}].containerPort", number,
                               "must be between 1 and 65535, inclusive")


def _check_workload(obj: KubeObject) -> None:
    """Deployment and ReplicaSet: selector present and matching the template labels."""
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        raise _invalid(obj, "spec", _MISSING, "Required value")
    selector = spec.get("selector")
    if not isinstance(selector, dict) or not (selector.get("matchLabels")
                                              or selector.get("matchExpressions")):
        raise _invalid(obj, "spec.selector", selector if selector else _MISSING,
                       "Required value: a non-empty selector is required")
    template = spec.get("template") or {}
    labels = (template.get("metadata") or {}).get("labels") or {}
    if not (match_labels(selector.get("matchLabels"), labels)
            and match_expressions(selector.get("matchExpressions"), labels)):
        raise _invalid(obj, "spec.template.metadata.labels", labels,
                       "`selector` does not match template `labels`")
    replicas = spec.get("replicas", 1)
    if not isinstance(replicas, int) or replicas < 0:
        raise _invalid(obj, "spec.replicas", replicas,
                       "must be greater than or equal to 0")
    _check_containers(obj, template.get("spec"), "spec.template.spec", need_image=True)


def _check_service(obj: KubeObject) -> None:
    spec = obj.get("spec") or {}
    ports = spec.get("ports")
    headless = spec.get("clusterIP") == "None" or spec.get("type") == "ExternalName"
    if not ports:
        if headless:
            return
        raise _invalid(obj, "spec.ports", _MISSING, "Required value")
    names: set[str] = set()
    for index, port in enumerate(ports):
        where = f"spec.ports[{index}]"
        number = port.get("port") if isinstance(port, dict) else None
        if not isinstance(number, int) or not 1 <= number <= 65535:
            raise _invalid(obj, f"{where}.port", number if number is not None else _MISSING,
                           "must be between 1 and 65535, inclusive")
        name = port.get("name")
        if len(ports) > 1 and not name:
            raise _invalid(obj, f"{where}.name", _MISSING,
                           "Required value: required when multiple ports are defined")
        if name in names:
            raise _invalid(obj, f"{where}.name", name, "Duplicate value")
        if name:
            names.add(name)


def _check_pod(obj: KubeObject) -> None:
    _check_containers(obj, obj.get("spec"), "spec", need_image=True)


def _check_configmap(obj: KubeObject) -> None:
    data = obj.get("data")
    if data is None:
        return
    if not isinstance(data, dict):
        raise _invalid(obj, "data", data, "must be a map of strings")
    for key, value in data.items():
        if not isinstance(value, str):
            raise _invalid(obj, f"data.{key}", value, "must be a string")


# -- Istio's validation webhook, where the CRD schema is silent -----------------------------

def _check_percentage(obj: KubeObject, field: str, spec: Any) -> None:
    """Istio's ``validatePercentage``: 0, or a value in [0.0001, 100]."""
    if not isinstance(spec, dict):
        return
    value = spec.get("value", 0.0)
    if not isinstance(value, int | float) or isinstance(value, bool):
        return  # the schema already says it is a number
    if value < 0.0 or value > 100.0 or 0.0 < value < 0.0001:
        raise _invalid(obj, f"{field}.value", value,
                       "is neither 0.0, nor in range [0.0001, 100.0]")


def _check_fault(obj: KubeObject, field: str, fault: Any) -> None:
    """Istio's ``validateHTTPFaultInjection`` (docs/fidelity.md §2.4)."""
    if not isinstance(fault, dict):
        return
    abort, delay = fault.get("abort"), fault.get("delay")
    if abort is None and delay is None:
        raise _invalid(obj, field, fault, "must have an abort and/or a delay")
    if isinstance(abort, dict):
        _check_percentage(obj, f"{field}.abort.percentage", abort.get("percentage"))
        status = abort.get("httpStatus")
        if isinstance(status, int) and not 200 <= status <= 600:
            # Istio's bound is <= 600 although its message says 200-599; Envoy refuses 600.
            raise _invalid(obj, f"{field}.abort.httpStatus", status, "is not in range 200-599")
        grpc_status = abort.get("grpcStatus")
        if grpc_status is not None and grpc_status not in GRPC_CODES:
            # validateGRPCStatus: only grpc.SupportedGRPCStatus names (upper-case) pass.
            raise _invalid(obj, f"{field}.abort.grpcStatus", grpc_status,
                           "is not a supported gRPC status (see "
                           "https://github.com/grpc/grpc/blob/master/doc/statuscodes.md, "
                           "for example 'NOT_FOUND')")
        if "http2Error" in abort:
            raise _invalid(obj, f"{field}.abort.http2Error", abort["http2Error"],
                           "is not supported (HTTP/2 abort fault injection)")
    if isinstance(delay, dict):
        _check_percentage(obj, f"{field}.delay.percentage", delay.get("percentage"))
        percent = delay.get("percent")
        if isinstance(percent, int) and not 0 <= percent <= 100:
            raise _invalid(obj, f"{field}.delay.percent", percent, "is not in range 0..100")
        if "exponentialDelay" in delay:
            raise _invalid(obj, f"{field}.delay.exponentialDelay", delay["exponentialDelay"],
                           "is not supported yet")


def _check_virtual_service(obj: KubeObject) -> None:
    for i, http in enumerate((obj.get("spec") or {}).get("http") or []):
        if isinstance(http, dict) and "fault" in http:
            _check_fault(obj, f"spec.http[{i}].fault", http["fault"])


_CORE_CHECKS: dict[tuple[str, str], Callable[[KubeObject], None]] = {
    ("networking.istio.io", "VirtualService"): _check_virtual_service,
    ("apps", "Deployment"): _check_workload,
    ("apps", "ReplicaSet"): _check_workload,
    ("", "Service"): _check_service,
    ("", "Pod"): _check_pod,
    ("", "ConfigMap"): _check_configmap,
}


def validate_object(obj: KubeObject, *, strict: bool = False) -> None:
    """Raise :class:`Invalid` if a real API server would refuse ``obj``.

    ``strict`` also refuses fields the CRD schema does not declare (BadRequest), as
    the API server does under ``fieldValidation=Strict``; otherwise they are left
    for :func:`prune_unknown_fields`.
    """
    if not isinstance(obj, dict):
        raise Invalid(f"an object must be a mapping, not {type(obj).__name__}")
    if strict:
        check_unknown_fields(obj)
    group, _ = split_api_version(str(obj.get("apiVersion", "")))
    kind = str(obj.get("kind", ""))
    _check_name(obj, group, kind)
    schema_file = _SCHEMA_FILES.get((group, kind))
    if schema_file is not None:
        _check_schema(obj, schema_file)
    check = _CORE_CHECKS.get((group, kind))
    if check is not None:
        check(obj)


def install_validation(store: ObjectStore) -> None:
    """Prune and validate every create and update of every known type, as admission does."""

    def hook(operation: str, new: KubeObject, old: KubeObject | None) -> None:
        prune_unknown_fields(new)
        validate_object(new)

    for rtype in store.registry.all():
        store.add_admission(rtype.group, rtype.plural, hook)
