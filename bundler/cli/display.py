"""Showing work: counts, a live bar on a terminal (a quiet line every few seconds otherwise), and tables.

Every number a command prints goes through `count` (`1,013`, `1 thread`, `2 threads`), so numbers read the
same everywhere.
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from ..errors import Problem


def count(n: int, noun: str | None = None, plural: str | None = None) -> str:
    """`count(1013)` → '1,013'; with a noun, `count(1, "thread")` → '1 thread', `count(2, "thread")` → '2 threads'
    (`plural` when it is not the noun + 's')."""
    if noun is None:
        return f"{n:,}"
    return f"{n:,} {noun if n == 1 else plural or noun + 's'}"


def path(p: str | Path) -> str:
    """A path as the user's other messages show files: relative to the current folder when it is below it, else as
    it is (so `journal: threads.journal.sqlite`, beside `threads/a.yaml:3:9: ...`)."""
    given = Path(p)
    try:
        return str(given.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(given)


def problems_summary(problems: Sequence[Problem]) -> str:
    """`3 problems in 2 files`; a folder is named a folder (`1 problem in 1 folder`), a problem with no file
    counted alone (`1 problem`)."""
    places = {p.file for p in problems if p.file}
    folders = sum(Path(p).is_dir() for p in places)
    where = [count(len(places) - folders, "file")] if len(places) > folders else []
    where += [count(folders, "folder")] if folders else []
    return count(len(problems), "problem") + (" in " + " and ".join(where) if where else "")


def _cell(value: object) -> str:
    return count(value) if isinstance(value, int) and not isinstance(value, bool) else str(value)


def table(header: Sequence[str], rows: Sequence[Sequence[object]], *, align: str | None = None) -> str:
    """A plain-text table; `align` has one 'l' or 'r' per column (numbers right by default, written by `count`)."""
    cells = [[str(c) for c in header]] + [[_cell(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    align = align or "".join("r" if rows and isinstance(rows[0][i], int | float) else "l" for i in range(len(header)))

    def line(row: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if a == "r" else c.ljust(w) for c, w, a in zip(row, widths, align, strict=True))

    out = [line(cells[0]), "  ".join("-" * w for w in widths)] + [line(r) for r in cells[1:]]
    return "\n".join(s.rstrip() for s in out)


def duration(seconds: float) -> str:
    """`75.4` → '1:15'; `3725` → '1:02:05' (never negative)."""
    seconds = max(0, round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Bar:
    """Progress of `total` threads holding `messages` messages; `advance` once per finished thread."""

    def __init__(self, label: str, total: int, messages: int, *, stream: TextIO | None = None,
                 live: bool | None = None, every: float = 5.0) -> None:
        self.label = label
        self.total = total
        self.messages_total = messages
        self.stream = stream or sys.stderr
        self.live = self.stream.isatty() if live is None else live
        self.every = every
        self.done = 0
        self.messages = 0
        self.failed = 0
        self.started = time.monotonic()
        self._shown = 0.0

    def advance(self, messages: int, *, failed: bool = False) -> None:
        self.done += 1
        self.messages += messages
        self.failed += failed
        now = time.monotonic()
        if self.live and (now - self._shown > 0.1 or self.done == self.total):
            self._shown = now
            self.stream.write("\r" + self._line(now, bar=True))
            self.stream.flush()
        elif not self.live and (now - self._shown >= self.every):
            self._shown = now
            self.stream.write(self._line(now, bar=False) + "\n")
            self.stream.flush()

    def start(self, note: str = "") -> None:
        """Show the line at once, before any work (a long silent start looks like a hang)."""
        now = time.monotonic()
        self._shown = now
        line = self._line(now, bar=self.live) + (f" · {note}" if note else "")
        self.stream.write(("\r" + line) if self.live else line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.live and self.total:
            self.stream.write("\r" + self._line(time.monotonic(), bar=True) + "\n")
            self.stream.flush()

    def _line(self, now: float, *, bar: bool) -> str:
        elapsed = max(now - self.started, 1e-9)
        rate = self.messages / elapsed
        left = self.messages_total - self.messages
        if not self.total:  # a stream: how much is to come is not known
            text = (f"{self.label} {count(self.done)} threads · {count(self.messages)} messages · "
                    f"{count(round(rate))} msg/s")
        else:
            if self.done >= self.total:
                when = f"done in {duration(elapsed)}"
            else:
                when = f"ETA {duration(left / rate)}" if rate and left > 0 else "ETA -"
            text = (f"{self.label} {count(self.done)}/{count(self.total)} threads · {count(self.messages)}/"
                    f"{count(self.messages_total)} messages · {count(round(rate))} msg/s · {when}")
        text += f" · {count(self.failed)} failed" if self.failed else ""
        if not bar:
            return text
        width = max(10, min(30, shutil.get_terminal_size((100, 20)).columns - len(text) - 4))
        filled = int(width * self.done / self.total) if self.total else width
        return f"[{'#' * filled}{'.' * (width - filled)}] {text}"
