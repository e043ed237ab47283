"""The local Chaos Mesh controller: store events in, faults and status out (NetworkChaos,
PodChaos and HTTPChaos, docs/fidelity.md §5.5).

One reconcile per object key, run on the controller's own loop (store callbacks
may come from any thread and only enqueue keys). A reconcile follows Chaos
Mesh's controllers in order (docs/fidelity.md §5.4):

1. finalizer ``chaos-mesh/records`` added on create (event FinalizerInited);
2. desired phase, first match wins: deleted → Stop (Deleted); one-shot → Run;
   duration passed → Stop (TimeUp); paused → Stop (Paused); else Run (Started);
3. selection once, only while ``containerRecords`` is nil (§5.1); no match is a
   Failed event "no pod is selected" and Selected=False, retried;
4. each record applied (Run) or recovered (Stop), with Applied/Recovered or
   Failed events on the object and Succeeded/Failed events on the record, and
   an Updated event when the records were written;
5. conditions written; a deleted object loses its finalizer once every record
   is Not Injected, and the store then drops it.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import random
import time
from datetime import UTC, datetime
from typing import Any

from localmesh.chaos.admission import GROUP
from localmesh.chaos.effects import EffectError, Effects, FaultSink, PodRunner
from localmesh.chaos.faults import SOURCE, TARGET
from localmesh.chaos.selection import NoPodSelected, select_pods
from localmesh.chaos.status import (
    CLEAN_FINALIZER_ANNOTATION,
    FINALIZER,
    INJECTED,
    NOT_INJECTED,
    add_record_event,
    conditions,
    is_paused,
    new_record,
    records_of,
)
from localmesh.chaos.units import parse_duration_ms
from localmesh.documents import KubeObject
from localmesh.errors import NotFound
from localmesh.store import ObjectStore

__all__ = ["ChaosController"]

log = logging.getLogger("localmesh.chaos")
Key = tuple[str, str, str]  # (plural, namespace, name)
PLURALS = ("networkchaos", "podchaos", "httpchaos")
ONE_SHOT = ("pod-kill", "container-kill")
COMPONENT = "chaos-controller-manager"
_PHASE_EVENTS = {"deleted": ("Deleted", "Experiment has been deleted"),
                 "timeup": ("TimeUp", "Time up according to the duration"),
                 "paused": ("Paused", "Experiment has been paused"),
                 "run": ("Started", "Experiment has started")}


class ChaosController:
    """Runs NetworkChaos, PodChaos and HTTPChaos objects of a store against the local mesh."""

    def __init__(self, store: ObjectStore, xds: FaultSink, supervisor: PodRunner, *,
                 retry_interval: float = 1.0, rng: random.Random | None = None) -> None:
        self._store = store
        self._effects = Effects(store, xds, supervisor)
        self._retry_interval = retry_interval
        self._rng = rng or random.Random()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue[Key] = asyncio.Queue()
        self._pending: set[Key] = set()
        self._timers: dict[Key, asyncio.TimerHandle] = {}
        self._first_seen: dict[str, float] = {}  # uid -> wall time the controller first saw it
        self._reasons: dict[str, str] = {}  # uid -> reason of the last desired phase (events)
        self._failures: dict[str, str] = {}  # uid -> last selection failure reported
        self._uids: dict[Key, str] = {}  # to drop the per-uid memory once an object is gone
        self._worker: asyncio.Task[None] | None = None
        self._subscribed = False

    # -- lifecycle --------------------------------------------------------------

    async def start(self) -> None:
        """Subscribe to chaos objects and reconcile the ones already stored."""
        self._loop = asyncio.get_running_loop()
        if not self._subscribed:
            for plural in PLURALS:
                self._store.subscribe(self._on_change, group=GROUP, plural=plural)
            self._subscribed = True
        self._worker = asyncio.create_task(self._work(), name="chaos-controller")
        for plural in PLURALS:
            for obj in self._store.list(GROUP, plural):
                self._enqueue((plural, obj["metadata"]["namespace"], obj["metadata"]["name"]))

    async def stop(self) -> None:
        """Stop reconciling and recover every fault this controller injected."""
        worker, self._worker, self._loop = self._worker, None, None
        if worker is not None:
            worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await worker
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        await self._effects.recover_all()
        self._mark_all_recovered()

    # -- queueing ---------------------------------------------------------------

    def _on_change(self, event: str, obj: KubeObject) -> None:
        """Store callback (any thread): hand the key to the controller loop."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        meta = obj.get("metadata") or {}
        key = (str(obj.get("kind", "")).lower(), str(meta.get("namespace")), str(meta.get("name")))
        loop.call_soon_threadsafe(self._enqueue, key)

    def _enqueue(self, key: Key) -> None:
        if self._worker is None or key in self._pending:
            return
        self._pending.add(key)
        self._queue.put_nowait(key)

    def _requeue_after(self, key: Key, delay: float) -> None:
        if self._loop is None:
            return
        old = self._timers.pop(key, None)
        if old is not None:
            old.cancel()
        self._timers[key] = self._loop.call_later(max(delay, 0.0), self._enqueue, key)

    async def _work(self) -> None:
        while True:
            key = await self._queue.get()
            self._pending.discard(key)
            try:
                await self._reconcile(key)
            except asyncio.CancelledError:
                raise
            except Exception:  # one broken object must not stop the controller: log and retry
                log.exception("reconcile of %s %s/%s failed", *key)
                self._requeue_after(key, self._retry_interval)

    # -- reconcile --------------------------------------------------------------

    async def _reconcile(self, key: Key) -> None:
        plural, namespace, name = key
        try:
            obj = self._store.get(GROUP, plural, namespace, name)
        except NotFound:
            self._drop_memory(key)
            await self._forget(f"{namespace}/{name}")
            return
        self._uids[key] = obj["metadata"]["uid"]
        obj = self._ensure_finalizer(key, obj)
        phase, reason = self._desired_phase(obj)
        status = copy.deepcopy(obj.get("status") or {})
        experiment = status.setdefault("experiment", {})
        self._phase_event(obj, reason)
        experiment["desiredPhase"] = phase
        # a copy: the status comparison below must see record changes
        records = copy.deepcopy(records_of(obj))
        deleted = bool(obj["metadata"].get("deletionTimestamp"))
        if records is None and not deleted:
            # Chaos Mesh selects whenever records are nil, whatever the desired phase (§5.1)
            records = self._select(obj)
        retry = False
        if records is not None:
            retry = await self._drive(obj, records, phase)
            experiment["containerRecords"] = records
        else:
            # Chaos Mesh's records are `omitempty`: nil records are an absent key, not null
            experiment.pop("containerRecords", None)
        status["conditions"] = conditions(records, is_paused(obj))
        obj = self._commit_status(key, obj, status, records)
        self._finish(key, obj, records, phase, retry)

    def _phase_event(self, obj: KubeObject, reason: str) -> None:
        """Started/Paused/TimeUp/Deleted, once each time the desired phase's reason changes."""
        uid = obj["metadata"]["uid"]
        if self._reasons.get(uid) != reason:
            self._reasons[uid] = reason
            event_reason, message = _PHASE_EVENTS[reason]
            self._store.record_event(obj, event_reason, message, component=COMPONENT)

    def _commit_status(self, key: Key, obj: KubeObject, status: KubeObject,
                       records: list[dict[str, Any]] | None) -> KubeObject:
        """Write the status if it changed (event Updated when the records did)."""
        if status == (obj.get("status") or {}):
            return obj
        written = self._write_status(key, status)
        if written is not None and records != records_of(obj):
            self._store.record_event(written, "Updated", "Successfully update records of "
                                     "resource", component=COMPONENT)
        return written or obj

    def _finish(self, key: Key, obj: KubeObject, records: list[Any] | None, phase: str,
                retry: bool) -> None:
        """Drop the finalizer once recovered, schedule retries and the duration timer."""
        deleted = bool(obj["metadata"].get("deletionTimestamp"))
        recovered = records is None or all(r["phase"] == NOT_INJECTED for r in records)
        forced = (obj["metadata"].get("annotations") or {}).get(
            CLEAN_FINALIZER_ANNOTATION) == "forced"
        if deleted and (recovered or forced):
            self._drop_finalizer(key)
            return
        if retry or records is None:
            self._requeue_after(key, self._retry_interval)
            return
        remaining = self._remaining_s(obj)
        if remaining is not None and remaining > 0:  # paused too: TimeUp comes on time
            self._requeue_after(key, remaining)

    def _ensure_finalizer(self, key: Key, obj: KubeObject) -> KubeObject:
        meta = obj["metadata"]
        if meta.get("deletionTimestamp") or FINALIZER in (meta.get("finalizers") or []):
            return obj

        def add(o: KubeObject) -> None:
            o["metadata"]["finalizers"] = [*(o["metadata"].get("finalizers") or []), FINALIZER]

        obj = self._store.mutate(GROUP, key[0], key[1], key[2], add)
        self._store.record_event(obj, "FinalizerInited", "Finalizer has been inited",
                                 component=COMPONENT)
        return obj

    def _drop_finalizer(self, key: Key) -> None:
        def drop(o: KubeObject) -> None:
            o["metadata"]["finalizers"] = [
                f for f in o["metadata"].get("finalizers") or [] if f != FINALIZER]

        with contextlib.suppress(NotFound):
            self._store.mutate(GROUP, key[0], key[1], key[2], drop)
        self._cancel_timer(key)

    def _drop_memory(self, key: Key) -> None:
        self._cancel_timer(key)
        uid = self._uids.pop(key, None)
        for memory in (self._first_seen, self._reasons, self._failures):
            memory.pop(uid or "", None)

    def _cancel_timer(self, key: Key) -> None:
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()

    def _desired_phase(self, obj: KubeObject) -> tuple[str, str]:
        """Chaos Mesh's desired-phase rules, first match wins (§5.4)."""
        if obj["metadata"].get("deletionTimestamp"):
            return "Stop", "deleted"
        if obj["spec"].get("action") in ONE_SHOT and obj["kind"] == "PodChaos":
            return "Run", "run"
        remaining = self._remaining_s(obj)
        if remaining is not None and remaining <= 0:
            return "Stop", "timeup"
        if is_paused(obj):
            return "Stop", "paused"
        return "Run", "run"

    def _remaining_s(self, obj: KubeObject) -> float | None:
        """Seconds until ``creationTimestamp + duration``; None without a duration.

        creationTimestamp has one-second resolution, so the start is the later of it and
        the moment this controller first saw the object: a fault never lasts less than asked.
        """
        duration = obj["spec"].get("duration")
        if not duration or (obj["kind"] == "PodChaos" and obj["spec"]["action"] in ONE_SHOT):
            return None
        meta = obj["metadata"]
        created = datetime.strptime(meta["creationTimestamp"], "%Y-%m-%dT%H:%M:%SZ") \
            .replace(tzinfo=UTC).timestamp()
        start = max(created, self._first_seen.setdefault(meta["uid"], time.time()))
        return start + parse_duration_ms(str(duration)) / 1000 - time.time()

    def _select(self, obj: KubeObject) -> list[dict[str, Any]] | None:
        """Select the records once; None (and a Failed event) when nothing matches."""
        namespace = obj["metadata"]["namespace"]
        try:
            pods = select_pods(self._store, obj["spec"], namespace, self._rng)
            targets = select_pods(self._store, obj["spec"]["target"], namespace, self._rng) \
                if obj["kind"] == "NetworkChaos" and obj["spec"].get("target") else []
        except NoPodSelected as exc:
            self._report_failure(obj, f"Failed to select targets: {exc}")
            return None
        keys = [f"{p['metadata']['namespace']}/{p['metadata']['name']}" for p in pods]
        if obj["kind"] == "PodChaos" and obj["spec"]["action"] == "container-kill":
            records = [new_record(f"{k}/{c}", SOURCE) for k in keys
                       for c in obj["spec"]["containerNames"]]
        else:
            records = [new_record(k, SOURCE) for k in keys]
        records += [new_record(f"{p['metadata']['namespace']}/{p['metadata']['name']}", TARGET)
                    for p in targets]
        return records

    def _report_failure(self, obj: KubeObject, message: str) -> None:
        """A Warning event Failed, once per distinct message per object."""
        uid = obj["metadata"]["uid"]
        if self._failures.get(uid) == message:
            return
        self._failures[uid] = message
        self._store.record_event(obj, "Failed", message, type_="Warning", component=COMPONENT)

    async def _drive(self, obj: KubeObject, records: list[dict[str, Any]], phase: str) -> bool:
        """Apply or recover each record toward the phase; True when something must be retried."""
        retry = False
        for record in records:
            if phase == "Run" and record["phase"] == NOT_INJECTED:
                if obj["kind"] == "PodChaos" and obj["spec"]["action"] in ONE_SHOT \
                        and record["injectedCount"] > 0:
                    continue
                retry |= not await self._step(obj, record, records, "Apply")
            elif phase == "Stop" and record["phase"] == INJECTED:
                retry |= not await self._step(obj, record, records, "Recover")
        return retry

    async def _step(self, obj: KubeObject, record: dict[str, Any], records: list[dict[str, Any]],
                    operation: str) -> bool:
        try:
            if operation == "Apply":
                message = await self._effects.apply(obj, record, records)
            else:
                message = await self._effects.recover(obj, record)
        except EffectError as exc:
            failure = f"Failed to {operation.lower()} chaos for {record['id']}: {exc}"
            last = (record.get("events") or [{}])[-1]
            if last.get("message") != failure:
                add_record_event(record, False, operation, failure)
                self._store.record_event(obj, "Failed", failure, type_="Warning",
                                         component=COMPONENT)
            return False
        applied = operation == "Apply"
        record["phase"] = INJECTED if applied else NOT_INJECTED
        record["injectedCount" if applied else "recoveredCount"] += 1
        add_record_event(record, True, operation)
        self._store.record_event(obj, "Applied" if applied else "Recovered", message,
                                 component=COMPONENT)
        return True

    def _write_status(self, key: Key, status: KubeObject) -> KubeObject | None:
        def put(o: KubeObject) -> None:
            o["status"] = status

        try:
            return self._store.mutate(GROUP, key[0], key[1], key[2], put, subresource="status")
        except NotFound:
            return None

    async def _forget(self, chaos_id: str) -> None:
        """An object purged behind the finalizer's back: take its faults out anyway."""
        for pod_key in self._effects.forget(chaos_id):
            try:
                await self._effects.push(pod_key)
            except EffectError:
                log.exception("could not clear faults of purged %s on %s", chaos_id, pod_key)

    def _mark_all_recovered(self) -> None:
        """After stop(): records say Not Injected, because the faults are gone."""
        for plural in PLURALS:
            for obj in self._store.list(GROUP, plural):
                records = records_of(obj)
                if not records or all(r["phase"] == NOT_INJECTED for r in records):
                    continue
                for record in records:
                    if record["phase"] == INJECTED:
                        record["phase"] = NOT_INJECTED
                        record["recoveredCount"] += 1
                        add_record_event(record, True, "Recover", "controller stopped")
                status = copy.deepcopy(obj["status"])
                status["experiment"]["containerRecords"] = records
                status["conditions"] = conditions(records, is_paused(obj))
                key = (plural, obj["metadata"]["namespace"], obj["metadata"]["name"])
                self._write_status(key, status)
