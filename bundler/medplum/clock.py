"""Time, as the client, the loader and the pacer see it: one `Clock` they are given, so that a test runs them on a
`FakeClock` that moves only when they wait (a quarantine of a minute passes at once) and the system's otherwise."""

from __future__ import annotations

import threading
import time
from typing import Protocol

__all__ = ["SYSTEM_CLOCK", "Clock", "FakeClock", "SystemClock"]


class Clock(Protocol):
    """What the code that sends and waits asks of time."""

    def time(self) -> float:
        """Now, in epoch seconds (what the journal stores: a quarantine outlives the process)."""

    def monotonic(self) -> float:
        """Now, for measuring intervals within this process."""

    def sleep(self, seconds: float) -> None:
        """Wait `seconds`."""

    def wait(self, event: threading.Event, seconds: float) -> bool:
        """Wait until `event` is set or `seconds` have passed; whether it is set."""


class SystemClock:
    """The system's time."""

    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)

    def wait(self, event: threading.Event, seconds: float) -> bool:
        return event.wait(seconds)


SYSTEM_CLOCK = SystemClock()


class FakeClock:
    """A clock for tests: it stands still until someone waits on it, and a wait moves it on at once by as long as
    was asked (thread-safe; every thread shares the one time). `slept` adds up the seconds waited."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self._now = start
        self._lock = threading.Lock()
        self.slept = 0.0

    def time(self) -> float:
        with self._lock:
            return self._now

    def monotonic(self) -> float:
        return self.time()

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self._now += max(0.0, seconds)
            self.slept += max(0.0, seconds)

    def wait(self, event: threading.Event, seconds: float) -> bool:
        if not event.is_set():
            self.sleep(seconds)
        return event.is_set()

    def advance(self, seconds: float) -> None:
        """Move the clock on by `seconds` (without counting them as slept)."""
        with self._lock:
            self._now += seconds
