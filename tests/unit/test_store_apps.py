"""The store chain's hops (fixtures/store) as real processes on loopback, without a mesh.

Each hop is started as the mesh would start it (``node fixtures/store/<hop>.js`` or
``python -m fixtures.store.<hop>``, ``PORT=0``) with ``HTTP_PROXY`` pointing at a recording
proxy written here, which plays its sidecar's outbound listener: it records every call's
request line and headers, answers as the test scripts it (a status, no answer at all, or a
hold until the test opens a gate), and notes when the hop closes a held call. For the whole
chain it forwards instead, turning the app's ``x-envoy-upstream-rq-timeout-ms`` into the
callee's ``x-envoy-expected-rq-timeout-ms`` as a sidecar with the honour switch does.

Nothing sleeps to synchronise: tests wait on the proxy's records, on the hops' log events,
or on their answers, each bounded by ``WAIT_S``. The only fixed waits are where an absence
is the point (no call after a cancelled work; a leaked call left open), each well past the
moment a correct hop acts.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import queue
import select
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

ROOT = Path(__file__).resolve().parents[2]
COMMANDS = {
    "gateway": ["node", "fixtures/store/gateway.js"],
    "catalog": [sys.executable, "-m", "fixtures.store.catalog"],
    "stock": [sys.executable, "-m", "fixtures.store.stock"],
    "warehouse": ["node", "fixtures/store/warehouse.js"],
    "reviews": [sys.executable, "-m", "fixtures.store.reviews"],
}
PATHS = {"gateway": "/api/items/{}", "catalog": "/catalog/items/{}",
         "stock": "/stock/items/{}", "warehouse": "/warehouse/items/{}",
         "reviews": "/reviews/items/{}"}
CALLEES = {"gateway": ("catalog",), "catalog": ("stock", "reviews"), "stock": ("warehouse",)}
FORWARDERS = tuple(CALLEES)
REQUIRED = {"gateway": "catalog", "catalog": "stock", "stock": "warehouse"}
DEFECTS = ("none", "stale-budget", "app-retries", "leak-call", "drop-traceparent")
BUDGET = "x-envoy-expected-rq-timeout-ms"
TIMEOUT = "x-envoy-upstream-rq-timeout-ms"
TRACE = {
    "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    "tracestate": "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7",
    "x-b3-traceid": "4bf92f3577b34da6a3ce929d0e0e4736",
    "x-b3-spanid": "00f067aa0ba902b7",
    "x-b3-parentspanid": "a3ce929d0e0e4736",
    "x-b3-sampled": "1",
}
W3C = {"traceparent", "tracestate"}
TRACE_NAMES = set(TRACE) | {"x-request-id", "x-b3-flags", "b3"}
WAIT_S = 5.0
START_S = 15.0  # a process start on a shared, busy machine
LEAK_WINDOW_S = 0.5  # a correct hop closes its call within a few ms of its caller leaving
WORK_MS = 30


# -- the recording proxy -----------------------------------------------------------------

class Gate:
    """Held answers wait for it; open() lets every one of them go."""

    def __init__(self) -> None:
        self.r, self.w = os.pipe()

    def open(self) -> None:
        os.write(self.w, b".")

    def close(self) -> None:
        os.close(self.r)
        os.close(self.w)


@dataclass
class Script:
    """How the proxy answers calls to one service."""

    status: int = 200
    drop: bool = False  # close the connection without an answer
    hold: Gate | None = None  # answer only once the gate opens (or note the hop leaving)


@dataclass
class Seen:
    """One call the hop made through the proxy."""

    service: str
    target: str
    headers: dict[str, str]
    at: float
    closed: threading.Event = field(default_factory=threading.Event)  # hop left while held
    answered: threading.Event = field(default_factory=threading.Event)

    @property
    def timeout_ms(self) -> int | None:
        value = self.headers.get(TIMEOUT)
        return None if value is None else int(value)


def body_for(service: str, item: str) -> dict[str, Any]:
    return {"service": service, "item": item, "on_hand": 7, "reviews": [{"stars": 5}]}


def read_head(conn: socket.socket, buf: bytes) -> tuple[bytes | None, bytes]:
    while b"\r\n\r\n" not in buf:
        data = conn.recv(65536)
        if not data:
            return None, buf
        buf += data
    head, _, rest = buf.partition(b"\r\n\r\n")
    return head, rest


def peer_left(conn: socket.socket) -> bool:
    try:
        return conn.recv(1, socket.MSG_PEEK) == b""
    except OSError:
        return True


class RecordingProxy:
    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.scripts: dict[str, Script] = {}
        self.forward: dict[str, int] = {}  # service -> a hop's port: relay instead of answer
        self.seen: list[Seen] = []
        self.changed = threading.Condition()
        self.gates: list[Gate] = []
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def gate(self) -> Gate:
        gate = Gate()
        self.gates.append(gate)
        return gate

    def calls(self, service: str | None = None, rid: str | None = None) -> list[Seen]:
        with self.changed:
            return [s for s in self.seen if (service is None or s.service == service)
                    and (rid is None or s.headers.get("x-request-id") == rid)]

    def wait_calls(self, count: int, service: str | None = None,
                   rid: str | None = None) -> list[Seen]:
        deadline = time.monotonic() + WAIT_S
        with self.changed:
            while len(found := self.calls(service, rid)) < count:
                left = deadline - time.monotonic()
                assert left > 0, f"{count} call(s) to {service or 'any'} expected, saw {found}"
                self.changed.wait(left)
        return found

    def close(self) -> None:
        self.server.close()
        for gate in self.gates:
            gate.open()  # let held handler threads finish

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            buf = b""
            while True:
                head, buf = read_head(conn, buf)
                if head is None or not self._answer(conn, self._record(head)):
                    return

    def _record(self, head: bytes) -> Seen:
        request_line, *fields = head.decode("latin-1").split("\r\n")
        target = request_line.split(" ")[1]
        headers: dict[str, str] = {}
        for line in fields:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        seen = Seen(service=headers["host"].split(":")[0], target=target, headers=headers,
                    at=time.monotonic())
        with self.changed:
            self.seen.append(seen)
            self.changed.notify_all()
        return seen

    def _answer(self, conn: socket.socket, seen: Seen) -> bool:
        """Answer one call; False = close the connection."""
        if seen.service in self.forward:
            conn.sendall(self._relay(seen))
            seen.answered.set()
            return False
        script = self.scripts.get(seen.service, Script())
        if script.drop:
            return False
        if script.hold is not None:
            watched: list[Any] = [conn, script.hold.r]
            readable, _, _ = select.select(watched, [], [], 4 * WAIT_S)
            if conn in readable and peer_left(conn):
                seen.closed.set()
                return False
        item = urlsplit(seen.target).path.rsplit("/", 1)[-1]
        payload = json.dumps(body_for(seen.service, item)).encode()
        conn.sendall(f"HTTP/1.1 {script.status} Scripted\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload)
        seen.answered.set()
        return seen.headers.get("connection", "").lower() != "close"

    def _relay(self, seen: Seen) -> bytes:
        """What a sidecar with the honour switch does, minus everything else: the app's
        timeout becomes the callee's announced budget."""
        headers = {k: v for k, v in seen.headers.items() if k not in (TIMEOUT, "connection")}
        if TIMEOUT in seen.headers:
            headers[BUDGET] = seen.headers[TIMEOUT]
        lines = [f"GET {urlsplit(seen.target).path} HTTP/1.1", "Connection: close",
                 *(f"{k}: {v}" for k, v in headers.items())]
        with socket.create_connection(("127.0.0.1", self.forward[seen.service]),
                                      timeout=WAIT_S) as up:
            up.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
            chunks = []
            while data := up.recv(65536):
                chunks.append(data)
        return b"".join(chunks)


