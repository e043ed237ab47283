"""The mesh's side of the fork server: start it, ask it for children, learn their exit."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import sys
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from localmesh.errors import ProcessError

log = logging.getLogger("localmesh.supervisor")

__all__ = ["Child", "ForkServer", "launch_forkservers"]

_START_TIMEOUT = 20.0


class _ServerGone(Exception):
    """A spawn request found no fork server listening, or lost it before the reply."""


async def _exits_soon(proc: asyncio.subprocess.Process, within_s: float = 2.0) -> bool:
    """Whether ``proc`` has exited or does within ``within_s`` (reaped by the loop)."""
    try:
        await asyncio.wait_for(proc.wait(), within_s)
    except TimeoutError:
        return False
    return True


class Child:
    """A process forked by the fork server; ``wait()`` returns its exit code."""

    def __init__(self, pid: int, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
        self.pid = pid
        self._reader = reader
        self._writer = writer
        self._exit: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._watch = asyncio.ensure_future(self._read_exit())

    async def _read_exit(self) -> None:
        code = -9  # the fork server vanished: its children died with it (PDEATHSIG)
        try:
            line = await self._reader.readline()
            if line:
                code = int(json.loads(line).get("exit", -9))
        except (OSError, ValueError):
            pass
        finally:
            self._writer.close()
            if not self._exit.done():
                self._exit.set_result(code)

    @property
    def returncode(self) -> int | None:
        return self._exit.result() if self._exit.done() else None

    async def wait(self) -> int:
        return await asyncio.shield(self._exit)

    def signal_group(self, sig: int) -> None:
        """Signal the child's whole process group (it leads its own session)."""
        if self.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)


