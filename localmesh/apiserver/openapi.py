"""OpenAPI documents of the served types: ``/openapi/v2`` and ``/openapi/v3[/<gv>]``.

kubectl reads them before it writes (docs/fidelity.md §8.1): ``kubectl apply``/``create``
look in the v3 document of the object's group version for a PATCH operation of its kind
with a ``fieldValidation`` query parameter and, finding one, leave validation to the
server (``?fieldValidation=Strict``); ``kubectl explain`` renders the kind's schema.

Where the schemas come from (the reasons are in docs/fidelity.md §8.1):

- core and apps kinds: walked from the model classes of the ``kubernetes`` Python client,
  which upstream generates from the Kubernetes OpenAPI spec (field names, JSON names,
  types, required fields, descriptions); nothing here is a hand-written copy of a schema;
- Chaos Mesh and Istio kinds: the ``openAPIV3Schema`` of their CRD files
  (``localmesh/schemas``), as kube-apiserver publishes a CRD's schema, with
  ``metadata`` replaced by a reference to ObjectMeta;
- kinds registered on the fly from manifests: an object that keeps unknown fields,
  which is what a CRD with ``x-kubernetes-preserve-unknown-fields`` publishes.
"""

from __future__ import annotations

import copy
import datetime
import functools
import hashlib
import importlib.metadata
import json
import re
import threading
import types
import typing
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from localmesh.apiserver.crds import crd_version
from localmesh.apiserver.openapi_pb import encode_document
from localmesh.jsoncache import cache_file, cached_json
from localmesh.resources import ResourceRegistry, ResourceType

__all__ = ["OpenApiDocs", "gv_path", "unknown_builtin_fields"]

Schema = dict[str, Any]

# The served built-in kinds and the client model each is generated into.
_MODELS: dict[tuple[str, str], str] = {
    ("", "Namespace"): "V1Namespace", ("", "Pod"): "V1Pod", ("", "Service"): "V1Service",
    ("", "Endpoints"): "V1Endpoints", ("", "Event"): "CoreV1Event",
    ("", "ConfigMap"): "V1ConfigMap", ("", "Secret"): "V1Secret",
    ("", "ServiceAccount"): "V1ServiceAccount",
    ("apps", "Deployment"): "V1Deployment", ("apps", "ReplicaSet"): "V1ReplicaSet",
}
_SCALE_MODEL = "V1Scale"  # the scale subresource of deployments (autoscaling/v1 Scale)
_OBJECT_META = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"

# The Go package of a type, which the model's class name no longer carries: Kubernetes
# names a definition io.k8s.api.<group>.<version>.<Type> (meta types live in apimachinery).
_META_TYPES = {"ObjectMeta", "ListMeta", "OwnerReference", "ManagedFieldsEntry",
               "LabelSelector", "LabelSelectorRequirement", "Status", "StatusDetails",
               "StatusCause", "Condition", "DeleteOptions", "Preconditions"}
_APPS_TYPE = re.compile(r"^(Deployment|ReplicaSet|RollingUpdateDeployment)")
_AUTOSCALING_TYPES = {"Scale", "ScaleSpec", "ScaleStatus"}
_CLIENT_PREFIX = re.compile(r"^(?:CoreV1|V1)(?=[A-Z])")

def gv_path(group: str, version: str) -> str:
    """The key of a group version under ``/openapi/v3``: ``api/v1``, ``apis/apps/v1``."""
    return "api/v1" if not group else f"apis/{group}/{version}"


def _models() -> Any:
    # Imported on first use: the client's 800 model modules cost a second to import.
    from kubernetes.client import models
    return models


def _definition_name(model: str) -> str:
    """The Kubernetes definition name of a client model class name (``V1Pod`` → core.v1.Pod)."""
    short = _CLIENT_PREFIX.sub("", model)
    if short in _META_TYPES:
        return f"io.k8s.apimachinery.pkg.apis.meta.v1.{short}"
    if short in _AUTOSCALING_TYPES:
        return f"io.k8s.api.autoscaling.v1.{short}"
    if _APPS_TYPE.match(short):
        return f"io.k8s.api.apps.v1.{short}"
    return f"io.k8s.api.core.v1.{short}"


def _type_description(cls: type) -> str:
    """The type's own description: the model docstring before its 'Attributes:' part."""
    doc = (cls.__doc__ or "").split("Attributes:", 1)[0]
    return " ".join(doc.split())


