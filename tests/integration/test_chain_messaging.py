"""The chain's messaging leg against a real RabbitMQ (Debian's rabbitmq-server, one private
node on loopback for the module): a hop with CHAIN_PUBLISH publishes, a Worker consumes.

The contract is docs/fidelity.md §9 (to be written with issue 17): W3C Trace Context in the
AMQP message headers (the W3C "Trace Context: AMQP protocol" draft: ``traceparent`` and
``tracestate`` as application properties), OpenTelemetry's messaging conventions (a
PRODUCER span, a CONSUMER span linked to it), AMQP 0-9-1 persistence (delivery-mode 2),
publisher confirms and manual acknowledgements.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aio_pika
import aiohttp
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from fixtures.chain import messaging as mq
from fixtures.chain import telemetry as tm
from fixtures.chain.config import ChainConfig, WorkSpec
from fixtures.chain.defects import Defect
from fixtures.chain.ledger import WorkLedger
from fixtures.chain.messaging import parse_consume, parse_publish
from fixtures.chain.testing import RunningChain, serve_chain
from fixtures.chain.worker import Worker
from localmesh.rabbitmq import SERVER

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120),
              pytest.mark.skipif(not os.access(SERVER, os.X_OK),
                                 reason=f"{SERVER} missing: apt-get install -y rabbitmq-server")]

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
TRACEPARENT = f"00-{TRACE_ID}-b7ad6b7169203331-01"
REQUEST_ID = "7c9f6a2e-1f0b-4c55-9d6f-3a1f1b2c9e01"
BROKER_START_S = 60.0


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> TracerProvider:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _accepts(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """One private broker node (localmesh.rabbitmq, as the broker pod runs it): its AMQP port."""
    port = _free_port()
    env = {**os.environ, "MESHCHAOS_DATA_DIR": str(tmp_path_factory.mktemp("broker")),
           "PORT": str(port), "POD_NAME": "chain-messaging-test"}
    proc = subprocess.Popen([sys.executable, "-m", "localmesh.rabbitmq"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        end = time.monotonic() + BROKER_START_S
        while not _accepts(port):
            assert proc.poll() is None, f"the broker exited with {proc.returncode}"
            assert time.monotonic() < end, f"no broker on 127.0.0.1:{port} in {BROKER_START_S} s"
            time.sleep(0.2)
        yield port
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


@pytest.fixture
async def channel(broker: int) -> AsyncIterator[aio_pika.abc.AbstractChannel]:
    """A test's own channel; the chain's queue is emptied first (the module shares it)."""
    conn = await _connect(broker)
    try:
        chan = await conn.channel()
        queue = await chan.declare_queue(mq.QUEUE, durable=True)
        await queue.purge()
        yield chan
    finally:
        await conn.close()


async def _connect(port: int) -> aio_pika.abc.AbstractConnection:
    """The listener accepts before the broker's boot finished: retry the login, bounded."""
    end = time.monotonic() + BROKER_START_S
    while True:
        try:
            return await aio_pika.connect(f"amqp://guest:guest@127.0.0.1:{port}/")
        except (OSError, aio_pika.exceptions.AMQPError):
            if time.monotonic() > end:
                raise
            await asyncio.sleep(0.2)


def publisher_cfg(port: int, optional: bool = False) -> ChainConfig:
    url = f"{'?' if optional else ''}amqp://127.0.0.1:{port}/{mq.EXCHANGE}/{mq.ROUTING_KEY}"
    return ChainConfig(name="orders", publish=parse_publish(url))


async def get(app: RunningChain, headers: dict[str, str]) -> int:
    async with aiohttp.ClientSession() as session, session.get(f"{app.url}/x",
                                                               headers=headers) as resp:
        await resp.read()
        return resp.status


async def next_message(chan: aio_pika.abc.AbstractChannel,
                       ) -> aio_pika.abc.AbstractIncomingMessage:
    queue = await chan.get_queue(mq.QUEUE)
    for _ in range(100):
        message = await queue.get(no_ack=True, fail=False)
        if message is not None:
            return message
        await asyncio.sleep(0.02)
    raise AssertionError(f"no message on {mq.QUEUE} within 2 s")


