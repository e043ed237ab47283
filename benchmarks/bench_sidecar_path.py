"""The sidecar's own Python work per request, in one process, without sockets: prints a table.

``bench_sidecar.py`` measures a sidecar process's CPU per request, which adds the kernel's
share (two reads, two writes and the event loop's epoll per proxied request) and the cost
of running among other busy processes. This script feeds requests straight into the
sidecar's listener protocol (``ServerConnection`` with the sidecar's fast hook) and answers
them straight from a fake upstream transport, so what it times is only the sidecar's
Python path: HTTP parsing and encoding, routing, header rules, ids, trace context, the
access-log line (rendered and written to /dev/null inside the timed section). Caches are
hot and the cyclic collector is off, so this is the path at its cheapest.

Two requests: an outbound one as the load generators send it (no ids yet: the sidecar
makes the x-request-id and the trace), and an inbound one as a caller's sidecar sends it
(x-request-id, an unsampled traceparent, the peer header). Best of ``--rounds`` rounds.

Usage: .venv/bin/python benchmarks/bench_sidecar_path.py [--rounds N] [--requests N]
"""

from __future__ import annotations

import argparse
import gc
import os
import time
from typing import Any

from bench_sidecar import _doc

from localmesh.http.client import ClientConnection
from localmesh.http.server import ENVOY_HEAD_LIMITS, ServerConnection
from localmesh.sidecar.accesslog import AccessLog
from localmesh.sidecar.proxy import Sidecar

APP_PORT = 9999
RESPONSE = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\nok"
REQUESTS = {
    "outbound (app → Service, no ids yet)":
        (b"GET http://app.bench:8080/s HTTP/1.1\r\nhost: app.bench:8080\r\n\r\n", True),
    "inbound (caller's sidecar → app, ids and unsampled trace)":
        (b"GET /s HTTP/1.1\r\nhost: app.bench:8080\r\n"
         b"x-request-id: 6f1c0d5e-2f3a-4b5c-9d8e-7f6a5b4c3d2e\r\n"
         b"traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00\r\n"
         b"x-forwarded-proto: http\r\nx-meshchaos-peer: bench/other-1\r\n\r\n", False),
}


class FakeTransport:
    """Just enough of an asyncio transport: writes go to ``on_write``."""

    def __init__(self, on_write: Any = None) -> None:
        self.on_write = on_write

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 40000), "sockname": ("127.0.0.1", 8080)}.get(
            name, default)

    def write(self, data: bytes) -> None:
        if self.on_write is not None:
            self.on_write(data)

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass

    def is_closing(self) -> bool:
        return False


async def per_request_us(request: bytes, outbound: bool, rounds: int, n: int) -> float:
    """Best µs per request over ``rounds`` rounds of ``n`` requests."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    sidecar = Sidecar(pod="front-1", namespace="bench", service="front", log_fd=devnull)
    # No timed flushes: the lines are rendered and written by close(), inside the timing.
    sidecar.access_log = AccessLog(devnull, interval=3600.0)
    sidecar.apply_config(_doc("front-1", "front", APP_PORT, app_port=APP_PORT))
    sent: list[ClientConnection] = []
    upstream = ClientConnection(("127.0.0.1", APP_PORT))
    upstream.connection_made(FakeTransport(lambda _data: sent.append(upstream)))  # type: ignore[arg-type]
    upstream.reusable = True
    sidecar.pool.release(upstream)  # an idle keep-alive connection to the app
    fast = sidecar.fast_outbound if outbound else sidecar.fast_inbound
    # As the sidecar's listeners run (localmesh/sidecar/__main__.py): Envoy's head limits on.
    down = ServerConnection(sidecar.handle_outbound, fast, limits=ENVOY_HEAD_LIMITS,
                            refused=sidecar.refuse_head)
    down.connection_made(FakeTransport())  # type: ignore[arg-type]

    def one() -> None:
        down.data_received(request)
        sent.pop().data_received(RESPONSE)

    for _ in range(2000):
        one()
    sidecar.access_log.close()
    gc.collect()
    gc.disable()
    best = float("inf")
    try:
        for _ in range(rounds):
            t = time.perf_counter()
            for _ in range(n):
                one()
            sidecar.access_log.close()
            best = min(best, (time.perf_counter() - t) / n * 1e6)
    finally:
        gc.enable()
        os.close(devnull)
    return best


async def run(rounds: int, n: int) -> list[tuple[str, float]]:
    return [(name, await per_request_us(req, outbound, rounds, n))
            for name, (req, outbound) in REQUESTS.items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--requests", type=int, default=4000, help="requests per round")
    args = parser.parse_args()
    import uvloop
    rows = uvloop.run(run(args.rounds, args.requests))
    width = max(len(name) for name, _ in rows)
    print(f"{'request':<{width}}  sidecar Python path per request (best of {args.rounds})")
    print(f"{'-' * width}  ----")
    for name, us in rows:
        print(f"{name:<{width}}  {us:.1f} µs")
    print(f"\n(load average {os.getloadavg()[0]:.2f}; hot caches, no collector, no syscalls: "
          "compare with bench_sidecar.py's CPU per request in a process)")


if __name__ == "__main__":
    main()