def _is_model(value: Any) -> bool:
    return isinstance(value, type) and hasattr(value, "model_fields")


def _strip(annotation: Any) -> Any:
    """Remove Optional[...] and Annotated[...] wrappers."""
    while True:
        origin = typing.get_origin(annotation)
        if origin is typing.Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(annotation) if a is not type(None)]
            if len(args) != 1:
                return annotation
            annotation = args[0]
        else:
            return annotation


class _ModelWalker:
    """Turn client model classes into OpenAPI v3 component schemas."""

    def __init__(self) -> None:
        self.schemas: dict[str, Schema] = {}

    def add(self, cls: type) -> str:
        name = _definition_name(cls.__name__)
        if name in self.schemas:
            return name
        schema: Schema = {"type": "object"}
        self.schemas[name] = schema  # before the fields: types may refer to themselves
        if description := _type_description(cls):
            schema["description"] = description
        properties: dict[str, Schema] = {}
        required: list[str] = []
        fields = typing.cast(Mapping[str, Any], cls.model_fields)  # type: ignore[attr-defined]
        for attribute, info in fields.items():
            json_name = info.serialization_alias or info.alias or attribute
            prop = self._annotation(info.annotation)
            if info.description:
                prop = ({"allOf": [prop], "description": info.description}
                        if "$ref" in prop else {**prop, "description": info.description})
            properties[json_name] = prop
            if info.is_required():
                required.append(json_name)
        schema["properties"] = properties
        if required:
            schema["required"] = sorted(required)
        return name

    def _annotation(self, annotation: Any) -> Schema:
        annotation = _strip(annotation)
        origin = typing.get_origin(annotation)
        args = typing.get_args(annotation)
        if origin in (list, typing.List):  # noqa: UP006 (the models use typing.List)
            return {"type": "array", "items": self._annotation(args[0]) if args else {}}
        if origin in (dict, typing.Dict):  # noqa: UP006
            value = self._annotation(args[1]) if len(args) == 2 else {}
            return {"type": "object", "additionalProperties": value}
        if origin in (typing.Union, types.UnionType):
            members = {_strip(a) for a in args if a is not type(None)}
            if bytes in members:
                return {"type": "string", "format": "byte"}
            if members == {int, str}:  # intstr.IntOrString
                return {"x-kubernetes-int-or-string": True}
            if members <= {int, float}:
                return {"type": "number"}
            return {}
        return self._plain(annotation)

    def _plain(self, annotation: Any) -> Schema:
        if _is_model(annotation):
            return {"$ref": f"#/components/schemas/{self.add(annotation)}"}
        scalar: dict[Any, Schema] = {
            str: {"type": "string"}, bool: {"type": "boolean"},
            # int32 or int64: the models do not say which, so no format.
            int: {"type": "integer"}, float: {"type": "number"},
            bytes: {"type": "string", "format": "byte"},
            datetime.datetime: {"type": "string", "format": "date-time"},
            datetime.date: {"type": "string", "format": "date"},
        }
        if annotation in scalar:
            return dict(scalar[annotation])
        # typing.Any (RawExtension, FieldsV1): any JSON value is kept as it is.
        return {"type": "object", "x-kubernetes-preserve-unknown-fields": True}


@functools.cache
def _builtin_components() -> dict[str, Schema]:
    """Every schema the served built-in kinds reach, keyed by Kubernetes definition name.

    Walking the models imports ~170 of the client's modules (0.5 s of CPU); the result is
    kept in the user's cache, named after the client's version and this walker's format,
    so later meshes read it as JSON instead.
    """
    # The distribution's version, not kubernetes.__version__: importing the package costs 0.3 s.
    name = f"core-{importlib.metadata.version('kubernetes')}-{_WALK_FORMAT}.json"
    return cached_json(cache_file("openapi", name), _walk_models)


_WALK_FORMAT = 1  # bump when _ModelWalker's output changes: old cache files are then ignored


def _walk_models() -> dict[str, Schema]:
    models = _models()
    walker = _ModelWalker()
    for (group, kind), model in _MODELS.items():
        name = walker.add(getattr(models, model))
        walker.schemas[name]["x-kubernetes-group-version-kind"] = [
            {"group": group, "kind": kind, "version": "v1"}]
    scale = walker.add(getattr(models, _SCALE_MODEL))
    walker.schemas[scale]["x-kubernetes-group-version-kind"] = [
        {"group": "autoscaling", "kind": "Scale", "version": "v1"}]
    return walker.schemas


