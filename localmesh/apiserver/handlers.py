"""CRUD on resource collections and objects, over the ObjectStore.

Each handler gets a parsed :class:`Target` and returns the JSON body and status
a Kubernetes API server would. Objects are stored once per group; responses
carry the apiVersion the client asked for (Istio kinds under v1, v1beta1 and
v1alpha3 share storage).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
from collections.abc import Callable
from typing import Any

from aiohttp import web

from localmesh.apiserver.bodies import patch_type, query_bool, query_int, read_body
from localmesh.apiserver.logfollow import follow_log
from localmesh.apiserver.logsource import LogSource
from localmesh.apiserver.openapi import unknown_builtin_fields
from localmesh.apiserver.paths import Target
from localmesh.apiserver.scale import apply_scale_change, scale_of
from localmesh.apiserver.strategic import strategic_merge
from localmesh.apiserver.tables import table_version, to_table
from localmesh.apiserver.watch import Watcher, WatchHub
from localmesh.documents import KubeObject
from localmesh.errors import ApiError, BadRequest, Conflict, MethodNotAllowed, NotFound
from localmesh.podlogs import choose_container
from localmesh.selectors import parse_field_selector, parse_label_selector
from localmesh.store import ObjectStore
from localmesh.validation import check_unknown_fields

__all__ = ["ResourceHandlers"]

# Types whose Kubernetes registry sets ReturnDeletedObject (the client expects V1Pod etc.).
_RETURNS_DELETED_OBJECT = {("", "pods"), ("", "services"), ("", "serviceaccounts")}
_IDLE_CHECK_S = 2.0
# Groups whose types are Go structs with patchMergeKey tags (strategic merge applies).
_BUILT_IN_GROUPS = {"", "apps"}


def _json(body: Any, status: int = 200) -> web.Response:
    return web.json_response(body, status=status)


def _present(obj: KubeObject, target: Target) -> KubeObject:
    obj["apiVersion"] = target.api_version
    obj["kind"] = target.rtype.kind
    return obj


class ResourceHandlers:
    """The verbs of every registered resource type."""

    def __init__(self, store: ObjectStore, logs: LogSource, hub: WatchHub) -> None:
        self.store = store
        self.logs = logs
        self.hub = hub

    async def handle(self, request: web.Request, target: Target, *,
                     watch: bool = False) -> web.StreamResponse:
        """Dispatch one verb; ``watch`` is set for the legacy ``/watch/`` paths."""
        method = request.method
        if target.subresource == "log":
            if method != "GET":
                raise MethodNotAllowed(f"method {method} is not allowed on pods/log")
            return await self.pod_log(request, target)
        if target.subresource == "scale":
            return await self.scale(request, target)
        if target.name is None:
            if method == "GET":
                if watch or query_bool(request, "watch"):
                    return await self.watch(request, target)
                return self.list(request, target)
            if method == "POST":
                return await self.create(request, target)
            if method == "DELETE":
                return self.delete_collection(request, target)
        else:
            if method == "GET":
                return self.get(request, target)
            if method == "PUT":
                return await self.replace(request, target)
            if method == "PATCH":
                return await self.patch(request, target)
            if method == "DELETE" and not target.subresource:
                return await self.delete(request, target)
        raise MethodNotAllowed(f"method {method} is not supported on this resource")

    # -- reads ----------------------------------------------------------------------

    def _list_items(self, request: web.Request, target: Target) -> list[KubeObject]:
        rtype = target.rtype
        return self.store.list(rtype.group, rtype.plural, target.namespace,
                               label_selector=request.query.get("labelSelector"),
                               field_selector=request.query.get("fieldSelector"))

    def list(self, request: web.Request, target: Target) -> web.Response:
        version = self.store.resource_version()  # before the read: a watch from it misses nothing
        items = [_present(o, target) for o in self._list_items(request, target)]
        if (table := _as_table(request, target, items, version)) is not None:
            return _json(table)
        return _json({"kind": f"{target.rtype.kind}List", "apiVersion": target.api_version,
                      "metadata": {"resourceVersion": version},
                      "items": items})

    def get(self, request: web.Request, target: Target) -> web.Response:
        rtype, name = target.rtype, str(target.name)
        obj = _present(self.store.get(rtype.group, rtype.plural, target.namespace or "", name),
                       target)
        if (table := _as_table(request, target, [obj], "")) is not None:
            return _json(table)
        return _json(obj)

    # -- writes ---------------------------------------------------------------------

    async def _object_body(self, request: web.Request, target: Target) -> KubeObject:
        body = await read_body(request)
        if not isinstance(body, dict):
            raise BadRequest(f"the request body must be a {target.rtype.kind} object")
        kind = body.get("kind")
        if kind and kind != target.rtype.kind:
            raise BadRequest(f"the body kind '{kind}' does not match the resource "
                             f"'{target.rtype.plural}' ({target.rtype.kind})")
        api_version = str(body.get("apiVersion") or target.api_version)
        group = api_version.split("/", 1)[0] if "/" in api_version else ""
        if group != target.rtype.group:
            raise BadRequest(f"the body apiVersion '{api_version}' does not match the "
                             f"request group '{target.rtype.group or 'core'}'")
        body["apiVersion"], body["kind"] = api_version, target.rtype.kind
        meta = body.setdefault("metadata", {})
        if not isinstance(meta, dict):
            raise BadRequest("metadata must be an object")
        if target.namespace is not None:
            if meta.get("namespace") not in (None, "", target.namespace):
                raise BadRequest("the namespace of the provided object does not match "
                                 "the namespace sent on the request")
            meta["namespace"] = target.namespace
        return body

    async def create(self, request: web.Request, target: Target) -> web.Response:
        body = await self._object_body(request, target)
        _field_validation(request, body)
        stored = self.store.create(body, namespace=target.namespace, dry_run=_dry_run(request))
        return _json(_present(stored, target), 201)

    async def replace(self, request: web.Request, target: Target) -> web.Response:
        body = await self._object_body(request, target)
        meta = body["metadata"]
        if meta.get("name") not in (None, target.name):
            raise BadRequest(f"the name of the object ({meta.get('name')}) does not "
                             f"match the name on the URL ({target.name})")
        meta["name"] = target.name
        _field_validation(request, body)
        stored = self.store.replace(body, subresource=target.subresource,
                                    dry_run=_dry_run(request))
        return _json(_present(stored, target))

    async def patch(self, request: web.Request, target: Target) -> web.Response:
        kind = patch_type(request.content_type)
        if kind is None:
            return _json(_unsupported(request.content_type), 415)
        body = await read_body(request)
        rtype = target.rtype
        dry_run = _dry_run(request)
        if kind in ("merge", "strategic") and isinstance(body, dict):
            self._check_patch_version(target, body)
            _field_validation(request, _patched_fields(body, target))
        if kind == "strategic":
            if rtype.group in _BUILT_IN_GROUPS and isinstance(body, dict):
                return _json(_present(self._strategic_patch(target, body, dry_run), target))
            kind = "merge"  # custom resources: no merge keys, as a JSON merge patch
        stored = self.store.patch(rtype.group, rtype.plural, target.namespace or "",
                                  str(target.name), body, kind,
                                  subresource=target.subresource, dry_run=dry_run)
        return _json(_present(stored, target))

    def _strategic_patch(self, target: Target, patch: KubeObject, dry_run: bool) -> KubeObject:
        rtype, ns, name = target.rtype, target.namespace or "", str(target.name)
        current = self.store.get(rtype.group, rtype.plural, ns, name)
        merged = strategic_merge(current, patch)
        if not isinstance(merged, dict):
            raise BadRequest("a strategic merge patch must produce an object")
        merged.setdefault("metadata", {})["resourceVersion"] = \
            current["metadata"]["resourceVersion"]  # a write in between is a Conflict
        for field in ("name", "namespace"):
            if field in current["metadata"]:
                merged["metadata"][field] = current["metadata"][field]
        merged["apiVersion"], merged["kind"] = current["apiVersion"], current["kind"]
        return self.store.replace(merged, subresource=target.subresource, dry_run=dry_run)

    def _check_patch_version(self, target: Target, patch: KubeObject) -> None:
        """A patch naming metadata.resourceVersion is an optimistic-concurrency write."""
        wanted = (patch.get("metadata") or {}).get("resourceVersion") \
            if isinstance(patch.get("metadata"), dict) else None
        if not wanted:
            return
        rtype = target.rtype
        current = self.store.get(rtype.group, rtype.plural, target.namespace or "",
                                 str(target.name))["metadata"]["resourceVersion"]
        if wanted != current:
            raise Conflict(f'Operation cannot be fulfilled on {rtype.plural} "{target.name}": '
                           "the object has been modified; please apply your changes to the "
                           "latest version and try again", kind=rtype.plural,
                           name=str(target.name))

    async def delete(self, request: web.Request, target: Target) -> web.Response:
        options = await read_body(request) or {}
        if not isinstance(options, dict):
            raise BadRequest("the request body must be DeleteOptions")
        grace = query_int(request, "gracePeriodSeconds")
        if grace is None and options.get("gracePeriodSeconds") is not None:
            grace = options["gracePeriodSeconds"]
            if not isinstance(grace, int) or isinstance(grace, bool):
                raise BadRequest(f"DeleteOptions.gracePeriodSeconds must be an integer, "
                                 f"not {grace!r}")
        rtype, ns, name = target.rtype, target.namespace or "", str(target.name)
        _check_preconditions(self.store.get(rtype.group, rtype.plural, ns, name),
                             options.get("preconditions") or {})
        dry_run = _dry_run(request, options.get("dryRun"))  # kubectl sends it in the body
        if (rtype.group, rtype.plural) == ("", "namespaces") and not dry_run:
            self._empty_namespace(name)
        result = self.store.delete(rtype.group, rtype.plural, ns, name,
                                   grace_period_seconds=grace, dry_run=dry_run)
        held = bool(result["metadata"].get("deletionTimestamp"))
        if not held and (rtype.group, rtype.plural) not in _RETURNS_DELETED_OBJECT:
            return _json(_deleted_status(result, target))
        # Still held by finalizers or by its owner (pods), or a type whose registry
        # returns the deleted object: Kubernetes answers with the object.
        return _json(_present(result, target))

    def _empty_namespace(self, namespace: str) -> None:
        """Delete what a namespace holds first, as the namespace controller does.

        Held objects (pods until the supervisor stops them, objects with finalizers)
        keep their own deletion going; everything else goes at once.
        """
        for rtype in self.store.registry.all():
            if not rtype.namespaced:
                continue
            for obj in self.store.list(rtype.group, rtype.plural, namespace):
                with contextlib.suppress(NotFound):  # gone meanwhile
                    self.store.delete(rtype.group, rtype.plural, namespace,
                                      obj["metadata"]["name"])

    def delete_collection(self, request: web.Request, target: Target) -> web.Response:
        rtype = target.rtype
        deleted = []
        dry_run = _dry_run(request)
        for obj in self._list_items(request, target):
            meta = obj["metadata"]
            with contextlib.suppress(NotFound):  # gone meanwhile: nothing left to delete
                deleted.append(_present(self.store.delete(
                    rtype.group, rtype.plural, meta.get("namespace", ""), meta["name"],
                    dry_run=dry_run), target))
        return _json({"kind": f"{rtype.kind}List", "apiVersion": target.api_version,
                      "metadata": {"resourceVersion": self.store.resource_version()},
                      "items": deleted})

    # -- scale ----------------------------------------------------------------------

    async def scale(self, request: web.Request, target: Target) -> web.Response:
        rtype, ns, name = target.rtype, target.namespace or "", str(target.name)
        obj = self.store.get(rtype.group, rtype.plural, ns, name)
        if request.method == "GET":
            return _json(scale_of(obj))
        if request.method not in ("PUT", "PATCH"):
            raise MethodNotAllowed(f"method {request.method} is not allowed on "
                                   f"{rtype.plural}/scale")
        kind = patch_type(request.content_type) if request.method == "PATCH" else None
        if request.method == "PATCH" and kind is None:
            return _json(_unsupported(request.content_type), 415)
        body = await read_body(request)
        wanted_version = ((body.get("metadata") or {}).get("resourceVersion")
                          if isinstance(body, dict) else None)
        if wanted_version and wanted_version != obj["metadata"]["resourceVersion"]:
            raise Conflict(f'Operation cannot be fulfilled on {rtype.plural} "{name}": the '
                           "object has been modified; please apply your changes to the "
                           "latest version and try again", kind=rtype.plural, name=name)
        replicas = apply_scale_change(obj, body, kind)

        def set_replicas(new: KubeObject) -> None:
            new.setdefault("spec", {})["replicas"] = replicas

        return _json(scale_of(self.store.mutate(rtype.group, rtype.plural, ns, name,
                                                set_replicas, dry_run=_dry_run(request))))

    # -- pod logs -------------------------------------------------------------------

    async def pod_log(self, request: web.Request, target: Target) -> web.StreamResponse:
        pod = self.store.get("", "pods", target.namespace or "", str(target.name))
        container = _pick_container(pod, request.query.get("container") or None)
        namespace, name = target.namespace or "", str(target.name)
        follow = query_bool(request, "follow") and not query_bool(request, "previous")
        timestamps = query_bool(request, "timestamps")
        try:
            text = self.logs.read(
                namespace, name, container,
                since_seconds=query_int(request, "sinceSeconds"),
                tail_lines=query_int(request, "tailLines"),
                timestamps=timestamps or follow, previous=query_bool(request, "previous"))
        except NotFound:
            # The pod exists but nothing of it has run yet: the kubelet's answer.
            raise BadRequest(f'container "{container}" in pod "{name}" is waiting to start: '
                             "ContainerCreating") from None
        if follow:
            return await follow_log(request, self.logs, namespace, name, container,
                                    first=text, timestamps=timestamps,
                                    done=lambda: self.hub.closed or not self._exists(
                                        "", "pods", namespace, name))
        return web.Response(text=text, content_type="text/plain")

    def _exists(self, group: str, plural: str, namespace: str, name: str) -> bool:
        try:
            self.store.get(group, plural, namespace, name)
        except NotFound:
            return False
        return True

    # -- watch ----------------------------------------------------------------------

    async def watch(self, request: web.Request, target: Target) -> web.StreamResponse:
        """Stream changes, from the current state or from a resourceVersion (§8.3).

        Without a resourceVersion (or with "0") the stream starts with an ADDED event per
        object that exists; from version N it replays every kept change after N first
        (Expired when they are no longer kept). A change already sent is never sent again.
        """
        labels_ok = parse_label_selector(request.query.get("labelSelector"))
        fields_ok = parse_field_selector(request.query.get("fieldSelector"))
        watcher = Watcher(
            target.rtype.group, target.rtype.kind, target.namespace,
            lambda o: labels_ok(o.get("metadata", {}).get("labels") or {}) and fields_ok(o),
            asyncio.get_running_loop())
        timeout = query_int(request, "timeoutSeconds")
        since_text = request.query.get("resourceVersion", "")
        since = None if since_text in ("", "0") else _watch_version(since_text)
        render = _watch_renderer(request, target)
        replay = self.hub.add(watcher, since)
        try:
            if since is None:
                seen = int(self.store.resource_version())
                replay = [("ADDED", o) for o in self._list_items(request, target)]
            else:
                seen = max([since, *(_version(o) for _, o in replay)])
            response = web.StreamResponse(headers={"Content-Type": "application/json"})
            await response.prepare(request)
            with contextlib.suppress(TimeoutError, ConnectionResetError):
                # timeoutSeconds elapsing ends the stream normally, as on a real server;
                # a client that hung up needs no more events.
                for event, obj in replay:
                    await _send(response, event, render(_present(obj, target)))
                async with asyncio.timeout(timeout if timeout and timeout > 0 else None):
                    while (item := await _next_event(watcher, request)) is not None:
                        event, obj = item
                        if _version(obj) <= seen:  # in the listing or the replay already
                            continue
                        seen = _version(obj)
                        await _send(response, event,
                                    render(_present(copy.deepcopy(obj), target)))
        finally:
            self.hub.remove(watcher)
        with contextlib.suppress(ConnectionResetError):
            await response.write_eof()
        return response


def _watch_renderer(request: web.Request, target: Target,
                    ) -> Callable[[KubeObject], KubeObject]:
    """What a watch event carries: the object, or a one-row Table of it when the client
    asked for Tables (``kubectl get -w`` prints those rows, §8.2)."""
    if table_version(request.headers.get("Accept", "")) is None:
        return lambda obj: obj
    return lambda obj: _as_table(request, target, [obj], str(_version(obj))) or obj


def _version(obj: KubeObject) -> int:
    try:
        return int((obj.get("metadata") or {}).get("resourceVersion") or 0)
    except (TypeError, ValueError):
        return 0


def _watch_version(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise BadRequest(f'invalid value for query parameter resourceVersion: "{text}" '
                         "is not a resource version this server issued") from None


def _as_table(request: web.Request, target: Target, objects: list[KubeObject],
              resource_version: str) -> KubeObject | None:
    """The Table the client's Accept header asks for (None: it wants the objects), §8.2."""
    version = table_version(request.headers.get("Accept", ""))
    if version is None:
        return None
    include = request.query.get("includeObject") or "PartialObjectMetadata"
    if include not in ("None", "Object", "PartialObjectMetadata"):
        raise BadRequest(f"invalid value for query parameter includeObject: '{include}' "
                         "(valid: None, Object, PartialObjectMetadata)")
    return to_table(target, objects, version=version, include_object=include,
                    resource_version=resource_version)


