"""Free loopback ports for the listeners of pods."""

from __future__ import annotations

import socket
import time

__all__ = ["PortAllocator"]

# A port handed out is not handed out again for this long, even though we closed it:
# the process it is meant for may not have bound it yet.
_QUARANTINE_S = 60.0


class PortAllocator:
    """Hands out loopback ports the kernel reports free, never the same one twice in a row."""

    def __init__(self) -> None:
        self._recent: dict[int, float] = {}

    def allocate(self) -> int:
        now = time.monotonic()
        self._recent = {p: t for p, t in self._recent.items() if now - t < _QUARANTINE_S}
        for _ in range(64):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.bind(("127.0.0.1", 0))
                port = int(sock.getsockname()[1])
            if port not in self._recent:
                self._recent[port] = now
                return port
        raise OSError("no free loopback port found after 64 tries")
