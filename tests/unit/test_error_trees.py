"""One exception tree per package (docs/architecture.md "Tree"): every public exception
class a product package defines derives from that package's root, so a caller can catch
"anything this part raises" with one ``except``. Builtin bases (ValueError, LookupError…)
stay as mixins."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

from fixtures.chain.errors import ChainError
from localmesh.errors import MeshError
from meshchaos.errors import MeshchaosError
from probes.errors import ProbeError
from reports.errors import ReportError

ROOTS: dict[str, type[BaseException]] = {
    "localmesh": MeshError,
    "probes": ProbeError,
    "reports": ReportError,
    "fixtures.chain": ChainError,
    "meshchaos": MeshchaosError,
}
# Not errors: a local reply (NR/UH/NC) the sidecar's planner raises to the proxy, which
# answers it; it never leaves the sidecar.
SIGNALS = {"localmesh.sidecar.planner.Reject"}


def _modules(package: str) -> list[str]:
    root = importlib.import_module(package)
    names = [package]
    for info in pkgutil.walk_packages(root.__path__, f"{package}."):
        if not info.name.endswith("__main__"):
            names.append(info.name)
    return names


def _exceptions(package: str) -> list[type[BaseException]]:
    found = []
    for name in _modules(package):
        module = importlib.import_module(name)
        for attr, value in vars(module).items():
            if (inspect.isclass(value) and issubclass(value, BaseException)
                    and value.__module__ == name and not attr.startswith("_")
                    and f"{name}.{attr}" not in SIGNALS):
                found.append(value)
    return found


@pytest.mark.parametrize("package", sorted(ROOTS))
def test_every_exception_of_a_package_derives_from_its_root(package: str) -> None:
    root = ROOTS[package]
    exceptions = _exceptions(package)
    assert root in exceptions
    strays = [f"{e.__module__}.{e.__qualname__}" for e in exceptions if not issubclass(e, root)]
    assert not strays, f"outside {root.__module__}.{root.__name__}: {strays}"


@pytest.mark.parametrize(("error", "mixin"), [
    ("ChaosSpecError", ValueError), ("UnknownMode", ValueError),
    ("NoPodSelected", LookupError), ("QueryError", ValueError),
    ("OtlpDecodeError", ValueError), ("EffectError", Exception)])
def test_errors_moved_into_the_mesh_tree_keep_their_builtin_base(error: str,
                                                                  mixin: type) -> None:
    cls = getattr(importlib.import_module("localmesh.errors"), error)
    assert issubclass(cls, MeshError) and issubclass(cls, mixin)


def test_the_modules_that_raise_them_still_export_them() -> None:
    from localmesh import errors
    from localmesh.chaos import effects, selection
    from localmesh.tracestore import jaeger, otlp

    assert effects.EffectError is errors.EffectError
    assert selection.NoPodSelected is errors.NoPodSelected
    assert jaeger.QueryError is errors.QueryError
    assert otlp.OtlpDecodeError is errors.OtlpDecodeError
