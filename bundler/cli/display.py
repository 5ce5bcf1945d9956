"""Showing work: counts, a live bar on a terminal (a quiet line every few seconds otherwise), and tables.

Every number a command prints goes through `count` (`1,013`, `1 thread`, `2 threads`), so numbers read the
same everywhere.
"""

from __future__ import annotations

import io
import os
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from ..errors import Problem
from ..words import count

__all__ = ["Bar", "FileBar", "count", "duration", "fit", "path", "problems_summary", "table"]


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


CLEAR_LINE = "\r\x1b[2K"
"""Back to the start of the line and erase it: a rewritten line leaves nothing of a longer one before it."""
DEFAULT_COLUMNS = 80
"""The terminal's width when it cannot be told."""


def columns(stream: TextIO) -> int:
    """The width of the terminal `stream` writes to (COLUMNS, else the terminal's own, else 80)."""
    try:
        return os.get_terminal_size(stream.fileno()).columns or DEFAULT_COLUMNS
    except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
        return shutil.get_terminal_size((DEFAULT_COLUMNS, 24)).columns


def fit(line: str, width: int) -> str:
    """`line` cut to fit `width` columns (with '…'), so that a terminal never wraps it: a wrapped line cannot be
    rewritten in place."""
    return line if len(line) < width else line[:max(width - 2, 1)] + "…"


class Bar:
    """Progress of `total` items (threads, unless `unit` says otherwise) holding `messages` messages (None: not
    counted); `advance` once per finished item. On a terminal (`live`) one line, rewritten in place (cleared first,
    never wider than the terminal), with a bar when the total is known; elsewhere a quiet line every `every`
    seconds. `close` ends the line, so that what follows starts on a line of its own."""

    def __init__(self, label: str, total: int, messages: int | None = 0, *, stream: TextIO | None = None,
                 live: bool | None = None, every: float = 5.0, unit: str = "thread") -> None:
        self.label = label
        self.total = total
        self.messages_total = messages
        self.unit = unit
        self.stream = stream or sys.stderr
        self.live = self.stream.isatty() if live is None else live
        self.every = every
        self.done = 0
        self.messages = 0
        self.failed = 0
        self.started = time.monotonic()
        self._shown = 0.0 if self.live else self.started  # (quiet lines: the first after `every` seconds)
        self._open = False  # a live line is on the screen, not yet ended

    def advance(self, messages: int = 0, *, failed: bool = False) -> None:
        self.done += 1
        self.messages += messages
        self.failed += failed
        now = time.monotonic()
        if self.live and (now - self._shown > 0.1 or self.done == self.total):
            self._shown = now
            self._show(self._line(now, bar=True))
        elif not self.live and (now - self._shown >= self.every):
            self._shown = now
            self.stream.write(self._line(now, bar=False) + "\n")
            self.stream.flush()

    def start(self, note: str = "") -> None:
        """Show the line at once, before any work (a long silent start looks like a hang)."""
        now = time.monotonic()
        self._shown = now
        line = self._line(now, bar=self.live) + (f" · {note}" if note else "")
        if self.live:
            self._show(line)
        else:
            self.stream.write(line + "\n")
            self.stream.flush()

    def close(self) -> None:
        """The last line (done, or how far it got), and a new line after it."""
        if self.live and self._open:
            self._show(self._line(time.monotonic(), bar=True))
            self.stream.write("\n")
            self.stream.flush()
            self._open = False

    def _show(self, line: str) -> None:
        self.stream.write(CLEAR_LINE + fit(line, columns(self.stream)))
        self.stream.flush()
        self._open = True

    def _line(self, now: float, *, bar: bool) -> str:
        elapsed = max(now - self.started, 1e-9)
        counted = self.messages_total is not None
        rate = (self.messages if counted else self.done) / elapsed
        per = "msg/s" if counted else f"{self.unit}s/s"
        if not self.total:  # a stream: how much is to come is not known
            text = f"{self.label} {count(self.done, self.unit)}"
            text += f" · {count(self.messages, 'message')}" if counted else ""
            text += f" · {count(round(rate))} {per}"
        else:
            left = ((self.messages_total or 0) - self.messages) if counted else self.total - self.done
            if self.done >= self.total:
                when = f"done in {duration(elapsed)}"
            else:
                when = f"ETA {duration(left / rate)}" if rate and left > 0 else "ETA -"
            text = f"{self.label} {count(self.done)}/{count(self.total, self.unit)}"
            text += f" · {count(self.messages)}/{count(self.messages_total or 0, 'message')}" if counted else ""
            text += f" · {count(round(rate))} {per} · {when}"
        text += f" · {count(self.failed)} failed" if self.failed else ""
        if not bar or not self.total:  # (no bar without a total: it would be full, or empty, all along)
            return text
        width = max(10, min(30, columns(self.stream) - len(text) - 4))
        filled = int(width * self.done / self.total)
        return f"[{'#' * filled}{'.' * (width - filled)}] {text}"


class FileBar:
    """A Bar for a call that says `(done, total)` as it goes (`validate_files`' `on_file`): made at the first call,
    advanced at each. Callable; `close` ends its line."""

    def __init__(self, label: str, *, unit: str = "file", live: bool | None = None) -> None:
        self.label = label
        self.unit = unit
        self.live = live
        self.bar: Bar | None = None

    def __call__(self, done: int, total: int) -> None:
        if self.bar is None:
            self.bar = Bar(self.label, total, None, live=self.live, unit=self.unit)
        while self.bar.done < done:
            self.bar.advance()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
