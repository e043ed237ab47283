"""Runbooks and experiments stay in step, and every command a runbook shows exists and parses.

- every experiment has a runbook and every runbook an experiment;
- a runbook names its experiment file and the Chaos Mesh manifest(s) it applies;
- its "What to fix" section covers every check the experiment's probes can report;
- each command line in its ``sh`` blocks parses: ``chaos`` and ``meshchaos`` through their own
  argument parsers, ``pytest`` against the meshchaos plugin's options, ``kubectl`` against
  its verbs and (when the binary is there) the flags of ``kubectl <verb> --help``; paths of
  experiments and manifests exist.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import click
import pytest

from meshchaos.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
EXPERIMENTS = sorted((ROOT / "experiments").glob("*.json"))
RUNBOOKS = sorted((ROOT / "runbooks").glob("*.md"))
KUBECTL_VERBS = {"get", "describe", "logs", "delete", "apply", "rollout", "annotate", "label",
                 "top", "events", "wait", "port-forward"}
KUBECTL_GLOBAL = {"-n", "--namespace", "--kubeconfig", "--context"}
PLUGIN_FLAGS = {"--chaos-target": ("local", "kubernetes"), "--kubeconfig": None,
                "--chaos-report-dir": None, "--chaos-timeout": None}
# Each probe function's check names (kept beside the runbook test: a new probe check without
# a "what to fix" entry fails here).
AUDIT_CHECKS = ["timeout-inversion", "retries-fit-timeout", "per-try-retried"]


def experiment_checks(experiment: dict[str, Any]) -> set[str]:
    """The check names the hypothesis probes of ``experiment`` can report."""
    from probes.checks import deadlines, messaging, tracing

    names: set[str] = set()
    for probe in experiment["steady-state-hypothesis"]["probes"]:
        provider = probe["provider"]
        func, args = provider["func"], provider.get("arguments", {})
        if func == "trace_continuity":
            names |= set(args.get("checks") or tracing.RULES)
        elif func == "deadline_propagation":
            names |= set(deadlines.RULES) - set(AUDIT_CHECKS)
        elif func == "virtual_service_audit":
            names |= set(AUDIT_CHECKS)
        elif func == "steady_state":
            slo = args.get("slo") or {}
            names |= {"success-ratio"} | ({"latency-p99"} if "max_p99_ms" in slo else set()) \
                | ({"within-budget"} if "budget_ms" in slo else set())
        elif func == "recovery_time":
            names.add("recovery")
        elif func == "orphan_work":
            names.add("orphan-work")
        elif func == "message_flow":
            scoped = args.get("scoped", True)
            names |= set(args.get("checks") or [
                n for n in messaging.ALL
                if scoped or n not in ("deadline-in-message", "no-work-after-deadline")])
        elif func == "side_call_fallback":
            names |= {"side-call-fallback", "aborted-call-not-served"}
        else:
            raise AssertionError(f"no check names known for probe function '{func}'")
    return names


def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())  # type: ignore[no-any-return]


def runbook_for(experiment: Path) -> Path:
    return ROOT / "runbooks" / f"{experiment.stem}.md"


def shell_lines(text: str) -> list[str]:
    """Command lines of the ``sh`` code blocks, continuation lines joined."""
    lines: list[str] = []
    for block in re.findall(r"```sh\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                lines.append(line.strip())
    return lines


def argv_of(line: str) -> list[str]:
    """The command's argv without leading ``VAR=value`` environment assignments."""
    argv = shlex.split(line)
    while argv and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", argv[0]):
        argv.pop(0)
    return argv


def all_commands() -> list[tuple[str, str]]:
    return [(path.stem, line) for path in RUNBOOKS for line in shell_lines(path.read_text())]


def test_every_experiment_has_a_runbook_and_every_runbook_an_experiment() -> None:
    assert EXPERIMENTS, "no experiments found"
    assert {p.stem for p in EXPERIMENTS} == {p.stem for p in RUNBOOKS}


@pytest.mark.parametrize("experiment", EXPERIMENTS, ids=[p.stem for p in EXPERIMENTS])
def test_runbook_names_its_experiment_and_its_manifests(experiment: Path) -> None:
    text = runbook_for(experiment).read_text()
    assert f"experiments/{experiment.name}" in text
    for activity in load(experiment)["method"]:
        manifest = (activity["provider"].get("arguments") or {}).get("manifest")
        if manifest:
            assert (ROOT / "fixtures" / "chaos" / manifest).is_file(), manifest
            assert f"fixtures/chaos/{manifest}" in text, manifest


@pytest.mark.parametrize("experiment", EXPERIMENTS, ids=[p.stem for p in EXPERIMENTS])
def test_runbook_says_what_to_fix_for_every_check_its_probes_report(experiment: Path) -> None:
    text = runbook_for(experiment).read_text()
    section = text.split("## What to fix, by failing check", 1)
    assert len(section) == 2, "runbook lacks the 'What to fix, by failing check' section"
    covered = set(re.findall(r"^- \*\*`([a-z0-9-]+)`\*\*", section[1], re.M))
    missing = experiment_checks(load(experiment)) - covered
    assert not missing, f"no fix described for check(s) {sorted(missing)}"


