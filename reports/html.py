"""The self-contained HTML report: verdict, checks by hop, failures, trace waterfalls.

No script, no font, no image, no stylesheet is fetched: everything is inline, so the page
opens from a CI artifact store or an air-gapped laptop. Each waterfall shows one sampled
failing request: one bar per span, a dashed line at the deadline the hop had, a mark
where a timeout fired, a mark where work was cancelled, and a hatched tail where work
went on after its caller had left.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from html import escape
from typing import Any

from reports.markdown import group_by_hop
from reports.model import CheckRow, ProbeRun
from reports.verdict import Outcome, Verdict
from reports.waterfall import Bar, Waterfall, layout_trace

__all__ = ["MAX_WATERFALLS", "render_html", "sampled_traces"]

MAX_WATERFALLS = 6
_CELL_LIMIT = 160

_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:24px;color:#1d2330;background:#fff}
h1{font-size:22px;margin:0 0 6px} h2{font-size:17px;margin:26px 0 8px}
.verdict{padding:14px 18px;border-radius:6px;margin-bottom:14px;color:#fff}
.verdict.PASS{background:#1f7a3a}.verdict.FAIL{background:#b3261e}
.verdict.INCONCLUSIVE{background:#8a5a00}
.verdict .reason{font-size:15px;margin-top:4px}
table{border-collapse:collapse;width:100%;font-size:13px}
th,td{border:1px solid #d5d9e0;padding:4px 6px;text-align:left;vertical-align:top}
th{background:#eef1f5} tr.fail td{background:#fdecea} tr.unjudged td{background:#fff6e0}
tr.hop td{background:#f6f8fa;font-weight:600}
code{font-size:12px;word-break:break-all}
.waterfall{border:1px solid #d5d9e0;border-radius:6px;padding:10px;margin:12px 0}
.waterfall h3{font-size:14px;margin:0 0 8px}
.row{display:flex;align-items:center;height:24px}
.label{width:34%;font-size:12px;white-space:nowrap;overflow:hidden;text-overflow:ellipsis}
.track{position:relative;flex:1;height:18px;background:#f3f5f8;border-radius:3px}
.span-bar{position:absolute;top:3px;height:12px;background:#4a7bd0;border-radius:2px}
.span-bar.error{background:#d0584a}
.deadline{position:absolute;top:0;height:18px;border-left:2px dashed #222}
.timeout-fired{position:absolute;top:-2px;font-size:13px;color:#b3261e;font-weight:700}
.cancelled{position:absolute;top:-2px;font-size:13px;color:#6a1b9a;font-weight:700}
.orphaned{position:absolute;top:3px;height:12px;background:repeating-linear-gradient(
45deg,#e08a00 0 4px,#ffd27a 4px 8px);border-radius:2px}
.legend span{margin-right:16px;font-size:12px}
.axis{display:flex;font-size:11px;color:#5a6270}.axis .label{visibility:hidden}
.axis .ticks{flex:1;display:flex;justify-content:space-between}
"""


def render_html(verdict: Verdict) -> str:
    """Return the self-contained HTML report of a verdict."""
    body = [_banner(verdict), _checks(verdict.checks), _failures(verdict),
            _waterfalls(sampled_traces(verdict.probes)), _notes(verdict.notes)]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{escape(verdict.outcome.value)}: {escape(verdict.title)}</title>"
            f"<style>{_CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def sampled_traces(probes: Iterable[ProbeRun], limit: int = MAX_WATERFALLS
                   ) -> list[tuple[str, Mapping[str, Any]]]:
    """Traces of failing probes (probe name, trace), deduplicated, at most ``limit``."""
    picked: list[tuple[str, Mapping[str, Any]]] = []
    seen: set[str] = set()
    for probe in probes:
        if probe.passed:
            continue
        for trace in probe.traces:
            key = str(trace.get("trace_id"))
            if key in seen:
                continue
            seen.add(key)
            picked.append((probe.name, trace))
            if len(picked) >= limit:
                return picked
    return picked


def _banner(verdict: Verdict) -> str:
    outcome = verdict.outcome.value
    return (f'<div class="verdict {outcome}" id="verdict"><h1>{outcome}: '
            f'{escape(verdict.title)}</h1><div class="reason">{escape(verdict.reason)}</div>'
            f'<div>Chaos Toolkit status <code>{escape(verdict.status)}</code>, deviated '
            f'<code>{verdict.deviated}</code></div></div>')


def _checks(rows: tuple[CheckRow, ...]) -> str:
    out = ['<h2>Checks by hop</h2><table id="checks"><thead><tr><th>phase</th><th>probe</th>'
           '<th>check</th><th>result</th><th>judged</th><th>expected</th><th>observed</th>'
           '</tr></thead><tbody>']
    for hop, group in group_by_hop(rows).items():
        out.append(f'<tr class="hop"><td colspan="7">{escape(hop)}</td></tr>')
        for row in group:
            css = {"FAIL": ' class="fail"', "not judged": ' class="unjudged"'}.get(row.result, "")
            observed = "; ".join([str(row.observed), *row.notes]) if row.notes else row.observed
            out.append(f"<tr{css}><td>{row.phase}</td><td>{escape(row.probe)}</td>"
                       f"<td>{escape(row.name)}</td><td>{row.result}</td>"
                       f"<td>{escape(row.tally)}</td>"
                       f"<td>{_cell(row.expected)}</td><td>{_cell(observed)}</td></tr>")
    if not rows:
        out.append('<tr><td colspan="7">No probe recorded a check.</td></tr>')
    return "".join(out) + "</tbody></table>"


