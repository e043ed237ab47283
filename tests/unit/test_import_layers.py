"""The import graph of the product packages: layers import downward only, nothing is circular.

Every ``import`` and ``from … import …`` of every ``.py`` file of the product packages
counts, wherever it stands: at module level, inside a function (the lazy imports that keep
``meshchaos up`` fast), under ``if TYPE_CHECKING:`` (a type-only circle is still a circle
the next refactoring turns into a real one). Relative imports are resolved against the
importing module. The layers (docs/architecture.md "Tree"), lowest first:

0. ``localmesh``  the embedded mesh; imports no other product package.
1. ``fixtures``   the system under test; imports ``localmesh`` only (its lean HTTP layer).
   ``reports``    verdicts and rendering; imports no other product package today.
   ``probes``     the Chaos Toolkit extension; imports ``localmesh`` and ``reports``
                  (the report control).
2. ``meshchaos``  the command line and the pytest plugin, on top of everything.

A package may import one of a lower layer, or of its own layer as long as that makes no
cycle; each failure names the importing file, the line and the imported module.
"""

from __future__ import annotations

import ast
import tomllib
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

LAYERS = {"localmesh": 0, "fixtures": 1, "reports": 1, "probes": 1, "meshchaos": 2}


@dataclass(frozen=True)
class Edge:
    """One import statement: ``importer`` (a module) imports ``target`` (a module)."""

    file: str  # relative to the repository root
    line: int
    importer: str
    imported: str  # as written, made absolute; ``from a import b`` is ``a.b`` if a module
    target: str  # the product module it loads

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.importer} imports {self.imported}"


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def product_modules(root: Path, packages: Iterable[str]) -> dict[str, Path]:
    """Module name → file, for every .py file of the packages."""
    return {module_name(path, root): path
            for package in packages for path in sorted((root / package).rglob("*.py"))}


def _absolute(node: ast.ImportFrom, importer: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = importer.split(".")
    if not is_package:
        base.pop()
    base = base[:len(base) - (node.level - 1)] if node.level > 1 else base
    return ".".join([*base, node.module] if node.module else base)


def _owner(name: str, modules: Mapping[str, Path]) -> str | None:
    """The product module that ``import name`` loads last (``a.b.C`` → ``a.b``)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def imports_of(module: str, path: Path, modules: Mapping[str, Path],
               root: Path) -> Iterator[Edge]:
    """Every import in the file, at any nesting level, that loads a product module."""
    file = str(path.relative_to(root))
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=file)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node, module, path.name == "__init__.py")
            # ``from pkg import sub`` loads the submodule pkg.sub when there is one.
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                     for alias in node.names]
        else:
            continue
        for name in names:
            target = _owner(name, modules)
            if target is not None and target != module:
                yield Edge(file, node.lineno, module, name, target)


def import_graph(root: Path, packages: Iterable[str]) -> list[Edge]:
    modules = product_modules(root, packages)
    edges = [edge for module, path in modules.items()
             for edge in imports_of(module, path, modules, root)]
    return sorted(edges, key=lambda e: (e.file, e.line, e.imported))


def top(module: str) -> str:
    return module.split(".", 1)[0]


def cycles(edges: Iterable[tuple[str, str]]) -> list[set[str]]:
    """The strongly connected components of more than one node (Tarjan, iterative)."""
    graph: dict[str, set[str]] = defaultdict(set)
    for a, b in edges:
        graph[a].add(b)
        graph.setdefault(b, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[set[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, successors = work[-1]
            for succ in successors:
                if succ not in index:
                    index[succ] = low[succ] = len(index)
                    stack.append(succ)
                    on_stack.add(succ)
                    work.append((succ, iter(sorted(graph[succ]))))
                    break
                if succ in on_stack:
                    low[node] = min(low[node], index[succ])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = set()
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.add(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(component)
    return found


def upward_imports(edges: Iterable[Edge], layers: Mapping[str, int]) -> list[str]:
    return [f"{edge} (layer {layers[top(edge.importer)]} {top(edge.importer)} imports layer "
            f"{layers[top(edge.target)]} {top(edge.target)})"
            for edge in edges if layers[top(edge.importer)] < layers[top(edge.target)]]


def package_cycles(edges: Iterable[Edge]) -> list[str]:
    between = [e for e in edges if top(e.importer) != top(e.target)]
    return [f"packages {' <-> '.join(sorted(component))} import each other:\n  " + "\n  ".join(
                str(e) for e in between
                if top(e.importer) in component and top(e.target) in component)
            for component in cycles((top(e.importer), top(e.target)) for e in between)]


def module_cycles(edges: Iterable[Edge]) -> list[str]:
    within = [e for e in edges if top(e.importer) == top(e.target)]
    return [f"modules {' <-> '.join(sorted(component))} import each other:\n  " + "\n  ".join(
                str(e) for e in within if e.importer in component and e.target in component)
            for component in cycles((e.importer, e.target) for e in within)]


# -- the product ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def product_edges() -> list[Edge]:
    return import_graph(ROOT, LAYERS)


def test_every_product_package_has_a_layer() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = config["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"]
    assert set(packages) == set(LAYERS)


def test_no_package_imports_one_of_a_higher_layer(product_edges: list[Edge]) -> None:
    upward = upward_imports(product_edges, LAYERS)
    assert not upward, "imports against the layers (localmesh < fixtures, reports, probes < " \
        "meshchaos):\n" + "\n".join(upward)


def test_no_cycle_between_top_level_packages(product_edges: list[Edge]) -> None:
    found = package_cycles(product_edges)
    assert not found, "\n".join(found)


def test_no_cycle_between_modules_of_one_package(product_edges: list[Edge]) -> None:
    found = module_cycles(product_edges)
    assert not found, "\n".join(found)


# -- the walker itself, on a made-up tree -----------------------------------------------------

def _tree(root: Path, files: Mapping[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_walker_sees_nested_type_only_from_and_relative_imports(tmp_path: Path) -> None:
    _tree(tmp_path, {
        "low/__init__.py": "",
        "low/a.py": "import typing\nif typing.TYPE_CHECKING:\n    from low.b import X\n",
        "low/b.py": "def f():\n    from . import a\n    return a\n",
        "low/sub/__init__.py": "from .. import b\n",
        "high/__init__.py": "",
        "high/cli.py": "import os\nimport low.sub\n",
        "low/c.py": "class K:\n    def m(self):\n        import high.cli as cli\n",
    })
    edges = import_graph(tmp_path, ["low", "high"])
    assert {(e.importer, e.target, e.line) for e in edges} == {
        ("low.a", "low.b", 3), ("low.b", "low.a", 2), ("low.sub", "low.b", 1),
        ("high.cli", "low.sub", 2), ("low.c", "high.cli", 3)}
    assert upward_imports(edges, {"low": 0, "high": 1}) == [
        "low/c.py:3: low.c imports high.cli (layer 0 low imports layer 1 high)"]
    assert package_cycles(edges) == [
        "packages high <-> low import each other:\n"
        "  high/cli.py:2: high.cli imports low.sub\n"
        "  low/c.py:3: low.c imports high.cli"]
    assert module_cycles(edges) == [
        "modules low.a <-> low.b import each other:\n"
        "  low/a.py:3: low.a imports low.b\n"
        "  low/b.py:2: low.b imports low.a"]
