"""Free loopback ports for the listeners of pods.

A port is chosen by binding port 0 (the kernel picks a free one) and the socket is
*held*, bound but not listening, until the process meant to listen there is about to
start. While held, no other bind(0) or outgoing connect() on the machine can take
the port; the gap left is the child's own start-up, not the mesh's.
"""

from __future__ import annotations

import socket
import time

__all__ = ["PortAllocator"]

# A port handed out is not handed out again for this long, even though it was released:
# the process it is meant for may not have bound it yet.
_QUARANTINE_S = 60.0


class PortAllocator:
    """Hands out loopback ports the kernel reports free, never the same one twice in a row."""

    def __init__(self) -> None:
        self._recent: dict[int, float] = {}
        self._held: dict[int, socket.socket] = {}

    def allocate(self) -> int:
        """A free port, held until :meth:`release`."""
        now = time.monotonic()
        self._recent = {p: t for p, t in self._recent.items() if now - t < _QUARANTINE_S}
        for _ in range(64):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
            if port not in self._recent:
                self._recent[port] = now
                self._held[port] = sock
                return port
            sock.close()
        raise OSError("no free loopback port found after 64 tries")

    def release(self, *ports: int) -> None:
        """Let go of held ports (right before the process that binds them starts)."""
        for port in ports:
            sock = self._held.pop(port, None)
            if sock is not None:
                sock.close()

    def release_all(self) -> None:
        self.release(*list(self._held))
