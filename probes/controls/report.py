"""Control: judge the run, write its report, and make ``chaos run`` exit non-zero unless PASS.

Usage (last in the experiment's ``controls``)::

    {"name": "report", "provider": {"type": "python", "module": "probes.controls.report",
                                    "arguments": {"experiment_name": "timeout-cascade"}}}

After the experiment it computes the suite's verdict from the journal
(:func:`reports.verdict.compute_verdict`), writes
``<report_dir>/<experiment_name>-<timestamp>/`` (``report_dir`` from the configuration,
default ``reports/runs``) with ``journal.json``, ``junit.xml``, ``report.md`` and
``report.html``, and prints one line: the verdict and the report path.

Why it edits the journal: chaostoolkit 1.19's ``chaos run`` exits 1 only when
``journal["status"] != "completed"`` or ``journal["deviated"]`` (``commands/run.py``),
and chaoslib 1.44 calls this hook with the very journal it then returns and writes
(``Runner._run``: ``control.with_state(journal)`` then ``control.end(...)``, after the
status was normalised). So, documented in the journal's ``meshchaos`` block:

- FAIL → ``deviated: true`` (the steady state did not hold);
- INCONCLUSIVE → ``status: "failed"`` when chaoslib said ``completed`` (nothing was
  proven: a failed injection, a before-hypothesis miss, a probe that could not measure);
- PASS → untouched.

chaoslib swallows exceptions raised by controls, so a report that cannot be written is
logged as an error and the run is marked ``failed`` rather than left green.
"""

from __future__ import annotations

import json
import logging
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

from probes.controls import skip_collection_at_exit
from reports.errors import ReportError
from reports.render import DEFAULT_RUNS_DIR, render_report, run_dir_name
from reports.verdict import Outcome, Verdict, compute_verdict

__all__ = ["after_experiment_control", "apply_verdict"]

logger = logging.getLogger("chaostoolkit")


def after_experiment_control(context: dict[str, Any], state: MutableMapping[str, Any],
                             configuration: dict[str, Any] | None = None,
                             experiment_name: str | None = None, **_: Any) -> None:
    """Judge ``state`` (the journal), adjust its status, write the run's report."""
    skip_collection_at_exit()
    journal = state
    try:
        verdict = compute_verdict(journal)
        apply_verdict(journal, verdict)
        root = Path(str((configuration or {}).get("report_dir") or DEFAULT_RUNS_DIR))
        name = experiment_name or verdict.title
        files = render_report(journal, root / run_dir_name(name))
    except ReportError as exc:
        journal["status"] = "failed"
        logger.error("meshchaos could not judge or report this run: %s", exc)
        return
    journal["meshchaos"]["report_dir"] = str(files.directory)
    _rewrite_journal(files.journal, journal)
    line = f"{verdict.line()} (report: {files.html})"
    logger.debug(line)
    print(line, flush=True)


def apply_verdict(journal: MutableMapping[str, Any], verdict: Verdict) -> None:
    """Record the verdict in the journal and flip what ``chaos run``'s exit code reads."""
    journal["meshchaos"] = {"verdict": verdict.outcome.value, "reason": verdict.reason,
                            "chaostoolkit_status": journal.get("status"),
                            "chaostoolkit_deviated": bool(journal.get("deviated"))}
    if verdict.outcome is Outcome.FAIL:
        journal["deviated"] = True
    elif verdict.outcome is Outcome.INCONCLUSIVE and journal.get("status") == "completed":
        journal["status"] = "failed"


def _rewrite_journal(path: Path, journal: MutableMapping[str, Any]) -> None:
    # The report dir's copy gains report_dir, known only once the files are written.
    try:
        path.write_text(json.dumps(journal, indent=2, default=str, ensure_ascii=False) + "\n",
                        encoding="utf-8")
    except OSError as exc:
        logger.error("meshchaos could not rewrite %s: %s", path, exc)
