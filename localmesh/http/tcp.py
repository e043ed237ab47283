"""Socket tweaks for HTTP/1.1 over loopback.

Delayed ACKs meet Nagle: a peer that writes a message in two segments (Python's
``http.server`` sends headers, then the body) waits for the first segment's ACK
before sending the second, while Linux, having seen a request/response pattern,
delays that ACK by up to 40 ms. Whenever a message is still incomplete after the
bytes we just read, ask the kernel to ACK at once (``TCP_QUICKACK``, which Linux
resets by itself, hence "after each read").
"""

from __future__ import annotations

import contextlib
import socket
from typing import Any

__all__ = ["quickack"]

_QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)


def quickack(sock: Any) -> None:
    """ACK what has been received now instead of waiting to piggyback it (Linux only)."""
    if _QUICKACK is None or sock is None:
        return
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)
