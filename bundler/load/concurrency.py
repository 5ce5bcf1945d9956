"""How many transactions a load has at the server at once, found as it goes (`--concurrency auto`, the default).

A load's best number in flight depends on the server (a 2-core Medplum peaks between 4 and 8, a hosted one
elsewhere), the round trip (at 20 ms more requests must be in flight to keep the server busy) and whoever else
uses it meanwhile, so `AutoConcurrency` looks for it while the load runs. It is the client's `Gate` (every
transaction enters it, and waits there while as many as allowed are at the server) with a controller on its
`leave`:

- rounds: a round ends once `ROUND` × the limit requests (at least `MIN_ROUND`) have come back since it began; its
  throughput is the work they carried (quota points: 100 an entry, so resources written) over its seconds, and
  its latency the median of theirs. A round in which fewer were in flight than allowed (the load had no more to
  send: a window's pre-check, the last threads) says nothing about the limit and is not judged;
- start: from `START` in flight, raised each round while throughput rises by `RISE` or more: doubled while
  throughput grows as fast as the limit, by less as it grows less (near the knee). The first time it stays level
  (within `LEVEL`), twice as many are tried once more: a plateau may be a step before more (the kit's real Medplum
  did 5% more at 8 than at 4, then 12% more at 16), and the hill climb's steps of one are each within the noise.
  Once it neither rises nor looks past a level step, the limit is the best one before, or halfway when
  throughput stayed level (the knee lies between);
- then a hill climb on a table of each limit's throughput (an average of its rounds, forgotten after `STALE`
  rounds, as the server fills or others come and go): every `PROBE` rounds the limit tries a neighbour not
  measured lately (one more, or one less, in turn) and moves to one more if it did `BETTER` or more, to one
  less if it did as well (within `SLACK`: as much done with less waiting at the server), but below `FEW` only if it
  did `BETTER` too (a few waiting at the server are what keeps it busy while the client reads, builds and
  journals; on a plateau the server's noise would otherwise walk the limit down past it). While many of those in
  flight only wait at the server (Vegas's estimate: the limit less the throughput × the least latency seen), it
  tries one less every round;
- latency: a round whose median latency is `CLIMB` × what this limit had (the server slowed down: it fills, or
  someone else is at it) takes a quarter off the limit, and forgets what it knew of it and above;
- back off: a request refused for load (429), failed by the server (5xx), lost (a timeout) or rolled back because
  it could not be serialized with other writes (409) halves the limit at once, once per round trip (the failures
  of requests sent before the halving do not halve it again), and the limits above are forgotten; it grows
  again only by the hill climb, no sooner than `HOLD` rounds later;
- the quota: when the server announces one (`RateLimit` headers; `quota` says its rate in points a second, the
  `Pacer` spends it evenly), no more are let in than spend it at the latency seen (rate × latency ÷ points a
  request, and one more): more in flight would only wait for the pacer.

Every input is a completed request (`leave`) and the time (`clock`), so a test feeds it latencies and
throughputs on a fake clock and sees what it does. `settled` is the limit held longest, for the summary.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from ..medplum.ratelimit import Gate

AUTO: Literal["auto"] = "auto"
"""`concurrency="auto"`: the load finds its number in flight (this module); a number fixes it."""
Concurrency = int | Literal["auto"]
"""What `load`'s `concurrency` takes."""
MOST = 32
"""The most in flight `auto` tries: the load's worker threads and connections."""
OVERLOAD = frozenset({429, 500, 502, 503, 504})
"""Statuses that say the server has more than it can take: the limit halves (a 409 serialization failure too)."""


@dataclass
class _Round:
    started: float
    last: float  # when `inside` last changed (the area below it is summed up to here)
    completed: int = 0
    work: float = 0.0
    area: float = 0.0  # ∫ requests in flight dt: ÷ seconds, how many were in flight on average
    latencies: list[float] = field(default_factory=list)