def _dry_run(request: web.Request, options: Any = None) -> bool:
    """``dryRun=All``: the write is checked and admitted like a real one, then dropped
    (api-concepts "Dry-run"); ``kubectl --dry-run=server`` sends it as a query parameter,
    or for a delete in the DeleteOptions body (``options``). Other values are 400."""
    values = list(request.query.getall("dryRun", []))
    if options is not None:
        if not isinstance(options, list):
            raise BadRequest(f"DeleteOptions.dryRun must be a list, not {options!r}")
        values += [str(v) for v in options]
    for value in values:
        if value != "All":
            raise BadRequest(f'Invalid dry run value "{value}": only "All" is supported')
    return bool(values)


def _patched_fields(patch: KubeObject, target: Target) -> KubeObject:
    """A merge or strategic patch as the object fields it writes, for strict validation.

    ``kubectl apply`` of an object that exists is a PATCH with ``fieldValidation=Strict``:
    an unknown field can only come from the patch, so the patch itself is checked, without
    the strategic-merge directives (``$patch``, ``$setElementOrder/…``, ``$retainKeys``).
    """
    def fields(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: fields(v) for k, v in value.items() if not str(k).startswith("$")}
        if isinstance(value, list):
            return [fields(v) for v in value]
        return value
    shaped: KubeObject = fields(patch)
    shaped["apiVersion"], shaped["kind"] = target.api_version, target.rtype.kind
    return shaped


