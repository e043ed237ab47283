"""The HTML report in a real browser: headless Chromium screenshots it and dumps its DOM.

Skips only when no Chromium binary exists; CI installs it (``apt-get install -y chromium``).
The page is loaded from a ``file://`` URL with networking switched off for the renderer,
so a report that needed the network would come out broken.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from reports.model import load_journal
from reports.render import render_report

JOURNALS = Path(__file__).resolve().parents[1] / "data" / "journals"
BINARIES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
CHROMIUM = next((p for p in map(shutil.which, BINARIES) if p), None)
BROWSER_TIMEOUT_S = 60.0

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary on PATH "
                                "(CI: apt-get install -y chromium)")


def run_chromium(*args: str, profile: Path) -> subprocess.CompletedProcess[str]:
    """Run headless Chromium in its own process group and never leave it behind."""
    assert CHROMIUM is not None
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
           "--no-first-run", f"--user-data-dir={profile}", "--proxy-server=127.0.0.1:9",
           *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=BROWSER_TIMEOUT_S)
    finally:
        # The browser's helpers share its group: take them all down, running or not.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


@pytest.fixture
def report_html(tmp_path: Path) -> Path:
    return render_report(load_journal(JOURNALS / "fail-orphan-work.json"), tmp_path / "r").html


def test_chromium_screenshots_the_report(report_html: Path, tmp_path: Path) -> None:
    shot = tmp_path / "report.png"
    result = run_chromium(f"--screenshot={shot}", "--window-size=1200,1400",
                          report_html.as_uri(), profile=tmp_path / "profile")
    assert shot.is_file(), result.stderr[-2000:]
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    # A blank page compresses to a few kB; the report with tables and bars is far larger.
    assert len(data) > 30_000


def test_chromium_dom_holds_verdict_checks_failures_and_waterfall(report_html: Path,
                                                                   tmp_path: Path) -> None:
    result = run_chromium("--dump-dom", report_html.as_uri(), profile=tmp_path / "profile")
    dom = result.stdout
    assert 'id="verdict"' in dom and "FAIL: leaf delay, orphan work" in dom
    assert 'id="checks"' in dom and 'id="failures"' in dom
    assert 'class="waterfall"' in dom and dom.count('class="span-bar') == 4
    for mark in ('class="deadline"', 'class="timeout-fired"', 'class="cancelled"',
                 'class="orphaned"'):
        assert mark in dom, mark
