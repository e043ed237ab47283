"""Random ids for the request path (trace/span ids, x-request-id) from one entropy buffer.

Four ids per request each cost a ``random.getrandbits`` call, big-integer
arithmetic and a formatting pass (~3 µs together); slicing them off a buffer
of random hex digits, refilled by one ``os.urandom`` call per ~100 requests,
costs a fraction of that. The buffer is dropped in a forked child (the
supervisor's fork server), so no two processes hand out the same ids.
"""

from __future__ import annotations

import os

__all__ = ["random_hex", "random_uuid4"]

_REFILL_BYTES = 4096  # 8192 hex digits
_buf = ""
_pos = 0
# uuid4 variant (RFC 9562 §4.1): the 17th hex digit is 8, 9, a or b.
_VARIANT = {d: "89ab"[int(d, 16) & 3] for d in "0123456789abcdef"}


def _reset_after_fork() -> None:
    global _buf, _pos
    _buf, _pos = "", 0


os.register_at_fork(after_in_child=_reset_after_fork)


def random_hex(n: int) -> str:
    """``n`` (≤ 8192) random lowercase hex digits."""
    global _buf, _pos
    start = _pos
    end = start + n
    if end > len(_buf):
        _buf = os.urandom(_REFILL_BYTES).hex()
        start, end = 0, n
    _pos = end
    return _buf[start:end]


def random_uuid4() -> str:
    """A random (version 4) UUID in its 8-4-4-4-12 text form."""
    h = random_hex(32)
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:]}"
