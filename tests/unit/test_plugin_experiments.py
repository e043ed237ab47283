"""The pytest plugin: experiment files become test items judged by the meshchaos verdict.

Runs real ``chaos run`` subprocesses on stand-in experiments (tests/data/journals/standins.py)
inside ``pytester`` projects; option precedence follows pytest-timeout: CLI > env > ini.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parents[2]
PASSED = {"type": "jsonpath", "path": "$.passed", "expect": True}
CONFIG = {"target": {"type": "env", "key": "MESHCHAOS_TARGET", "default": "local"},
          "kubeconfig": "", "report_dir": "unset"}
ECHO = '''
import time

def target(configuration=None):
    return configuration.get("target")

def namespace(configuration=None):
    return configuration.get("namespace")

def sleep(seconds):
    time.sleep(seconds)
    return {"slept": seconds}
'''


def py(name: str, func: str, kind: str = "probe", module: str = "standins",
       tolerance: Any = None, **arguments: Any) -> dict[str, Any]:
    activity: dict[str, Any] = {"type": kind, "name": name, "provider": {
        "type": "python", "module": module, "func": func, "arguments": arguments}}
    if tolerance is not None:
        activity["tolerance"] = tolerance
    return activity


def experiment(title: str, hypothesis: list[dict[str, Any]], method: list[dict[str, Any]],
               ) -> dict[str, Any]:
    return {"version": "1.0.0", "title": title, "description": "Hypothesis: stand-in",
            "configuration": CONFIG,
            "controls": [{"name": "report", "provider": {
                "type": "python", "module": "probes.controls.report",
                "arguments": {"experiment_name": title}}}],
            "steady-state-hypothesis": {"title": "holds", "probes": hypothesis},
            "method": method, "rollbacks": [py("remove", "remove", kind="action")],
            "runtime": {"rollbacks": {"strategy": "always"}}}


SLO = py("slo", "slo_ok", tolerance=PASSED)
INJECT = py("inject", "inject", kind="action")
EFFECT = py("effect", "effect", tolerance=PASSED)
GOOD = experiment("good", [SLO], [INJECT, EFFECT])
BAD = experiment("bad", [SLO, py("deadlines", "deadlines", tolerance=PASSED)], [INJECT, EFFECT])
UNPROVEN = experiment("unproven", [SLO], [py("inject", "inject_not_selected", kind="action"),
                                          EFFECT])
TARGET = experiment("target", [py("target-is", "target", module="echo_ext",
                                  tolerance="kubernetes")], [py("noop", "slo_ok")])
NAMESPACE = experiment("namespace", [py("namespace-is", "namespace", module="echo_ext",
                                        tolerance="store")], [py("noop", "slo_ok")])
NAMESPACE["configuration"] = {**CONFIG, "namespace": {"type": "env", "key": "MESHCHAOS_NAMESPACE",
                                                      "default": "shop"}}
SLOW = experiment("slow", [SLO], [py("sleep", "sleep", module="echo_ext", seconds=60)])


@pytest.fixture
def project(pytester: pytest.Pytester) -> pytest.Pytester:
    shutil.copy(ROOT / "tests" / "data" / "journals" / "standins.py", pytester.path)
    (pytester.path / "echo_ext.py").write_text(ECHO)
    (pytester.path / "experiments").mkdir()
    ini(pytester, "")
    return pytester


def ini(project: pytest.Pytester, lines: str) -> None:
    # pytest-asyncio warns in every inner session whose ini leaves the loop scope unset.
    project.makeini(f"[pytest]\nasyncio_default_fixture_loop_scope = function\n{lines}\n")


def put(project: pytest.Pytester, name: str, doc: dict[str, Any], folder: str = "experiments"
        ) -> Path:
    path = project.path / folder / f"{name}.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(doc))
    return path


def test_experiment_files_are_collected_as_test_items(project: pytest.Pytester) -> None:
    put(project, "good", GOOD)
    put(project, "notes", {"title": "no method here"})
    put(project, "elsewhere", GOOD, folder="other")
    result = project.runpytest("--collect-only", "-q")
    result.stdout.fnmatch_lines(["experiments/good.json::good", "*1 test collected*"])
    assert "notes" not in result.stdout.str() and "elsewhere" not in result.stdout.str()


def test_a_passing_experiment_passes_and_a_deviating_one_fails_with_the_reason(
        project: pytest.Pytester) -> None:
    put(project, "good", GOOD)
    put(project, "bad", BAD)
    result = project.runpytest("experiments", "--chaos-report-dir", "out")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines([
        "*FAIL: the steady state did not hold (after the fault): deadlines: no-orphan-work "
        "at pricing*",
        "*deadlines / no-orphan-work at pricing: pricing worked 495 ms*",
        f"*report: {project.path / 'out'}/bad-*"])
    assert len(list((project.path / "out").glob("good-*/report.html"))) == 1


def test_an_inconclusive_experiment_fails_the_test(project: pytest.Pytester) -> None:
    put(project, "unproven", UNPROVEN)
    result = project.runpytest("experiments")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*INCONCLUSIVE: *'inject' failed*no pod is selected*"])


def test_cli_target_beats_env_and_reaches_the_experiment(project: pytest.Pytester,
                                                         monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    put(project, "target", TARGET)
    monkeypatch.setenv("MESHCHAOS_TARGET", "local")
    project.runpytest("experiments").assert_outcomes(failed=1)
    project.runpytest("experiments", "--chaos-target", "kubernetes").assert_outcomes(passed=1)


def test_chaos_var_sets_any_configuration_key_for_every_experiment(
        project: pytest.Pytester) -> None:
    """Targets are configuration: --chaos-var (or the ini chaos_vars) reaches the experiment
    as chaos run --var would; a key no experiment declares is refused by name."""
    put(project, "namespace", NAMESPACE)
    project.runpytest("experiments").assert_outcomes(failed=1)
    project.runpytest("experiments", "--chaos-var", "namespace=store").assert_outcomes(passed=1)
    ini(project, "chaos_vars =\n    namespace=store")
    project.runpytest("experiments").assert_outcomes(passed=1)
    result = project.runpytest("experiments", "--chaos-var", "namespaec=store")
    result.stderr.fnmatch_lines(["*invalid option --chaos-var 'namespaec=store'*"])


def test_env_target_beats_ini(project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    put(project, "target", TARGET)
    ini(project, "chaos_target = local")
    monkeypatch.setenv("MESHCHAOS_TARGET", "kubernetes")
    project.runpytest("experiments").assert_outcomes(passed=1)


@pytest.mark.parametrize(("ini_line", "env", "args", "source"), [
    pytest.param("chaos_target = moon", None, [], "ini chaos_target", id="ini"),
    pytest.param("", "moon", [], "env MESHCHAOS_TARGET", id="env"),
    pytest.param("", None, ["--chaos-timeout", "-3"], "option --chaos-timeout", id="timeout"),
    pytest.param("", None, ["--kubeconfig", "/nowhere/kubeconfig"], "option --kubeconfig",
                 id="kubeconfig"),
])
def test_a_bad_setting_is_refused_naming_where_it_came_from(
        project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, ini_line: str,
        env: str | None,
        args: list[str], source: str) -> None:
    ini(project, ini_line)
    if env:
        monkeypatch.setenv("MESHCHAOS_TARGET", env)
    result = project.runpytest(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert f"from {source}" in result.stderr.str()


def test_an_experiment_chaos_refuses_fails_with_its_error(project: pytest.Pytester) -> None:
    """chaos run validates first and writes no journal for an invalid experiment."""
    put(project, "broken", experiment("broken", [SLO], [py("x", "no_such_func")]))
    result = project.runpytest("experiments")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*INCONCLUSIVE: chaos run wrote no journal (exit 1)*",
                                 "*no_such_func*"])


def test_an_overrunning_experiment_is_stopped_and_fails(project: pytest.Pytester) -> None:
    """SIGTERM first (chaoslib still plays rollbacks), SIGKILL after the grace period."""
    put(project, "slow", SLOW)
    result = project.runpytest_subprocess("experiments", "--chaos-timeout", "3")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*INCONCLUSIVE*overran --chaos-timeout 3 s*"])
