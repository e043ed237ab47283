"""Chaos Mesh network faults emulated in user space on this pod's egress.

tc netem shapes egress only (docs/fidelity.md §5.2), so the sidecar applies the
rules to what this pod *sends*: its outbound requests and the responses it
returns to callers. Models (docs/architecture.md "Fault rules"):

- delay/jitter/correlation: a timed hold that is never shorter than asked (the
  clock is re-checked after the timer fires) and not late behind a busy loop:
  pending holds sit in a deadline heap that the request path polls on every
  I/O callback (:meth:`FaultEngine.run_due`), a loop timer being only the
  fallback for an idle loop, whose timers fire after all the I/O callbacks of
  an iteration and only to the millisecond;
- loss/corrupt: each send is lost with the probability and resent after the
  Linux RTO of 200 ms, doubling per consecutive loss; 100 % stalls;
- duplicate: no latency effect;
- partition: a silent black hole (new connections never complete, established
  ones stall, nothing is refused);
- bandwidth: a token bucket on bytes sent.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import random
import time
from collections.abc import Callable

from localmesh.sidecar.config import FaultRule
from localmesh.sidecar.overshoot import OvershootRing

__all__ = ["FaultEngine", "Hold", "hold"]

log = logging.getLogger("localmesh.sidecar.faults")

RTO_S = 0.2
_MAX_RTO_S = 120.0


async def hold(seconds: float) -> None:
    """Sleep at least ``seconds``: the loop may wake a timer early, so re-check and top up."""
    if seconds <= 0:
        return
    deadline = time.monotonic() + seconds
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return
        await asyncio.sleep(left)


async def stall() -> None:
    """Wait until cancelled: a black-holed or fully lost send never completes."""
    await asyncio.get_running_loop().create_future()


class Hold:
    """One pending hold: ``callback`` runs once, no earlier than ``deadline``
    (``time.monotonic()``), unless cancelled first."""

    __slots__ = ("callback", "cancelled", "deadline")

    def __init__(self, deadline: float, callback: Callable[[], None]) -> None:
        self.deadline = deadline
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class _RuleState:
    """Per-rule memory: netem's correlated random values and the token bucket."""

    __slots__ = ("last_delay_rand", "last_loss_rand", "rule", "tokens", "tokens_at")

    def __init__(self, rule: FaultRule) -> None:
        self.rule = rule
        self.last_delay_rand = random.random()
        self.last_loss_rand = random.random()
        self.tokens = rule.bucket_bytes
        self.tokens_at = time.monotonic()


def _correlated(last: float, correlation_pct: float) -> float:
    """netem's correlated uniform: next = c·last + (1-c)·fresh."""
    c = min(max(correlation_pct / 100.0, 0.0), 1.0)
    return c * last + (1.0 - c) * random.random()


