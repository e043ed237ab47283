"""JUnit XML for CI: one test case per probe check, failures carry the reason.

Layout: one ``<testsuite>`` named after the experiment; each check is a
``<testcase classname="<experiment>.<phase>.<probe>" name="<check> [<hop>]">``. A failing
check gets ``<failure message=…>`` with expected/observed; a probe that could not
measure gets ``<error>``. An INCONCLUSIVE verdict without a failing check adds one
``verdict`` test case in error, so CI never shows green for a run that proved nothing.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from typing import Any

from reports.model import CheckRow, ProbeRun
from reports.verdict import Outcome, Verdict

__all__ = ["render_junit"]


def render_junit(verdict: Verdict, *, suite: str | None = None) -> str:
    """Return the JUnit XML document of a verdict."""
    name = suite or verdict.title
    root = ET.Element("testsuites")
    node = ET.SubElement(root, "testsuite", name=name)
    counts = {"tests": 0, "failures": 0, "errors": 0}
    for probe in verdict.probes:
        for row in probe.checks:
            _case(node, name, probe, row, counts)
    if verdict.outcome is not Outcome.PASS and not (counts["failures"] or counts["errors"]):
        _verdict_case(node, name, verdict, counts)
    for key, value in counts.items():
        node.set(key, str(value))
    node.set("time", f"{float(verdict.meta.get('duration') or 0.0):.3f}")
    props = ET.SubElement(node, "properties")
    ET.SubElement(props, "property", name="verdict", value=verdict.outcome.value)
    ET.SubElement(props, "property", name="reason", value=verdict.reason)
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"


def _case(node: ET.Element, suite: str, probe: ProbeRun, row: CheckRow,
          counts: dict[str, int]) -> None:
    hop = f" [{row.hop}]" if row.hop else ""
    case = ET.SubElement(node, "testcase", classname=f"{suite}.{probe.phase}.{probe.name}",
                         name=f"{row.name}{hop}")
    counts["tests"] += 1
    if probe.raised and not row.passed:
        counts["errors"] += 1
        error = ET.SubElement(case, "error", message=probe.reason)
        error.text = probe.exception or probe.reason
    elif not row.passed:
        counts["failures"] += 1
        failure = ET.SubElement(case, "failure", message=_message(probe, row))
        failure.text = (f"expected: {_text(row.expected)}\nobserved: {_text(row.observed)}\n"
                        f"rule: {row.rule or '-'}\nprobe reason: {probe.reason}")


def _verdict_case(node: ET.Element, suite: str, verdict: Verdict,
                  counts: dict[str, int]) -> None:
    case = ET.SubElement(node, "testcase", classname=f"{suite}.verdict", name="verdict")
    counts["tests"] += 1
    counts["errors"] += 1
    error = ET.SubElement(case, "error", message=f"{verdict.outcome.value}: {verdict.reason}")
    error.text = verdict.reason


def _message(probe: ProbeRun, row: CheckRow) -> str:
    where = f" at {row.hop}" if row.hop else ""
    return f"{row.name}{where}: observed {_text(row.observed)} ({probe.reason})"


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, default=str, sort_keys=True)
