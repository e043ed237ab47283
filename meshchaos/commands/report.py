"""``meshchaos report JOURNAL [--out DIR]``: judge any Chaos Toolkit journal and render its report.

Writes ``journal.json``, ``junit.xml``, ``report.md`` and ``report.html`` into ``--out``
(default: ``reports/runs/<experiment>-<timestamp>``), prints the one-line verdict and the
report path, and exits like ``chaos run`` with the report control: 0 on PASS, 1 on FAIL or
INCONCLUSIVE (or when the journal cannot be read).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from reports.errors import ReportError
from reports.model import load_journal
from reports.render import DEFAULT_RUNS_DIR, render_report, run_dir_name
from reports.verdict import Outcome

__all__ = ["HELP", "add_arguments", "run"]

HELP = "judge a Chaos Toolkit journal and write its JUnit/Markdown/HTML report"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("journal", type=Path, metavar="JOURNAL",
                        help="a journal written by `chaos run` (e.g. ./journal.json)")
    parser.add_argument("--out", type=Path, default=None, metavar="DIR",
                        help="report directory (default: reports/runs/<experiment>-<timestamp>)")


def run(args: argparse.Namespace) -> int:
    """Render the report; 0 only when the verdict is PASS."""
    try:
        journal = load_journal(args.journal)
        title = str((journal.get("experiment") or {}).get("title") or args.journal.stem)
        out = args.out or DEFAULT_RUNS_DIR / run_dir_name(title)
        files = render_report(journal, out)
    except ReportError as exc:
        print(f"meshchaos report: {exc}", file=sys.stderr)
        return 1
    print(files.verdict.line())
    print(f"report: {files.html}")
    return 0 if files.verdict.outcome is Outcome.PASS else 1
