"""Shared pieces of the benchmarks: synthetic thread specs and a timer."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from bundler.testing.strategies import sample_specs


def synthetic_specs(threads: int, messages_per_thread: int, *, seed: int = 1) -> list[dict[str, Any]]:
    """`threads` specs of `messages_per_thread` messages each, as plain data, reproducible by seed."""
    return sample_specs(threads, messages_per_thread, seed=seed, prefix="bench")


def best_of(repeat: int, func: Callable[[], Any]) -> float:
    """The shortest wall time of `repeat` runs of `func`, in seconds."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        func()
        best = min(best, time.perf_counter() - t0)
    return best


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)