@pytest.mark.parametrize("experiment", EXPERIMENTS, ids=[p.stem for p in EXPERIMENTS])
def test_runbook_has_every_section_a_gameday_needs(experiment: Path) -> None:
    text = runbook_for(experiment).read_text()
    for heading in ("## Purpose and hypothesis", "## Blast radius", "## Prerequisites",
                    "## Run it against a cluster", "## What to watch while it runs",
                    "## Abort and roll back", "## Read the report"):
        assert heading in text, heading
    assert "meshchaos abort" in text and "--var target=kubernetes" in text


def test_runbooks_show_commands_of_every_kind() -> None:
    tools = {argv_of(line)[0] for _, line in all_commands()}
    assert {"chaos", "meshchaos", "kubectl", "pytest"} <= tools


@pytest.mark.parametrize(("runbook", "line"), all_commands(),
                         ids=[f"{r}:{i}" for i, (r, _) in enumerate(all_commands())])
def test_runbook_command_exists_and_parses(runbook: str, line: str) -> None:
    argv = argv_of(line)
    checker = {"chaos": _check_chaos, "meshchaos": _check_meshchaos, "kubectl": _check_kubectl,
               "pytest": _check_pytest}.get(argv[0])
    assert checker is not None, f"{runbook}: unknown command '{argv[0]}' in: {line}"
    checker(argv[1:])


def _check_chaos(args: list[str]) -> None:
    from chaostoolkit.cli import cli

    name, command, rest = cli.resolve_command(cli.make_context("chaos", list(args),
                                                               resilient_parsing=True), args)
    assert command is not None, f"chaos has no subcommand {args[0]!r}"
    try:
        ctx = command.make_context(name, list(rest))
    except click.UsageError as exc:
        raise AssertionError(f"chaos {' '.join(args)}: {exc}") from exc
    source = ctx.params.get("source") or ctx.params.get("path")
    if source:
        assert (ROOT / source).is_file(), f"experiment {source} does not exist"


def _check_meshchaos(args: list[str]) -> None:
    try:
        build_parser().parse_args(args)
    except SystemExit as exc:
        raise AssertionError(f"meshchaos {' '.join(args)} does not parse") from exc


def _check_pytest(args: list[str]) -> None:
    paths = [a for a in args if not a.startswith("-") and a not in _flag_values(args)]
    assert paths and all((ROOT / p).exists() for p in paths), paths
    for flag, value in _flags(args):
        assert flag in PLUGIN_FLAGS, f"pytest flag {flag} is not a meshchaos plugin option"
        choices = PLUGIN_FLAGS[flag]
        assert choices is None or value in choices, f"{flag} {value}"


def _check_kubectl(args: list[str]) -> None:
    args = list(args)
    while args and args[0] in KUBECTL_GLOBAL:  # `kubectl -n shop get …`
        assert len(args) > 1, f"kubectl {args[0]} needs a value"
        del args[:2]
    assert args, "kubectl without a verb"
    verb = args[0]
    assert verb in KUBECTL_VERBS, f"kubectl verb '{verb}' is not one runbooks use"
    for flag, value in _flags(args):
        if flag in ("-f", "--filename"):
            assert (ROOT / value).exists(), f"kubectl -f {value}: no such path"
    if shutil.which("kubectl"):
        # `rollout` has subcommands (`rollout status`) whose help lists their own flags.
        command = (verb, args[1]) if verb == "rollout" else (verb,)
        known = _kubectl_flags(command) | KUBECTL_GLOBAL
        for flag, _ in _flags(args):
            assert flag.split("=")[0] in known, f"kubectl {verb} has no flag {flag}"


def _flags(args: list[str]) -> list[tuple[str, str]]:
    out = []
    for i, arg in enumerate(args):
        if arg.startswith("-"):
            name, _, inline = arg.partition("=")
            value = inline or (args[i + 1] if i + 1 < len(args) and not args[i + 1].startswith(
                "-") else "")
            out.append((name, value))
    return out


def _flag_values(args: list[str]) -> set[str]:
    return {value for _, value in _flags(args) if value}


@cache
def _kubectl_flags(command: tuple[str, ...]) -> frozenset[str]:
    """Flags ``kubectl <command> --help`` documents (the client needs no cluster for help)."""
    kubectl = shutil.which("kubectl")
    assert kubectl is not None
    text = subprocess.run([kubectl, *command, "--help"], capture_output=True, text=True,
                          timeout=30, check=True).stdout
    return frozenset(re.findall(r"(?<![\w-])(--?[a-zA-Z][\w-]*)", text))


@pytest.mark.parametrize("path", EXPERIMENTS, ids=[p.stem for p in EXPERIMENTS])
def test_runbook_lists_every_twin_its_experiment_must_catch(path: Path) -> None:
    """The gameday reader must know which defects the run is supposed to catch, and where."""
    text = runbook_for(path).read_text()
    ext = next(e for e in load(path)["extensions"] if e["name"] == "meshchaos")
    for twin in ext["twins"]:
        assert f"- `{twin['chain_defect']}` at `{twin['chain_defect_hop']}`" in text, twin
