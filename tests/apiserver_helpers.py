"""Serve the Kubernetes API subset on 127.0.0.1:0 in a background thread for client tests.

The official ``kubernetes`` client and chaostoolkit-kubernetes are synchronous, so the
app runs on its own event loop in a daemon thread; the test thread talks HTTP to it and
may also write to the (thread-safe) store directly, as the supervisor would.
"""

from __future__ import annotations

import asyncio
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from localmesh.apiserver import LogSource, create_api_app
from localmesh.errors import NotFound
from localmesh.kubeconfig import write_kubeconfig
from localmesh.podlogs import PodLogs
from localmesh.store import ObjectStore
from localmesh.validation import install_validation


@dataclass
class ServedApi:
    store: ObjectStore
    port: int
    kubeconfig: Path
    app: web.Application

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@contextmanager
def serve_app(app: web.Application, *, tls: ssl.SSLContext | None = None) -> Iterator[int]:
    """Serve an aiohttp app on 127.0.0.1:0 (over TLS with ``tls``) in a daemon thread;
    yields the port."""
    loop = asyncio.new_event_loop()
    started = threading.Event()
    state: dict[str, Any] = {}

    async def start() -> None:
        runner = web.AppRunner(app, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls)
        await site.start()
        state["runner"] = runner
        state["port"] = runner.addresses[0][1]

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(start())
        finally:
            started.set()
        loop.run_forever()

    thread = threading.Thread(target=run, name="aiohttp-app", daemon=True)
    thread.start()
    if not started.wait(10) or "port" not in state:
        raise RuntimeError("the app did not start within 10 s")
    try:
        yield int(state["port"])
    finally:
        asyncio.run_coroutine_threadsafe(state["runner"].cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


@contextmanager
def serve_api(store: ObjectStore, logs: LogSource, tmp_path: Path) -> Iterator[ServedApi]:
    """Run the API app until the block exits; the kubeconfig points at it."""
    app = create_api_app(store, logs)
    with serve_app(app) as port:
        yield ServedApi(store, port, write_kubeconfig(tmp_path / "kubeconfig", port), app)


class NoLogs:
    """A log source of a store without pods' logs: every read is the API's 404."""

    def read(self, namespace: str, pod: str, container: str | None, *,
             since_seconds: int | None, tail_lines: int | None, timestamps: bool,
             previous: bool) -> str:
        raise NotFound(f'pods "{pod}" not found')


@contextmanager
def serve_shop(tmp_path: Path) -> Iterator[ServedApi]:
    """The API of a store that validates and admits as a mesh's does (install_validation),
    holding the namespace ``shop``; pod logs read from ``tmp_path/state``."""
    store = ObjectStore()
    install_validation(store)
    store.create(namespace("shop"))
    with serve_api(store, PodLogs(tmp_path / "state"), tmp_path) as served:
        yield served


def namespace(name: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": name, "labels": labels or {}}}


def pod(name: str, ns: str = "shop", *, labels: dict[str, str] | None = None,
        phase: str = "Running", containers: tuple[str, ...] = ("app", "istio-proxy"),
        ) -> dict[str, Any]:
    """A pod as the supervisor writes it (spec, and a status with the phase)."""
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": labels or {}},
        "spec": {"containers": [{"name": c, "image": f"local/{c}"} for c in containers]},
        "status": {"phase": phase, "podIP": "127.0.0.1",
                   # image and imageID are required by the kubernetes client's models.
                   "containerStatuses": [{"name": c, "ready": phase == "Running",
                                          "restartCount": 0, "image": f"local/{c}",
                                          "imageID": ""} for c in containers]},
    }


def virtual_service(name: str, *, api_version: str = "networking.istio.io/v1",
                    timeout: str = "500ms") -> dict[str, Any]:
    return {
        "apiVersion": api_version, "kind": "VirtualService",
        "metadata": {"name": name, "namespace": "shop"},
        "spec": {"hosts": [name],
                 "http": [{"route": [{"destination": {"host": name}}], "timeout": timeout}]},
    }


def deployment(name: str, ns: str = "shop", *, labels: dict[str, str] | None = None,
               ) -> dict[str, Any]:
    labels = labels or {"app": name}
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "spec": {"replicas": 1, "selector": {"matchLabels": labels},
                 "template": {"metadata": {"labels": labels},
                              "spec": {"containers": [{"name": "app", "image": "local/app",
                                                       "ports": [{"containerPort": 8080}]}]}}},
    }
