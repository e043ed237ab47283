"""Chaos Mesh network faults emulated in user space on this pod's egress.

tc netem shapes egress only (mesh-semantics.md §5.2), so the sidecar applies the
rules to what this pod *sends*: its outbound requests and the responses it
returns to callers. Models (docs/architecture.md "Fault rules"):

- delay/jitter/correlation: a timed hold that is never shorter than asked (the
  clock is re-checked after the timer fires);
- loss/corrupt: each send is lost with the probability and resent after the
  Linux RTO of 200 ms, doubling per consecutive loss; 100 % stalls;
- duplicate: no latency effect;
- partition: a silent black hole (new connections never complete, established
  ones stall, nothing is refused);
- bandwidth: a token bucket on bytes sent.
"""

from __future__ import annotations

import asyncio
import random
import time

from localmesh.sidecar.config import FaultRule
from localmesh.sidecar.overshoot import OvershootRing

__all__ = ["FaultEngine", "hold"]

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
        self.holds = 0
        self.hold_seconds_total = 0.0
        self.last_hold_s = 0.0
        self.overshoot = OvershootRing()  # actual - asked per hold: the accuracy record

    def set_rules(self, rules: tuple[FaultRule, ...]) -> None:
        old = {s.rule: s for s in self._states}
        self._states = [old.get(r) or _RuleState(r) for r in rules]

    @property
    def active(self) -> bool:
        return bool(self._states)

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

    async def egress(self, peer: str | None, nbytes: int) -> None:
        """Hold one send to ``peer`` as the matching rules say (stall = wait until cancelled)."""
        delay = self.delay_for(peer, nbytes)
        if delay is None:
            await stall()
            return
        if delay > 0:
            start = time.monotonic()
            await hold(delay)
            self.holds += 1
            self.last_hold_s = time.monotonic() - start
            self.hold_seconds_total += self.last_hold_s
            self.overshoot.record(delay, self.last_hold_s)

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
