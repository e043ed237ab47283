"""docs/architecture.md's interface examples are checked against the code, so they cannot drift.

The ```python blocks of the page are stubs: ``from module import name`` lines say where each
documented name lives, and each ``def``/``class`` after them documents one of those names.
For every one the test imports the module and the name, then compares:

- functions and methods: ``async`` or not, every documented parameter (name, order,
  positional or keyword-only, default, annotation when given) and the return annotation;
  a parameter the code requires must be documented, an optional one may be left out;
- classes: ``Protocol`` or not, each documented method as above, each annotated attribute
  (a class annotation or a ``self.<name> =`` in ``__init__``);
- every path named in the block's comments (``localmesh/daemon.py``) exists.

Annotations are compared as written (the product modules use postponed annotations), after
a round trip through ``ast`` to even out the spacing.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "architecture.md"
_FENCE = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)
_PATH = re.compile(r"\b(?:localmesh|probes|reports|fixtures|meshchaos)(?:/[\w.]+)+")
_MISSING = object()


@dataclass(frozen=True)
class Block:
    first_line: int  # the line of the page the block's first line is on
    source: str


def python_blocks(text: str) -> list[Block]:
    return [Block(text.count("\n", 0, match.start(1)) + 1, match.group(1))
            for match in _FENCE.finditer(text)]


def _norm(annotation: str) -> str:
    return ast.unparse(ast.parse(annotation, mode="eval"))


def _real_annotation(value: Any) -> str | None:
    if value is inspect.Parameter.empty:
        return None
    return _norm(value) if isinstance(value, str) else inspect.formatannotation(value)


@dataclass(frozen=True)
class Param:
    name: str
    kind: inspect._ParameterKind
    default: Any  # _MISSING when none
    annotation: str | None


def documented_params(args: ast.arguments) -> list[Param]:
    kinds = inspect.Parameter
    positional = [*args.posonlyargs, *args.args]
    defaults: list[ast.expr | None] = [None] * (len(positional) - len(args.defaults))
    defaults += list(args.defaults)
    params = [Param(a.arg, kinds.POSITIONAL_ONLY if a in args.posonlyargs
                    else kinds.POSITIONAL_OR_KEYWORD,
                    _MISSING if d is None else ast.literal_eval(d),
                    ast.unparse(a.annotation) if a.annotation else None)
              for a, d in zip(positional, defaults, strict=True)]
    if args.vararg:
        params.append(Param(args.vararg.arg, kinds.VAR_POSITIONAL, _MISSING, None))
    params += [Param(a.arg, kinds.KEYWORD_ONLY, _MISSING if d is None else ast.literal_eval(d),
                     ast.unparse(a.annotation) if a.annotation else None)
               for a, d in zip(args.kwonlyargs, args.kw_defaults, strict=True)]
    if args.kwarg:
        params.append(Param(args.kwarg.arg, kinds.VAR_KEYWORD, _MISSING, None))
    return params


def compare_function(where: str, doc: ast.FunctionDef | ast.AsyncFunctionDef,
                     real: Any) -> Iterator[str]:
    if isinstance(real, classmethod | staticmethod):
        real = real.__func__
    if not callable(real):
        yield f"{where}: documented as a function, is {type(real).__name__}"
        return
    is_async = isinstance(doc, ast.AsyncFunctionDef)
    if is_async != inspect.iscoroutinefunction(real):
        yield f"{where}: documented as {'async ' if is_async else ''}def, the code's is " \
              f"{'async ' if not is_async else ''}def"
    signature = inspect.signature(real)
    actual = list(signature.parameters.values())
    names = [p.name for p in actual]
    documented = documented_params(doc.args)
    for param in documented:
        if param.name not in names:
            yield f"{where}: documents parameter '{param.name}', which the code does not have " \
                  f"(it has {', '.join(names)})"
            continue
        real_param = signature.parameters[param.name]
        if param.kind != real_param.kind:
            yield f"{where}: parameter '{param.name}' is documented {param.kind.description}, " \
                  f"the code's is {real_param.kind.description}"
        real_default = _MISSING if real_param.default is inspect.Parameter.empty \
            else real_param.default
        if param.default is not _MISSING and param.default != real_default:
            shown = "none" if real_default is _MISSING else repr(real_default)
            yield f"{where}: parameter '{param.name}' is documented with default " \
                  f"{param.default!r}, the code's default is {shown}"
        annotation = _real_annotation(real_param.annotation)
        if param.annotation is not None and _norm(param.annotation) != annotation:
            yield f"{where}: parameter '{param.name}' is documented as {param.annotation}, " \
                  f"the code says {annotation}"
    order = [p.name for p in documented if p.name in names]
    if order != sorted(order, key=names.index):
        yield f"{where}: parameters documented in the order {order}, the code's is {names}"
    doc_names = {p.name for p in documented}
    for real_param in actual:
        required = real_param.default is inspect.Parameter.empty and real_param.kind not in (
            inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
        if required and real_param.name not in doc_names:
            yield f"{where}: the code requires parameter '{real_param.name}', not documented"
    if doc.returns is not None:
        returns = _real_annotation(signature.return_annotation)
        if _norm(ast.unparse(doc.returns)) != returns:
            yield f"{where}: documented to return {ast.unparse(doc.returns)}, the code says " \
                  f"{returns}"


def _has_attribute(cls: type, name: str) -> bool:
    for klass in cls.__mro__:
        if name in getattr(klass, "__annotations__", {}) or name in vars(klass):
            return True
    init = vars(cls).get("__init__")
    if init is None or not inspect.isfunction(init):
        return False
    return re.search(rf"\bself\.{re.escape(name)}\s*[:=]", inspect.getsource(init)) is not None


def compare_class(where: str, doc: ast.ClassDef, real: Any, first_line: int = 1
                  ) -> Iterator[str]:
    """``where`` names the class; a member's problem names the member's own line."""

    def member_where(node: ast.stmt, name: str) -> str:
        return f"{where.rsplit(':', 2)[0]}:{first_line + node.lineno - 1}: {doc.name}.{name}"

    if not inspect.isclass(real):
        yield f"{where}: documented as a class, is {type(real).__name__}"
        return
    doc_protocol = any(ast.unparse(b) in ("Protocol", "typing.Protocol") for b in doc.bases)
    if doc_protocol != bool(getattr(real, "_is_protocol", False)):
        yield f"{where}: documented {'' if doc_protocol else 'not '}as a Protocol, the code's " \
              f"is {'not ' if doc_protocol else ''}one"
    for node in doc.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            member = inspect.getattr_static(real, node.name, None)
            if member is None:
                yield f"{member_where(node, node.name)}: documented, but {real.__name__} has " \
                      "no such method"
            else:
                yield from compare_function(member_where(node, node.name), node, member)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) \
                and not _has_attribute(real, node.target.id):
            yield f"{member_where(node, node.target.id)}: documented attribute, " \
                  f"{real.__name__} has none"


def check_block(block: Block) -> Iterator[str]:
    try:
        tree = ast.parse(block.source)
    except SyntaxError as exc:
        yield f"docs/architecture.md:{block.first_line + (exc.lineno or 1) - 1}: not Python " \
              f"({exc.msg}): {(exc.text or '').strip()}"
        return
    where_of = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            module = importlib.import_module(node.module or "")
            for alias in node.names:
                line = f"docs/architecture.md:{block.first_line + node.lineno - 1}"
                obj = getattr(module, alias.name, _MISSING)
                if obj is _MISSING:
                    yield f"{line}: {node.module} has no {alias.name}"
                else:
                    where_of[alias.asname or alias.name] = obj
    for node in tree.body:
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            continue
        where = f"docs/architecture.md:{block.first_line + node.lineno - 1}: {node.name}"
        if node.name not in where_of:
            yield f"{where}: documented, but no `from … import {node.name}` line says where"
        elif isinstance(node, ast.ClassDef):
            yield from compare_class(where, node, where_of[node.name], block.first_line)
        else:
            yield from compare_function(where, node, where_of[node.name])
    for path in sorted(set(_PATH.findall(block.source))):
        if not (ROOT / path.rstrip(".")).exists():
            yield f"docs/architecture.md: the interfaces name {path}, which does not exist"


def test_the_architecture_page_has_interface_blocks() -> None:
    blocks = python_blocks(DOC.read_text())
    assert blocks
    documented = [n for b in blocks for n in ast.parse(b.source).body
                  if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)]
    assert len(documented) >= 10


@pytest.mark.parametrize("block", python_blocks(DOC.read_text()),
                         ids=lambda b: f"line-{b.first_line}")
def test_interfaces_match_the_code(block: Block) -> None:
    problems = list(check_block(block))
    assert not problems, "docs/architecture.md has drifted from the code:\n" + "\n".join(problems)


# -- the checker itself, on a made-up block --------------------------------------------------

def test_the_checker_reports_each_kind_of_drift() -> None:
    text = '''```python
# localmesh/nowhere.py
from localmesh.daemon import MeshDaemon, descendants
from localmesh.apiserver import LogSource
from localmesh.errors import NoSuchError

def descendants(root: str, extra: int = 1) -> list[int]: ...
class MeshDaemon(Protocol):
    def __init__(self, manifests: Sequence[Path], *, state_dir: Path) -> None: ...
    async def launch(self, serve: Callable[[int], int] | None = 0) -> int: ...
    def wait_ready(self, timeout: float | None = None, progress=None) -> str: ...
    pid_of_nothing: int
class LogSource:
    def read(self, namespace: str) -> str: ...
def undeclared() -> None: ...
```
'''
    problems = [p.split(": ", 2)[-1] for p in check_block(python_blocks(text)[0])]
    assert problems == [
        "localmesh.errors has no NoSuchError",
        "parameter 'root' is documented as str, the code says int",
        "documents parameter 'extra', which the code does not have (it has root)",
        "documented as a Protocol, the code's is not one",
        "parameter 'state_dir' is documented keyword-only, the code's is positional or keyword",
        "documented as async def, the code's is def",
        "parameter 'serve' is documented with default 0, the code's default is None",
        "parameters documented in the order ['self', 'timeout', 'progress'], the code's is "
        "['self', 'progress', 'timeout']",
        "documented attribute, MeshDaemon has none",
        "documented not as a Protocol, the code's is one",
        "the code requires parameter 'pod', not documented",
        "the code requires parameter 'container', not documented",
        "the code requires parameter 'since_seconds', not documented",
        "the code requires parameter 'tail_lines', not documented",
        "the code requires parameter 'timestamps', not documented",
        "the code requires parameter 'previous', not documented",
        "documented, but no `from … import undeclared` line says where",
        "the interfaces name localmesh/nowhere.py, which does not exist",
    ]
