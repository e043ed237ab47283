"""Errors of the reports package.

One tree, rooted at :class:`ReportError`::

    ReportError(Exception)
    ├── JournalError(ReportError, ValueError)   unreadable, or not a Chaos Toolkit journal
    └── RenderError(ReportError)                a report file that could not be written

Messages are lowercase, name the file or the key and quote the value.
"""

from __future__ import annotations

__all__ = ["JournalError", "RenderError", "ReportError"]


class ReportError(Exception):
    """Root of every error the reports package raises."""


class JournalError(ReportError, ValueError):
    """Raised when a journal cannot be read or lacks the keys of a Chaos Toolkit journal."""


class RenderError(ReportError):
    """Raised when a report directory or file cannot be written."""
