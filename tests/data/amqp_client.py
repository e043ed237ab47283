"""A pod app that talks AMQP to the broker the way a chain hop will: aio-pika, publisher
confirms, persistent messages, through its sidecar's outbound TCP listener.

GET /healthz                 200
GET /roundtrip?n=N&direct=H:P&keep=1
    publishes N persistent messages (publisher confirms) to a fresh durable queue on the
    default exchange and consumes each (manual ack); answers JSON with each message's
    publish→consume latency in ms. The broker is ``BROKER_SERVICE_HOST`` /
    ``BROKER_SERVICE_PORT_AMQP`` (the sidecar, as the supervisor announces it) unless
    ``direct`` names an address (the broker's own port: the benchmark's baseline). The
    connection is closed at the end (its sidecar then logs the connection) unless ``keep=1``.
"""

from __future__ import annotations

import asyncio
import os
import textwrap
import time
import uuid
from pathlib import Path
from typing import Any

import aio_pika
from aiohttp import web

_KEPT: dict[str, aio_pika.abc.AbstractRobustConnection | aio_pika.abc.AbstractConnection] = {}


def _broker_url(direct: str) -> str:
    if direct:
        return f"amqp://guest:guest@{direct}/"
    host = os.environ["BROKER_SERVICE_HOST"]
    port = os.environ["BROKER_SERVICE_PORT_AMQP"]
    return f"amqp://guest:guest@{host}:{port}/"


async def _connection(url: str, keep: bool) -> aio_pika.abc.AbstractConnection:
    if keep and url in _KEPT and not _KEPT[url].is_closed:
        return _KEPT[url]
    conn = await aio_pika.connect(url, timeout=10)
    if keep:
        _KEPT[url] = conn
    return conn


async def roundtrip(request: web.Request) -> web.Response:
    try:
        return await _roundtrip(request)
    except (aio_pika.exceptions.AMQPError, OSError, TimeoutError) as exc:
        # The caller (a test, the benchmark) reads what went wrong instead of a bare 500.
        return web.json_response({"error": repr(exc)}, status=502)


async def _roundtrip(request: web.Request) -> web.Response:
    n = int(request.query.get("n", "1"))
    keep = request.query.get("keep") == "1"
    url = _broker_url(request.query.get("direct", ""))
    conn = await _connection(url, keep)
    out: dict[str, Any] = {"url": url, "latencies_ms": [], "bodies": []}
    try:
        channel = await conn.channel(publisher_confirms=True)
        queue = await channel.declare_queue(f"roundtrip-{uuid.uuid4().hex[:12]}", durable=True,
                                            auto_delete=True)
        arrived: asyncio.Queue[tuple[float, aio_pika.abc.AbstractIncomingMessage]] = \
            asyncio.Queue()

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            arrived.put_nowait((time.perf_counter(), message))

        await queue.consume(on_message, no_ack=False)
        for i in range(n):
            body = f"message {i} from {os.environ.get('POD_NAME', '?')}".encode()
            start = time.perf_counter()
            confirm = await channel.default_exchange.publish(
                aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                routing_key=queue.name, timeout=10)
            if not isinstance(confirm, aio_pika.abc.AbstractMessage) and \
                    getattr(confirm, "name", "Basic.Ack") != "Basic.Ack":
                raise web.HTTPBadGateway(text=f"publish not confirmed: {confirm!r}")
            at, message = await asyncio.wait_for(arrived.get(), 10)
            await message.ack()
            out["latencies_ms"].append((at - start) * 1000.0)
            out["bodies"].append(message.body.decode())
            out["persistent"] = message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
        await queue.delete(if_unused=False, if_empty=False)
        await channel.close()
    finally:
        if not keep:
            await conn.close()
    return web.json_response(out)


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok")


def write_client_manifests(folder: Path) -> Path:
    """Manifests of a namespace ``shop`` with sidecars, access logs on, and one pod of this app
    (``client``); load them beside fixtures/broker/k8s."""
    # Imported here: as a pod's program this file runs alone (python <file>), without the
    # repository on its path; the tests and the benchmark that call this have it.
    from tests.mesh_manifests import mesh_preamble

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "client.yaml").write_text(mesh_preamble("shop") + textwrap.dedent(f"""\
        apiVersion: v1
        kind: Service
        metadata:
          name: client
          namespace: shop
        spec:
          selector: {{app: client}}
          ports:
          - {{name: http, port: 8080, targetPort: 8080}}
        ---
        apiVersion: apps/v1
        kind: Deployment
        metadata:
          name: client
          namespace: shop
        spec:
          replicas: 1
          selector:
            matchLabels: {{app: client}}
          template:
            metadata:
              labels: {{app: client}}
              annotations:
                meshchaos.io/local-command: python {Path(__file__).resolve()}
            spec:
              containers:
              - name: client
                image: meshchaos/amqp-client:test
                ports:
                - {{name: http, containerPort: 8080}}
                readinessProbe:
                  httpGet: {{path: /healthz, port: 8080}}
        """))
    return folder


def main() -> None:
    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/roundtrip", roundtrip)
    web.run_app(app, host="127.0.0.1", port=int(os.environ["PORT"]), print=None,
                access_log=None)


if __name__ == "__main__":
    main()
