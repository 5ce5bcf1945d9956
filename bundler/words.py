"""How numbers read in every message the tool writes, library or command: `count(1013)` → '1,013', `count(1,
"thread")` → '1 thread', `count(2, "search", "searches")` → '2 searches'. The one home of plurals (`bundler.cli.display`
shows results with it; the library's own messages use it too)."""

from __future__ import annotations


def count(n: int, noun: str | None = None, plural: str | None = None) -> str:
    """`count(1013)` → '1,013'; with a noun, `count(1, "thread")` → '1 thread', `count(2, "thread")` → '2 threads'
    (`plural` when it is not the noun + 's')."""
    if noun is None:
        return f"{n:,}"
    return f"{n:,} {noun if n == 1 else plural or noun + 's'}"
