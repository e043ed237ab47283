"""The ``meshchaos`` command: ``up``, ``down``, ``status``, ``abort``, ``report``, ``plan``.

Each subcommand is a module of :mod:`meshchaos.commands` exposing either
``register(subparsers)`` (which sets ``func`` on its parser) or the trio
``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``.

Exit codes: 0 success, 1 the command failed (the message says why), 2 bad
usage, 130 interrupted.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from types import ModuleType

from localmesh.errors import MeshError
from meshchaos.errors import MeshchaosError

__all__ = ["COMMANDS", "build_parser", "main"]

# One line per subcommand module.
COMMANDS = [
    "meshchaos.commands.up",
    "meshchaos.commands.down",
    "meshchaos.commands.status",
    "meshchaos.commands.abort",
    "meshchaos.commands.report",
    "meshchaos.commands.plan",
]


def _load(name: str) -> ModuleType | None:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name == name:  # not written yet: the command is simply not offered
            return None
        raise


def _register(module: ModuleType, subparsers: argparse._SubParsersAction[
        argparse.ArgumentParser]) -> None:
    if hasattr(module, "register"):
        module.register(subparsers)
        return
    name = module.__name__.rsplit(".", 1)[-1]
    helptext = getattr(module, "HELP", None) or (module.__doc__ or "").strip().split("\n")[0]
    parser = subparsers.add_parser(name, help=helptext, description=module.__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    module.add_arguments(parser)
    parser.set_defaults(func=module.run)


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The whole command line, or only subcommand ``only`` (what a run of it needs)."""
    parser = argparse.ArgumentParser(
        prog="meshchaos", description="Chaos experiments for Istio meshes, on a local "
        "embedded mesh or a real cluster.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for name in COMMANDS:
        if only is not None and name.rsplit(".", 1)[-1] != only:
            continue
        module = _load(name)
        if module is not None:
            _register(module, subparsers)
    return parser


def _named_command(argv: Sequence[str]) -> str | None:
    """The subcommand ``argv`` names first, when it is one of ours."""
    first = next((a for a in argv if not a.startswith("-")), None)
    known = {name.rsplit(".", 1)[-1] for name in COMMANDS}
    return first if first in known and argv and argv[0] == first else None


def main(argv: Sequence[str] | None = None) -> int:
    # Only the named subcommand is imported: `up` is timed from the shell to Ready, and the
    # others' imports (the chaos actions, the report renderer) cost it a quarter second.
    # Anything else (no command, --help, a typo) gets the whole parser and its messages.
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(_named_command(argv))
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"meshchaos {args.command}: interrupted", file=sys.stderr)
        return 130
    except (MeshError, MeshchaosError) as exc:
        print(f"meshchaos {args.command}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
