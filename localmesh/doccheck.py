"""Check a decoded JSON value against a TypedDict shape, once, where a document is read.

``Shape(SidecarConfigDoc).check(value)`` walks the value along the TypedDict's
annotations (``localmesh.documents``) and returns it typed, or raises :class:`ShapeError`
naming the first bad field by its path and saying what it is and what it should be::

    routes['orders.shop.svc.cluster.local'][0].timeout_ms is 'x', not a number >= 0
    node.pod is missing
    faults[0].dealy is not a field of FaultRuleDoc (it has: action, bandwidth, ...)

The annotations understood are the ones JSON can carry: ``bool``, ``int``, ``float``
(an int is a float too; a bool is neither; NaN and infinities are not numbers), ``str``,
``None``, ``Literal`` of strings, ``X | Y``, ``list[X]``, ``dict[str, X]``, TypedDicts
(unknown keys are refused, ``NotRequired`` keys may be absent), and ``Annotated`` with the
constraints of ``localmesh.documents`` (``Minimum``, ``NonEmpty``, ``OneOf``). A shape is
compiled into closures once; checking a document costs one pass over it, no path is
built unless something is wrong.
"""

from __future__ import annotations

import math
import types
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import (
    Annotated,
    Any,
    Generic,
    Literal,
    NotRequired,
    Required,
    TypeVar,
    Union,
    cast,
    get_args,
    get_origin,
    get_type_hints,
    is_typeddict,
)

from localmesh.documents import Minimum, NonEmpty, OneOf
from localmesh.errors import MeshError

__all__ = ["Shape", "ShapeError", "show"]

T = TypeVar("T")
_Check = Callable[[object], None]
_SHOW_MAX = 60


