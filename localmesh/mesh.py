"""``LocalMesh``: the whole embedded mesh on one asyncio loop.

Start order matters and is the same every time:
1. read and validate the manifests (nothing starts when one is wrong);
2. claim the state dir (refused while another mesh lives there);
3. OTLP receiver and trace query API, so the sidecars and apps know where to export;
4. the store gets its admission hooks and objects, the gateway objects if missing;
5. API server, XdsServer, Supervisor (its fork server preloads what the pods
   import: most of the start-up time), ChaosController;
6. wait until every pod is Ready, then publish ``kubeconfig``, ``otlp-token`` and
   ``endpoints.json`` (last: a reader that sees it finds the other two).

``stop()`` runs it backwards; the chaos controller first, so faults are recovered
while the sidecars still listen.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import copy
import logging
import os
import ssl
import threading
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, Protocol, TypeVar

from aiohttp import web

from localmesh.apiserver.app import create_api_app
from localmesh.documents import KubeObject
from localmesh.errors import ManifestError, MeshError
from localmesh.ingress import GATEWAY_NAMESPACE, ensure_ingress_objects
from localmesh.kubeconfig import new_token, write_kubeconfig
from localmesh.manifests import Manifest, load_manifests
from localmesh.rabbitmq import check_objects
from localmesh.statedir import Endpoints, StateDir
from localmesh.store import ObjectStore
from localmesh.supervisor import Supervisor
from localmesh.supervisor.podspec import CWD_ANNOTATION, CWD_BASE_ANNOTATION
from localmesh.supervisor.ports import PortAllocator
from localmesh.supervisor.replicasets import is_pod_ready
from localmesh.supervisor.spawner import ForkServer
from localmesh.tls import make_certificates
from localmesh.tracestore import TraceStore, create_trace_apps
from localmesh.validation import install_validation
from localmesh.xds import XdsServer

__all__ = ["Endpoints", "EnvOverrides", "LocalMesh", "MeshThread"]

log = logging.getLogger("localmesh.mesh")

EnvOverrides = dict[tuple[str, str], dict[str, str]]
T = TypeVar("T")

_READY_LIMIT_S = 60.0


class _Controller(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...


def _chaos_controller(store: ObjectStore, xds: XdsServer,
                      supervisor: Supervisor) -> _Controller | None:
    """The local Chaos Mesh, when the package is there (admission installed with it)."""
    try:
        from localmesh.chaos import ChaosController, install_chaos_admission
    except ImportError:
        return None
    install_chaos_admission(store)
    return ChaosController(store, xds, supervisor)


def prepare_objects(manifests: list[Manifest], env_overrides: EnvOverrides) -> list[KubeObject]:
    """Copy the manifest objects, noting where local cwd annotations start and applying env
    overrides."""
    objects: list[KubeObject] = []
    wanted = dict(env_overrides)
    for manifest in manifests:
        obj = copy.deepcopy(manifest.obj)
        if obj.get("kind") == "Deployment":
            _resolve_cwd(obj, manifest.source.parent)
            meta = obj["metadata"]
            key = (str(meta.get("namespace") or "default"), str(meta["name"]))
            if key in wanted:
                _override_env(obj, wanted.pop(key))
        objects.append(obj)
    if wanted:
        names = ", ".join(f"{ns}/{name}" for ns, name in wanted)
        raise ManifestError(f"--set-env names deployment(s) {names} that the manifests do "
                            "not define")
    return objects


def _resolve_cwd(deployment: KubeObject, folder: Path) -> None:
    """A relative ``local-cwd`` is relative to the manifest's folder: say which, beside it.

    The annotation itself stays as the file has it: rewritten, the stored template would
    differ from the file's, and ``kubectl apply -f`` of the very files the mesh started from
    would roll every Deployment. The pod's launch resolves it (podspec.app_launch).
    """
    meta = deployment.get("spec", {}).get("template", {}).get("metadata", {})
    annotations = meta.get("annotations") or {}
    cwd = annotations.get(CWD_ANNOTATION)
    if cwd and not Path(str(cwd)).is_absolute() and CWD_BASE_ANNOTATION not in annotations:
        annotations[CWD_BASE_ANNOTATION] = str(folder.resolve())


def _override_env(deployment: KubeObject, env: dict[str, str]) -> None:
    containers = deployment.get("spec", {}).get("template", {}).get("spec", {}).get(
        "containers") or []
    if not containers:
        raise ManifestError(f"--set-env: deployment {deployment['metadata']['name']} has no "
                            "container")
    items = [e for e in containers[0].get("env") or [] if e.get("name") not in env]
    items += [{"name": k, "value": v} for k, v in env.items()]
    containers[0]["env"] = items


def _ensure_namespaces(store: ObjectStore, objects: list[KubeObject]) -> None:
    declared = {o["metadata"]["name"] for o in objects if o.get("kind") == "Namespace"}
    for name in ("default", GATEWAY_NAMESPACE):
        if name not in declared:
            store.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})


async def _serve(app: web.Application, *, tls: ssl.SSLContext | None = None,
                 ) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"{'https' if tls else 'http'}://127.0.0.1:{port}"


class LocalMesh:
    """The embedded mesh: API server, trace store, control plane, pods, chaos, ingress."""

    def __init__(self, manifests: list[Path], state_dir: Path, *,
                 env_overrides: EnvOverrides | None = None,
                 progress: Callable[[str], None] | None = None,
                 ready_limit_s: float = _READY_LIMIT_S,
                 forkservers: dict[str, ForkServer] | None = None) -> None:
        self.manifest_paths = [Path(p) for p in manifests]
        self.state = StateDir(state_dir)
        self.env_overrides = dict(env_overrides or {})
        self.progress = progress or (lambda line: None)
        self.ready_limit_s = ready_limit_s
        self.store = ObjectStore()
        self.traces = TraceStore()
        self.supervisor: Supervisor | None = None
        self.xds: XdsServer | None = None
        self.chaos: _Controller | None = None
        self.endpoints: Endpoints | None = None
        # Only the mesh's owner may use its API: a bearer token random per mesh, which only
        # its kubeconfig (0600) holds, over TLS with a CA of its own (localmesh.tls).
        self.api_token = new_token()
        self.api_ca: bytes | None = None
        # The same for its trace receiver, a token of its own: the pods' apps and sidecars
        # get this one (to export spans), never the API's. Readers stay open (docs/fidelity.md
        # §8.5): a Jaeger query is unauthenticated by default.
        self.otlp_token = new_token()
        self._runners: list[web.AppRunner] = []
        self._claimed = False
        self._log_handler: logging.Handler | None = None
        self._saved_level = logging.NOTSET
        self._announced: set[str] = set()
        # Fork servers launched before this mesh was built (launch_forkservers): handed to
        # the supervisor, or stopped by stop() if it never got them.
        self._forkservers = dict(forkservers or {})

    async def start(self) -> Endpoints:
        """Start everything and return once every pod is Ready (or raise, all stopped)."""
        started = time.time()
        try:
            # Parse only (cheap): enough to know what the pods run, and to fail on bad YAML.
            parsed = load_manifests(self.manifest_paths, registry=self.store.registry,
                                    validate=False)
            check_objects(m.obj for m in parsed)  # a missing broker package, named at once
            self.state.claim()
            self._claimed = True
            self._attach_log()
            log.info("starting the local mesh (pid %d) from %s", os.getpid(),
                     ", ".join(map(str, self.manifest_paths)))
            return await self._start(parsed, started)
        except BaseException:
            await self.stop()  # also what was handed in: fork servers launched early
            raise

    async def _start(self, parsed: list[Manifest], started: float) -> Endpoints:
        otlp, traces = await self._serve_traces()
        # Held (bound, not listening) until the gateway's sidecar is about to bind it: the
        # supervisor shares this allocator and lets go of the port right before that spawn.
        # Released here, any outgoing connection on the machine could take it as its
        # ephemeral source port meanwhile, and the gateway would never start.
        ports = PortAllocator()
        ingress_port = ports.allocate()
        self.xds = XdsServer(self.store, otlp_endpoint=otlp,
                             otlp_headers={"authorization": f"Bearer {self.otlp_token}"})
        forkservers, self._forkservers = self._forkservers, {}
        self.supervisor = Supervisor(self.store, self.xds, state_dir=self.state.path,
                                     otlp_endpoint=otlp, ingress_port=ingress_port,
                                     forkservers=forkservers, ports=ports,
                                     otlp_token=self.otlp_token)
        self.supervisor.warm_up([m.obj for m in parsed])
        # Validation (CRD schemas) runs here while the fork server imports in its process.
        manifests = load_manifests(self.manifest_paths, registry=self.store.registry)
        objects = prepare_objects(manifests, self.env_overrides)
        self.chaos = _chaos_controller(self.store, self.xds, self.supervisor)
        _ensure_namespaces(self.store, objects)
        self.store.load(objects)
        # Installed after the load: those objects were just validated, with their file named.
        install_validation(self.store)
        ensure_ingress_objects(self.store)
        self.store.subscribe(self._announce_ready, group="", plural="pods")
        api = await self._serve_api()
        self.progress(f"API server on {api}; starting {self._replica_count()} pods")
        await self.xds.start()
        await self.supervisor.start()
        if self.chaos is not None:
            await self.chaos.start()
        await self.supervisor.wait_ready(self.ready_limit_s)
        await self._wait_pushed()
        self.endpoints = Endpoints(api=api, ingress=f"http://127.0.0.1:{ingress_port}",
                                   otlp=otlp, traces=traces, pid=os.getpid(), started=started)
        write_kubeconfig(self.state.kubeconfig, int(api.rsplit(":", 1)[1]),
                         namespace=self._app_namespace(), token=self.api_token,
                         ca_pem=self.api_ca)
        self.state.write_otlp_token(self.otlp_token)
        self.state.write_endpoints(self.endpoints)
        log.info("mesh up in %.2fs: api %s, ingress %s", time.time() - started, api,
                 self.endpoints.ingress)
        return self.endpoints

    async def _wait_pushed(self) -> None:
        """Every sidecar acknowledged the configuration built from the Ready pods.

        A pod turns Ready before the control plane's next push tells its callers' sidecars
        (a cluster's endpoint propagation): a call made right after start() would meet a
        sidecar that does not know its callee yet (503 UH; a TCP connection closed as UH,
        measured with the broker pod). A sidecar that does not answer in time is logged, not
        fatal: its pod is Ready, and the push is retried.
        """
        assert self.xds is not None
        pods = [(p["metadata"]["namespace"], p["metadata"]["name"])
                for p in self.store.list("", "pods")]
        results = await asyncio.gather(*(self.xds.wait_synced(ns, name) for ns, name in pods),
                                       return_exceptions=True)
        for (ns, name), result in zip(pods, results, strict=True):
            if isinstance(result, Exception):
                log.warning("sidecar of %s/%s not synced at start: %s", ns, name, result)

    def _app_namespace(self) -> str:
        """The kubeconfig's namespace: the first one the manifests mark for sidecar
        injection (where the services under test live), else Kubernetes' ``default``."""
        for ns in sorted(self.store.list("", "namespaces"), key=lambda o: o["metadata"]["name"]):
            if (ns["metadata"].get("labels") or {}).get("istio-injection") == "enabled":
                return str(ns["metadata"]["name"])
        return "default"

    async def _serve_traces(self) -> tuple[str, str]:
        """Start the OTLP receiver and the trace query API; return their URLs."""
        otlp_app, query_app = create_trace_apps(self.traces, otlp_token=self.otlp_token)
        otlp_runner, otlp = await _serve(otlp_app)
        query_runner, traces = await _serve(query_app)
        self._runners += [otlp_runner, query_runner]
        return otlp, traces

    async def _serve_api(self) -> str:
        assert self.supervisor is not None
        certificates = make_certificates(self.state.path)
        self.api_ca = certificates.ca_pem
        runner, url = await _serve(create_api_app(self.store, self.supervisor.logs,
                                                  token=self.api_token),
                                   tls=certificates.server_context)
        self._runners.append(runner)
        return url

    def _replica_count(self) -> int:
        return sum(int((d.get("spec") or {}).get("replicas", 1))
                   for d in self.store.list("apps", "deployments"))

    def _announce_ready(self, event: str, pod: KubeObject) -> None:
        meta = pod["metadata"]
        key = f"{meta['namespace']}/{meta['name']}"
        if event != "DELETED" and is_pod_ready(pod) and key not in self._announced:
            self._announced.add(key)
            self.progress(f"pod {key} Ready")

    async def stop(self) -> None:
        """Stop everything this mesh started; safe to call twice."""
        if self.chaos is not None:
            with _logged("chaos controller"):
                await self.chaos.stop()
            self.chaos = None
        if self.supervisor is not None:
            with _logged("supervisor"):
                await self.supervisor.stop()
            self.supervisor = None
        servers, self._forkservers = self._forkservers, {}
        for server in servers.values():
            with _logged("fork server"):
                await server.stop()
        if self.xds is not None:
            with _logged("xds"):
                await self.xds.stop()
            self.xds = None
        runners, self._runners = self._runners, []
        for runner in runners:
            with _logged("http server"):
                await runner.cleanup()
        if self._claimed:
            self.state.release()
            self._claimed = False
        self._detach_log()

    def _attach_log(self) -> None:
        """Send the mesh's own log (INFO and up) to ``<state-dir>/mesh.log``."""
        handler = logging.FileHandler(self.state.mesh_log)
        handler.setLevel(logging.INFO)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger = logging.getLogger("localmesh")
        self._saved_level = logger.level
        if logger.getEffectiveLevel() > logging.INFO:
            logger.setLevel(logging.INFO)
        logger.addHandler(handler)
        self._log_handler = handler

    def _detach_log(self) -> None:
        if self._log_handler is not None:
            logger = logging.getLogger("localmesh")
            logger.removeHandler(self._log_handler)
            logger.setLevel(self._saved_level)
            self._log_handler.close()
            self._log_handler = None


@contextlib.contextmanager
def _logged(what: str) -> Any:
    # Shutdown goes on past a part that fails to stop: the rest still has processes to end.
    try:
        yield
    except Exception:
        log.exception("stopping the %s failed", what)


class MeshThread:
    """A LocalMesh on its own loop in a daemon thread (tests; ``chaos run`` starts its mesh in
    a process of its own instead, :class:`localmesh.daemon.MeshDaemon`)."""

    def __init__(self, manifests: list[Path], state_dir: Path, *,
                 env_overrides: EnvOverrides | None = None,
                 progress: Callable[[str], None] | None = None) -> None:
        self.mesh = LocalMesh(manifests, state_dir, env_overrides=env_overrides,
                              progress=progress)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def start(self, timeout: float = 30) -> Endpoints:
        """Start the mesh; return its endpoints once every pod is Ready."""
        if self._thread is not None:
            raise MeshError("this MeshThread was started already; make a new one")
        self.mesh.ready_limit_s = min(self.mesh.ready_limit_s, timeout)
        loop = asyncio.new_event_loop()
        started: Any = None
        ready = threading.Event()

        def run() -> None:
            nonlocal started
            asyncio.set_event_loop(loop)
            try:
                started = loop.run_until_complete(self.mesh.start())
            except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
                started = exc
                ready.set()
                loop.close()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

        self._loop = loop
        self._thread = threading.Thread(target=run, name="localmesh", daemon=True)
        self._thread.start()
        atexit.register(self.stop)
        if not ready.wait(timeout + 15):
            self.stop()
            raise MeshError(f"the local mesh did not start within {timeout + 15:.0f}s")
        if isinstance(started, BaseException):
            self._thread.join(5)
            self._loop = None
            raise started
        assert isinstance(started, Endpoints)
        return started

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        """Run a coroutine on the mesh's loop (e.g. ``thread.mesh.supervisor.kill_container``)."""
        if self._loop is None:
            coro.close()
            raise MeshError("the local mesh is not running")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def stop(self) -> None:
        """Stop the mesh and its thread; idempotent."""
        with self._lock:
            loop, self._loop = self._loop, None
            if loop is None or loop.is_closed():
                return
            try:
                asyncio.run_coroutine_threadsafe(self.mesh.stop(), loop).result(30)
            finally:
                loop.call_soon_threadsafe(loop.stop)
                if self._thread is not None:
                    self._thread.join(10)
            atexit.unregister(self.stop)