async def test_a_hop_publishes_one_persistent_event_carrying_its_trace_and_deadline(
        broker: int, channel: aio_pika.abc.AbstractChannel, provider: TracerProvider,
        exporter: InMemorySpanExporter) -> None:
    """W3C AMQP draft: traceparent in the application properties, naming the PRODUCER span;
    AMQP 0-9-1: delivery-mode 2 (persistent); the deadline is the budget left, both as the
    absolute x-deadline-unix-ms header and as the per-message TTL (expiration)."""
    before_ms = int(time.time() * 1000)
    async with serve_chain(publisher_cfg(broker), provider.get_tracer("t")) as app:
        status = await get(app, {"traceparent": TRACEPARENT, "x-request-id": REQUEST_ID,
                                 "x-envoy-expected-rq-timeout-ms": "800"})
    assert status == 200
    message = await next_message(channel)
    headers: dict[str, Any] = dict(message.headers or {})
    (producer,) = [s for s in exporter.get_finished_spans() if s.kind == SpanKind.PRODUCER]
    assert headers[mq.HDR_TRACEPARENT] == (
        f"00-{TRACE_ID}-{producer.context.span_id:016x}-01")
    assert headers[mq.HDR_REQUEST_ID] == REQUEST_ID == message.correlation_id
    assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    assert re.fullmatch(r"[0-9a-f]{32}", message.message_id or "")
    deadline = int(headers[mq.HDR_DEADLINE])
    assert before_ms < deadline <= before_ms + 800
    assert isinstance(message.expiration, int | float)  # aio-pika: seconds
    assert 0 < message.expiration <= 0.8
    assert (producer.attributes or {})[mq.ATTR_MESSAGE_ID] == message.message_id


async def test_a_failed_publish_fails_the_hop_unless_the_publish_is_optional(
        provider: TracerProvider) -> None:
    """No broker on the port: the required publish answers 503; an optional one degrades."""
    dead = _free_port()
    async with serve_chain(publisher_cfg(dead), provider.get_tracer("t")) as app:
        assert await get(app, {"x-envoy-expected-rq-timeout-ms": "300"}) == 503
    async with serve_chain(publisher_cfg(dead, optional=True), provider.get_tracer("t")) as app:
        assert await get(app, {"x-envoy-expected-rq-timeout-ms": "300"}) == 200


async def _run_worker(port: int, tracer_provider: TracerProvider, ledger: WorkLedger,
                      ) -> Worker:
    cfg = ChainConfig(name="worker", consume=parse_consume(
        f"amqp://127.0.0.1:{port}/{mq.QUEUE}"))
    worker = Worker(cfg, tracer_provider.get_tracer("t"), ledger, {})
    await worker.start()
    await worker.wait_ready(30.0)
    return worker


