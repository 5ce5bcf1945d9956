"""Shared pieces of the benchmarks: synthetic thread specs and a timer."""

from __future__ import annotations

import datetime as dt
import random
import time
from collections.abc import Callable
from typing import Any

WORDS = ("results", "ready", "thanks", "appointment", "tomorrow", "lab", "specimen", "— ", "merci", "😀", "dose")


def synthetic_specs(threads: int, messages_per_thread: int, *, seed: int = 1) -> list[dict[str, Any]]:
    """`threads` specs of `messages_per_thread` messages each, as plain data, reproducible by seed."""
    rng = random.Random(seed)
    start = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    out = []
    for t in range(threads):
        people = {f"p{i}": {"reference": f"Patient/p{t}-{i}", "display": f"Person {i}"} for i in range(3)}
        people["doc"] = {"reference": f"Practitioner/d{t % 50}", "display": "Dr. Who"}
        aliases = list(people)
        moment = start + dt.timedelta(minutes=t)
        msgs = []
        for m in range(messages_per_thread):
            moment += dt.timedelta(seconds=rng.randint(1, 3600))
            msg: dict[str, Any] = {"id": f"m{m}", "sender": rng.choice(aliases),
                                   "sent": moment.strftime("%Y-%m-%dT%H:%M:%S.000Z"),
                                   "text": " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 30)))}
            if m and rng.random() < 0.2:
                msg["reply_to"] = f"m{rng.randrange(m)}"
            msgs.append(msg)
        out.append({"thread": f"bench-{seed}-{t}", "topic": f"Thread {t}", "subject": "p0", "sender": "doc",
                    "category": ["http://terminology.hl7.org/CodeSystem/communication-category|notification"],
                    "participants": people, "messages": msgs})
    return out


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