def _failures(verdict: Verdict) -> str:
    items: list[str] = []
    if verdict.outcome is Outcome.INCONCLUSIVE:
        items.append(f"<li>The run proved nothing: {escape(verdict.reason)}</li>")
    for row in verdict.failed_checks:
        where = f" at <b>{escape(row.hop)}</b>" if row.hop else ""
        rule = f" — rule: {escape(row.rule)}" if row.rule else ""
        items.append(f"<li><b>{escape(row.probe)} / {escape(row.name)}</b>{where}: expected "
                     f"{_cell(row.expected)}, observed {_cell(row.observed)}{rule}</li>")
    for probe in verdict.probes:
        if not probe.passed:
            items.append(f"<li>probe <b>{escape(probe.name)}</b> ({probe.phase}): "
                         f"{escape(probe.reason)}</li>")
    if not items:
        items.append("<li>Nothing failed.</li>")
    return '<h2>What failed and why</h2><ul id="failures">' + "".join(items) + "</ul>"


def _waterfalls(traces: list[tuple[str, Mapping[str, Any]]]) -> str:
    if not traces:
        return '<h2>Trace waterfalls</h2><p id="no-waterfall">No failing request was sampled.</p>'
    legend = ('<div class="legend"><span>▬ span</span><span>┆ deadline the hop had</span>'
              '<span style="color:#b3261e">✕ timeout fired</span>'
              '<span style="color:#6a1b9a">⊘ work cancelled</span>'
              '<span style="color:#e08a00">▨ work went on after its caller left</span></div>')
    parts = [_waterfall(probe, layout_trace(trace)) for probe, trace in traces]
    return "<h2>Trace waterfalls</h2>" + legend + "".join(parts)


def _waterfall(probe: str, fall: Waterfall) -> str:
    rows = "".join(_bar_row(bar) for bar in fall.bars) or "<p>This trace has no spans.</p>"
    ticks = "".join(f"<span>{fall.extent_ms * i / 4:.0f} ms</span>" for i in range(5))
    rows += f'<div class="axis"><div class="label">axis</div><div class="ticks">{ticks}</div></div>'
    return (f'<section class="waterfall" data-trace-id="{escape(fall.trace_id)}"><h3>trace '
            f"<code>{escape(fall.trace_id)}</code> from {escape(probe)} "
            f"({fall.extent_ms:.1f} ms)</h3>{rows}</section>")


def _bar_row(bar: Bar) -> str:
    error = " error" if bar.timeout_fired or bar.cancelled or _is_error(bar.status) else ""
    title = (f"{bar.label}: starts {bar.start_ms:.1f} ms, lasts {bar.duration_ms:.1f} ms, "
             f"status {bar.status or '-'}"
             + (f", budget {bar.budget_ms:g} ms" if bar.budget_ms is not None else ""))
    marks = [f'<div class="span-bar{error}" style="left:{bar.left}%;width:{bar.width}%" '
             f'title="{escape(title)}"></div>']
    end = min(bar.left + bar.width, 100.0)
    if bar.orphan_from is not None:
        marks.append(f'<div class="orphaned" style="left:{bar.orphan_from}%;'
                     f'width:{max(end - bar.orphan_from, 0.3):.3f}%" '
                     'title="work went on after its caller left"></div>')
    if bar.deadline is not None:
        marks.append(f'<div class="deadline" style="left:{bar.deadline}%" '
                     f'title="deadline {bar.budget_ms or 0:g} ms"></div>')
    if bar.timeout_fired:
        marks.append(f'<span class="timeout-fired" style="left:{end}%" '
                     'title="timeout fired here">✕</span>')
    if bar.cancelled:
        marks.append(f'<span class="cancelled" style="left:{end}%" '
                     'title="work cancelled here">⊘</span>')
    indent = "&nbsp;" * (2 * bar.depth)
    return (f'<div class="row"><div class="label" title="{escape(bar.label)}">{indent}'
            f'{escape(bar.label)}</div><div class="track">{"".join(marks)}</div></div>')


def _notes(notes: tuple[str, ...]) -> str:
    if not notes:
        return ""
    return "<h2>Run notes</h2><ul>" + "".join(f"<li>{escape(n)}</li>" for n in notes) + "</ul>"


def _is_error(status: str) -> bool:
    lowered = status.lower()
    return lowered.startswith(("5", "error")) or "error" in lowered


def _cell(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str, sort_keys=True)
    if len(text) > _CELL_LIMIT:
        text = text[: _CELL_LIMIT - 1] + "…"
    return f"<code>{escape(text)}</code>"
