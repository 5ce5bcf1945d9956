"""The load journal: what happened to each thread, on disk, so a load survives a crash, Ctrl-C or kill -9.

One SQLite file (WAL, every change committed at once). A thread of which neither the journal nor the
server has anything gets no row before its first request: should that request's answer be lost, the
next run finds what arrived by the thread's identifiers, as it does for every thread without a row.
From then on the row is `sent` while a request is in flight or its outcome unknown (`in_flight`), or
while parts are still to come; `committed` with all its server ids; `partial` when some of it is on
the server and the rest failed; `failed` with why.
Rows are keyed by target (server root + identifier system) and thread key, so one journal can serve
several servers without mixing them up. No secret ever goes in.
"""

from __future__ import annotations

import enum
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from ..errors import BundlerError


class State(enum.StrEnum):
    """A thread's state in the journal (the value is what the file holds)."""

    SENT = "sent"
    COMMITTED = "committed"
    PARTIAL = "partial"
    FAILED = "failed"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS threads (
    target TEXT NOT NULL,
    key TEXT NOT NULL,
    state TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    ids TEXT NOT NULL DEFAULT '{}',
    in_flight TEXT NOT NULL DEFAULT '[]',
    error TEXT,
    updated REAL NOT NULL,
    PRIMARY KEY (target, key)
);
"""


@dataclass
class Entry:
    """A thread's record: `ids` maps each entry's fullUrl to its server id; `in_flight` lists the fullUrls
    of a request whose outcome is not known yet."""

    key: str
    state: State
    fingerprint: str
    ids: dict[str, str] = field(default_factory=dict)
    in_flight: list[str] = field(default_factory=list)
    error: str | None = None


class Journal:
    """A thread-safe journal in `path` for one `target`."""

    def __init__(self, path: str | Path, target: str) -> None:
        self.path = Path(path)
        self.target = target
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def get_many(self, keys: list[str]) -> dict[str, Entry]:
        out: dict[str, Entry] = {}
        for i in range(0, len(keys), 500):
            chunk = keys[i:i + 500]
            with self._lock:
                rows = self._db.execute(
                    f"SELECT key, state, fingerprint, ids, in_flight, error FROM threads WHERE target=? AND key IN "
                    f"({','.join('?' * len(chunk))})", (self.target, *chunk)).fetchall()
            for row in rows:
                out[row[0]] = Entry(row[0], self._state(row[0], row[1]), row[2], orjson.loads(row[3]),
                                    orjson.loads(row[4]), row[5])
        return out

    def _state(self, key: str, value: str) -> State:
        try:
            return State(value)
        except ValueError:
            raise BundlerError(f"{self.path}: thread {key!r} has the unknown state {value!r}: not a journal this "
                               "version of thread-bundler wrote") from None

    def put(self, entry: Entry) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO threads (target, key, state, fingerprint, ids, in_flight, error, updated) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (target, key) DO UPDATE SET state=excluded.state, "
                "fingerprint=excluded.fingerprint, ids=excluded.ids, in_flight=excluded.in_flight, "
                "error=excluded.error, updated=excluded.updated",
                (self.target, entry.key, entry.state, entry.fingerprint, orjson.dumps(entry.ids).decode(),
                 orjson.dumps(entry.in_flight).decode(), entry.error, time.time()))

    def counts(self) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute("SELECT state, count(*) FROM threads WHERE target=? GROUP BY state",
                                    (self.target,)).fetchall()
        return dict(rows)
