"""Rejected rows: the reason codes, and the reject file (CSV or JSON Lines, by its suffix).

Every row that does not become a message gets one line: the input file, its row number (data rows,
1-based) and line, a reason code, a message for people, and the raw row as it was read.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from ..files import atomic_file

REASONS: dict[str, str] = {
    "bad-row": "the row could not be read (CSV/JSON syntax, wrong number of fields)",
    "bad-encoding": "the row has bytes that are not valid in the input encoding",
    "missing-thread": "no conversation id",
    "missing-message-id": "no message id",
    "missing-sender": "no sender id",
    "missing-time": "no sent time",
    "bad-time": "a sent time that cannot be read, or has no time zone",
    "nonexistent-time": "a local time skipped by a daylight saving change",
    "ambiguous-time": "a local time that occurs twice (when sent.ambiguous is reject)",
    "empty-message": "neither text nor an attachment",
    "bad-status": "a status the mapping does not translate",
    "bad-category": "a category that is not 'system|code'",
    "bad-attachment": "an attachment type that is not a MIME type",
    "unknown-participant": "a sender, recipient or subject id that the table and rules do not resolve",
    "duplicate-message-id": "a message id already used in the conversation",
    "id-collision": "an id whose sanitised form is another id's (thread key or message id)",
    "reply-to-unknown": "replies to a message id not in the conversation (a warning: the message is kept "
                        "without the link, unless --strict)",
    "reply-to-rejected": "replies to a message that was itself rejected (a warning, as reply-to-unknown)",
    "reply-to-later": "replies to a message sent after it, or to itself (a warning, as reply-to-unknown)",
}
"""Every reject reason code, with what it means."""

WARNING, REJECT = "warning", "reject"
FIELDS = ("file", "row", "line", "severity", "reason", "message", "raw")
"""The reject file's fields. severity: `reject` (the row is not a message) or `warning` (it is, with
something of it left out: a reply's link)."""


@dataclass(frozen=True, slots=True)
class Reject:
    file: str
    row: int
    line: int
    reason: str
    message: str
    raw: Any
    severity: str = REJECT

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: row {self.row}: {self.reason}: {self.message}"


def write_rejects(path: Path, rejects: Iterable[Reject]) -> int:
    """Write the reject file (`.csv`: raw as JSON text in the last column; else JSON Lines) atomically.
    Returns how many lines it holds (rejects and warnings)."""
    n = 0
    with atomic_file(path, buffering=1 << 16) as fb:
        if path.suffix.lower() == ".csv":
            f = io.TextIOWrapper(fb, encoding="utf-8", newline="")
            try:
                writer = csv.writer(f)
                writer.writerow(FIELDS)
                for r in rejects:
                    writer.writerow((r.file, r.row, r.line, r.severity, r.reason, r.message,
                                     orjson.dumps(r.raw).decode()))
                    n += 1
            finally:
                f.flush()
                f.detach()  # the binary file stays atomic_file's to close (and rename into place)
        else:
            for r in rejects:
                fb.write(orjson.dumps({"file": r.file, "row": r.row, "line": r.line, "severity": r.severity,
                                       "reason": r.reason, "message": r.message, "raw": r.raw}) + b"\n")
                n += 1
    return n