class ShapeError(MeshError, ValueError):
    """A value that does not fit its shape: ``path`` (``""`` = the whole value) and
    ``problem`` (``"is 'x', not an integer"``, ``"is missing"``…)."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path or 'the document'} {problem}")
        self.path, self.problem = path, problem


def show(value: object) -> str:
    """A value as an error message quotes it (its repr, cut at 60 characters)."""
    text = repr(value)
    return text if len(text) <= _SHOW_MAX else text[:_SHOW_MAX - 3] + "..."


class _Bad(Exception):
    """Raised by the compiled checks; each container adds its step on the way out."""

    def __init__(self, problem: str, step: str = "") -> None:
        super().__init__(problem)
        self.problem = problem
        self.steps = [step] if step else []

    def path(self) -> str:
        return "".join(reversed(self.steps)).removeprefix(".")


def _not(value: object, expected: str) -> _Bad:
    return _Bad(f"is {show(value)}, not {expected}")


@dataclass(frozen=True)
class _Compiled:
    check: _Check
    accepts: Callable[[object], bool]  # the value is of this kind (picks a union's member)
    expected: str


class Shape(Generic[T]):
    """A TypedDict (or any supported annotation) compiled for checking values."""

    def __init__(self, shape: Any) -> None:
        self._compiled = _compile(shape, ())

    def check(self, value: object) -> T:
        """``value`` itself, typed, if it fits; else :class:`ShapeError`."""
        try:
            self._compiled.check(value)
        except _Bad as bad:
            raise ShapeError(bad.path(), bad.problem) from None
        return cast(T, value)


def _compile(tp: Any, constraints: Sequence[object]) -> _Compiled:
    origin = get_origin(tp)
    if origin is Annotated:
        base, *extra = get_args(tp)
        return _compile(base, (*constraints, *extra))
    if origin in (NotRequired, Required):
        return _compile(get_args(tp)[0], constraints)
    if origin in (Union, types.UnionType):
        return _union([_compile(a, ()) for a in get_args(tp)])
    if origin is Literal:
        return _literal(get_args(tp))
    if origin is list:
        return _list(_compile(get_args(tp)[0], ()), constraints)
    if origin is dict:
        key, value = get_args(tp)
        if key is not str:
            raise TypeError(f"JSON object keys are strings, not {key!r}")
        return _map(_compile(value, ()))
    if is_typeddict(tp):
        return _typeddict(tp)
    if tp is bool:
        return _Compiled(_kind_check(lambda v: type(v) is bool, "true or false"),
                         lambda v: type(v) is bool, "true or false")
    if tp is int or tp is float:
        return _number(tp, constraints)
    if tp is str:
        return _string(constraints)
    if tp is None or tp is type(None):
        return _Compiled(_kind_check(lambda v: v is None, "null"), lambda v: v is None, "null")
    raise TypeError(f"no JSON check for {tp!r}")


def _kind_check(accepts: Callable[[object], bool], expected: str) -> _Check:
    def check(value: object) -> None:
        if not accepts(value):
            raise _not(value, expected)
    return check


def _number(tp: type, constraints: Sequence[object]) -> _Compiled:
    bounds = [c for c in constraints if isinstance(c, Minimum)]
    low = bounds[-1] if bounds else None
    integer = tp is int
    noun = "an integer" if integer else "a number"
    expected = noun if low is None else (
        f"{noun} {'>' if low.exclusive else '>='} {low.bound:g}")

    def accepts(value: object) -> bool:
        kind = type(value)
        if integer:
            return kind is int
        return kind is int or (kind is float and math.isfinite(cast(float, value)))

    def check(value: object) -> None:
        if not accepts(value):
            raise _not(value, expected)
        if low is not None:
            number = cast(float, value)
            if number < low.bound or (low.exclusive and number == low.bound):
                raise _not(value, expected)
    return _Compiled(check, accepts, expected)


def _string(constraints: Sequence[object]) -> _Compiled:
    choices = next((c.choices for c in constraints if isinstance(c, OneOf)), None)
    non_empty = any(isinstance(c, NonEmpty) for c in constraints)
    if choices is not None:
        expected = "one of " + ", ".join(repr(c) for c in sorted(choices))
    else:
        expected = "a non-empty string" if non_empty else "a string"

    def accepts(value: object) -> bool:
        return type(value) is str

    def check(value: object) -> None:
        if type(value) is not str or (non_empty and not value) or (
                choices is not None and value not in choices):
            raise _not(value, expected)
    return _Compiled(check, accepts, expected)


def _literal(values: tuple[object, ...]) -> _Compiled:
    if not all(type(v) is str for v in values):
        raise TypeError(f"only string literals are supported, not {values!r}")
    allowed = frozenset(cast(tuple[str, ...], values))
    expected = "one of " + ", ".join(repr(v) for v in values)

    def accepts(value: object) -> bool:
        return type(value) is str

    def check(value: object) -> None:
        if type(value) is not str or value not in allowed:
            raise _not(value, expected)
    return _Compiled(check, accepts, expected)


def _union(members: list[_Compiled]) -> _Compiled:
    expected = " or ".join(m.expected for m in members)

    def check(value: object) -> None:
        for member in members:
            if member.accepts(value):
                member.check(value)  # its own error (a bad field inside) is the better one
                return
        raise _not(value, expected)
    return _Compiled(check, lambda v: any(m.accepts(v) for m in members), expected)


def _list(item: _Compiled, constraints: Sequence[object]) -> _Compiled:
    non_empty = any(isinstance(c, NonEmpty) for c in constraints)
    expected = "a non-empty list" if non_empty else "a list"
    check_item = item.check

    def check(value: object) -> None:
        if type(value) is not list or (non_empty and not value):
            raise _not(value, expected)
        for i, element in enumerate(value):
            try:
                check_item(element)
            except _Bad as bad:
                bad.steps.append(f"[{i}]")
                raise
    return _Compiled(check, lambda v: type(v) is list, expected)


def _map(item: _Compiled) -> _Compiled:
    check_item = item.check

    def check(value: object) -> None:
        if type(value) is not dict:
            raise _not(value, "an object")
        for key, element in value.items():
            try:
                check_item(element)
            except _Bad as bad:
                bad.steps.append(f"[{key!r}]")
                raise
    return _Compiled(check, lambda v: type(v) is dict, "an object")


def _step(key: object) -> str:
    return f".{key}" if isinstance(key, str) and key.isidentifier() else f"[{key!r}]"


def _typeddict(tp: type) -> _Compiled:
    hints = get_type_hints(tp, include_extras=True)
    declared_required: frozenset[str] = getattr(tp, "__required_keys__", frozenset())
    fields: dict[str, _Check] = {}
    required: list[str] = []
    for name, hint in hints.items():
        origin = get_origin(hint)
        # Read NotRequired/Required from the annotation itself: __required_keys__ is wrong on
        # Python 3.11 for a TypedDict declared under `from __future__ import annotations`.
        if origin is Required or (origin is not NotRequired and name in declared_required):
            required.append(name)
        fields[name] = _compile(hint, ()).check
    known = ", ".join(sorted(fields))
    name = tp.__name__

    def check(value: object) -> None:
        if type(value) is not dict:
            raise _not(value, "an object")
        for key in required:
            if key not in value:
                raise _Bad("is missing", _step(key))
        for key, element in value.items():
            check_field = fields.get(key)
            if check_field is None:
                raise _Bad(f"is not a field of {name} (it has: {known})", _step(key))
            try:
                check_field(element)
            except _Bad as bad:
                bad.steps.append(_step(key))
                raise
    return _Compiled(check, lambda v: type(v) is dict, "an object")
