"""Verdicts and reports of meshchaos runs: JUnit XML, Markdown and HTML with trace waterfalls."""

from reports.errors import JournalError, RenderError, ReportError
from reports.model import load_journal
from reports.render import ReportFiles, render_report
from reports.verdict import Outcome, Verdict, compute_verdict

__all__ = [
    "JournalError",
    "Outcome",
    "RenderError",
    "ReportError",
    "ReportFiles",
    "Verdict",
    "compute_verdict",
    "load_journal",
    "render_report",
]
