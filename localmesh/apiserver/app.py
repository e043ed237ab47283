"""The aiohttp application: routes, and errors rendered as Kubernetes Status bodies."""

from __future__ import annotations

import asyncio
import functools
import hmac
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Middleware

from localmesh.apiserver import discovery
from localmesh.apiserver.handlers import ResourceHandlers
from localmesh.apiserver.logsource import LogSource
from localmesh.apiserver.openapi import OpenApiDocs
from localmesh.apiserver.paths import parse_target
from localmesh.apiserver.watch import WatchHub
from localmesh.errors import ApiError, MethodNotAllowed, NotAcceptable, NotFound, Unauthorized
from localmesh.store import ObjectStore

__all__ = ["create_api_app", "open_watches"]

log = logging.getLogger("localmesh.apiserver")

_STORE: web.AppKey[ObjectStore] = web.AppKey("store", ObjectStore)
_HANDLERS: web.AppKey[ResourceHandlers] = web.AppKey("handlers", ResourceHandlers)
_HUB: web.AppKey[WatchHub] = web.AppKey("hub", WatchHub)
_OPENAPI: web.AppKey[OpenApiDocs] = web.AppKey("openapi", OpenApiDocs)


def _status_response(error: ApiError) -> web.Response:
    return web.json_response(error.to_status(), status=error.code)


@web.middleware
async def _kubernetes_errors(request: web.Request,
                             handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
                             ) -> web.StreamResponse:
    """Every failure leaves as a Status with the code and reason Kubernetes uses."""
    try:
        return await handler(request)
    except ApiError as error:
        return _status_response(error)
    except web.HTTPMethodNotAllowed as error:
        return _status_response(MethodNotAllowed(
            f"method {error.method} is not supported on {request.path}"))
    except web.HTTPNotFound:
        return _status_response(NotFound("the server could not find the requested resource"))
    except web.HTTPException:
        raise
    except Exception as error:
        # A bug here must still answer like an API server (500 InternalError), and be seen.
        log.exception("%s %s failed", request.method, request.path)
        return _status_response(ApiError(f"internal error: {error!r}"))


_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _authenticate(token: str) -> Middleware:
    """Require ``Authorization: Bearer <token>`` on every request, as kube-apiserver with
    anonymous access off answers 401 Unauthorized to a request without a valid token."""
    expected = f"Bearer {token}".encode()

    @web.middleware
    async def authenticate(request: web.Request, handler: _Handler) -> web.StreamResponse:
        # As the bytes came: aiohttp keeps undecodable ones as surrogates, which a strict
        # encode would raise on (a 500 instead of the 401).
        given = request.headers.get("Authorization", "").encode("utf-8", "surrogateescape")
        if not hmac.compare_digest(given, expected):  # constant time: no guessing by timing
            raise Unauthorized("Unauthorized")
        return await handler(request)
    return authenticate


async def _version(request: web.Request) -> web.Response:
    return web.json_response(discovery.version_info())


async def _api(request: web.Request) -> web.Response:
    return web.json_response(discovery.api_versions(request.host))


async def _apis(request: web.Request) -> web.Response:
    return web.json_response(discovery.api_groups(request.app[_STORE].registry))


async def _group(request: web.Request) -> web.Response:
    doc = discovery.group_document(request.app[_STORE].registry, request.match_info["group"])
    if doc is None:
        raise NotFound("the server could not find the requested resource")
    return web.json_response(doc)


def _accepts_json(request: web.Request) -> bool:
    """Whether the client takes a JSON document (kube-openapi answers others 406)."""
    accept = request.headers.get("Accept", "")
    if not accept.strip():
        return True
    kinds = {part.split(";", 1)[0].strip() for part in accept.split(",")}
    return bool(kinds & {"application/json", "application/*", "*/*"})


_V2_PROTOBUF = "application/com.github.proto-openapi.spec.v2@v1.0+protobuf"
# What kube-openapi answers it with: "@" is a tspecial (RFC 2045) that Go's
# mime.ParseMediaType refuses in a Content-Type, so the reply spells it ".v1.0".
_V2_PROTOBUF_REPLY = "application/com.github.proto-openapi.spec.v2.v1.0+protobuf"


def _accepts_v2_protobuf(request: web.Request) -> bool:
    accept = request.headers.get("Accept", "")
    asked = {part.split(";", 1)[0].strip() for part in accept.split(",")}
    return bool(asked & {_V2_PROTOBUF, _V2_PROTOBUF_REPLY})


