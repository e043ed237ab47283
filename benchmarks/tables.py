"""The Markdown table row the start benchmarks print (bench_mesh_start.py, bench_broker.py):
a measurement's runs as count, min, median and max seconds beside its target."""

from __future__ import annotations

import statistics


def row(name: str, values: list[float], target: str) -> str:
    if not values:
        return f"| {name} | 0 | - | - | - | {target} |"
    return (f"| {name} | {len(values)} | {min(values):.3f} | {statistics.median(values):.3f} "
            f"| {max(values):.3f} | {target} |")
