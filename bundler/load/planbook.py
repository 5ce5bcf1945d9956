"""What a dry run would send (`PlanBook`): requests and quota points, added up from every thread's plan."""

from __future__ import annotations

import threading

from ..vocabulary import SEARCH_POINTS, WRITE_POINTS
from .plan import RequestLimits


class PlanBook:
    """What a dry run would send, added up from every thread (thread-safe); `alt` is the same for a project
    without atomic transactions, when it is not known which kind the project is."""

    def __init__(self, alt: RequestLimits | None) -> None:
        self.alt = alt
        self.requests = self.points = self.searches = 0
        self.requests_alt = self.points_alt = 0
        self._lock = threading.Lock()

    def searched(self, searches: int, points: int = SEARCH_POINTS) -> None:
        with self._lock:
            self.searches += searches
            self.points += searches * points
            self.points_alt += searches * points

    def sends(self, parts: list[list[int]], alt_parts: list[list[int]] | None, *, conditional: bool) -> None:
        create = WRITE_POINTS + (SEARCH_POINTS if conditional else 0)
        with self._lock:
            self.requests += len(parts)
            self.points += create * sum(map(len, parts))
            if alt_parts is not None:
                self.requests_alt += len(alt_parts)
                self.points_alt += (WRITE_POINTS + SEARCH_POINTS) * sum(map(len, alt_parts))

    def updates(self, parts: list[list[int]]) -> None:
        with self._lock:
            for bucket in ("requests", "requests_alt"):
                setattr(self, bucket, getattr(self, bucket) + len(parts))
            self.points += WRITE_POINTS * sum(map(len, parts))
            self.points_alt += WRITE_POINTS * sum(map(len, parts))
