"""``/openapi/v2`` as protocol buffers: the gnostic ``openapi_v2.Document`` kubectl reads.

kubectl up to 1.28 (and client-go's ``OpenAPISchema()`` in any version) asks for
``Accept: application/com.github.proto-openapi.spec.v2@v1.0+protobuf`` only and unmarshals
the body into gnostic's ``openapi_v2.Document`` (google/gnostic-models,
``openapiv2/OpenAPIv2.proto``). This writes the wire format of the part of that message
the Swagger JSON of :mod:`localmesh.apiserver.openapi` uses, field numbers as the .proto
has them: ``Document`` (swagger 1, info 2, paths 8, definitions 9), ``Schema`` (its JSON
Schema keywords, vendor extensions 31) and the query parameters and vendor extensions of
``Operation``, which is where kubectl looks for ``fieldValidation`` (docs/fidelity.md §8.1).
Vendor extensions and enum values are ``Any`` messages carrying YAML (``Any.yaml``), as
gnostic writes them. Keywords the message has no field for (v3's ``anyOf``, ``oneOf``,
``nullable``) are left out, as kube-apiserver leaves them out of v2.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping
from typing import Any

import yaml

__all__ = ["encode_document"]

_VARINT, _FIXED64, _BYTES = 0, 1, 2


def _varint(value: int) -> bytes:
    if value < 0:
        value += 1 << 64  # int64 as proto writes it: ten bytes of two's complement
    out = bytearray()
    while True:
        low = value & 0x7F
        value >>= 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def _key(field: int, wire: int) -> bytes:
    return _varint(field << 3 | wire)


def _message(field: int, payload: bytes) -> bytes:
    return _key(field, _BYTES) + _varint(len(payload)) + payload


def _string(field: int, value: Any) -> bytes:
    if value is None or value == "":
        return b""  # proto3 leaves default values out
    return _message(field, str(value).encode("utf-8"))


def _strings(field: int, values: Iterable[Any]) -> bytes:
    return b"".join(_message(field, str(v).encode("utf-8")) for v in values)


def _bool(field: int, value: Any) -> bytes:
    return _key(field, _VARINT) + b"\x01" if value is True else b""


def _int(field: int, value: Any) -> bytes:
    if not isinstance(value, int) or isinstance(value, bool) or value == 0:
        return b""
    return _key(field, _VARINT) + _varint(value)


def _double(field: int, value: Any) -> bytes:
    if not isinstance(value, int | float) or isinstance(value, bool) or value == 0:
        return b""
    return _key(field, _FIXED64) + struct.pack("<d", float(value))


def _any(value: Any) -> bytes:
    """gnostic's ``Any``: the value as YAML (field 2)."""
    return _string(2, yaml.safe_dump(value, default_flow_style=False, sort_keys=False))


def _named_any(field: int, name: str, value: Any) -> bytes:
    return _message(field, _string(1, name) + _message(2, _any(value)))


def _extensions(field: int, node: Mapping[str, Any]) -> bytes:
    return b"".join(_named_any(field, k, v) for k, v in node.items() if k.startswith("x-"))


def _schema(node: Mapping[str, Any]) -> bytes:
    """One ``Schema`` message."""
    out = [_string(1, node.get("$ref")), _string(2, node.get("format")),
           _string(3, node.get("title")), _string(4, node.get("description")),
           _double(6, node.get("multipleOf")), _double(7, node.get("maximum")),
           _bool(8, node.get("exclusiveMaximum")), _double(9, node.get("minimum")),
           _bool(10, node.get("exclusiveMinimum")), _int(11, node.get("maxLength")),
           _int(12, node.get("minLength")), _string(13, node.get("pattern")),
           _int(14, node.get("maxItems")), _int(15, node.get("minItems")),
           _bool(16, node.get("uniqueItems")), _int(17, node.get("maxProperties")),
           _int(18, node.get("minProperties")), _strings(19, node.get("required") or [])]
    out += [_message(20, _any(v)) for v in node.get("enum") or []]
    extra = node.get("additionalProperties")
    if isinstance(extra, dict):
        out.append(_message(21, _message(1, _schema(extra))))
    elif isinstance(extra, bool):
        out.append(_message(21, _key(2, _VARINT) + (b"\x01" if extra else b"\x00")))
    kind = node.get("type")
    if kind:
        out.append(_message(22, _strings(1, kind if isinstance(kind, list) else [kind])))
    items = node.get("items")
    if isinstance(items, dict | list):
        out.append(_message(23, b"".join(_message(1, _schema(i)) for i in (
            items if isinstance(items, list) else [items]))))
    out += [_message(24, _schema(s)) for s in node.get("allOf") or []]
    properties = node.get("properties")
    if isinstance(properties, dict) and properties:  # an empty one would make a field-less Kind
        out.append(_message(25, b"".join(
            _message(1, _string(1, name) + _message(2, _schema(child)))
            for name, child in properties.items())))
    out += [_bool(27, node.get("readOnly")), _extensions(31, node)]
    return b"".join(out)


def _operation(op: Mapping[str, Any]) -> bytes:
    """An ``Operation``: its id, query parameters and vendor extensions (what kubectl reads)."""
    out = [_string(5, op.get("operationId"))]
    for param in op.get("parameters") or []:
        if param.get("in") != "query":
            continue
        query = (_string(2, "query") + _string(3, param.get("description"))
                 + _string(4, param.get("name")) + _string(6, param.get("type")))
        # ParametersItem.parameter(1) → Parameter.non_body_parameter(2) →
        # NonBodyParameter.query_parameter_sub_schema(3)
        out.append(_message(8, _message(1, _message(2, _message(3, query)))))
    out.append(_extensions(13, op))
    return b"".join(out)


_METHODS = {"get": 2, "put": 3, "post": 4, "delete": 5, "options": 6, "head": 7, "patch": 8}


def _path_item(item: Mapping[str, Any]) -> bytes:
    return b"".join(_message(number, _operation(item[method]))
                    for method, number in _METHODS.items() if method in item)


def encode_document(swagger: Mapping[str, Any]) -> bytes:
    """The protobuf ``openapi_v2.Document`` of a Swagger 2.0 JSON document."""
    info = swagger.get("info") or {}
    paths = b"".join(_message(2, _string(1, path) + _message(2, _path_item(item)))
                     for path, item in (swagger.get("paths") or {}).items())
    definitions = b"".join(_message(1, _string(1, name) + _message(2, _schema(schema)))
                           for name, schema in (swagger.get("definitions") or {}).items())
    return b"".join([_string(1, swagger.get("swagger", "2.0")),
                     _message(2, _string(1, info.get("title")) + _string(2, info.get("version"))),
                     _message(8, paths), _message(9, definitions)])