# -- the hops as processes ---------------------------------------------------------------

class Hop:
    """One hop's process; its stdout JSON events are queued, its stderr kept for failures."""

    def __init__(self, name: str, env: dict[str, str]) -> None:
        self.name = name
        full_env = {"PATH": os.environ["PATH"], "PORT": "0", "POD_IP": "127.0.0.1",
                    "WORK_MS": "5", **env}
        self.proc = subprocess.Popen(COMMANDS[name], cwd=ROOT, env=full_env, text=True,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self.stderr: list[str] = []
        threading.Thread(target=self._read_events, daemon=True).start()
        threading.Thread(target=self._read_stderr, daemon=True).start()
        self.port = int(self.next_event("listening", START_S)["port"])

    def _read_events(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with contextlib.suppress(ValueError):
                self.events.put(json.loads(line))

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        self.stderr.extend(self.proc.stderr)

    def next_event(self, event: str, timeout: float = WAIT_S) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                found = self.events.get(timeout=min(left, 0.1))
            except queue.Empty:
                if self.proc.poll() is not None and self.events.empty():
                    break
                continue
            if found.get("event") == event:
                return found
        raise AssertionError(f"{self.name}: no {event!r} event within {timeout}s (exit "
                             f"{self.proc.poll()}, stderr {''.join(self.stderr)[-2000:]!r})")

    def path(self, item: str = "42") -> str:
        return PATHS[self.name].format(item)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(WAIT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(WAIT_S)


Start = Callable[..., Hop]


@pytest.fixture
def proxy() -> Iterator[RecordingProxy]:
    recording = RecordingProxy()
    yield recording
    recording.close()


@pytest.fixture
def start(proxy: RecordingProxy) -> Iterator[Start]:
    """start(name, **env): the hop running with the proxy as its HTTP_PROXY."""
    started: list[Hop] = []

    def _start(name: str, **env: str) -> Hop:
        hop = Hop(name, {"HTTP_PROXY": proxy.url, **env})
        started.append(hop)
        return hop

    yield _start
    for hop in started:
        hop.stop()


def get(hop: Hop, path: str, headers: dict[str, str] | None = None, *,
        method: str = "GET") -> tuple[int, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", hop.port, timeout=WAIT_S)
    try:
        conn.request(method, path, headers=headers or {})
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def send_raw(hop: Hop, path: str, headers: dict[str, str]) -> socket.socket:
    """A request on a connection the test closes itself: a caller that leaves."""
    sock = socket.create_connection(("127.0.0.1", hop.port), timeout=WAIT_S)
    lines = [f"GET {path} HTTP/1.1", "Host: test", *(f"{k}: {v}" for k, v in headers.items())]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    return sock


def traced(budget: int | None = None,
           extra: dict[str, str] | None = None) -> tuple[str, dict[str, str]]:
    """A fresh x-request-id (to pick this request's calls out), the trace headers, and the
    budget a sidecar would announce."""
    rid = str(uuid.uuid4())
    headers = {**TRACE, "x-request-id": rid, **(extra or {})}
    if budget is not None:
        headers[BUDGET] = str(budget)
    return rid, headers


# -- every hop ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(COMMANDS))
def test_each_hop_serves_its_resource_healthz_and_nothing_else(
        name: str, start: Start, proxy: RecordingProxy) -> None:
    """A realistic path per hop (the ingress routes /api/ only), /healthz for readiness,
    404 for the rest, 405 for other methods; a forwarder calls each callee in absolute form
    through the proxy."""
    hop = start(name)
    status, body = get(hop, hop.path("42"))
    assert (status, body["service"], body["item"]) == (200, name, "42")
    assert get(hop, "/healthz") == (200, {"status": "ok"})
    assert get(hop, "/")[0] == 404
    assert get(hop, hop.path("42"), method="POST")[0] == 405
    calls = {s.service: s for s in proxy.calls()}
    assert sorted(calls) == sorted(CALLEES.get(name, ()))
    for callee, seen in calls.items():
        assert seen.target == f"http://{callee}:8080" + PATHS[callee].format("42")
        assert seen.headers["host"] == f"{callee}:8080"


@pytest.mark.parametrize("name", FORWARDERS)
def test_forwarders_copy_the_trace_headers_exactly_as_received(
        name: str, start: Start, proxy: RecordingProxy) -> None:
    """Istio's list (fidelity §3), copied by hand: the same values, no new parent id,
    nothing added; the test hook travels with them. The hop's own budget header is not
    passed on (it sends its own timeout instead)."""
    hop = start(name)
    rid, headers = traced(budget=1000, extra={"x-store-slow-ms": "0", "x-b3-flags": "1"})
    assert get(hop, hop.path(), headers)[0] == 200
    for seen in proxy.wait_calls(len(CALLEES[name]), rid=rid):
        sent = {k: v for k, v in seen.headers.items() if k in TRACE_NAMES | {"x-store-slow-ms"}}
        assert sent == {k: v for k, v in headers.items() if k != BUDGET}
        assert BUDGET not in seen.headers


@pytest.mark.parametrize("name", FORWARDERS)
def test_forwarders_invent_no_trace_context(
        name: str, start: Start, proxy: RecordingProxy) -> None:
    """A pure forwarder makes no span: what did not arrive is not sent (the sidecar starts
    the trace), and without a budget no timeout is sent either."""
    hop = start(name)
    assert get(hop, hop.path())[0] == 200
    for seen in proxy.wait_calls(len(CALLEES[name])):
        assert not set(seen.headers) & (TRACE_NAMES | {TIMEOUT, BUDGET})


@pytest.mark.parametrize("name", FORWARDERS)
def test_the_budget_shrinks_by_the_time_spent_before_the_call(
        name: str, start: Start, proxy: RecordingProxy) -> None:
    """timeout sent = budget - elapsed since the request arrived, floored: at most the
    budget less the hop's work (spent before its call), at least the budget less the time
    the test saw pass between sending and the call (which contains the hop's elapsed)."""
    hop = start(name, WORK_MS=str(WORK_MS))
    rid, headers = traced(budget=1000)
    sent_at = time.monotonic()
    assert get(hop, hop.path(), headers)[0] == 200
    for seen in proxy.wait_calls(len(CALLEES[name]), rid=rid):
        observed_ms = (seen.at - sent_at) * 1000
        assert seen.timeout_ms is not None
        assert 1000 - observed_ms - 1 <= seen.timeout_ms <= 1000 - WORK_MS + 1


@pytest.mark.parametrize("name", FORWARDERS)
def test_a_spent_budget_is_answered_504_without_a_call(
        name: str, start: Start, proxy: RecordingProxy) -> None:
    """The work outlasts the 10ms budget: no call may start late; the hop says 504."""
    hop = start(name, WORK_MS=str(WORK_MS))
    rid, headers = traced(budget=10)
    assert get(hop, hop.path(), headers)[0] == 504
    assert proxy.calls(rid=rid) == []


@pytest.mark.parametrize(("script", "expected"), [
    (Script(status=503), 502), (Script(status=504), 504), (Script(status=404), 502),
    (Script(drop=True), 502)], ids=["503", "504", "404", "no-answer"])
@pytest.mark.parametrize("name", FORWARDERS)
def test_a_failed_call_is_a_502_a_deadline_stays_504_and_nothing_is_retried(
        name: str, script: Script, expected: int, start: Start,
        proxy: RecordingProxy) -> None:
    """The required callee fails: the hop answers for it once, with no retry of its own
    (retries are the mesh's job, 20-traffic.yaml)."""
    hop = start(name)
    proxy.scripts[REQUIRED[name]] = script
    rid, headers = traced(budget=1000)
    assert get(hop, hop.path(), headers)[0] == expected
    assert len(proxy.calls(REQUIRED[name], rid)) == 1


# -- catalog's fan-out -------------------------------------------------------------------

def test_catalog_calls_stock_and_reviews_at_the_same_time(
        start: Start, proxy: RecordingProxy) -> None:
    """Both calls are in flight while neither has been answered."""
    hop = start("catalog")
    gate = proxy.gate()
    proxy.scripts.update(stock=Script(hold=gate), reviews=Script(hold=gate))
    rid, headers = traced(budget=1000)
    answer: list[tuple[int, Any]] = []
    client = threading.Thread(target=lambda: answer.append(get(hop, hop.path(), headers)))
    client.start()
    assert {s.service for s in proxy.wait_calls(2, rid=rid)} == {"stock", "reviews"}
    gate.open()
    client.join(WAIT_S)
    status, body = answer[0]
    assert status == 200 and body["reviews"] == [{"stars": 5}]
    assert body["stock"]["service"] == "stock"


@pytest.mark.parametrize("script", [Script(status=503), Script(drop=True)],
                         ids=["503", "no-answer"])
def test_catalog_answers_without_reviews_when_reviews_fails(
        script: Script, start: Start, proxy: RecordingProxy) -> None:
    """reviews is optional: the page is answered 200 with its stock and no reviews."""
    hop = start("catalog")
    proxy.scripts["reviews"] = script
    status, body = get(hop, hop.path("7"), traced(budget=1000)[1])
    assert status == 200 and body["reviews"] is None and body["stock"]["item"] == "7"
    assert body["reviews_error"] == (503 if script.status == 503 else "no answer")


def test_catalog_closes_the_reviews_call_when_stock_fails(
        start: Start, proxy: RecordingProxy) -> None:
    """Once stock failed the page is a 502 and nobody needs the reviews any more."""
    hop = start("catalog")
    proxy.scripts.update(stock=Script(status=503), reviews=Script(hold=proxy.gate()))
    rid, headers = traced(budget=1000)
    assert get(hop, hop.path(), headers)[0] == 502
    (reviews,) = proxy.wait_calls(1, "reviews", rid)
    assert reviews.closed.wait(WAIT_S)


# -- cancellation ------------------------------------------------------------------------

@pytest.mark.parametrize("name", FORWARDERS)
def test_a_caller_leaving_closes_the_calls_in_flight(
        name: str, start: Start, proxy: RecordingProxy) -> None:
    """The caller closes its connection while the hop waits for its callees: the hop closes
    every call (the next sidecar sees the disconnect) and logs why."""
    hop = start(name)
    gate = proxy.gate()
    proxy.scripts.update({callee: Script(hold=gate) for callee in CALLEES[name]})
    rid, headers = traced(budget=1000)
    client = send_raw(hop, hop.path(), headers)
    calls = proxy.wait_calls(len(CALLEES[name]), rid=rid)
    left_at = time.monotonic()
    client.close()
    assert all(seen.closed.wait(WAIT_S) for seen in calls)
    event = hop.next_event("caller-gone")
    assert (event["request_id"], event["during"]) == (rid, "call")
    assert time.monotonic() - left_at < LEAK_WINDOW_S


@pytest.mark.parametrize("defect", ["none", "leak-call"])
@pytest.mark.parametrize("name", FORWARDERS)
def test_a_caller_leaving_during_the_work_stops_it_before_any_call(
        name: str, defect: str, start: Start, proxy: RecordingProxy) -> None:
    """Work is a wait the caller's leaving cuts short, in the correct hop and in the
    leak-call twin alike (its bug is only about calls already made)."""
    work_ms = 300
    hop = start(name, WORK_MS=str(work_ms), STORE_DEFECT=defect)
    rid, headers = traced(budget=5000)
    sent_at = time.monotonic()
    send_raw(hop, hop.path(), headers).close()
    event = hop.next_event("caller-gone")
    assert (event["request_id"], event["during"]) == (rid, "work")
    assert event["after_ms"] < work_ms
    # The absence of a call can only be seen by waiting past when the work would have ended.
    time.sleep(max(0.0, sent_at + (work_ms + 150) / 1000 - time.monotonic()))
    assert proxy.calls(rid=rid) == []


def test_warehouse_is_slow_by_the_header_and_stops_when_its_caller_leaves(
        start: Start) -> None:
    """x-store-slow-ms is honoured at the leaf, as a timer the caller's leaving clears."""
    hop = start("warehouse")
    sent_at = time.monotonic()
    assert get(hop, hop.path(), {"x-store-slow-ms": "150"})[0] == 200
    assert time.monotonic() - sent_at >= 0.150
    rid, headers = traced(extra={"x-store-slow-ms": "60000"})
    client = send_raw(hop, hop.path(), headers)
    assert get(hop, "/healthz")[0] == 200  # the server is up and the slow request is in
    client.close()
    event = hop.next_event("caller-gone")
    assert event["request_id"] == rid and event["after_ms"] < 60000


def test_reviews_stops_its_work_when_its_caller_leaves(start: Start) -> None:
    hop = start("reviews", WORK_MS="60000")
    rid, headers = traced()
    client = send_raw(hop, hop.path(), headers)
    assert get(hop, "/healthz")[0] == 200
    client.close()
    event = hop.next_event("caller-gone")
    assert event["request_id"] == rid and event["during"] == "work"


# -- the defective twins -----------------------------------------------------------------

@dataclass(frozen=True)
class Profile:
    """What a hop was seen doing, one field per duty a twin may break."""

    w3c_forwarded: bool  # traceparent and tracestate copied
    b3_and_request_id_forwarded: bool
    budget: str  # "shrinks" | "stale" | "sent <n> of <budget>"
    attempts_after_503: int
    calls_when_caller_leaves: str  # "closed" | "left open" | "mixed"


CORRECT = Profile(True, True, "shrinks", 1, "closed")
TWINS = {
    "none": CORRECT,
    "stale-budget": Profile(True, True, "stale", 1, "closed"),
    "app-retries": Profile(True, True, "shrinks", 2, "closed"),
    "leak-call": Profile(True, True, "shrinks", 1, "left open"),
    "drop-traceparent": Profile(False, True, "shrinks", 1, "closed"),
}


def budget_seen(seen: Seen, budget: int, sent_at: float) -> str:
    observed_ms = (seen.at - sent_at) * 1000
    if seen.timeout_ms == budget:
        return "stale"
    if seen.timeout_ms is not None and (
            budget - observed_ms - 1 <= seen.timeout_ms <= budget - WORK_MS + 1):
        return "shrinks"
    return f"sent {seen.timeout_ms} of {budget}"


def observe(name: str, hop: Hop, proxy: RecordingProxy) -> Profile:
    required, callees = REQUIRED[name], CALLEES[name]
    # 1. a good request: which headers and which timeout go out
    rid, headers = traced(budget=1000)
    sent_at = time.monotonic()
    assert get(hop, hop.path(), headers)[0] == 200
    calls = proxy.wait_calls(len(callees), rid=rid)
    w3c = {all(s.headers.get(k) == headers[k] for k in W3C) for s in calls}
    other = {all(s.headers.get(k) == v for k, v in headers.items() if k not in W3C | {BUDGET})
             for s in calls}
    budgets = {budget_seen(s, 1000, sent_at) for s in calls}
    # 2. the required callee answers 503: how many attempts the app makes
    proxy.scripts[required] = Script(status=503)
    rid, headers = traced(budget=1000)
    assert get(hop, hop.path(), headers)[0] == 502
    attempts = len(proxy.calls(required, rid))
    # 3. the caller leaves while every call is held: closed, or left open until answered
    gate = proxy.gate()
    proxy.scripts.update({callee: Script(hold=gate) for callee in callees})
    rid, headers = traced(budget=5000)
    client = send_raw(hop, hop.path(), headers)
    held = proxy.wait_calls(len(callees), rid=rid)
    client.close()
    hop.next_event("caller-gone")
    window_ends = time.monotonic() + LEAK_WINDOW_S
    closed = {seen.closed.wait(max(0.0, window_ends - time.monotonic())) for seen in held}
    gate.open()
    if closed == {False}:  # left open: the call still takes its answer
        assert all(seen.answered.wait(WAIT_S) for seen in held)
    return Profile(w3c_forwarded=w3c == {True}, b3_and_request_id_forwarded=other == {True},
                   budget=budgets.pop() if len(budgets) == 1 else str(sorted(budgets)),
                   attempts_after_503=attempts,
                   calls_when_caller_leaves={frozenset({True}): "closed",
                                             frozenset({False}): "left open"}.get(
                                                 frozenset(closed), "mixed"))


@pytest.mark.parametrize("defect", DEFECTS)
@pytest.mark.parametrize("name", FORWARDERS)
def test_each_twin_has_its_one_bug_and_no_other(
        name: str, defect: str, start: Start, proxy: RecordingProxy) -> None:
    """STORE_DEFECT changes exactly one duty, in both languages: the stale-budget twin still
    forwards traceparent, the drop-traceparent twin still shrinks its budget, and so on."""
    hop = start(name, WORK_MS=str(WORK_MS), STORE_DEFECT=defect)
    assert observe(name, hop, proxy) == TWINS[defect]


@pytest.mark.parametrize(("script", "attempts"), [
    (Script(status=503), 2), (Script(status=504), 2), (Script(drop=True), 2),
    (Script(status=404), 1)], ids=["503", "504", "no-answer", "404"])
@pytest.mark.parametrize("name", FORWARDERS)
def test_the_app_retries_twin_retries_once_on_5xx_or_no_answer(
        name: str, script: Script, attempts: int, start: Start,
        proxy: RecordingProxy) -> None:
    """The same call again, once, with the same x-request-id and trace headers, and a
    timeout recomputed from what is left (only the retry is the bug)."""
    hop = start(name, STORE_DEFECT="app-retries")
    proxy.scripts[REQUIRED[name]] = script
    rid, headers = traced(budget=1000)
    get(hop, hop.path(), headers)
    calls = proxy.calls(REQUIRED[name], rid)
    assert len(calls) == attempts
    assert {s.headers["traceparent"] for s in calls} == {TRACE["traceparent"]}
    timeouts = [s.timeout_ms or 0 for s in calls]
    assert timeouts == sorted(timeouts, reverse=True) and timeouts[-1] < 1000


# -- settings ----------------------------------------------------------------------------

@pytest.mark.parametrize(("name", "env", "message"), [
    ("gateway", {"STORE_DEFECT": "slow"}, "STORE_DEFECT='slow' is none of"),
    ("catalog", {"STORE_DEFECT": "slow"}, "STORE_DEFECT='slow' is none of"),
    ("stock", {"WORK_MS": "soon"}, "WORK_MS='soon' is not a number"),
    ("catalog", {"HTTP_PROXY": "ftp://proxy"}, "HTTP_PROXY='ftp://proxy' must look like"),
    ("gateway", {"CATALOG_URL": "http://catalog:8080/x"}, "must look like"),
    ("warehouse", {"STORE_DEFECT": "leak-call"}, "warehouse makes no calls"),
    ("reviews", {"STORE_DEFECT": "app-retries"}, "reviews makes no calls"),
])
def test_a_bad_setting_exits_2_naming_it(name: str, env: dict[str, str], message: str) -> None:
    """A twin asked of a leaf is refused too: it could not misbehave, so it would pass."""
    result = subprocess.run(COMMANDS[name], cwd=ROOT, capture_output=True, text=True,
                            timeout=START_S,
                            env={"PATH": os.environ["PATH"], "PORT": "0", **env})
    assert result.returncode == 2
    assert message.replace("'", '"') in result.stderr.replace("'", '"')


# -- the whole chain ---------------------------------------------------------------------

def test_the_five_hops_answer_together_across_both_languages(
        start: Start, proxy: RecordingProxy) -> None:
    """gateway (Node) → catalog (asyncio) → stock (threads) → warehouse (Node), and
    reviews: each call carries the client's trace headers, and each hop's timeout is less
    than the one it was given."""
    for name in ("warehouse", "reviews", "stock", "catalog"):
        proxy.forward[name] = start(name, WORK_MS="10").port
    gateway = start("gateway", WORK_MS="10")
    rid, headers = traced(budget=1000)
    status, body = get(gateway, gateway.path("9"), headers)
    assert status == 200
    page = body["catalog"]
    assert page["stock"]["warehouse"]["service"] == "warehouse"
    assert [r["text"] for r in page["reviews"]] == ["review 1 of item 9", "review 2 of item 9"]
    calls = {s.service: s for s in proxy.wait_calls(4, rid=rid)}
    for seen in calls.values():
        assert {k: seen.headers.get(k) for k in TRACE} == TRACE
    timeouts = {name: seen.timeout_ms or 0 for name, seen in calls.items()}
    assert 1000 > timeouts["catalog"] > timeouts["stock"] > timeouts["warehouse"] > 0
    assert timeouts["catalog"] > timeouts["reviews"] >= timeouts["stock"] - 1
