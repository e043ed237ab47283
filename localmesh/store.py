"""The object store behind the Kubernetes API subset.

Everything the mesh knows lives here as plain Kubernetes-shaped dicts: what the
API server serves, what the supervisor runs, what the chaos controller and the
sidecar configuration push read. Controllers subscribe to changes; admission
hooks validate and default objects before they are stored, the way admission
webhooks do on a real cluster.

Semantics kept from the real API server:
- ``resourceVersion`` is a global counter, bumped on every write;
- ``metadata.generation`` starts at 1 and grows only when ``spec`` changes;
- a delete of an object with finalizers (or of a kind with graceful deletion,
  such as pods) only sets ``deletionTimestamp``; the object disappears once the
  finalizers are gone (or the owner purges it);
- an update that names a stale ``resourceVersion`` is a 409 Conflict.
"""

from __future__ import annotations

import builtins
import copy
import itertools
import logging
import marshal
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar, cast

import jsonpatch

from localmesh.documents import KubeObject
from localmesh.errors import AlreadyExists, BadRequest, Conflict, Invalid, NotFound
from localmesh.mergepatch import merge_patch
from localmesh.resources import ResourceRegistry, ResourceType
from localmesh.selectors import parse_field_selector, parse_label_selector

__all__ = [
    "Admission",
    "EventType",
    "ObjectKey",
    "ObjectStore",
    "Subscriber",
    "now_rfc3339",
]

log = logging.getLogger("localmesh.store")

EventType = Literal["ADDED", "MODIFIED", "DELETED"]
Subscriber = Callable[[EventType, KubeObject], None]
# An admission hook gets (operation, new object, old object or None) and may
# mutate the new object (defaulting) or raise Invalid.
Admission = Callable[[str, KubeObject, KubeObject | None], None]