def _field_validation(request: web.Request, body: KubeObject) -> None:
    """fieldValidation=Strict refuses undeclared fields; otherwise admission prunes them.

    Custom kinds are checked against their CRD schema, core and apps kinds against the
    schema ``/openapi/v3`` publishes for them (kubectl leaves validation to the server
    once that document offers the parameter, docs/fidelity.md §8.1).
    """
    if request.query.get("fieldValidation", "").lower() != "strict":
        return
    check_unknown_fields(body)
    unknown = unknown_builtin_fields(body)
    if unknown:
        kind, version = body.get("kind"), str(body.get("apiVersion", "")).rsplit("/", 1)[-1]
        fields = ", ".join(f'unknown field "{path}"' for path in unknown)
        raise BadRequest(f'{kind} in version "{version}" cannot be handled as a {kind}: '
                         f"strict decoding error: {fields}", kind=str(kind),
                         name=str((body.get("metadata") or {}).get("name", "")),
                         field=unknown[0])


async def _next_event(watcher: Watcher, request: web.Request) -> tuple[str, KubeObject] | None:
    """The next event, or None once the stream is closed or the client has gone.

    aiohttp does not cancel a handler whose client hung up, so an idle watch checks
    its connection every few seconds instead of waiting for an event that may never come.
    """
    while True:
        try:
            return await asyncio.wait_for(watcher.queue.get(), _IDLE_CHECK_S)
        except TimeoutError:
            if request.transport is None or request.transport.is_closing():
                return None


