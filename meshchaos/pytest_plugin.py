"""pytest plugin: run Chaos Toolkit experiments as tests (``pytest experiments/``).

Each experiment file (``*.json`` in a folder named ``experiments``, or matching the ini
``chaos_experiments`` globs, holding a ``method``) becomes one test item. The item runs
``chaos run`` in a subprocess from the rootdir, bounded by ``--chaos-timeout``, on the
chosen target, then judges the journal with :func:`reports.verdict.compute_verdict`: the
test passes only on PASS, and a FAIL or INCONCLUSIVE shows the probe's reason and the
report path. A subprocess keeps each run's controls, signal handlers and local mesh apart
from pytest's own process, and it can be killed when it overruns.

Options (each with an ini mirror; precedence: command line > environment > ini > default;
a bad value names where it came from):

| option | env | ini | default |
|---|---|---|---|
| ``--chaos-target local|kubernetes`` | ``MESHCHAOS_TARGET`` | ``chaos_target`` | ``local`` |
| ``--kubeconfig PATH`` | ``MESHCHAOS_KUBECONFIG`` | ``chaos_kubeconfig`` | none |
| ``--chaos-report-dir DIR`` | ``MESHCHAOS_REPORT_DIR`` | ``chaos_report_dir`` | ``reports/runs`` |
| ``--chaos-timeout SECONDS`` | ``MESHCHAOS_CHAOS_TIMEOUT`` | ``chaos_timeout`` | ``900`` |
| ``--chaos-var KEY=VALUE`` (repeatable) | ``MESHCHAOS_<KEY>`` | ``chaos_vars`` (lines) | none |

``--chaos-var`` passes any configuration key of :mod:`probes.config` to every experiment
(``namespace``, ``entry_path``, ``target_service``, …), as ``chaos run --var`` does.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import pytest

from meshchaos.errors import ExperimentNotPassed

__all__ = ["ChaosSettings", "ExperimentFile", "ExperimentItem", "ExperimentNotPassed"]

TARGETS = ("local", "kubernetes")
DEFAULT_TIMEOUT_S = 900.0
DEFAULT_REPORT_DIR = "reports/runs"
# SIGTERM first: chaoslib turns it into InterruptExecution and still plays the rollbacks.
TERM_GRACE_S = 30.0

@dataclass(frozen=True)
class _Option:
    flag: str
    dest: str
    env: str
    ini: str
    default: str


_OPTIONS = {
    "target": _Option("--chaos-target", "chaos_target", "MESHCHAOS_TARGET", "chaos_target",
                      "local"),
    "kubeconfig": _Option("--kubeconfig", "chaos_kubeconfig", "MESHCHAOS_KUBECONFIG",
                          "chaos_kubeconfig", ""),
    "report_dir": _Option("--chaos-report-dir", "chaos_report_dir", "MESHCHAOS_REPORT_DIR",
                          "chaos_report_dir", DEFAULT_REPORT_DIR),
    "timeout": _Option("--chaos-timeout", "chaos_timeout", "MESHCHAOS_CHAOS_TIMEOUT",
                       "chaos_timeout", str(DEFAULT_TIMEOUT_S)),
}

SETTINGS_KEY = pytest.StashKey["ChaosSettings"]()


@dataclass(frozen=True)
class ChaosSettings:
    """The resolved options and where each came from (for error messages)."""

    target: str
    kubeconfig: str
    report_dir: Path
    timeout: float
    sources: dict[str, str]
    variables: tuple[tuple[str, str], ...] = ()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("chaos", "meshchaos: run Chaos Toolkit experiments as tests")
    group.addoption("--chaos-target", dest="chaos_target", choices=TARGETS, default=None,
                    help="where experiments run: local (embedded mesh) or kubernetes")
    group.addoption("--kubeconfig", dest="chaos_kubeconfig", metavar="PATH", default=None,
                    help="kubeconfig for --chaos-target kubernetes")
    group.addoption("--chaos-report-dir", dest="chaos_report_dir", metavar="DIR", default=None,
                    help="where each run writes its report directory")
    group.addoption("--chaos-timeout", dest="chaos_timeout", metavar="SECONDS", default=None,
                    help="wall-clock limit of one experiment run")
    group.addoption("--chaos-var", dest="chaos_vars", metavar="KEY=VALUE", action="append",
                    default=None, help="a configuration key for every experiment (as chaos "
                    "run --var), e.g. namespace=store or target_service=stock; repeatable")
    parser.addini("chaos_target", "default --chaos-target", default="local")
    parser.addini("chaos_kubeconfig", "default --kubeconfig", default="")
    parser.addini("chaos_report_dir", "default --chaos-report-dir", default=DEFAULT_REPORT_DIR)
    parser.addini("chaos_timeout", "default --chaos-timeout", default=str(DEFAULT_TIMEOUT_S))
    parser.addini("chaos_experiments", "globs of experiment files to collect", type="args",
                  default=[])
    parser.addini("chaos_vars", "default --chaos-var KEY=VALUE lines", type="linelist",
                  default=[])


def pytest_configure(config: pytest.Config) -> None:
    config.stash[SETTINGS_KEY] = resolve_settings(config)


def resolve_settings(config: pytest.Config) -> ChaosSettings:
    """Resolve every option by precedence CLI > env > ini; raise UsageError naming the source."""
    values: dict[str, str] = {}
    sources: dict[str, str] = {}
    for name, option in _OPTIONS.items():
        values[name], sources[name] = _pick(config, option)
    target = values["target"].strip()
    if target not in TARGETS:
        raise pytest.UsageError(f"invalid chaos target '{target}' from {sources['target']} "
                                f"(expected one of {', '.join(TARGETS)})")
    try:
        timeout = float(values["timeout"])
    except ValueError:
        timeout = -1.0
    if not timeout > 0:
        raise pytest.UsageError(f"invalid chaos timeout '{values['timeout']}' from "
                                f"{sources['timeout']} (expected seconds > 0)")
    kubeconfig = values["kubeconfig"].strip()
    if kubeconfig and not Path(kubeconfig).expanduser().is_file():
        raise pytest.UsageError(f"kubeconfig '{kubeconfig}' from {sources['kubeconfig']} "
                                "does not exist")
    report_dir = Path(values["report_dir"])
    if not report_dir.is_absolute():
        report_dir = Path(config.rootpath) / report_dir
    return ChaosSettings(target=target, kubeconfig=kubeconfig, report_dir=report_dir,
                         timeout=timeout, sources=sources, variables=_variables(config))


def _variables(config: pytest.Config) -> tuple[tuple[str, str], ...]:
    """``--chaos-var`` (else the ini ``chaos_vars``) as (key, value) pairs, keys checked
    against the configuration keys every experiment declares (probes.config.KEYS)."""
    from probes.config import KEYS

    cli = config.getoption("chaos_vars")
    items, source = (cli, "option --chaos-var") if cli else \
        (list(config.getini("chaos_vars")), "ini chaos_vars")
    pairs = []
    for item in items:
        key, sep, value = str(item).partition("=")
        key = key.strip()
        if not sep or key not in KEYS:
            raise pytest.UsageError(f"invalid {source} '{item}': expected KEY=VALUE with KEY "
                                    f"one of {', '.join(sorted(KEYS))}")
        pairs.append((key, value.strip()))
    return tuple(pairs)


def _pick(config: pytest.Config, option: _Option) -> tuple[str, str]:
    """The option's value and where it came from: CLI, then env, then ini, then default."""
    cli = config.getoption(option.dest)
    if cli is not None:
        return str(cli), f"option {option.flag}"
    if os.environ.get(option.env):
        return os.environ[option.env], f"env {option.env}"
    value = config.getini(option.ini)
    if value not in (None, "") and str(value) != option.default:
        return str(value), f"ini {option.ini}"
    return option.default, "default"


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    if file_path.suffix != ".json" or not _is_experiment_path(file_path, parent.config):
        return None
    if not _looks_like_experiment(file_path):
        return None
    return ExperimentFile.from_parent(parent, path=file_path)