def _referenced(components: Mapping[str, Schema], roots: Iterable[str]) -> dict[str, Schema]:
    """The named schemas and every schema they reach through $ref."""
    found: dict[str, Schema] = {}
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name in found or name not in components:
            continue
        found[name] = components[name]
        todo.extend(_refs(components[name]))
    return dict(sorted(found.items()))


def _refs(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        ref = value.get("$ref")
        if isinstance(ref, str):
            yield ref.rsplit("/", 1)[-1]
        for child in value.values():
            yield from _refs(child)
    elif isinstance(value, list):
        for child in value:
            yield from _refs(child)


def _reversed_group(group: str) -> str:
    return ".".join(reversed(group.split(".")))


def _custom_schema(rtype: ResourceType, version: str) -> tuple[str, Schema]:
    """A custom kind's schema as kube-apiserver publishes a CRD's: named by reversed group."""
    name = f"{_reversed_group(rtype.group)}.{version}.{rtype.kind}"
    crd = crd_version(rtype.group, rtype.kind, version)
    if crd is not None:
        schema = copy.deepcopy(crd.schema)
    else:
        schema = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
    properties = schema.setdefault("properties", {})
    properties.setdefault("apiVersion", {"type": "string"})
    properties.setdefault("kind", {"type": "string"})
    properties["metadata"] = {"allOf": [{"$ref": f"#/components/schemas/{_OBJECT_META}"}],
                              "description": "Standard object's metadata. More info: "
                              "https://git.k8s.io/community/contributors/devel/"
                              "sig-architecture/api-conventions.md#metadata"}
    schema["x-kubernetes-group-version-kind"] = [
        {"group": rtype.group, "kind": rtype.kind, "version": version}]
    return name, schema


def _schema_name(rtype: ResourceType, version: str) -> str:
    if (rtype.group, rtype.kind) in _MODELS:
        return _definition_name(_MODELS[(rtype.group, rtype.kind)])
    return f"{_reversed_group(rtype.group)}.{version}.{rtype.kind}"


# -- paths ------------------------------------------------------------------------

_FIELD_VALIDATION = {
    "name": "fieldValidation", "in": "query", "schema": {"type": "string", "uniqueItems": True},
    "description": "fieldValidation instructs the server on how to handle objects in the "
    "request (POST/PUT/PATCH) containing unknown or duplicate fields. Valid values are: "
    "Ignore, Warn, Strict (this server: Strict refuses unknown fields, the others prune "
    "them)."}
_PATCH_TYPES = ("application/json-patch+json", "application/merge-patch+json",
                "application/strategic-merge-patch+json")


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _operation(action: str, rtype: ResourceType, version: str, schema: Schema, *,
               body_types: tuple[str, ...] = ()) -> Schema:
    op: Schema = {
        "operationId": f"{action}{rtype.kind}",
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": {"group": rtype.group, "kind": rtype.kind,
                                            "version": version},
        "responses": {"200": {"description": "OK",
                              "content": {"application/json": {"schema": schema}}}},
    }
    if body_types:
        op["parameters"] = [_FIELD_VALIDATION]
        op["requestBody"] = {"required": True, "content": {
            t: {"schema": _ref(_schema_name(rtype, version))} for t in body_types}}
    return op


def _paths(rtype: ResourceType, version: str) -> dict[str, Schema]:
    """The collection and object paths of one type with the verbs this server answers."""
    base = f"/{gv_path(rtype.group, version)}"
    one = _ref(_schema_name(rtype, version))
    many: Schema = {"type": "object", "properties": {"items": {"type": "array", "items": one}}}
    name_param = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
    ns_param = {"name": "namespace", "in": "path", "required": True,
                "schema": {"type": "string"}}
    prefix = f"{base}/namespaces/{{namespace}}" if rtype.namespaced else base
    scope = [ns_param] if rtype.namespaced else []
    paths = {
        f"{prefix}/{rtype.plural}": {
            "parameters": scope,
            "get": _operation("list", rtype, version, many),
            "post": _operation("post", rtype, version, one, body_types=("application/json",)),
            "delete": _operation("deletecollection", rtype, version, many),
        },
        f"{prefix}/{rtype.plural}/{{name}}": {
            "parameters": [*scope, name_param],
            "get": _operation("get", rtype, version, one),
            "put": _operation("put", rtype, version, one, body_types=("application/json",)),
            "patch": _operation("patch", rtype, version, one, body_types=_PATCH_TYPES),
            "delete": _operation("delete", rtype, version, one),
        },
    }
    if rtype.namespaced:
        paths[f"{base}/{rtype.plural}"] = {"get": _operation("list", rtype, version, many)}
    return paths


