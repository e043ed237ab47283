"""Chaos Mesh's experiment status: records, conditions, desired phase (docs/fidelity.md §5.4).

``status.experiment.containerRecords`` is ``None`` until selection; each record
is ``{id, selectorKey, phase, injectedCount, recoveredCount, events}``. The four
conditions are derived from the records and the pause annotation, with string
statuses ``"True"``/``"False"`` as Kubernetes conditions have.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from localmesh.store import now_rfc3339

__all__ = [
    "CLEAN_FINALIZER_ANNOTATION",
    "FINALIZER",
    "INJECTED",
    "NOT_INJECTED",
    "PAUSE_ANNOTATION",
    "add_record_event",
    "conditions",
    "is_paused",
    "new_record",
    "records_of",
]

FINALIZER = "chaos-mesh/records"
PAUSE_ANNOTATION = "experiment.chaos-mesh.org/pause"
CLEAN_FINALIZER_ANNOTATION = "chaos-mesh.chaos-mesh.org/cleanFinalizer"
INJECTED, NOT_INJECTED = "Injected", "Not Injected"
# Chaos Mesh keeps the newest events of a record only (its MaxEventsPerRecord default).
MAX_EVENTS_PER_RECORD = 10

Record = dict[str, Any]


def new_record(record_id: str, selector_key: str) -> Record:
    return {"id": record_id, "selectorKey": selector_key, "phase": NOT_INJECTED,
            "injectedCount": 0, "recoveredCount": 0, "events": []}


def add_record_event(record: Record, succeeded: bool, operation: str, message: str = "") -> None:
    """Append a record event (type Succeeded|Failed, operation Apply|Recover), newest last."""
    event: dict[str, str] = {"type": "Succeeded" if succeeded else "Failed",
                             "operation": operation, "timestamp": now_rfc3339()}
    if message:
        event["message"] = message
    record["events"] = [*record.get("events", []), event][-MAX_EVENTS_PER_RECORD:]


def records_of(obj: Mapping[str, Any]) -> list[Record] | None:
    experiment = (obj.get("status") or {}).get("experiment") or {}
    records = experiment.get("containerRecords")
    return None if records is None else list(records)


def is_paused(obj: Mapping[str, Any]) -> bool:
    """Paused only when the annotation is exactly "true" (Chaos Mesh compares the string)."""
    annotations = (obj.get("metadata") or {}).get("annotations") or {}
    return annotations.get(PAUSE_ANNOTATION) == "true"


def conditions(records: list[Record] | None, paused: bool) -> list[dict[str, str]]:
    """Selected / AllInjected / AllRecovered / Paused, as Chaos Mesh's condition controller."""
    selected = records is not None
    all_injected = selected and all(r["phase"] == INJECTED for r in records or [])
    all_recovered = selected and all(r["phase"] == NOT_INJECTED for r in records or [])

    def cond(kind: str, value: bool) -> dict[str, str]:
        return {"type": kind, "status": "True" if value else "False"}

    return [cond("Selected", selected), cond("AllInjected", all_injected),
            cond("AllRecovered", all_recovered), cond("Paused", paused)]
