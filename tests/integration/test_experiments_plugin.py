"""``pytest experiments/<file>`` on the local mesh, as a user runs it from the repository root."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


def test_pytest_runs_the_audit_experiment_on_the_local_mesh_and_passes(tmp_path: Path) -> None:
    env = {**os.environ, "MESHCHAOS_STATE_DIR": str(tmp_path / "state")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q",
         "experiments/deadline-headers-audit.json", "--chaos-target", "local",
         "--chaos-report-dir", str(tmp_path / "reports"), "--chaos-timeout", "90"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=110)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, out[-4000:]
    assert "1 passed" in out
    reports = list((tmp_path / "reports").glob("deadline-headers-audit-*/report.html"))
    assert len(reports) == 1
