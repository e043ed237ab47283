"""The public surface, checked mechanically (style anchors: httpx test_exported_members).

chaoslib publishes exactly a module's ``__all__`` as activities, so ``__all__`` must equal
the public functions of every activity module, and discovery must type probes as
"probe" and actions as "action" (chaostoolkit-kubernetes published probes as actions).
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from types import ModuleType

import pytest
from chaoslib.discovery.discover import discover_actions, discover_probes

import probes

ACTIVITY_MODULES = (*probes.PROBE_MODULES, *probes.ACTION_MODULES)


def _public_functions(module: ModuleType) -> set[str]:
    return {name for name, obj in vars(module).items()
            if not name.startswith("_") and inspect.isfunction(obj)
            and obj.__module__ == module.__name__}


def _public_definitions(module: ModuleType) -> set[str]:
    return {name for name, obj in vars(module).items()
            if not name.startswith("_") and (inspect.isfunction(obj) or inspect.isclass(obj))
            and obj.__module__ == module.__name__}


def _probes_modules() -> list[str]:
    names = ["probes"]
    for info in pkgutil.walk_packages(probes.__path__, "probes."):
        if not info.name.rsplit(".", 1)[-1].startswith("_"):
            names.append(info.name)
    return names


@pytest.mark.parametrize("name", ACTIVITY_MODULES)
def test_activity_module_all_equals_its_public_functions(name: str) -> None:
    module = importlib.import_module(name)
    assert set(module.__all__) == _public_functions(module)


@pytest.mark.parametrize("name", _probes_modules())
def test_every_probes_module_exports_what_it_defines(name: str) -> None:
    """Every public function/class defined in a module is in its ``__all__``, and every
    name in ``__all__`` exists."""
    module = importlib.import_module(name)
    exported = set(getattr(module, "__all__", ()))
    assert _public_definitions(module) <= exported
    assert all(hasattr(module, n) for n in exported)


@pytest.mark.parametrize("name", probes.PROBE_MODULES)
def test_probe_modules_are_discovered_as_probes(name: str) -> None:
    activities = discover_probes(name)
    assert activities and {a["type"] for a in activities} == {"probe"}
    assert {a["name"] for a in activities} == set(importlib.import_module(name).__all__)
    assert all(a["doc"] for a in activities)


@pytest.mark.parametrize("name", probes.ACTION_MODULES)
def test_action_modules_are_discovered_as_actions(name: str) -> None:
    activities = discover_actions(name)
    assert activities and {a["type"] for a in activities} == {"action"}


def test_discover_lists_every_activity_once() -> None:
    """chaos discover: initialize_discovery_result + one entry per exported function."""
    discovery = probes.discover(discover_system=False)
    names = [(a["mod"], a["name"]) for a in discovery["activities"]]
    expected = [(m, n) for m in ACTIVITY_MODULES for n in importlib.import_module(m).__all__]
    assert sorted(names) == sorted(expected)
    assert discovery["extension"]["name"] == "meshchaos" and discovery["system"] is None


def test_probe_arguments_are_json_facing() -> None:
    """Every argument has a default and ends with configuration/secrets (chaoslib template)."""
    for name in probes.PROBE_MODULES:
        module = importlib.import_module(name)
        for func in module.__all__:
            params = list(inspect.signature(getattr(module, func)).parameters.values())
            assert [p.name for p in params[-2:]] == ["configuration", "secrets"], func
            assert all(p.default is not inspect.Parameter.empty for p in params), func
