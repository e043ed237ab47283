"""``python -m localmesh.sidecar``: one pod's Envoy emulation (docs/architecture.md "Sidecar").

stdout carries the access log only; diagnostics go to stderr. The chosen ports
are announced as one JSON line on ``--ready-fd`` or in ``--ports-file``. SIGTERM
(or ``POST /quitquitquit``) stops the listeners, flushes logs and spans, exits.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import logging
import os
import signal
import sys
from pathlib import Path

from localmesh.errors import SidecarConfigError
from localmesh.http.server import ENVOY_HEAD_LIMITS, in_flight, serve
from localmesh.sidecar.proxy import Sidecar
from localmesh.sidecar.tcp import TcpProxy, parse_listeners

_DRAIN_S = 2.0


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m localmesh.sidecar", description=__doc__)
    p.add_argument("--pod", required=True)
    p.add_argument("--namespace", required=True)
    p.add_argument("--service", required=True)
    p.add_argument("--mode", choices=("sidecar", "gateway"), default="sidecar")
    p.add_argument("--inbound-port", type=int, default=0)
    p.add_argument("--outbound-port", type=int, default=0)
    p.add_argument("--admin-port", type=int, default=0)
    p.add_argument("--app-port", type=int, default=0)
    p.add_argument("--ready-fd", type=int, default=None)
    p.add_argument("--ports-file", type=Path, default=None)
    p.add_argument("--tcp-inbound", default=None, metavar="PORT=LISTEN",
                   help="an inbound TCP listener for the app's port PORT (tcp_proxy)")
    p.add_argument("--tcp-outbound", action="append", default=[], metavar="FQDN:PORT=LISTEN",
                   help="an outbound TCP listener for a Service's TCP port (repeatable)")
    p.add_argument("--config", type=Path, default=None,
                   help="an initial configuration document (JSON), as if pushed to /config")
    return p.parse_args(argv)


def _announce(args: argparse.Namespace, ports: dict[str, object]) -> None:
    line = json.dumps(ports) + "\n"
    if args.ready_fd is not None:
        os.write(args.ready_fd, line.encode())
        os.close(args.ready_fd)
    if args.ports_file is not None:
        tmp = args.ports_file.with_suffix(".tmp")
        tmp.write_text(line)
        tmp.replace(args.ports_file)
    if args.ready_fd is None and args.ports_file is None:
        sys.stderr.write(line)
        sys.stderr.flush()


async def run(args: argparse.Namespace) -> None:
    sidecar = Sidecar(pod=args.pod, namespace=args.namespace, service=args.service,
                      mode=args.mode, app_port=args.app_port)
    quit_event = asyncio.Event()
    sidecar.quit_event = quit_event
    if args.config is not None:
        try:
            sidecar.apply_config(json.loads(args.config.read_text()))
        except (OSError, ValueError) as exc:
            raise SidecarConfigError(f"cannot load --config {args.config}: {exc}") from exc
    # Both data-path listeners carry Envoy's default head limits (431 beyond them, §1.8) and
    # take a connection that opens with the HTTP/2 preface to the HTTP/2 codec (§1.9).
    servers = [
        await serve(sidecar.handle_inbound, port=args.inbound_port, fast=sidecar.fast_inbound,
                    limits=ENVOY_HEAD_LIMITS, refused=sidecar.refuse_head,
                    h2=sidecar.h2_switch(outbound=False)),
        await serve(sidecar.handle_outbound, port=args.outbound_port,
                    fast=sidecar.fast_outbound, limits=ENVOY_HEAD_LIMITS,
                    refused=sidecar.refuse_head, h2=sidecar.h2_switch(outbound=True)),
        await serve(sidecar.handle_admin, port=args.admin_port),
    ]
    ports: dict[str, object] = {
        name: s.sockets[0].getsockname()[1]
        for name, s in zip(("inbound", "outbound", "admin"), servers, strict=True)}
    tcp_in, tcp_out = parse_listeners(args.tcp_inbound, args.tcp_outbound)
    tcp = TcpProxy(sidecar, inbound=tcp_in, outbound=tcp_out) if tcp_in or tcp_out else None
    if tcp is not None:
        ports["tcp"] = await tcp.start()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, quit_event.set)
    # Everything allocated so far (modules, config) lives as long as the process: keep it
    # out of the collector's full passes, which otherwise stall the loop for milliseconds.
    gc.freeze()
    _announce(args, ports)
    await quit_event.wait()
    for s in servers:
        s.close()  # stop accepting
    if tcp is not None:
        tcp.close()
    # Let requests in flight finish (Envoy drains too), bounded like a termination drain.
    drain_until = loop.time() + _DRAIN_S
    while sidecar.fast_in_flight and loop.time() < drain_until:  # noqa: ASYNC110 - a counter
        await asyncio.sleep(0.005)  # callback-path requests have no task to wait for
    pending = in_flight()
    if pending:
        await asyncio.wait(pending, timeout=max(drain_until - loop.time(), 0.0))
    if tcp is not None:
        tcp.abort_all()  # long-lived TCP connections end with the process; log them first
    await sidecar.close()


def main(argv: list[str] | None = None) -> None:
    args = _args(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    runner = asyncio.run
    with contextlib.suppress(ImportError):
        import uvloop
        runner = uvloop.run
    runner(run(args))
    # Everything the sidecar owns is closed and flushed by now (listeners, connections,
    # the access log, the span exporter): skip tearing down the interpreter, which costs
    # more CPU than the drain when a whole mesh stops at once.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
