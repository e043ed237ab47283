"""Watch streams: store changes fanned out to the HTTP clients watching a collection.

One store subscriber per app feeds every open watch. Store callbacks may run on
any thread (a test or controller writing to the store directly), so events are
handed to the serving loop with ``call_soon_threadsafe``. A watcher whose queue
overflows is closed, as a real API server drops a client that cannot keep up;
the client re-lists and watches again.

The hub keeps the latest changes (``_HISTORY_LIMIT``) so that a watch started at a
resourceVersion replays every change after it, as kube-apiserver's watch cache does:
a client that listed at version N and watches from N misses nothing that happened in
between (``kubectl delete``'s wait lists, then watches, and a deletion landing between
the two used to be lost, so the wait never ended). A version older than the kept
changes is answered 410 Expired, and the client lists again (docs/fidelity.md §8.3).
"""

from __future__ import annotations

import asyncio
import contextlib
import marshal
import threading
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from localmesh.documents import KubeObject
from localmesh.errors import Expired
from localmesh.store import EventType, ObjectStore

__all__ = ["WatchEvent", "WatchHub", "Watcher"]

WatchEvent = tuple[str, KubeObject] | None  # None ends the stream
_QUEUE_LIMIT = 10_000
_HISTORY_LIMIT = 4096  # changes kept for watches that start at a resourceVersion


def _version_of(obj: Mapping[str, Any]) -> int:
    try:
        return int((obj.get("metadata") or {}).get("resourceVersion") or 0)
    except (TypeError, ValueError):
        return 0


def _group_of(obj: Mapping[str, Any]) -> str:
    api_version = str(obj.get("apiVersion", ""))
    return api_version.split("/", 1)[0] if "/" in api_version else ""


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

    def matches(self, obj: Mapping[str, Any]) -> bool:
        """Whether a changed object is one this watch asked for."""
        if self.closed or self.group != _group_of(obj) or self.kind != obj.get("kind"):
            return False
        if self.namespace and (obj.get("metadata") or {}).get("namespace") != self.namespace:
            return False
        return self.wants(obj)

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
        self._history: deque[tuple[int, str, KubeObject]] = deque()
        # Every change after this version is in the history (none before the hub existed).
        self._complete_after = int(store.resource_version())
        self.store = store
        store.subscribe(self._on_change)

    def __len__(self) -> int:
        """How many watches are open."""
        with self._lock:
            return len(self._watchers)

    def add(self, watcher: Watcher, since: int | None = None) -> list[tuple[str, KubeObject]]:
        """Open ``watcher``; with ``since``, return the kept changes after that version.

        Registering and reading the history happen under one lock, so each change is
        either replayed here or offered to the watcher later, never both, never neither.
        Raises Expired when changes after ``since`` are no longer kept.
        """
        with self._lock:
            if since is not None and since < self._complete_after:
                raise Expired(f"too old resource version: {since} "
                              f"({self._complete_after + 1})")
            self._watchers.add(watcher)
            if since is None:
                return []
            kept = [(event, obj) for version, event, obj in self._history
                    if version > since and watcher.matches(obj)]
        return [(event, marshal.loads(marshal.dumps(obj))) for event, obj in kept]

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
        kept = marshal.loads(marshal.dumps(obj))  # a subscriber may change what it was given
        with self._lock:
            self._history.append((_version_of(kept), event, kept))
            while len(self._history) > _HISTORY_LIMIT:
                self._complete_after = max(self._complete_after, self._history.popleft()[0])
            watchers = [w for w in self._watchers if w.matches(kept)]
        for watcher in watchers:
            try:
                watcher.loop.call_soon_threadsafe(watcher.offer, event, kept)
            except RuntimeError:  # the loop is gone: this watch ended with it
                self.remove(watcher)