async def _publish(chan: aio_pika.abc.AbstractChannel, headers: dict[str, Any],
                   message_id: str) -> None:
    exchange = await chan.declare_exchange(mq.EXCHANGE, aio_pika.ExchangeType.DIRECT,
                                           durable=True)
    await exchange.publish(aio_pika.Message(b"{}", headers=headers, message_id=message_id,
                                            delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                           routing_key=mq.ROUTING_KEY)


async def _consumer_spans(exporter: InMemorySpanExporter, count: int) -> list[Any]:
    for _ in range(150):
        spans = [s for s in exporter.get_finished_spans() if s.kind == SpanKind.CONSUMER]
        if len(spans) >= count:
            return spans
        await asyncio.sleep(0.02)
    raise AssertionError(f"fewer than {count} CONSUMER spans within 3 s")


async def test_the_worker_continues_and_links_the_producers_trace_and_acks_after_the_work(
        broker: int, channel: aio_pika.abc.AbstractChannel, provider: TracerProvider,
        exporter: InMemorySpanExporter) -> None:
    """OTel messaging: the CONSUMER span is a child of the message's context and links to
    it; AMQP 0-9-1 manual ack: nothing is left on the queue once the work is done."""
    ledger = WorkLedger()
    worker = await _run_worker(broker, provider, ledger)
    try:
        await _publish(channel, {mq.HDR_TRACEPARENT: TRACEPARENT}, "a" * 32)
        (span,) = await _consumer_spans(exporter, 1)
    finally:
        await worker.close()
    assert f"{span.context.trace_id:032x}" == TRACE_ID
    assert span.parent is not None and f"{span.parent.span_id:016x}" == "b7ad6b7169203331"
    assert [f"{link.context.span_id:016x}" for link in span.links] == ["b7ad6b7169203331"]
    assert (span.attributes or {})[mq.ATTR_OUTCOME] == "processed"
    assert [i.as_json()["outcome"] for i in ledger.items(TRACE_ID)] == ["completed"]
    queue = await channel.declare_queue(mq.QUEUE, durable=True, passive=True)
    assert queue.declaration_result.message_count == 0


async def test_the_worker_drops_an_expired_message_and_processes_a_duplicate_once(
        broker: int, channel: aio_pika.abc.AbstractChannel, provider: TracerProvider,
        exporter: InMemorySpanExporter) -> None:
    """A message past its x-deadline-unix-ms is not worked on (its caller gave up); a
    redelivered or republished message id is processed once (idempotent consumer)."""
    ledger = WorkLedger()
    worker = await _run_worker(broker, provider, ledger)
    try:
        past = int(time.time() * 1000) - 1000
        await _publish(channel, {mq.HDR_TRACEPARENT: TRACEPARENT, mq.HDR_DEADLINE: past},
                       "e" * 32)
        for _ in range(2):
            await _publish(channel, {mq.HDR_TRACEPARENT: TRACEPARENT}, "d" * 32)
        spans = await _consumer_spans(exporter, 3)
    finally:
        await worker.close()
    outcomes = sorted(str((s.attributes or {})[mq.ATTR_OUTCOME]) for s in spans)
    assert outcomes == ["duplicate", "expired", "processed"]
    assert worker.processed == 1


async def test_a_malformed_traceparent_restarts_the_trace_and_says_so(
        broker: int, channel: aio_pika.abc.AbstractChannel, provider: TracerProvider,
        exporter: InMemorySpanExporter) -> None:
    """W3C §4.3: a traceparent that does not parse is ignored and a new trace starts; the
    CONSUMER span records the bad value so the probes can report it."""
    worker = await _run_worker(broker, provider, WorkLedger())
    try:
        await _publish(channel, {mq.HDR_TRACEPARENT: "00-not-a-trace-01"}, "f" * 32)
        (span,) = await _consumer_spans(exporter, 1)
    finally:
        await worker.close()
    assert span.parent is None and f"{span.context.trace_id:032x}" != TRACE_ID
    assert mq.EVENT_TRACE_INVALID in [e.name for e in span.events]


# Each messaging twin does its one bug and nothing else: the messaging leg's profile.
GOOD = {"trace_headers": "sent", "consumer_trace": "continued", "expired_message": "dropped",
        "killed_mid_work": "redelivered", "duplicate_processed": 1}
AMQP_BUG: dict[Defect, dict[str, object]] = {
    Defect.NONE: {},
    Defect.AMQP_DROP_TRACE_HEADERS: {"trace_headers": "absent"},
    Defect.AMQP_NEW_TRACE: {"consumer_trace": "new"},
    Defect.AMQP_PROCESS_EXPIRED: {"expired_message": "processed"},
    Defect.AMQP_ACK_BEFORE_WORK: {"killed_mid_work": "lost"},
    Defect.AMQP_NOT_IDEMPOTENT: {"duplicate_processed": 2},
}


async def _worker_of(port: int, provider: TracerProvider, defect: Defect,
                     work_ms: float = 0.0) -> Worker:
    cfg = ChainConfig(name="worker", defect=defect, work_before=WorkSpec("fixed", work_ms),
                      consume=parse_consume(f"amqp://127.0.0.1:{port}/{mq.QUEUE}"))
    worker = Worker(cfg, provider.get_tracer("t"), WorkLedger(), {})
    await worker.start()
    await worker.wait_ready(30.0)
    return worker


async def _profile(port: int, chan: aio_pika.abc.AbstractChannel, defect: Defect,
                   ) -> dict[str, object]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    queue = await chan.declare_queue(mq.QUEUE, durable=True)
    cfg = ChainConfig(name="orders", defect=defect, publish=parse_publish(
        f"amqp://127.0.0.1:{port}/{mq.EXCHANGE}/{mq.ROUTING_KEY}"))
    async with serve_chain(cfg, provider.get_tracer("t")) as app:
        assert await get(app, {"traceparent": TRACEPARENT}) == 200
    sent = await next_message(chan)
    profile: dict[str, object] = {
        "trace_headers": "sent" if mq.HDR_TRACEPARENT in (sent.headers or {}) else "absent"}
    worker = await _worker_of(port, provider, defect)
    try:
        await _publish(chan, {mq.HDR_TRACEPARENT: TRACEPARENT}, "1" * 32)
        (span,) = await _consumer_spans(exporter, 1)
        profile["consumer_trace"] = ("continued" if f"{span.context.trace_id:032x}" == TRACE_ID
                                     else "new")
        past = int(time.time() * 1000) - 1000
        await _publish(chan, {mq.HDR_DEADLINE: past}, "2" * 32)
        await _publish(chan, {}, "3" * 32)
        await _publish(chan, {}, "3" * 32)
        spans = await _consumer_spans(exporter, 4)
    finally:
        await worker.close()
    outcome: dict[str, list[object]] = {
        str((s.attributes or {}).get(mq.ATTR_MESSAGE_ID)): [] for s in spans}
    for s in spans:
        outcome[str((s.attributes or {}).get(mq.ATTR_MESSAGE_ID))].append(
            (s.attributes or {}).get(mq.ATTR_OUTCOME))
    profile["expired_message"] = ("dropped" if outcome["2" * 32] == ["expired"]
                                  else "processed")
    profile["duplicate_processed"] = outcome["3" * 32].count("processed")
    await queue.purge()
    slow = await _worker_of(port, provider, defect, work_ms=5000.0)
    try:
        await _publish(chan, {}, "4" * 32)
        await _delivered(chan)
    finally:
        await slow.close()  # a kill mid-work: what was not acked goes back to the queue
    left = await chan.declare_queue(mq.QUEUE, durable=True, passive=True)
    profile["killed_mid_work"] = ("redelivered" if left.declaration_result.message_count == 1
                                  else "lost")
    await queue.purge()
    return profile


async def _delivered(chan: aio_pika.abc.AbstractChannel) -> None:
    """Wait until no message is ready on the queue: the worker holds it (acked or not)."""
    for _ in range(150):
        queue = await chan.declare_queue(mq.QUEUE, durable=True, passive=True)
        if queue.declaration_result.message_count == 0:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the worker took no message within 3 s")


@pytest.mark.parametrize("defect", [pytest.param(d, id=d.value) for d in AMQP_BUG])
async def test_each_messaging_twin_does_its_one_bug_and_nothing_else(
        broker: int, channel: aio_pika.abc.AbstractChannel, defect: Defect) -> None:
    assert await _profile(broker, channel, defect) == {**GOOD, **AMQP_BUG[defect]}


async def test_a_worker_retries_a_broker_address_that_accepts_and_closes_until_it_answers(
        broker: int, provider: TracerProvider, exporter: InMemorySpanExporter,
        channel: aio_pika.abc.AbstractChannel) -> None:
    """Envoy's tcp_proxy with no healthy upstream accepts, then closes (``UH``, fidelity §2.6):
    aiormq reports that as StopAsyncIteration when the close arrives before it reads its first
    frame, as IncompatibleProtocolError or a reset otherwise (which one is a race). A worker that
    started before the broker was Ready must keep trying, then consume, then work on one
    message at a time (CHAIN_CONCURRENCY=1)."""
    closed = 0

    async def front(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal closed
        if closed < 3:  # the first connections meet a sidecar with no upstream yet
            closed += 1
            writer.close()
            return
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", broker)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer),
                             return_exceptions=True)

    server = await asyncio.start_server(front, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    cfg = ChainConfig(name="worker", consume=parse_consume(f"amqp://127.0.0.1:{port}/{mq.QUEUE}"),
                      work_before=WorkSpec("fixed", 80.0))
    worker = Worker(cfg, provider.get_tracer("t"), WorkLedger(), {})
    try:
        await worker.start()
        await worker.wait_ready(20.0)
        assert closed == 3
        for n in range(3):
            await _publish(channel, {}, f"one-at-a-time-{n}")
        spans = await _consumer_spans(exporter, 3)
        starts = sorted(e.timestamp for s in spans for e in s.events
                        if e.name == tm.EVENT_WORK_START)
        # delivered together (prefetch), worked on in turn: 80 ms of work apart
        assert len(starts) == 3
        assert all(b - a >= 75_000_000 for a, b in itertools.pairwise(starts))
    finally:
        await worker.close()
        server.close()
        await server.wait_closed()