class FaultEngine:
    """The fault rules of one sidecar and the holds they cause."""

    def __init__(self) -> None:
        self._states: list[_RuleState] = []
        # Some rule is installed (read on every request: a plain attribute, not a property).
        self.active = False
        self.holds = 0
        self.hold_seconds_total = 0.0
        self.last_hold_s = 0.0
        self.overshoot = OvershootRing()  # actual - asked per hold: the accuracy record
        # (deadline, sequence, hold): a heap of the holds still pending.
        self._holds: list[tuple[float, int, Hold]] = []
        self._seq = itertools.count()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None

    def set_rules(self, rules: tuple[FaultRule, ...]) -> None:
        old = {s.rule: s for s in self._states}
        self._states = [old.get(r) or _RuleState(r) for r in rules]
        self.active = bool(self._states)


    def affects(self, peer: str | None) -> bool:
        """Some rule applies to traffic to/from ``peer`` (else its sends are never held)."""
        return any(s.rule.applies_to(peer) for s in self._states)

    def partitioned(self, peer: str | None) -> bool:
        return any(s.rule.action == "partition" and s.rule.applies_to(peer) for s in self._states)

    def delay_for(self, peer: str | None, nbytes: int) -> float | None:
        """Seconds this send is held, or ``None`` if it never completes (stall)."""
        total = 0.0
        for s in self._states:
            rule = s.rule
            if not rule.applies_to(peer):
                continue
            if rule.action == "partition":
                return None
            if rule.latency_ms or rule.jitter_ms:
                total += self._delay(s)
            lost_pct = rule.loss_percent + rule.corrupt_percent
            if lost_pct > 0:
                extra = self._loss(s, min(lost_pct, 100.0))
                if extra is None:
                    return None
                total += extra
            if rule.rate_bytes_per_s > 0:
                total += self._bandwidth(s, nbytes)
        return total

    def delay_only(self, peer: str | None) -> bool:
        """Every rule that applies to ``peer`` only delays (no loss, bandwidth or partition):
        its sends always complete, after :meth:`delay_for` seconds."""
        for s in self._states:
            rule = s.rule
            if rule.applies_to(peer) and (
                    rule.action == "partition" or rule.loss_percent + rule.corrupt_percent > 0
                    or rule.rate_bytes_per_s > 0):
                return False
        return True

    async def egress(self, peer: str | None, nbytes: int) -> None:
        """Hold one send to ``peer`` as the matching rules say (stall = wait until cancelled)."""
        delay = self.delay_for(peer, nbytes)
        if delay is None:
            await stall()
            return
        if delay > 0:
            loop = asyncio.get_running_loop()
            start = time.monotonic()
            fut: asyncio.Future[None] = loop.create_future()
            pending = self.after(loop, start, delay,
                                 lambda: None if fut.done() else fut.set_result(None))
            try:
                await fut
            except asyncio.CancelledError:
                pending.cancel()
                raise
            self.record_hold(delay, start)

    def record_hold(self, asked_s: float, start: float) -> None:
        """A hold asked for ``asked_s`` that began at ``start`` (monotonic) ends now."""
        self.holds += 1
        self.last_hold_s = time.monotonic() - start
        self.hold_seconds_total += self.last_hold_s
        self.overshoot.record(asked_s, self.last_hold_s)

    # -- the hold heap ------------------------------------------------------------------

    def after(self, loop: asyncio.AbstractEventLoop, start: float, seconds: float,
              callback: Callable[[], None]) -> Hold:
        """Run ``callback`` once ``seconds`` have passed since ``start`` (monotonic), as
        soon as the request path polls (:meth:`run_due`) or the fallback timer fires."""
        pending = Hold(start + seconds, callback)
        heapq.heappush(self._holds, (pending.deadline, next(self._seq), pending))
        self._loop = loop
        self._arm()
        return pending

    def run_due(self) -> None:
        """Release every hold whose deadline has passed; cheap when none is pending."""
        holds = self._holds
        if not holds:
            return
        now = time.monotonic()
        while holds and holds[0][0] <= now:
            pending = heapq.heappop(holds)[2]
            if pending.cancelled:
                continue
            pending.cancelled = True  # at most once
            try:
                pending.callback()
            except Exception:  # one request's bug must not strand the others' holds
                log.exception("releasing a fault hold failed")

    def _arm(self) -> None:
        """Keep a loop timer at the earliest pending deadline (the idle loop's wake-up)."""
        holds, loop = self._holds, self._loop
        if not holds or loop is None:
            return
        first = holds[0][0]
        if self._timer is not None:
            if self._timer_at <= first:
                return
            self._timer.cancel()
        self._timer_at = first
        # The loop's timers are millisecond ones and may fire early: _on_timer re-arms.
        self._timer = loop.call_later(max(first - time.monotonic(), 0.0), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self.run_due()
        self._arm()

    @staticmethod
    def _delay(s: _RuleState) -> float:
        rule = s.rule
        if not rule.jitter_ms:
            return rule.latency_ms / 1000.0
        s.last_delay_rand = _correlated(s.last_delay_rand, rule.delay_correlation)
        ms = rule.latency_ms + (2.0 * s.last_delay_rand - 1.0) * rule.jitter_ms
        return max(ms, 0.0) / 1000.0

    @staticmethod
    def _loss(s: _RuleState, pct: float) -> float | None:
        if pct >= 100.0:
            return None
        waited, rto = 0.0, RTO_S
        while True:
            s.last_loss_rand = _correlated(s.last_loss_rand, s.rule.loss_correlation)
            if s.last_loss_rand * 100.0 >= pct:
                return waited
            waited += rto
            rto = min(rto * 2, _MAX_RTO_S)

    @staticmethod
    def _bandwidth(s: _RuleState, nbytes: int) -> float:
        rule = s.rule
        now = time.monotonic()
        cap = max(rule.bucket_bytes, 1.0)
        s.tokens = min(cap, s.tokens + (now - s.tokens_at) * rule.rate_bytes_per_s)
        s.tokens_at = now
        s.tokens -= nbytes
        if s.tokens >= 0:
            return 0.0
        return -s.tokens / rule.rate_bytes_per_s
