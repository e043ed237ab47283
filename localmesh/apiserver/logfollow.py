"""``follow=true`` on pods/log: stream a container's log as it grows (``kubectl logs -f``).

Written against the LogSource protocol only: the log is re-read every 250 ms with
timestamps and lines newer than the last one sent are streamed. The stream ends
when the client leaves, the pod is gone, or the server shuts down.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from aiohttp import web

from localmesh.apiserver.logsource import LogSource
from localmesh.errors import ApiError
from localmesh.podlogs import parse_timestamp

__all__ = ["follow_log"]

_POLL_S = 0.25
_WINDOW_S = 10  # re-read this much history each poll: far more than one poll's worth


def _split(text: str) -> list[tuple[int, str]]:
    """(epoch ns, timestamped line) pairs from timestamped log text."""
    pairs = []
    for line in text.splitlines():
        with contextlib.suppress(ValueError):
            pairs.append((parse_timestamp(line.partition(" ")[0]), line))
    return pairs


async def follow_log(request: web.Request, logs: LogSource, namespace: str, pod: str,
                     container: str, *, first: str, timestamps: bool,
                     done: Callable[[], bool]) -> web.StreamResponse:
    """Send ``first`` (timestamped text of the initial read), then new lines until done."""
    response = web.StreamResponse(headers={"Content-Type": "text/plain"})
    await response.prepare(request)
    last = 0

    async def send(pairs: list[tuple[int, str]]) -> None:
        nonlocal last
        fresh = [line for stamp, line in pairs if stamp > last]
        if not fresh:
            return
        last = max(stamp for stamp, _ in pairs)
        if not timestamps:
            fresh = [line.partition(" ")[2] for line in fresh]
        await response.write("".join(line + "\n" for line in fresh).encode())

    with contextlib.suppress(ConnectionResetError):
        await send(_split(first))
        while not done() and request.transport is not None \
                and not request.transport.is_closing():  # aiohttp does not cancel us
            await asyncio.sleep(_POLL_S)
            try:
                text = logs.read(namespace, pod, container, since_seconds=_WINDOW_S,
                                 tail_lines=None, timestamps=True, previous=False)
            except ApiError:  # the pod or its log is gone: the stream ends, as kubelet's
                break
            await send(_split(text))
        await response.write_eof()
    return response