def now_rfc3339() -> str:
    """The current time the way Kubernetes writes timestamps."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _now_micro() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


_T = TypeVar("_T")


def _copy(value: _T) -> _T:
    """A deep copy of a JSON document (every read and write of the store copies one).

    A marshal round trip copies dicts, lists, strings and numbers about five times faster
    than ``copy.deepcopy``; anything marshal refuses (a non-JSON value some caller put in
    an object) is copied by ``copy.deepcopy`` as before.
    """
    try:
        copied: _T = marshal.loads(marshal.dumps(cast(Any, value)))
    except ValueError:
        return copy.deepcopy(value)
    return copied

@dataclass(frozen=True)
class ObjectKey:
    group: str
    plural: str
    namespace: str  # "" for cluster-scoped objects
    name: str

    def __str__(self) -> str:
        ns = f"{self.namespace}/" if self.namespace else ""
        return f"{self.plural}.{self.group or 'core'} {ns}{self.name}"


class ObjectStore:
    """Thread-safe in-memory store of Kubernetes objects with change notification."""

    def __init__(self, registry: ResourceRegistry | None = None) -> None:
        self.registry = registry or ResourceRegistry.with_builtins()
        self._objects: dict[ObjectKey, KubeObject] = {}
        self._lock = threading.RLock()
        self._versions = itertools.count(1)
        self._revision = 0
        self._subscribers: list[tuple[tuple[str, str] | None, Subscriber]] = []
        self._admission: dict[tuple[str, str], list[Admission]] = {}
        self._graceful: set[tuple[str, str]] = set()

    # -- wiring -----------------------------------------------------------------

    def subscribe(self, callback: Subscriber, *, group: str | None = None,
                  plural: str | None = None) -> None:
        """Call ``callback(event, obj)`` after every change (of one resource type if given)."""
        key = (group, plural) if group is not None and plural is not None else None
        self._subscribers.append((key, callback))

    def add_admission(self, group: str, plural: str, hook: Admission) -> None:
        """Run ``hook`` on create and update of one resource type, before storing."""
        self._admission.setdefault((group, plural), []).append(hook)

    def set_graceful_deletion(self, group: str, plural: str) -> None:
        """Mark a type whose deletes only set deletionTimestamp until its owner purges it."""
        self._graceful.add((group, plural))

    # -- reads ------------------------------------------------------------------

    def rtype(self, group: str, plural: str) -> ResourceType:
        rtype = self.registry.by_plural(group, plural)
        if rtype is None:
            raise NotFound(f"the server could not find the requested resource ({plural}.{group})")
        return rtype

    def get(self, group: str, plural: str, namespace: str, name: str) -> KubeObject:
        rtype = self.rtype(group, plural)
        key = ObjectKey(group, plural, namespace if rtype.namespaced else "", name)
        with self._lock:
            obj = self._objects.get(key)
            if obj is None:
                raise NotFound(f'{plural}.{group or "core"} "{name}" not found'
                               .replace(".core", ""), kind=plural, name=name)
            return _copy(obj)

    def list(self, group: str, plural: str, namespace: str | None = None, *,
             label_selector: str | None = None,
             field_selector: str | None = None) -> list[KubeObject]:
        """List objects of a type, in one namespace or all (namespace None or '')."""
        return [_copy(o) for o in self.list_shared(group, plural, namespace,
                                                   label_selector=label_selector,
                                                   field_selector=field_selector)]

    def list_shared(self, group: str, plural: str, namespace: str | None = None, *,
                    label_selector: str | None = None,
                    field_selector: str | None = None) -> builtins.list[KubeObject]:
        """:meth:`list` without the copies: the stored objects themselves, to read only.

        For controllers in this process that read many objects on every pass (the
        ReplicaSet controller lists every pod each time one changes) and change them only
        through the store's writes. An object is replaced, never changed in place, on
        every write, so what was listed stays a consistent snapshot.
        """
        self.rtype(group, plural)
        labels_ok = parse_label_selector(label_selector)
        fields_ok = parse_field_selector(field_selector)
        with self._lock:
            items = [
                o for k, o in self._objects.items()
                if k.group == group and k.plural == plural
                and (not namespace or k.namespace == namespace)
                and labels_ok(o.get("metadata", {}).get("labels") or {})
                and fields_ok(o)
            ]
        return sorted(items, key=lambda o: (o["metadata"].get("namespace", ""),
                                            o["metadata"]["name"]))

    def resource_version(self) -> str:
        """The store's current revision: the resourceVersion of its latest write.

        What a list answers as ``metadata.resourceVersion`` (a watch from it misses no
        later change), deletions included, as etcd's revision counts them.
        """
        with self._lock:
            return str(self._revision)

    def _next_version(self) -> str:
        """Issue the resourceVersion of one write (the caller holds the lock)."""
        self._revision = next(self._versions)
        return str(self._revision)

    # -- writes -----------------------------------------------------------------

    def create(self, obj: KubeObject, *, namespace: str | None = None,
               dry_run: bool = False) -> KubeObject:
        """Store a new object; the namespace argument wins over metadata.namespace.

        ``dry_run``: every check and admission hook runs, nothing is stored or announced
        (the API's ``dryRun=All``); the answer is the object as it would have been stored.
        """
        rtype = self._type_of(obj)
        obj = _copy(obj)
        meta = obj.setdefault("metadata", {})
        if not isinstance(meta, dict):
            raise BadRequest("metadata must be an object")
        if rtype.namespaced:
            meta["namespace"] = namespace or meta.get("namespace") or "default"
            self._require_namespace(meta["namespace"])
        else:
            meta.pop("namespace", None)
        if not meta.get("name"):
            if meta.get("generateName"):
                meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
            else:
                raise Invalid(f"{rtype.kind}: metadata.name: Required value",
                              kind=rtype.kind, field="metadata.name")
        obj["apiVersion"] = obj.get("apiVersion") or rtype.api_version()
        obj["kind"] = rtype.kind
        self._admit("CREATE", rtype, obj, None)
        key = self._key(rtype, meta)
        with self._lock:
            if key in self._objects:
                raise AlreadyExists(
                    f'{rtype.plural}.{rtype.group} "{meta["name"]}" already exists'
                    .replace(". ", " "), kind=rtype.plural, name=meta["name"])
            meta["uid"] = str(uuid.uuid4())
            meta["creationTimestamp"] = now_rfc3339()
            meta["generation"] = 1
            if dry_run:
                return _copy(obj)
            meta["resourceVersion"] = self._next_version()
            self._objects[key] = obj
            stored = _copy(obj)
        self._notify("ADDED", rtype, stored)
        return _copy(stored)

    def replace(self, obj: KubeObject, *, subresource: str = "",
                dry_run: bool = False) -> KubeObject:
        """Replace an object (PUT); a stale resourceVersion is a Conflict."""
        rtype = self._type_of(obj)
        meta = obj.get("metadata") or {}
        key = self._key(rtype, meta)
        with self._lock:
            old = self._objects.get(key)
            if old is None:
                raise NotFound(f'{rtype.plural} "{meta.get("name")}" not found',
                               kind=rtype.plural, name=str(meta.get("name")))
            wanted = meta.get("resourceVersion")
            if wanted and wanted != old["metadata"]["resourceVersion"]:
                raise Conflict(
                    f'Operation cannot be fulfilled on {rtype.plural} "{meta["name"]}": the '
                    "object has been modified; please apply your changes to the latest version "
                    "and try again", kind=rtype.plural, name=meta["name"])
            return self._write(rtype, key, old, _copy(obj), subresource, dry_run=dry_run)

    def patch(self, group: str, plural: str, namespace: str, name: str, patch: Any,
              patch_type: str = "merge", *, subresource: str = "",
              dry_run: bool = False) -> KubeObject:
        """Apply a JSON merge patch (also used for strategic merge) or a JSON patch."""
        rtype = self.rtype(group, plural)
        key = ObjectKey(group, plural, namespace if rtype.namespaced else "", name)
        with self._lock:
            old = self._objects.get(key)
            if old is None:
                raise NotFound(f'{plural} "{name}" not found', kind=plural, name=name)
            new = self._apply_patch(old, patch, patch_type)
            return self._write(rtype, key, old, new, subresource, dry_run=dry_run)

    def update_status(self, obj_or_key: KubeObject, status: KubeObject) -> KubeObject:
        """Replace the status of an object (the status subresource)."""
        rtype = self._type_of(obj_or_key)
        key = self._key(rtype, obj_or_key["metadata"])
        with self._lock:
            old = self._objects.get(key)
            if old is None:
                raise NotFound(f'{rtype.plural} "{key.name}" not found', name=key.name)
            new = _copy(old)
            new["status"] = _copy(status)
            return self._write(rtype, key, old, new, "status")

    def mutate(self, group: str, plural: str, namespace: str, name: str,
               change: Callable[[KubeObject], None], *, subresource: str = "",
               dry_run: bool = False) -> KubeObject:
        """Read-modify-write an object atomically (controllers use this)."""
        rtype = self.rtype(group, plural)
        key = ObjectKey(group, plural, namespace if rtype.namespaced else "", name)
        with self._lock:
            old = self._objects.get(key)
            if old is None:
                raise NotFound(f'{plural} "{name}" not found', kind=plural, name=name)
            new = _copy(old)
            change(new)
            return self._write(rtype, key, old, new, subresource, dry_run=dry_run)

    def delete(self, group: str, plural: str, namespace: str, name: str, *,
               grace_period_seconds: int | None = None, dry_run: bool = False) -> KubeObject:
        """Delete an object, or mark it for deletion while finalizers or its owner hold it."""
        rtype = self.rtype(group, plural)
        key = ObjectKey(group, plural, namespace if rtype.namespaced else "", name)
        with self._lock:
            old = self._objects.get(key)
            if old is None:
                raise NotFound(f'{plural}.{group} "{name}" not found'.replace(". ", " ")
                               .replace(f"{plural}. ", f"{plural} "), kind=plural, name=name)
            held = bool(old["metadata"].get("finalizers")) or (group, plural) in self._graceful
            if not held and dry_run:
                return _copy(old)
            if not held:
                del self._objects[key]
                gone = _copy(old)
                # The deletion is a write of its own: a watch from any earlier version
                # replays it (kube-apiserver's DELETED event carries the delete's revision).
                gone["metadata"]["resourceVersion"] = self._next_version()
            else:
                if old["metadata"].get("deletionTimestamp"):
                    return _copy(old)
                new = _copy(old)
                new["metadata"]["deletionTimestamp"] = now_rfc3339()
                if grace_period_seconds is not None:
                    new["metadata"]["deletionGracePeriodSeconds"] = grace_period_seconds
                return self._write(rtype, key, old, new, "delete", dry_run=dry_run)
        self._notify("DELETED", rtype, gone)
        return _copy(gone)

    def purge(self, group: str, plural: str, namespace: str, name: str) -> None:
        """Remove an object for good (the owner of a graceful deletion calls this)."""
        rtype = self.rtype(group, plural)
        key = ObjectKey(group, plural, namespace if rtype.namespaced else "", name)
        with self._lock:
            gone = self._objects.pop(key, None)
            if gone is not None:
                gone = _copy(gone)
                gone["metadata"]["resourceVersion"] = self._next_version()
        if gone is not None:
            self._notify("DELETED", rtype, gone)

    def record_event(self, involved: KubeObject, reason: str, message: str, *,
                     type_: str = "Normal", component: str = "localmesh") -> KubeObject:
        """Create a core/v1 Event about an object, as controllers and the kubelet do."""
        meta = involved.get("metadata", {})
        namespace = meta.get("namespace") or "default"
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": f"{meta.get('name')}.{uuid.uuid4().hex[:16]}",
                         "namespace": namespace},
            "involvedObject": {
                "apiVersion": involved.get("apiVersion"), "kind": involved.get("kind"),
                "name": meta.get("name"), "namespace": namespace, "uid": meta.get("uid"),
            },
            "reason": reason,
            "message": message,
            "type": type_,
            "source": {"component": component},
            "firstTimestamp": now_rfc3339(),
            "lastTimestamp": now_rfc3339(),
            "eventTime": _now_micro(),
            "count": 1,
        }
        try:
            return self.create(event)
        except NotFound:  # the namespace went away: nothing to attach the event to
            return event

    # -- internals --------------------------------------------------------------

    def _type_of(self, obj: Mapping[str, Any]) -> ResourceType:
        rtype = self.registry.for_object(dict(obj))
        if rtype is None:
            raise NotFound(f"no matches for kind \"{obj.get('kind')}\" in version "
                           f"\"{obj.get('apiVersion')}\"")
        return rtype

    @staticmethod
    def _key(rtype: ResourceType, meta: Mapping[str, Any]) -> ObjectKey:
        ns = str(meta.get("namespace") or "default") if rtype.namespaced else ""
        return ObjectKey(rtype.group, rtype.plural, ns, str(meta.get("name", "")))

    def _require_namespace(self, namespace: str) -> None:
        key = ObjectKey("", "namespaces", "", namespace)
        with self._lock:
            if key not in self._objects:
                raise NotFound(f'namespaces "{namespace}" not found', kind="namespaces",
                               name=namespace)

    def _admit(self, operation: str, rtype: ResourceType, new: KubeObject,
               old: KubeObject | None) -> None:
        for hook in self._admission.get((rtype.group, rtype.plural), []):
            hook(operation, new, old)

    @staticmethod
    def _apply_patch(old: KubeObject, patch: Any, patch_type: str) -> KubeObject:
        if patch_type == "json":
            if not isinstance(patch, list):
                raise BadRequest("json patch must be a list of operations")
            try:
                result = jsonpatch.apply_patch(old, patch)
            except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as exc:
                raise Invalid(f"the json patch could not be applied: {exc}") from exc
            if not isinstance(result, dict):
                raise Invalid("the json patch did not produce an object")
            return result
        if not isinstance(patch, dict):
            raise BadRequest("merge patch must be an object")
        # A copy of its own: the merge shares values with the stored object and the patch.
        merged: KubeObject = _copy(merge_patch(old, patch))
        return merged

    def _write(self, rtype: ResourceType, key: ObjectKey, old: KubeObject, new: KubeObject,
               subresource: str, *, dry_run: bool = False) -> KubeObject:
        """Store ``new`` in place of ``old``: keep identity fields, bump versions, notify."""
        new_meta = new.setdefault("metadata", {})
        old_meta = old["metadata"]
        for immutable in ("uid", "creationTimestamp", "name", "namespace"):
            if immutable in old_meta:
                new_meta[immutable] = old_meta[immutable]
        if old_meta.get("deletionTimestamp") and subresource != "delete":
            new_meta["deletionTimestamp"] = old_meta["deletionTimestamp"]
        new["apiVersion"], new["kind"] = old["apiVersion"], old["kind"]
        if subresource == "status":
            new["spec"] = _copy(old.get("spec"))
            if "spec" not in old:
                new.pop("spec", None)
        elif subresource not in ("delete",):
            # Only a type with a status subresource protects status from main-resource writes.
            if "status" in old and "status" in rtype.subresources:
                new["status"] = _copy(old["status"])
            self._admit("UPDATE", rtype, new, old)
        generation = int(old_meta.get("generation", 1))
        if new.get("spec") != old.get("spec"):
            generation += 1
        new_meta["generation"] = generation
        finished = bool(new_meta.get("deletionTimestamp")) and not new_meta.get("finalizers") \
            and (rtype.group, rtype.plural) not in self._graceful
        if dry_run:  # checked and admitted; neither stored nor announced
            return _copy(new)
        with self._lock:
            new_meta["resourceVersion"] = self._next_version()
            if finished:
                self._objects.pop(key, None)
            else:
                self._objects[key] = new
            stored = _copy(new)
        self._notify("DELETED" if finished else "MODIFIED", rtype, stored)
        return _copy(stored)

    def _notify(self, event: EventType, rtype: ResourceType, obj: KubeObject) -> None:
        for key, callback in list(self._subscribers):
            if key is None or key == (rtype.group, rtype.plural):
                try:
                    callback(event, obj)
                except Exception:  # one broken controller must not block writes
                    log.exception("subscriber %r failed on %s %s", callback, event,
                                  obj.get("metadata", {}).get("name"))

    def load(self, objects: Iterable[KubeObject]) -> builtins.list[KubeObject]:
        """Create objects in order (namespaces first), returning what was stored."""
        ordered = sorted(objects, key=lambda o: 0 if o.get("kind") == "Namespace" else 1)
        return [self.create(o) for o in ordered]