class AutoConcurrency(Gate):
    """`Gate` whose limit follows the server: see the module docstring. `most`: the most it lets in (the pool's
    size); `quota`: the server's quota in points a second, or None while none is known; `clock`: monotonic seconds.
    """

    START = 4
    ROUND = 3
    MIN_ROUND = 12
    RISE = 0.10
    LEVEL = 0.03
    BETTER = 0.03
    SLACK = 0.01
    FEW = 4
    PROBE = 3
    HOLD = 2
    STALE = 30
    SMOOTH = 0.5
    CLIMB = 2.0

    def __init__(self, most: int = MOST, *, clock: Callable[[], float] = time.monotonic,
                 quota: Callable[[], float | None] | None = None, start: int | None = None) -> None:
        super().__init__(most)
        self._clock = clock
        self._quota = quota
        self.limit = float(min(self.most, start or self.START))
        self.starting = True  # doubling each round while throughput rises
        self._before: tuple[int, float] | None = None  # (limit, throughput) of the round before, while starting
        self._looked = False  # whether the start has looked past a level step once (twice as many, all the same)
        self._table: dict[int, tuple[float, float, int]] = {}  # limit → (throughput, latency, round measured)
        self._rounds = 0
        self._stay = 0  # rounds at this limit since it last moved
        self._probe_up = True
        self._probing: int | None = None  # the limit a probe came from
        self._hold = 0  # rounds left before the limit may grow again (after a back-off)
        self._decreased = -math.inf  # when the limit last halved
        self._held: dict[int, float] = {}  # limit → seconds held, for `settled`
        self._since = clock()
        self.backoffs = 0
        self._round = self._new_round()

    # --- the gate --------------------------------------------------------------------------------------

    def _entering(self) -> None:
        self._account(self._clock())

    def leave(self, *, conflict: bool, status: int | None = 200, seconds: float = 0.0, work: float = 0.0) -> None:
        with self._cond:
            now = self._clock()
            self._account(now)
            self.inside -= 1
            if conflict or status is None or status in OVERLOAD:
                if now - seconds >= self._decreased:  # sent after the last halving: a new sign of overload
                    self._back_off(now)
            else:
                r = self._round
                r.completed += 1
                if status < 300:
                    r.work += work
                r.latencies.append(seconds)
                if r.completed >= max(self.MIN_ROUND, self.ROUND * int(self.limit)):
                    self._judge(now)
            self._cond.notify_all()

    # --- what it settled at ----------------------------------------------------------------------------

    @property
    def settled(self) -> int:
        """The limit held longest so far."""
        held = dict(self._held)
        held[int(self.limit)] = held.get(int(self.limit), 0.0) + self._clock() - self._since
        return max(held, key=lambda n: (held[n], n))

    @property
    def tried(self) -> tuple[int, int]:
        """The least and most it let in, so far."""
        seen = [*self._held, int(self.limit)]
        return min(seen), max(seen)

    def describe(self) -> str:
        low, high = self.tried
        span = f"; tried {low}-{high}" if low != high else ""
        backoffs = f"; backed off {self.backoffs}×" if self.backoffs else ""
        return f"auto: settled at {self.settled}{span}{backoffs}"

    # --- the controller ----------------------------------------------------------------------------------

    def _new_round(self) -> _Round:
        now = self._clock()
        return _Round(now, now)

    def _account(self, now: float) -> None:
        r = self._round
        r.area += self.inside * max(0.0, now - r.last)
        r.last = now

    def _set(self, limit: float) -> None:
        now = self._clock()
        old = int(self.limit)
        self._held[old] = self._held.get(old, 0.0) + now - self._since
        self._since = now
        self.limit = max(1.0, min(float(self.most), limit))
        if int(self.limit) != old:
            self._stay = 0

    def _back_off(self, now: float) -> None:
        self.backoffs += 1
        self._decreased = now
        before = int(self.limit)
        self._set(self.limit / 2)
        self.starting, self._before, self._probing = False, None, None
        for n in [n for n in self._table if n >= before]:
            del self._table[n]
        self._hold = self.HOLD
        self._round = self._new_round()

    def _judge(self, now: float) -> None:
        r = self._round
        self._round = self._new_round()
        seconds = now - r.started
        limit = int(self.limit)
        latency = statistics.median(r.latencies or [0.0])
        cap = self._quota_cap(latency, r.work / max(1, r.completed))
        if seconds > 0 and r.area / seconds >= 0.75 * limit:  # else the load had no more to send: not judged
            self._rounds += 1
            self._stay += 1
            throughput = r.work / seconds
            old = self._known(limit)
            if old is not None and not self.starting and latency > self.CLIMB * old[1]:
                self._climbed(limit)  # the server slowed down at the same limit: someone else is at it
            else:
                if old is not None:
                    throughput = self.SMOOTH * throughput + (1 - self.SMOOTH) * old[0]
                    latency = self.SMOOTH * latency + (1 - self.SMOOTH) * old[1]
                self._table[limit] = (throughput, latency, self._rounds)
                if self.starting:
                    self._start(limit, throughput, cap)
                else:
                    self._climb(limit, cap)
        if int(self.limit) > cap:
            self._set(cap)

    def _climbed(self, limit: int) -> None:
        """The latency at this limit climbed by `CLIMB` or more: a quarter fewer in flight, what was known of it
        and above forgotten (measured again as the climb goes on)."""
        self._set(min(limit - 1, limit * 0.75))
        self._probing = None
        for n in [n for n in self._table if n >= limit]:
            del self._table[n]

    def _start(self, limit: int, throughput: float, cap: int) -> None:
        before = self._before  # (the best limit of the start so far, and its throughput)
        top = min(self.most, cap)
        if before is None or throughput >= before[1] * (1 + self.RISE):
            self._looked = False
            if limit >= top:
                self.starting = False
            else:  # twice as many while twice as much gets done; fewer more as the gain shrinks (near the knee)
                gain = 1.0 if before is None else min(1.0, (throughput / before[1] - 1) / (limit / before[0] - 1))
                self._before = (limit, throughput)
                self._set(max(limit + 1, round(limit * (1 + gain))))
            return
        if throughput >= before[1] * (1 - self.LEVEL) and not self._looked and limit < top:
            self._looked = True  # level: a plateau, or a step before more (a real Medplum did 5% more at 8 than
            self._set(min(top, limit * 2))  # at 4, and 12% more at 16 than at 8): once, twice as many
            return
        self.starting = False
        if throughput < before[1] * (1 - self.LEVEL):
            self._set(before[0])
        elif throughput < before[1] * (1 + self.LEVEL):
            self._set((before[0] + limit) // 2)

    def _climb(self, limit: int, cap: int) -> None:
        if self._hold > 0:
            self._hold -= 1
            return
        here = self._known(limit)
        assert here is not None
        if self._probing is not None:  # a probe's round: stay if it did better, else go back
            came = self._probing
            self._probing = None
            there = self._known(came)
            if there is not None and not self._better(here, there, fewer=limit if limit < came else None):
                self._set(came)
            return
        for n in (limit - 1, limit + 1):  # a neighbour known to do better
            if 1 <= n <= min(self.most, cap) and (other := self._known(n)) is not None \
                    and self._better(other, here, fewer=n if n < limit else None):
                self._set(n)
                return
        queued = self._queued(limit, here)
        if self._stay >= self.PROBE or queued:  # try a neighbour not measured lately: one less first when queued
            up = self._probe_up and not queued
            for n in (limit + 1, limit - 1) if up else (limit - 1, limit + 1):
                if 1 <= n <= min(self.most, cap) and self._known(n) is None:
                    self._probe_up = n < limit
                    self._probing = limit
                    self._set(n)
                    return

    def _queued(self, limit: int, here: tuple[float, float]) -> bool:
        """Whether many of `limit` in flight only wait at the server: requests a second × the least latency known
        (as many as keep it busy, by Little's law) is a third fewer than the limit, or more (Vegas's estimate)."""
        least = min((row[1] for n in self._table if (row := self._known(n)) is not None and row[1] > 0),
                    default=0.0)
        if least <= 0 or here[1] <= 0:
            return False
        busy = limit * least / here[1]  # (requests a second is limit ÷ latency)
        return limit - busy >= max(2.0, limit / 3)

    def _known(self, limit: int) -> tuple[float, float] | None:
        row = self._table.get(limit)
        if row is None or self._rounds - row[2] > self.STALE:
            return None
        return row[0], row[1]

    def _better(self, a: tuple[float, float], b: tuple[float, float], *, fewer: int | None) -> bool:
        """Whether throughput `a[0]` does better than `b[0]`: by `BETTER` or more (less is noise); for `fewer` in
        flight (the limit `a` was measured at), as well within `SLACK` (as much done with less waiting at the
        server), if that is `FEW` or more. (On a 2-core machine running both, 2 in flight did 8% less than 4, and
        single rounds' noise let `SLACK` walk there.)"""
        if fewer is not None and fewer >= self.FEW:
            return a[0] >= b[0] * (1 - self.SLACK)
        return a[0] >= b[0] * (1 + self.BETTER)

    def _quota_cap(self, latency: float, work: float) -> int:
        """The most in flight that the quota lets work: its rate × a request's latency ÷ its points, and one more
        (`most` when no quota is known)."""
        rate = self._quota() if self._quota is not None else None
        if not rate or work <= 0 or latency <= 0:
            return self.most
        return max(1, min(self.most, math.ceil(rate * latency / work) + 1))
