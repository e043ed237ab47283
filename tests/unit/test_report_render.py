"""JUnit, Markdown and HTML reports rendered from recorded journals (tests/data/journals)."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from meshchaos.commands import report as report_command
from reports.html import render_html
from reports.junit import render_junit
from reports.markdown import render_markdown
from reports.model import load_journal
from reports.render import render_report, run_dir_name, slug
from reports.verdict import compute_verdict
from reports.waterfall import layout_trace

JOURNALS = Path(__file__).resolve().parents[1] / "data" / "journals"


def verdict_of(name: str) -> Any:
    return compute_verdict(load_journal(JOURNALS / f"{name}.json"))


def test_junit_has_one_case_per_check_and_a_failure_with_the_reason() -> None:
    verdict = verdict_of("fail-orphan-work")
    root = ET.fromstring(render_junit(verdict))
    suite = root.find("testsuite")
    assert suite is not None
    cases = suite.findall("testcase")
    assert len(cases) == len(verdict.checks) == int(suite.get("tests", "0"))
    failures = [c for c in cases if c.find("failure") is not None]
    assert [c.get("name") for c in failures] == ["no-orphan-work [pricing]"]
    failure = failures[0].find("failure")
    assert failure is not None
    assert "pricing worked 495 ms after inventory was cancelled" in failure.get("message", "")
    assert suite.get("failures") == "1" and suite.get("errors") == "0"


def test_junit_for_an_inconclusive_run_is_never_green() -> None:
    """A run that proved nothing must not show up as passing tests in CI."""
    verdict = verdict_of("inconclusive-injection-failed")
    suite = ET.fromstring(render_junit(verdict)).find("testsuite")
    assert suite is not None
    assert suite.get("errors") == "1"
    error = suite.find("testcase[@name='verdict']/error")
    assert error is not None and "no pod is selected" in error.get("message", "")


def test_junit_marks_a_probe_that_could_not_measure_as_error() -> None:
    suite = ET.fromstring(render_junit(verdict_of("inconclusive-probe-raised"))).find("testsuite")
    assert suite is not None
    errors = suite.findall("testcase/error")
    assert errors and "could not reach the ingress" in errors[0].get("message", "")


def test_markdown_puts_the_verdict_first_then_checks_by_hop_then_failures() -> None:
    text = render_markdown(verdict_of("fail-orphan-work"))
    first = text.splitlines()[0]
    assert first.startswith("# ") and "FAIL" in first
    order = [text.index(h) for h in ("**Verdict:** FAIL", "## Checks by hop",
                                     "## What failed and why")]
    assert order == sorted(order)
    table = text[text.index("## Checks by hop"):text.index("## What failed")]
    hops = [line.split("|")[1].strip() for line in table.splitlines() if line.startswith("| ")]
    assert hops[1:] == sorted(hops[1:], key=["frontend", "orders", "inventory", "pricing"].index)
    assert "| pricing | after | deadlines-shrink-and-no-orphans | no-orphan-work | **FAIL**" in text


def test_markdown_escapes_pipes_so_the_table_keeps_its_columns() -> None:
    data = load_journal(JOURNALS / "fail-orphan-work.json")
    data["steady_states"]["after"]["probes"][1]["output"]["checks"][0]["observed"] = "a|b"
    assert "a\\|b" in render_markdown(compute_verdict(data))


def test_html_is_self_contained() -> None:
    """No network at view time: no http(s) URL in any src or href, no external stylesheet."""
    page = render_html(verdict_of("fail-orphan-work"))
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page, re.I)
    assert "<script" not in page and "<link" not in page and "@import" not in page


def test_html_draws_a_waterfall_with_deadline_timeout_cancel_and_orphan_marks() -> None:
    page = render_html(verdict_of("fail-orphan-work"))
    assert page.count('class="waterfall"') == 1
    assert page.count('class="span-bar') == 4
    for mark in ('class="deadline"', 'class="timeout-fired"', 'class="cancelled"',
                 'class="orphaned"'):
        assert mark in page, mark
    assert page.index('id="verdict"') < page.index('id="checks"') < page.index('id="failures"')


def test_html_shows_no_waterfall_when_nothing_failed() -> None:
    page = render_html(verdict_of("pass"))
    assert 'id="no-waterfall"' in page and 'class="waterfall"' not in page


def test_html_escapes_text_from_the_journal() -> None:
    data = load_journal(JOURNALS / "fail-orphan-work.json")
    data["experiment"]["title"] = "<script>alert(1)</script>"
    page = render_html(compute_verdict(data))
    assert "<script>alert" not in page and "&lt;script&gt;" in page


def test_waterfall_places_the_orphan_tail_where_the_caller_ended() -> None:
    """§1.6: after hop n-1 times out, work at hop n that goes on is orphan work."""
    trace = load_journal(JOURNALS / "fail-orphan-work.json")["steady_states"]["after"][
        "probes"][1]["output"]["traces"][0]
    fall = layout_trace(trace)
    by_label = {bar.label.split(" ·")[0]: bar for bar in fall.bars}
    assert [bar.depth for bar in fall.bars] == [0, 1, 2, 3]
    pricing, inventory = by_label["pricing"], by_label["inventory"]
    assert pricing.orphan_from == pytest.approx(inventory.left + inventory.width, abs=0.01)
    assert by_label["orders (sidecar)"].timeout_fired and not by_label["frontend"].timeout_fired
    assert inventory.cancelled and by_label["frontend"].deadline == pytest.approx(100.0)


def test_waterfall_survives_a_parent_cycle_and_spans_without_times() -> None:
    trace = {"trace_id": "t", "spans": [
        {"span_id": "a", "parent_id": "b", "start_us": 0, "duration_us": 10},
        {"span_id": "b", "parent_id": "a", "start_us": 5, "duration_us": 10},
        {"span_id": "c", "parent_id": None, "start_us": None, "duration_us": 3}]}
    assert len(layout_trace(trace).bars) <= 2


def test_render_report_writes_the_four_files(tmp_path: Path) -> None:
    files = render_report(load_journal(JOURNALS / "pass.json"), tmp_path / "run")
    for path in (files.journal, files.junit, files.markdown, files.html):
        assert path.is_file() and path.stat().st_size > 0
    assert json.loads(files.journal.read_text())["status"] == "completed"


def test_run_dir_name_is_a_slug_plus_utc_timestamp() -> None:
    assert slug("Timeout cascade: leaf slows!") == "timeout-cascade-leaf-slows"
    assert re.fullmatch(r"timeout-cascade-\d{8}T\d{12}Z", run_dir_name("timeout-cascade"))


@pytest.mark.parametrize(("name", "code"), [("pass", 0), ("fail-orphan-work", 1),
                                            ("interrupted-sigterm", 1)])
def test_meshchaos_report_exits_zero_only_on_pass(name: str, code: int, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    parser = __import__("meshchaos.cli", fromlist=["build_parser"]).build_parser()
    args = parser.parse_args(["report", str(JOURNALS / f"{name}.json"), "--out",
                              str(tmp_path / "out")])
    assert report_command.run(args) == code
    out = capsys.readouterr().out
    assert out.startswith("meshchaos verdict: ") and str(tmp_path / "out" / "report.html") in out


def test_meshchaos_report_names_a_bad_journal(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "j.json"
    bad.write_text("[1, 2]")
    parser = __import__("meshchaos.cli", fromlist=["build_parser"]).build_parser()
    assert report_command.run(parser.parse_args(["report", str(bad)])) == 1
    assert "not a JSON object" in capsys.readouterr().err
