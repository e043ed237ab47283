"""Watch streams: store changes fanned out to the HTTP clients watching a collection.

One store subscriber per app feeds every open watch. Store callbacks may run on
any thread (a test or controller writing to the store directly), so events are
handed to the serving loop with ``call_soon_threadsafe``. A watcher whose queue
overflows is closed, as a real API server drops a client that cannot keep up;
the client re-lists and watches again.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from localmesh.documents import KubeObject
from localmesh.store import EventType, ObjectStore

__all__ = ["WatchEvent", "WatchHub", "Watcher"]

WatchEvent = tuple[str, KubeObject] | None  # None ends the stream
_QUEUE_LIMIT = 10_000


@dataclass(eq=False)
class Watcher:
    """One open watch: which objects it wants and where their events go."""

    group: str
    kind: str
    namespace: str | None
    wants: Callable[[Mapping[str, Any]], bool]
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[WatchEvent] = field(
        default_factory=lambda: asyncio.Queue(_QUEUE_LIMIT + 1))
    closed: bool = False

    def offer(self, event: str, obj: KubeObject) -> None:
        """Queue one event (runs on the watcher's loop)."""
        if self.closed:
            return
        if self.queue.qsize() >= _QUEUE_LIMIT:
            self.close()
            return
        self.queue.put_nowait((event, obj))

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.queue.put_nowait(None)


class WatchHub:
    """Subscribes to the store once and routes each change to matching watchers."""

    def __init__(self, store: ObjectStore) -> None:
        self._watchers: set[Watcher] = set()
        self._lock = threading.Lock()
        self.closed = False  # the server is shutting down: streams (logs too) end
        store.subscribe(self._on_change)

    def __len__(self) -> int:
        """How many watches are open."""
        with self._lock:
            return len(self._watchers)

    def add(self, watcher: Watcher) -> None:
        with self._lock:
            self._watchers.add(watcher)

    def remove(self, watcher: Watcher) -> None:
        with self._lock:
            self._watchers.discard(watcher)

    def close_all(self) -> None:
        self.closed = True
        with self._lock:
            watchers = list(self._watchers)
        for watcher in watchers:
            with contextlib.suppress(RuntimeError):  # its loop is already closed
                watcher.loop.call_soon_threadsafe(watcher.close)

    def _on_change(self, event: EventType, obj: KubeObject) -> None:
        api_version = str(obj.get("apiVersion", ""))
        group = api_version.split("/", 1)[0] if "/" in api_version else ""
        meta = obj.get("metadata") or {}
        with self._lock:
            watchers = list(self._watchers)
        for watcher in watchers:
            if watcher.group != group or watcher.kind != obj.get("kind") or watcher.closed:
                continue
            if watcher.namespace and meta.get("namespace") != watcher.namespace:
                continue
            if not watcher.wants(obj):
                continue
            try:
                watcher.loop.call_soon_threadsafe(watcher.offer, event, obj)
            except RuntimeError:  # the loop is gone: this watch ended with it
                self.remove(watcher)

