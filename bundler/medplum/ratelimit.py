"""Pacing by the server's quota, before a 429 happens; and `Gate`: fewer transactions at once while they fail to
serialize.

Medplum sends `RateLimit: "requests";r=<left>;t=<seconds to reset>, "fhirInteractions";r=<left>;t=<s>`
(sometimes as two header lines) on every FHIR response. A write costs 100 points per entry, a search
20. The `Pacer` spreads what is left of the window evenly over the time left in it, so a long load runs
at the quota rate instead of bursting into 429s; without the header there is no pacing at all.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from ..vocabulary import DEFAULT_QUOTA_PER_MINUTE, QUOTA_POLICY

_PART = re.compile(r'"?([A-Za-z0-9_-]+)"?\s*((?:;\s*[a-z]+\s*=\s*[0-9.]+\s*)+)')
_PARAM = re.compile(r";\s*([a-z]+)\s*=\s*([0-9.]+)")


@dataclass(frozen=True, slots=True)
class Limit:
    """One policy of a RateLimit header: `remaining` units left, `reset` seconds until the window renews."""

    name: str
    remaining: float
    reset: float


def parse_ratelimit(values: Iterable[str]) -> dict[str, Limit]:
    """All policies in the RateLimit header lines `values` (unknown or broken parts are skipped)."""
    out: dict[str, Limit] = {}
    for value in values:
        for m in _PART.finditer(value):
            params = dict(_PARAM.findall(m.group(2)))
            if "r" in params and "t" in params:
                out[m.group(1)] = Limit(m.group(1), float(params["r"]), float(params["t"]))
    return out


class Pacer:
    """Shared by every worker: `wait(cost)` before a request, `done(cost)` after it, `update(limits)` with
    each response's RateLimit header.

    Points are spent no faster than what is left of the window over the time left in it, counting the
    points of requests still in flight; a request that costs more than is left waits for the window to
    renew instead of earning a 429. A 429 (`blocked(seconds)`) stops every worker until the window renews.
    """

    def __init__(self, *, clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep,
                 policy: str = QUOTA_POLICY) -> None:
        self._clock = clock
        self._sleep = sleep
        self._policy = policy
        self._lock = threading.Lock()
        self._rate: float | None = None  # points per second we may spend; None: no header seen
        self._remaining: float | None = None  # points left in the window, as last told
        self._renews = 0.0  # when the window renews
        self._in_flight = 0.0  # points of requests sent and not yet answered
        self._most = 0.0  # the most points ever left: about a whole window's worth
        self._next = 0.0  # the earliest moment the next request may start
        self._blocked_until = 0.0
        self.waited = 0.0  # total seconds workers spent waiting, for the report

    @property
    def active(self) -> bool:
        """True once a server has told us its quota."""
        return self._rate is not None

    @property
    def rate(self) -> float | None:
        """Points a second the quota lets us spend now (None: no quota told)."""
        return self._rate

    def update(self, limits: dict[str, Limit]) -> None:
        with self._lock:
            now = self._clock()
            for limit in limits.values():  # any policy spent: nobody sends until it renews
                if limit.remaining <= 0:
                    self._blocked_until = max(self._blocked_until, now + limit.reset)
            ours = limits.get(self._policy)
            if ours is not None:
                # the server rounds the seconds up: half a second less is the better guess
                left = max(ours.reset - 0.5, 0.5)
                self._remaining, self._renews = ours.remaining, now + left
                self._most = max(self._most, ours.remaining)
                if ours.remaining > 0:
                    self._rate = ours.remaining / left

    def blocked(self, seconds: float) -> None:
        """The server refused us (429): nobody sends until `seconds` from now."""
        with self._lock:
            self._blocked_until = max(self._blocked_until, self._clock() + max(seconds, 0.5))

    def wait(self, cost: float) -> float:
        """Sleep until a request of `cost` points may start, and count it in flight; returns seconds slept."""
        slept = 0.0
        while True:
            with self._lock:
                now = self._clock()
                start = max(now, self._next, self._blocked_until)
                if (self._remaining is not None and now < self._renews and cost <= self._most
                        and cost > self._remaining - self._in_flight):
                    start = max(start, self._renews)  # not enough left in this window: wait for the next
                if start <= now:
                    self._in_flight += cost
                    if self._remaining is not None and now >= self._renews:
                        self._remaining = None  # a new window: what is left is unknown until the next answer
                    if self._rate:
                        self._next = now + cost / self._rate
                    self.waited += slept
                    return slept
            delay = min(start - now, 5.0)
            self._sleep(delay)
            slept += delay

    def done(self, cost: float) -> None:
        """A request of `cost` points was answered (its points are in the next header's count)."""
        with self._lock:
            self._in_flight = max(0.0, self._in_flight - cost)

    def seconds_for(self, points: float, *, quota_per_minute: float = DEFAULT_QUOTA_PER_MINUTE) -> float:
        """How long `points` take at the server's pace (or at `quota_per_minute` if none is known)."""
        rate = self._rate or quota_per_minute / 60
        return points / rate


class Gate:
    """How many transactions may be at the server at once: every worker's (`most`) until some fail to serialize
    (a 409 the client sends again), then half as many at each such failure, and one more again only after
    `RECOVERY` × as many successes as are let in (additive increase, multiplicative decrease, as TCP does on a
    congested link). A Medplum runs transactions with conditional entries serializable, and on its Postgres two
    of them at once fail far more often than not (seen on 5.0.10: 43 of 100 threads' transactions answered 409 at
    4 workers; Medplum had already tried each twice). Let fewer in and they stop failing: 100 strict threads took
    11-15 s so, 14-17 s one at a time, 23-25 s with every worker retrying (4 workers, 3 rounds each)."""

    RECOVERY = 16

    def __init__(self, most: int) -> None:
        self.most = max(1, most)
        self.limit = float(self.most)
        self.inside = 0
        self._cond = threading.Condition()

    def enter(self) -> None:
        with self._cond:
            while self.inside >= int(self.limit):
                self._cond.wait()
            self._entering()
            self.inside += 1

    def _entering(self) -> None:
        """Called (under the gate's lock) as a transaction is let in, before it counts as inside: a subclass's
        hook (`load.concurrency.AutoConcurrency` accounts the time at each number inside)."""

    def leave(self, *, conflict: bool, status: int | None = 200, seconds: float = 0.0, work: float = 0.0) -> None:
        """A transaction came back: `conflict` (a 409 serialization failure), its `status` (None: no answer), its
        `seconds` at the server and `work` (quota points): what `load.concurrency.AutoConcurrency` steers by."""
        with self._cond:
            self.inside -= 1
            if conflict:
                self.limit = max(1.0, self.limit / 2)
            else:
                self.limit = min(float(self.most), self.limit + 1 / (self.RECOVERY * self.limit))
            self._cond.notify_all()