class ForkServer:
    """A fork server preloaded with the modules its children will import.

    ``launch()`` starts it without waiting; ``spawn()`` waits for it to be ready,
    so callers can queue children while it is still importing.
    """

    def __init__(self, preload: Sequence[str] = (), preload_trees: Sequence[str] = ()) -> None:
        self.preload = list(dict.fromkeys(preload))
        self.preload_trees = list(dict.fromkeys(preload_trees))
        self.address = f"meshchaos-forkserver-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._proc: asyncio.subprocess.Process | None = None
        self._ready: asyncio.Future[None] | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def launch(self) -> asyncio.Future[None]:
        """Start the server in the background; the future completes once it serves."""
        if self._ready is None:
            self._ready = asyncio.ensure_future(self._start())
        return self._ready

    async def start(self) -> None:
        """Start the server and wait until it serves."""
        await asyncio.shield(self.launch())

    async def wait_ready(self) -> None:
        """Wait until a launched server serves (raises its start-up error)."""
        if self._ready is None:
            raise ProcessError("the fork server was not started")
        await asyncio.shield(self._ready)

    async def _start(self) -> None:
        args = [sys.executable, "-m", "localmesh.supervisor.forkserver",
                "--address", self.address, "--parent", str(os.getpid())]
        for name in self.preload:
            args += ["--preload", name]
        for name in self.preload_trees:
            args += ["--preload-tree", name]
        self._proc = await asyncio.create_subprocess_exec(
            *args, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            start_new_session=True)
        assert self._proc.stdout is not None
        try:
            line = await asyncio.wait_for(self._proc.stdout.readline(), _START_TIMEOUT)
        except TimeoutError as exc:
            await self.stop()
            raise ProcessError(f"the fork server did not start within {_START_TIMEOUT:.0f}s"
                               ) from exc
        if not line:
            code = await self._proc.wait()
            raise ProcessError(f"the fork server exited at start-up (exit code {code})")

    async def spawn(self, argv: Sequence[str], *, env: dict[str, str], cwd: Path,
                    python: bool, stdout: int, stderr: int,
                    extra_fds: Sequence[int] = ()) -> Child:
        """Fork a child running ``argv``; the caller keeps (and closes) its fds."""
        fds = [stdout, stderr, *extra_fds]
        try:
            proc = await self._serving()
            try:
                return await self._ask(argv, env, cwd, python, fds)
            except _ServerGone:
                # Its children saw it die (their exit pipes closed) before the loop reaped
                # it, so a restart can race its death: once reaped, a replacement serves.
                if not await _exits_soon(proc):
                    raise
            await self._serving()
            return await self._ask(argv, env, cwd, python, fds)
        except _ServerGone as gone:
            raise ProcessError(f"could not start {argv[0]!r}: {gone}") from None

    async def _serving(self) -> asyncio.subprocess.Process:
        """The running server, relaunched first if it died (killed, OOM)."""
        if self._ready is None:
            raise ProcessError("the fork server was not started")
        await asyncio.shield(self._ready)
        if self._proc is not None and self._proc.returncode is not None:
            # Its children died with it; a new one serves from now on.
            log.warning("fork server pid %d exited with %s; starting a new one",
                        self._proc.pid, self._proc.returncode)
            self._proc, self._ready = None, None
            await asyncio.shield(self.launch())
        if self._proc is None or self._proc.returncode is not None:
            raise ProcessError("the fork server is not running")
        return self._proc

    async def _ask(self, argv: Sequence[str], env: dict[str, str], cwd: Path, python: bool,
                   fds: list[int]) -> Child:
        """One spawn request (raises _ServerGone when the server is unreachable)."""
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            await loop.sock_connect(sock, "\0" + self.address)
            request = json.dumps({"argv": list(argv), "env": env, "cwd": str(cwd),
                                  "python": python}).encode() + b"\n"
            devnull = os.open(os.devnull, os.O_RDONLY)
            try:
                sent = socket.send_fds(sock, [request], [devnull, *fds])
            finally:
                os.close(devnull)
            if sent != len(request):
                await loop.sock_sendall(sock, request[sent:])
            reader, writer = await asyncio.open_unix_connection(sock=sock)
        except OSError as exc:
            sock.close()
            raise _ServerGone(f"could not reach the fork server: {exc}") from exc
        try:
            line = await reader.readline()
        except OSError as exc:  # reset: it died while reading the request
            line = b""
            gone = f"the fork server dropped the request: {exc}"
        else:
            gone = "the fork server closed the connection"
        if not line:
            writer.close()
            raise _ServerGone(gone)
        reply = json.loads(line)
        if "pid" not in reply:
            writer.close()
            raise ProcessError(f"could not start {' '.join(argv)!r}: {reply.get('error')}")
        return Child(int(reply["pid"]), reader, writer)

    async def stop(self) -> None:
        """Stop the server; it kills every child group it still has."""
        ready, self._ready = self._ready, None
        if ready is not None and not ready.done():
            ready.cancel()
            with contextlib.suppress(asyncio.CancelledError, ProcessError):
                await ready
        elif ready is not None and not ready.cancelled():
            ready.exception()  # retrieved: a failed start was reported to whoever waited
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.stdin is not None:
            proc.stdin.close()
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 5.0)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()


def launch_forkservers(objects: list[dict[str, Any]], *,
                       sidecar_module: str | None = None) -> dict[str, ForkServer]:
    """Launch the mesh's two fork servers for these manifest objects: ``proxy`` (the
    sidecar) and ``app`` (the Deployments' and Pods' ``-m`` packages). Needs a running
    loop; the processes start on its next turn."""
    from localmesh.supervisor.podspec import (
        PRELOAD_LIBRARIES,
        PROXY_LIBRARIES,
        PROXY_TREES,
        SIDECAR_MODULE,
        preload_trees,
    )

    templates = [(o.get("spec") or {}).get("template") or {} for o in objects
                 if o.get("kind") == "Deployment"]
    trees = preload_trees(templates + [o for o in objects if o.get("kind") == "Pod"])
    proxy_trees = list(PROXY_TREES)
    if sidecar_module is not None and sidecar_module != SIDECAR_MODULE:
        proxy_trees.append(sidecar_module)
    servers = {"proxy": ForkServer(PROXY_LIBRARIES, proxy_trees),
               "app": ForkServer(PRELOAD_LIBRARIES, trees)}
    for server in servers.values():
        server.launch()
    return servers
