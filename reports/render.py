"""Write a run's report directory: journal, JUnit XML, Markdown and HTML.

``reports/runs/<experiment>-<UTC timestamp>/`` holds ``journal.json`` (the journal as
judged, including the ``meshchaos`` verdict block), ``junit.xml``, ``report.md`` and
``report.html``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from reports.errors import RenderError
from reports.html import render_html
from reports.junit import render_junit
from reports.markdown import render_markdown
from reports.verdict import Verdict, compute_verdict

__all__ = ["DEFAULT_RUNS_DIR", "ReportFiles", "render_report", "run_dir_name", "slug"]

DEFAULT_RUNS_DIR = Path("reports/runs")


@dataclass(frozen=True)
class ReportFiles:
    """Where a rendered report lives, and the verdict it shows."""

    directory: Path
    journal: Path
    junit: Path
    markdown: Path
    html: Path
    verdict: Verdict


def slug(text: str) -> str:
    """A file-system safe name: lowercase words joined by dashes."""
    cleaned = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return cleaned[:60] or "experiment"


def run_dir_name(experiment: str, when: datetime | None = None) -> str:
    """``<experiment>-<YYYYmmddTHHMMSSffffffZ>`` for a run started at ``when`` (default now).

    Microseconds keep two runs started in the same second apart.
    """
    stamp = (when or datetime.now(UTC)).strftime("%Y%m%dT%H%M%S%fZ")
    return f"{slug(experiment)}-{stamp}"


def render_report(journal: Mapping[str, Any], out_dir: Path) -> ReportFiles:
    """Judge ``journal`` and write the four report files into ``out_dir`` (created)."""
    verdict = compute_verdict(journal)
    directory = Path(out_dir)
    files = ReportFiles(directory=directory, journal=directory / "journal.json",
                        junit=directory / "junit.xml", markdown=directory / "report.md",
                        html=directory / "report.html", verdict=verdict)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        files.journal.write_text(json.dumps(journal, indent=2, default=str,
                                            ensure_ascii=False) + "\n", encoding="utf-8")
        files.junit.write_text(render_junit(verdict), encoding="utf-8")
        files.markdown.write_text(render_markdown(verdict), encoding="utf-8")
        files.html.write_text(render_html(verdict), encoding="utf-8")
    except OSError as exc:
        raise RenderError(f"could not write the report into '{directory}': {exc}") from exc
    return files