def _is_experiment_path(path: Path, config: pytest.Config) -> bool:
    if path.parent.name == "experiments":
        return True
    globs = config.getini("chaos_experiments") or []
    return any(fnmatch(str(path), pattern) or fnmatch(path.name, pattern) for pattern in globs)


def _looks_like_experiment(path: Path) -> bool:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and "method" in data and "title" in data


class ExperimentFile(pytest.File):
    """An experiment file: one test item, named after the file."""

    def collect(self) -> Iterator[pytest.Item]:
        yield ExperimentItem.from_parent(self, name=self.path.stem)


class ExperimentItem(pytest.Item):
    """Run one experiment with ``chaos run`` and judge its journal."""

    def runtest(self) -> None:
        from reports.model import load_journal
        from reports.verdict import Outcome, compute_verdict

        settings: ChaosSettings = self.config.stash[SETTINGS_KEY]
        settings.report_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="chaos-", dir=settings.report_dir) as tmp:
            journal_path = Path(tmp) / "journal.json"
            proc = self._run_chaos(settings, journal_path)
            if not journal_path.exists():
                raise ExperimentNotPassed(
                    f"INCONCLUSIVE: chaos run wrote no journal (exit {proc.returncode})\n"
                    f"{proc.stderr[-3000:]}")
            journal = load_journal(journal_path)
        verdict = compute_verdict(journal)
        report = (journal.get("meshchaos") or {}).get("report_dir", "(no report control)")
        self.user_properties.append(("verdict", verdict.outcome.value))
        self.user_properties.append(("report", str(report)))
        if verdict.outcome is not Outcome.PASS:
            failing = "\n".join(f"  - {row.probe} / {row.name}"
                                f"{' at ' + row.hop if row.hop else ''}: {row.observed}"
                                for row in verdict.failed_checks[:10])
            raise ExperimentNotPassed(f"{verdict.outcome.value}: {verdict.reason}\n"
                                      f"{failing}\nreport: {report}".replace("\n\n", "\n"))

    def _run_chaos(self, settings: ChaosSettings, journal: Path
                   ) -> subprocess.CompletedProcess[str]:
        args = [sys.executable, "-m", "chaostoolkit", "--no-log-file", "run",
                "--journal-path", str(journal), "--var", f"target={settings.target}",
                "--var", f"report_dir={settings.report_dir}"]
        if settings.kubeconfig:
            args += ["--var", f"kubeconfig={Path(settings.kubeconfig).expanduser()}"]
        for key, value in settings.variables:
            args += ["--var", f"{key}={value}"]
        args.append(str(self.path))
        root = str(self.config.rootpath)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            p for p in (root, os.environ.get("PYTHONPATH", "")) if p)}
        return _run_bounded(args, cwd=root, env=env, timeout=settings.timeout,
                            name=self.path.name)

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException],
                     style: Any = None) -> str:
        if isinstance(excinfo.value, ExperimentNotPassed):
            return excinfo.value.summary
        return str(super().repr_failure(excinfo))

    def reportinfo(self) -> tuple[Path, int | None, str]:
        return self.path, None, f"experiment: {self.name}"


def _run_bounded(args: list[str], *, cwd: str, env: dict[str, str], timeout: float,
                 name: str) -> subprocess.CompletedProcess[str]:
    """Run ``args`` in its own process group; SIGTERM it on overrun, SIGKILL after a grace."""
    proc = subprocess.Popen(args, cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _signal_group(proc.pid, signal.SIGTERM)
        try:
            out, err = proc.communicate(timeout=TERM_GRACE_S)
        except subprocess.TimeoutExpired:
            _signal_group(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
        raise ExperimentNotPassed(
            f"INCONCLUSIVE: experiment '{name}' overran --chaos-timeout {timeout:g} s and was "
            f"stopped\n{(err or '')[-3000:]}") from None
    finally:
        if proc.poll() is None:  # never leave the run behind
            _signal_group(proc.pid, signal.SIGKILL)
            proc.wait()
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)