async def _send(response: web.StreamResponse, event: str, obj: KubeObject) -> None:
    await response.write(json.dumps({"type": event, "object": obj}).encode() + b"\n")


def _check_preconditions(obj: KubeObject, preconditions: dict[str, Any]) -> None:
    meta = obj["metadata"]
    for field in ("uid", "resourceVersion"):
        wanted = preconditions.get(field)
        if wanted and wanted != meta.get(field):
            raise Conflict(f"Precondition failed: {field} in precondition: {wanted}, "
                           f"{field} in object meta: {meta.get(field)}",
                           name=str(meta.get("name")))


def _pick_container(pod: KubeObject, container: str | None) -> str:
    """Resolve the log container among the pod's spec and status containers."""
    spec_names = [c.get("name") for c in (pod.get("spec") or {}).get("containers") or []]
    status_names = [c.get("name") for c in
                    (pod.get("status") or {}).get("containerStatuses") or []]
    names = [str(n) for n in dict.fromkeys(spec_names + status_names) if n]
    return choose_container(pod["metadata"]["name"], names, container)


def _deleted_status(obj: KubeObject, target: Target) -> KubeObject:
    meta = obj.get("metadata") or {}
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
            "details": {"name": meta.get("name"), "group": target.rtype.group,
                        "kind": target.rtype.plural, "uid": meta.get("uid")}}


def _unsupported(content_type: str) -> KubeObject:
    # Server-side apply is refused rather than approximated: a merge would keep the fields
    # a manager stopped applying (a VirtualService fault, say) where a cluster removes them.
    why = (" (server-side apply is not served by the local mesh: use kubectl apply without "
           "--server-side)" if content_type == "application/apply-patch+yaml" else "")
    error = ApiError(f"the body of the request was in an unknown format - accepted media "
                     f"types include: application/json-patch+json, "
                     f"application/merge-patch+json, "
                     f"application/strategic-merge-patch+json (got '{content_type}'){why}")
    status = error.to_status()
    status.update(code=415, reason="UnsupportedMediaType")
    return status
