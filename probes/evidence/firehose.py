"""The broker's own evidence: RabbitMQ's firehose tracer (docs/fidelity.md §9.6).

With tracing on for a vhost (``rabbitmqctl trace_on``), RabbitMQ publishes a copy of every
message published in it to the topic exchange ``amq.rabbitmq.trace`` with routing key
``publish.<exchange>``, and of every delivery with ``deliver.<queue>``; the copy's headers
hold ``exchange_name``, ``routing_keys``, ``properties`` (the message's own, its ``headers``
table included), ``routed_queues`` (publish) and ``redelivered`` (deliver). Nothing there
depends on the apps: a producer that drops ``traceparent`` shows it, a redelivery shows it.

:class:`FirehoseTap` binds a private, exclusive queue to that exchange and records every
copy with the time it arrived (the firehose copies carry no timestamp of their own). It runs
its own event loop in a thread, so the synchronous probes can read it while their load runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from probes.errors import EvidenceError

__all__ = ["DEADLINE_HEADER", "TRACE_EXCHANGE", "FirehoseTap", "TracedMessage", "parse_traced"]

TRACE_EXCHANGE = "amq.rabbitmq.trace"
DEADLINE_HEADER = "x-deadline-unix-ms"  # an absolute deadline some producers add to the TTL
CONNECT_TIMEOUT_S = 5.0
_STOP_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class TracedMessage:
    """One firehose copy: a message published to an exchange, or delivered from a queue."""

    event: Literal["publish", "deliver"]
    at_us: int  # when the tap received the copy (unix µs, this machine's clock)
    exchange: str
    queue: str | None  # deliver: the queue it came from
    routing_keys: tuple[str, ...]
    routed_queues: tuple[str, ...]  # publish: the queues it was routed to
    message_id: str | None
    correlation_id: str | None
    expiration_ms: int | None
    headers: Mapping[str, Any] = field(default_factory=dict)
    redelivered: bool = False
    body: bytes = b""

    def header(self, name: str) -> Any:
        return self.headers.get(name)

    def text_header(self, name: str) -> str | None:
        """A header that must be an AMQP string; None when absent or of another type."""
        value = self.headers.get(name)
        if isinstance(value, bytes):
            return None  # a byte array is not a longstr: the receiver would not read it
        return value if isinstance(value, str) else None

    @property
    def request_id(self) -> str | None:
        """The request the message belongs to: ``x-request-id``, else the correlation id."""
        return self.text_header("x-request-id") or self.correlation_id

    @property
    def deadline_us(self) -> int | None:
        """The earlier of ``x-deadline-unix-ms`` and this copy's arrival plus ``expiration``
        (RabbitMQ counts a per-message TTL from the enqueue, docs/fidelity.md §9.2)."""
        deadlines = []
        header = self.headers.get(DEADLINE_HEADER)
        if isinstance(header, int) and not isinstance(header, bool):
            deadlines.append(header * 1000)
        if self.expiration_ms is not None:
            deadlines.append(self.at_us + self.expiration_ms * 1000)
        return min(deadlines) if deadlines else None


def _text(value: Any) -> str | None:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return value if isinstance(value, str) and value else None


def _strings(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list | tuple):
        return ()
    return tuple(t for t in (_text(v) for v in value) if t)


def parse_traced(routing_key: str, headers: Mapping[str, Any] | None, body: bytes,
                 at_us: int) -> TracedMessage | None:
    """One copy from ``amq.rabbitmq.trace``; None for a routing key that is neither
    ``publish.*`` nor ``deliver.*``. A copy without its ``properties`` table is an
    :class:`EvidenceError`: the firehose always sends it, so the tap reads something else."""
    event, _, name = routing_key.partition(".")
    if event not in ("publish", "deliver") or not name:
        return None
    head = dict(headers or {})
    props = head.get("properties")
    if not isinstance(props, Mapping):
        raise EvidenceError(f"firehose copy '{routing_key}' has no properties table (headers "
                            f"{sorted(head)}): is {TRACE_EXCHANGE} RabbitMQ's trace exchange?")
    app_headers = props.get("headers")
    expiration = _text(props.get("expiration"))
    return TracedMessage(
        event="publish" if event == "publish" else "deliver",
        at_us=at_us,
        exchange=_text(head.get("exchange_name")) or (name if event == "publish" else ""),
        queue=name if event == "deliver" else None,
        routing_keys=_strings(head.get("routing_keys")),
        routed_queues=_strings(head.get("routed_queues")),
        message_id=_text(props.get("message_id")),
        correlation_id=_text(props.get("correlation_id")),
        expiration_ms=int(expiration) if expiration and expiration.isdigit() else None,
        headers=dict(app_headers) if isinstance(app_headers, Mapping) else {},
        redelivered=bool(head.get("redelivered")),
        body=body)


class FirehoseTap:
    """Records the firehose of one broker while open (``with FirehoseTap(url) as tap:``).

    ``url`` is an AMQP URL the probe can reach (locally the broker pod's own port, on a
    cluster a port-forward or the broker's address). Opening fails with
    :class:`EvidenceError` naming the broker when it cannot connect within 5 s.
    """

    def __init__(self, url: str, *, connect_timeout_s: float = CONNECT_TIMEOUT_S) -> None:
        self.url = url
        self._connect_timeout_s = connect_timeout_s
        self._records: list[TracedMessage] = []
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._channel: Any = None
        self._conn: Any = None
        self._thread = threading.Thread(target=self._main, name="meshchaos-firehose",
                                        daemon=True)

    def __enter__(self) -> FirehoseTap:
        self._thread.start()
        self._ready.wait(self._connect_timeout_s + 2.0)
        if self._error is not None or not self._ready.is_set():
            self.close()
            cause = self._error or TimeoutError("no answer")
            raise EvidenceError(f"firehose of broker {_safe(self.url)}: could not bind a queue "
                                f"to {TRACE_EXCHANGE}: {cause!r}") from cause
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def records(self) -> list[TracedMessage]:
        """Every copy seen so far, in arrival order."""
        with self._lock:
            return list(self._records)

    def republish(self, message: TracedMessage) -> None:
        """Publish a copy of a traced message again, same properties and headers: the
        duplicate delivery an at-least-once broker or a retrying producer produces."""
        if self._loop is None or self._channel is None:
            raise EvidenceError("firehose tap is not open: cannot publish a duplicate")
        future = asyncio.run_coroutine_threadsafe(self._republish(message), self._loop)
        future.result(timeout=5.0)

    def ready_messages(self, queue: str) -> int:
        """Messages waiting in ``queue`` (ready, not delivered): a passive declare on a
        channel of its own (a missing queue closes the channel it was asked on)."""
        if self._loop is None or self._conn is None:
            raise EvidenceError("firehose tap is not open: cannot read a queue's depth")
        future = asyncio.run_coroutine_threadsafe(self._depth(queue), self._loop)
        return int(future.result(timeout=5.0))

    def close(self) -> None:
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop ended already
                loop.call_soon_threadsafe(stop.set)
        if self._thread.is_alive():
            self._thread.join(_STOP_TIMEOUT_S)

    def _main(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # noqa: BLE001 - reported to __enter__, never lost
            self._error = exc
            self._ready.set()

    async def _serve(self) -> None:
        import aio_pika  # the tap is the only probe that speaks AMQP

        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with asyncio.timeout(self._connect_timeout_s):
            conn = await aio_pika.connect(self.url)
        self._conn = conn
        try:
            channel = await conn.channel()
            queue = await channel.declare_queue("", exclusive=True, auto_delete=True)
            await queue.bind(TRACE_EXCHANGE, routing_key="#")
            await queue.consume(self._on_copy, no_ack=True)
            self._channel = await conn.channel(publisher_confirms=True)
            self._ready.set()
            await self._stop.wait()
        finally:
            self._channel = self._conn = None
            await conn.close()

    async def _on_copy(self, message: Any) -> None:
        record = parse_traced(str(message.routing_key or ""), message.headers, message.body,
                              time.time_ns() // 1000)
        if record is not None:
            with self._lock:
                self._records.append(record)

    async def _depth(self, queue: str) -> int:
        channel = await self._conn.channel()
        try:
            declared = await channel.declare_queue(queue, passive=True)
            return int(declared.declaration_result.message_count or 0)
        finally:
            if not channel.is_closed:
                await channel.close()

    async def _republish(self, message: TracedMessage) -> None:
        import aio_pika

        copy = aio_pika.Message(
            message.body, headers=dict(message.headers), message_id=message.message_id,
            correlation_id=message.correlation_id, delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            expiration=None if message.expiration_ms is None else message.expiration_ms / 1000)
        if not message.routing_keys:
            raise EvidenceError(f"firehose copy of message {message.message_id!r} names no "
                                "routing key: cannot publish it again")
        if message.exchange:
            exchange = await self._channel.get_exchange(message.exchange, ensure=False)
        else:
            exchange = self._channel.default_exchange
        await exchange.publish(copy, routing_key=message.routing_keys[0])


def _safe(url: str) -> str:
    """The URL without its password, for messages."""
    scheme, sep, rest = url.partition("://")
    creds, at, host = rest.rpartition("@")
    return f"{scheme}{sep}{creds.split(':', 1)[0]}@{host}" if at else url