def _document(request: web.Request, body: bytes, digest: str, *,
              content_type: str = "application/json") -> web.Response:
    if content_type == "application/json" and not _accepts_json(request):
        raise NotAcceptable(f"only application/json is served on {request.path} "
                            f"(asked for: {request.headers.get('Accept')})")
    # A URL carrying the document's hash names that content forever (kube-openapi's
    # handler3 answers it cacheable and immutable); anything else is revalidated.
    immutable = request.query.get("hash") == digest
    headers = {"ETag": f'"{digest}"',
               "Cache-Control": "public, immutable" if immutable else "no-cache, private"}
    if request.headers.get("If-None-Match") == f'"{digest}"':
        return web.Response(status=304, headers=headers)
    return web.Response(body=body, headers={**headers, "Content-Type": content_type})


async def _openapi_v2(request: web.Request) -> web.Response:
    """Swagger 2.0, in the protobuf form kubectl ≤ 1.28 and client-go ask for, or JSON."""
    protobuf = _accepts_v2_protobuf(request)
    body, digest = await asyncio.get_running_loop().run_in_executor(
        None, functools.partial(request.app[_OPENAPI].v2, protobuf=protobuf))
    return _document(request, body, digest,
                     content_type=_V2_PROTOBUF_REPLY if protobuf else "application/json")


async def _openapi_v3_root(request: web.Request) -> web.Response:
    root = await asyncio.get_running_loop().run_in_executor(
        None, request.app[_OPENAPI].v3_root)
    return web.json_response(root)


async def _openapi_v3(request: web.Request) -> web.Response:
    path = request.match_info["path"].strip("/")
    found = await asyncio.get_running_loop().run_in_executor(
        None, request.app[_OPENAPI].v3, path)
    if found is None:
        raise NotFound("the server could not find the requested resource")
    return _document(request, *found)


async def _resources(request: web.Request, group: str, version: str) -> web.StreamResponse:
    store = request.app[_STORE]
    tail = request.match_info.get("tail", "").strip("/")
    if not tail:
        if request.method != "GET":
            raise MethodNotAllowed(f"method {request.method} is not supported on "
                                   f"{request.path}")
        doc = discovery.api_resources(store.registry, group, version)
        if doc is None:
            raise NotFound("the server could not find the requested resource")
        return web.json_response(doc)
    segments = tail.split("/")
    legacy_watch = segments[0] == "watch"  # the deprecated /watch/<resource> paths
    if legacy_watch:
        segments = segments[1:]
    target = parse_target(store.registry, group, version, segments)
    if legacy_watch and (request.method != "GET" or target.name is not None):
        # Only collections are watched this way (one object: use fieldSelector).
        raise NotFound("the server could not find the requested resource")
    return await request.app[_HANDLERS].handle(request, target, watch=legacy_watch)


async def _core(request: web.Request) -> web.StreamResponse:
    return await _resources(request, "", "v1")


async def _grouped(request: web.Request) -> web.StreamResponse:
    return await _resources(request, request.match_info["group"],
                            request.match_info["version"])


async def _close_watches(app: web.Application) -> None:
    app[_HUB].close_all()


def open_watches(app: web.Application) -> int:
    """How many watch streams an API app is serving (for status pages and tests)."""
    return len(app[_HUB])


def create_api_app(store: ObjectStore, logs: LogSource, *,
                   token: str | None = None) -> web.Application:
    """Build the API server application over ``store``, reading pod logs from ``logs``.

    With ``token``, every request must carry it as a bearer token (401 otherwise); the
    local mesh always gives one. Without, the app serves anyone (tests embed it so).
    """
    middlewares: list[Middleware] = [_kubernetes_errors]
    if token:
        middlewares.append(_authenticate(token))
    app = web.Application(middlewares=middlewares, client_max_size=8 * 1024 * 1024)
    hub = WatchHub(store)
    app[_STORE] = store
    app[_HUB] = hub
    app[_HANDLERS] = ResourceHandlers(store, logs, hub)
    app[_OPENAPI] = OpenApiDocs(store.registry)
    app.on_shutdown.append(_close_watches)
    router = app.router
    for slash in ("", "/"):  # clients ask for both /version and /version/
        router.add_get(f"/version{slash}", _version)
        router.add_get(f"/api{slash}", _api)
        router.add_get(f"/apis{slash}", _apis)
    router.add_get("/openapi/v2", _openapi_v2)
    router.add_get("/openapi/v3", _openapi_v3_root)
    router.add_get("/openapi/v3/", _openapi_v3_root)
    router.add_get("/openapi/v3/{path:.+}", _openapi_v3)
    router.add_route("*", "/api/v1", _core)
    router.add_route("*", "/api/v1/{tail:.*}", _core)
    router.add_get("/apis/{group}", _group)
    router.add_route("*", "/apis/{group}/{version}", _grouped)
    router.add_route("*", "/apis/{group}/{version}/{tail:.*}", _grouped)
    return app