# -- documents --------------------------------------------------------------------

@dataclass(frozen=True)
class _GroupVersion:
    group: str
    version: str
    types: tuple[ResourceType, ...]


def _group_versions(registry: ResourceRegistry) -> list[_GroupVersion]:
    grouped: dict[tuple[str, str], list[ResourceType]] = {}
    for rtype in registry.all():
        for version in rtype.versions:
            grouped.setdefault((rtype.group, version), []).append(rtype)
    return [_GroupVersion(g, v, tuple(sorted(ts, key=lambda t: t.plural)))
            for (g, v), ts in sorted(grouped.items())]


def _gv_document(gv: _GroupVersion) -> Schema:
    builtin = _builtin_components()
    components: dict[str, Schema] = {}
    roots: list[str] = []
    paths: dict[str, Schema] = {}
    for rtype in gv.types:
        if (rtype.group, rtype.kind) in _MODELS:
            roots.append(_schema_name(rtype, gv.version))
            if "scale" in rtype.subresources:
                roots.append("io.k8s.api.autoscaling.v1.Scale")
        else:
            name, schema = _custom_schema(rtype, gv.version)
            components[name] = schema
            roots.append(_OBJECT_META)
        paths.update(_paths(rtype, gv.version))
    components.update(_referenced(builtin, roots))
    return {"openapi": "3.0.0",
            "info": {"title": "Kubernetes", "version": "v1.31.0-meshchaos"},
            "paths": dict(sorted(paths.items())),
            "components": {"schemas": dict(sorted(components.items()))}}


def _to_v2(value: Any) -> Any:
    """A v3 schema as Swagger 2.0 has it: refs to #/definitions, int-or-string as a format."""
    if isinstance(value, list):
        return [_to_v2(v) for v in value]
    if not isinstance(value, dict):
        return value
    if set(value) <= {"allOf", "description", "default"} and len(value.get("allOf", [])) == 1:
        inner = value["allOf"][0]
        if "$ref" in inner:  # v2 has no siblings beside $ref: the description goes
            return _to_v2(inner)
    out = {k: _to_v2(v) for k, v in value.items()}
    if out.get("x-kubernetes-preserve-unknown-fields"):
        # Anything goes below such a node: v2 says so with a schema of no type and no
        # fields (kubectl's validator then checks nothing there, as the server keeps all).
        for keyword in ("type", "properties", "items", "additionalProperties", "required"):
            out.pop(keyword, None)
    if isinstance(out.get("$ref"), str):
        out["$ref"] = out["$ref"].replace("#/components/schemas/", "#/definitions/")
    if out.pop("x-kubernetes-int-or-string", False):
        out.update(type="string", format="int-or-string")
    return out


class OpenApiDocs:
    """The documents of one registry, rebuilt when the set of served types changes."""

    def __init__(self, registry: ResourceRegistry) -> None:
        self.registry = registry
        self._key: tuple[tuple[str, str, tuple[str, ...]], ...] = ()
        self._v3: dict[str, bytes] = {}
        self._v2: bytes = b""
        self._v2_pb: bytes = b""
        self._lock = threading.Lock()  # built in a worker thread, off the mesh's loop

    def _refresh(self) -> None:
        with self._lock:
            self._rebuild_if_changed()

    def _rebuild_if_changed(self) -> None:
        key = tuple(sorted((t.group, t.kind, t.versions) for t in self.registry.all()))
        if key == self._key and self._v3:
            return
        v3 = {gv_path(gv.group, gv.version): _gv_document(gv)
              for gv in _group_versions(self.registry)}
        self._v3 = {path: json.dumps(doc).encode() for path, doc in v3.items()}
        definitions: dict[str, Schema] = {}
        paths: dict[str, Schema] = {}
        for doc in v3.values():
            definitions.update(doc["components"]["schemas"])
            paths.update(doc["paths"])
        swagger = {
            "swagger": "2.0",
            "info": {"title": "Kubernetes", "version": "v1.31.0-meshchaos"},
            "paths": {p: _v2_path(item) for p, item in sorted(paths.items())},
            "definitions": _to_v2(dict(sorted(definitions.items()))),
        }
        self._v2 = json.dumps(swagger).encode()
        self._v2_pb = encode_document(swagger)
        self._key = key

    def v3_root(self) -> Schema:
        """``/openapi/v3``: each group version and its content-addressed URL."""
        self._refresh()
        return {"paths": {path: {"serverRelativeURL": f"/openapi/v3/{path}?hash={_hash(body)}"}
                          for path, body in sorted(self._v3.items())}}

    def v3(self, path: str) -> tuple[bytes, str] | None:
        """One group version's document and its hash (None: not served)."""
        self._refresh()
        body = self._v3.get(path)
        return None if body is None else (body, _hash(body))

    def v2(self, *, protobuf: bool = False) -> tuple[bytes, str]:
        """``/openapi/v2`` as Swagger JSON, or as gnostic's protobuf Document."""
        self._refresh()
        body = self._v2_pb if protobuf else self._v2
        return body, _hash(body)


def _v2_path(item: Mapping[str, Any]) -> Schema:
    """A v3 path item as Swagger 2.0 writes it (body parameters, no requestBody)."""
    out: Schema = {}
    for method, op in item.items():
        if method == "parameters":
            out[method] = [_v2_parameter(p) for p in op]
            continue
        new = {k: v for k, v in op.items() if k not in ("requestBody", "responses")}
        new["parameters"] = [_v2_parameter(p) for p in op.get("parameters", [])]
        if "requestBody" in op:
            schema = next(iter(op["requestBody"]["content"].values()))["schema"]
            new["parameters"].append({"name": "body", "in": "body", "required": True,
                                      "schema": _to_v2(schema)})
            new["consumes"] = list(op["requestBody"]["content"])
        ok = op["responses"]["200"]
        new["responses"] = {"200": {"description": ok["description"],
                                    "schema": _to_v2(ok["content"]["application/json"]
                                                     ["schema"])}}
        out[method] = new
    return out


def _v2_parameter(param: Mapping[str, Any]) -> Schema:
    out = {k: v for k, v in param.items() if k != "schema"}
    out.update(param.get("schema", {}))
    out.pop("uniqueItems", None)
    return out


def _hash(body: bytes) -> str:
    # kube-apiserver's hash is the upper-case hex SHA-512 of the document (kube-openapi
    # handler3); clients only compare it, so any content hash keeps their caches right.
    return hashlib.sha512(body).hexdigest().upper()


# -- strict field validation of built-in kinds --------------------------------------

def unknown_builtin_fields(obj: Mapping[str, Any]) -> list[str]:
    """The paths of fields a core or apps object has and its schema does not declare.

    What ``fieldValidation=Strict`` refuses on a real server ("strict decoding error:
    unknown field"), checked against the same schemas ``/openapi/v3`` publishes.
    """
    api_version = str(obj.get("apiVersion", ""))
    group = api_version.split("/", 1)[0] if "/" in api_version else ""
    model = _MODELS.get((group, str(obj.get("kind", ""))))
    if model is None:
        return []
    components = _builtin_components()
    found: list[str] = []
    _walk_unknown(components, components[_definition_name(model)],
                  obj, "", found)
    return found


def _resolve(components: Mapping[str, Schema], schema: Schema) -> Schema:
    while True:
        if "$ref" in schema:
            schema = components[schema["$ref"].rsplit("/", 1)[-1]]
        elif len(schema.get("allOf", [])) == 1:
            schema = schema["allOf"][0]
        else:
            return schema


def _walk_unknown(components: Mapping[str, Schema], schema: Schema, value: Any,
                  where: str, found: list[str]) -> None:
    schema = _resolve(components, schema)
    if isinstance(value, dict):
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        for key, child in value.items():
            path = f"{where}.{key}" if where else key
            if props is not None and key in props:
                _walk_unknown(components, props[key], child, path, found)
            elif isinstance(extra, dict):
                _walk_unknown(components, extra, child, path, found)
            elif props is not None and not schema.get("x-kubernetes-preserve-unknown-fields"):
                found.append(path)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for index, child in enumerate(value):
            _walk_unknown(components, schema["items"], child, f"{where}[{index}]", found)
