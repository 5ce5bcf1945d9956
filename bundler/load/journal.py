"""The load journal: what happened to each thread, on disk, so a load survives a crash, Ctrl-C or kill -9.

One SQLite file (WAL, every change committed at once), created by the first thing it records: a load
that never reached the server (a failed login, an unreachable server) leaves no journal behind. Before a
thread's first request the journal gets its row (`sent`, what is `in_flight`, and from when on no
request of it can still be on its way: `settles`; the new threads of a window get theirs together, in
one transaction, their `settles` UNKNOWN), so a run that follows a crash knows what may still land. The
row stays `sent` while a request is in flight or its outcome unknown, or while parts are still to come;
`committed` with all its server ids (and, in its error, a note when copies of it were found on the server, made
by another load at the same time, or could not be looked for: the next run looks again, `duplicates`); `partial`
when some of it is on the server and the rest failed;
`failed` with why. Each committed entry keeps its server id, version and a hash of what the spec said
(`Entry.ids`, `Entry.entries`), so a spec that changes later shows which entries changed without reading the
server. They are rows of their own (`entries`), added as each part of a thread commits: a thread of 100,000
messages is not rewritten whole after every part (journals of version 2 kept them as JSON in the thread's row,
read as they are and moved to rows the next time the thread is recorded).

Rows are keyed by target (server root + identifier system) and thread key, so one journal can serve
several servers without mixing them up. No secret ever goes in. Beside the threads, `resources` records what a
load put on the server for them once: each participant it made sure of (by its conditional reference) and each
file it uploaded first (`Binary#<hash>`), with its `Type/<id>`, so a re-run creates and uploads nothing twice.

One load at a time: the journal is locked (`<journal>.lock`, naming the process that holds it) for as
long as it is open for writing; a second load refuses at once (`JournalBusy`), or waits. The lock is the real
file's: a symlink to the journal, `./j.sqlite` and `j.sqlite`, a path through a symlinked folder all lock the
same `.lock` beside the file they name. A journal with several names (hard links) is refused for writing: a load
given another name would lock another `.lock`, and SQLite would keep another -wal beside it. A dry run opens
it read-only, without the lock, and creates no file. A journal of an earlier version (without per-entry
versions) is upgraded in place; a file that is not a journal is refused (`JournalError`) before anything
is sent.
"""

from __future__ import annotations

import datetime as dt
import enum
import os
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import orjson

from ..errors import FileLocked, JournalBusy, JournalError
from ..files import file_lock

SCHEMA_VERSION = 3


class State(enum.StrEnum):
    """A thread's state in the journal (the value is what the file holds)."""

    SENT = "sent"
    COMMITTED = "committed"
    PARTIAL = "partial"
    FAILED = "failed"


_TABLES = """
CREATE TABLE IF NOT EXISTS threads (
    target TEXT NOT NULL,
    key TEXT NOT NULL,
    state TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    ids TEXT NOT NULL DEFAULT '{}',
    in_flight TEXT NOT NULL DEFAULT '[]',
    error TEXT,
    updated REAL NOT NULL,
    entries TEXT NOT NULL DEFAULT '{}',
    settles REAL NOT NULL DEFAULT 0,
    PRIMARY KEY (target, key)
);
CREATE TABLE IF NOT EXISTS resources (
    target TEXT NOT NULL,
    key TEXT NOT NULL,
    reference TEXT NOT NULL,
    updated REAL NOT NULL,
    PRIMARY KEY (target, key)
);
CREATE TABLE IF NOT EXISTS entries (
    target TEXT NOT NULL,
    key TEXT NOT NULL,
    url TEXT NOT NULL,
    ref TEXT NOT NULL,
    version TEXT NOT NULL DEFAULT '',
    hash TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (target, key, url)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (
    target TEXT NOT NULL,
    name TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (target, name)
);
"""
_ADDED = {"entries": "TEXT NOT NULL DEFAULT '{}'", "settles": "REAL NOT NULL DEFAULT 0"}  # version 2
_PUT_ENTRY = ("INSERT INTO entries (target, key, url, ref, version, hash) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT "
              "(target, key, url) DO UPDATE SET ref=excluded.ref, version=excluded.version, hash=excluded.hash")
_COLUMNS = "key, state, fingerprint, ids, in_flight, error, entries, settles"
_PUT = ("INSERT INTO threads (target, key, state, fingerprint, ids, in_flight, error, updated, entries, settles) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (target, key) DO UPDATE SET state=excluded.state, "
        "fingerprint=excluded.fingerprint, ids=excluded.ids, in_flight=excluded.in_flight, error=excluded.error, "
        "updated=excluded.updated, entries=excluded.entries, settles=excluded.settles")
UNKNOWN = -1.0
"""`settles` of a thread whose first request was recorded (with a window of others) before it was sent: when it
was sent, if at all, is not known; it cannot land later than the load that follows a crash starts, plus the
client's timeout and the margin."""
_COLUMNS_V1 = "key, state, fingerprint, ids, in_flight, error, '{}', 0"  # what a dry run reads from an old journal


@contextmanager
def _transaction(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """(Under the journal's lock) one transaction of `db`: committed when the block ends, rolled back if it raises."""
    db.execute("BEGIN")
    try:
        yield db
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


@dataclass
class _Write:
    """A write asked of the journal (`Journal._write`): done once a transaction holding it committed, or failed."""

    entries: list[Entry]
    now: float
    changed: bool
    done: bool = False
    error: BaseException | None = None


@dataclass
class Entry:
    """A thread's record: `ids` maps each entry's fullUrl to `Communication/<id>`; `entries` each committed
    entry's fullUrl to its [server version, hash of its spec resource] (either may be empty: journals of
    version 1 had neither); `in_flight` lists the fullUrls of a request whose outcome is not known yet, and
    `settles` is the epoch time after which no such request can still land (0: it may be reconciled now;
    UNKNOWN: recorded before it was sent, with its window)."""

    key: str
    state: State
    fingerprint: str
    ids: dict[str, str] = field(default_factory=dict)
    in_flight: list[str] = field(default_factory=list)
    error: str | None = None
    entries: dict[str, list[str]] = field(default_factory=dict)
    settles: float = 0.0

    def version(self, url: str) -> str | None:
        return (self.entries.get(url) or [""])[0] or None

    def hash(self, url: str) -> str | None:
        state = self.entries.get(url) or []
        return state[1] if len(state) > 1 and state[1] else None


def owner() -> str:
    """Who holds a lock we take: process id, host and since when (shown to a load that is refused)."""
    since = dt.datetime.now().astimezone().isoformat(timespec="seconds")
    return f"process {os.getpid()} on {socket.gethostname()}, since {since}"


def _real(path: Path) -> Path:
    """The file `path` names, absolute, symlinks resolved (`link.sqlite` → `j.sqlite`, `./j.sqlite` → `j.sqlite`)."""
    try:
        return path.resolve()
    except (OSError, RuntimeError) as exc:  # a symlink loop (RuntimeError before Python 3.13)
        raise JournalError(f"cannot use the journal {path}: {getattr(exc, 'strerror', None) or exc}; nothing was "
                           "sent") from None


class Journal:
    """A thread-safe journal in `path` for one `target`.

    `read_only`: read what is there, record nothing, create no file, take no lock (a dry run). Otherwise
    the journal is locked for this process until `close`: `wait` waits for another load to finish instead
    of raising JournalBusy, telling `on_wait` first (with who holds it)."""

    def __init__(self, path: str | Path, target: str, *, read_only: bool = False, wait: bool = False,
                 on_wait: Callable[[str], None] | None = None) -> None:
        self.path = Path(path)
        self.file = _real(self.path)  # the file it names: what is locked and opened
        self.target = target
        self.read_only = read_only
        self._db: sqlite3.Connection | None = None
        self._columns = _COLUMNS
        self._rows_of_entries = True  # the journal has an `entries` table (not one of version 2, read only)
        self._lock = threading.Lock()
        self._queued: list[_Write] = []  # writes asked for, not yet taken (`_write`)
        self._queued_lock = threading.Lock()
        self._held = ExitStack()
        if not read_only:
            self._take_lock(wait, on_wait)
        try:
            if not read_only:
                self._one_name()
            if self.file.exists():
                self._db = self._connect()
                if read_only and self._columns == "":  # an empty file: nothing recorded yet
                    self._db.close()
                    self._db = None
        except BaseException:
            self._held.close()
            raise

    @property
    def name(self) -> str:
        """The journal as the user named it, and the file that is when another (a symlink's target)."""
        return str(self.path) if self.path.absolute() == self.file else f"{self.path} (the file {self.file})"

    def _take_lock(self, wait: bool, on_wait: Callable[[str], None] | None) -> None:
        """Lock `<file>.lock` beside the real file, so every path to the journal takes the same lock."""
        lock = self.file.with_name(self.file.name + ".lock")
        me = f"thread-bundler load: {owner()}"
        try:
            try:
                self._held.enter_context(file_lock(lock, wait=False, owner=me, remove=True))
            except FileLocked as exc:
                if not wait:
                    raise JournalBusy(f"the journal {self.name} is in use by another load ({exc.holder or 'unknown'}): "
                                      "let it finish, or run with --wait to start when it has; nothing was "
                                      "sent") from None
                if on_wait is not None:
                    on_wait(f"the journal {self.name} is in use by another load ({exc.holder or 'unknown'}): "
                            "waiting for it to finish")
                self._held.enter_context(file_lock(lock, wait=True, owner=me, remove=True))
        except OSError as exc:
            raise JournalError(f"cannot lock the journal {self.name}: {exc.strerror or exc}") from None

    def _one_name(self) -> None:
        """Refuse a journal file with several names (hard links): a load given another of them would take
        another lock, and SQLite would keep another -wal beside it (sqlite.org/howtocorrupt.html, 2.5)."""
        try:
            links = os.stat(self.file).st_nlink
        except FileNotFoundError:
            return  # (created by this load: one name)
        except OSError as exc:
            raise JournalError(f"cannot read the journal {self.name}: {exc.strerror or exc}") from None
        if links > 1:
            raise JournalError(f"the journal {self.name} has {links} names (hard links): a load given another of "
                               "them would not see this one's lock, and SQLite would keep a separate -wal file "
                               "for each name. Keep one name (remove the other links, or give --journal a copy) "
                               "and run again; nothing was sent.")

    def _connect(self) -> sqlite3.Connection:
        """The open journal, checked (and upgraded) before it is used; JournalError when it cannot be."""
        try:
            if self.read_only:
                # a journal closed cleanly has no -wal file: read it as it is, creating nothing beside it
                mode = "ro" if Path(f"{self.file}-wal").exists() else "ro&immutable=1"
                db = sqlite3.connect(f"file:{quote(str(self.file))}?mode={mode}", uri=True,
                                     check_same_thread=False, isolation_level=None, timeout=30)
            else:
                db = sqlite3.connect(self.file, check_same_thread=False, isolation_level=None, timeout=30)
            try:
                self._prepare(db)
            except BaseException:
                db.close()
                raise
        except sqlite3.DatabaseError as exc:
            raise self._unusable(str(exc)) from None
        return db

    def _prepare(self, db: sqlite3.Connection) -> None:
        """Check that `db` is a journal this version can use; for writing, create or upgrade its tables."""
        version = int(db.execute("PRAGMA user_version").fetchone()[0])
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if version > SCHEMA_VERSION:
            raise self._unusable(f"written by a newer thread-bundler (journal version {version})")
        if tables and "threads" not in tables:
            raise self._unusable("it holds other tables than a journal's")
        columns = {row[1] for row in db.execute("PRAGMA table_info(threads)")}
        if self.read_only:
            self._columns = "" if not columns else _COLUMNS if set(_ADDED) <= columns else _COLUMNS_V1
            self._rows_of_entries = "entries" in tables
        else:
            self._upgrade(db, columns)

    @staticmethod
    def _upgrade(db: sqlite3.Connection, columns: set[str]) -> None:
        """Tables created, or those of a version 1 journal upgraded in place (its rows kept)."""
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.executescript(_TABLES)
        for name, kind in _ADDED.items():
            if columns and name not in columns:
                db.execute(f"ALTER TABLE threads ADD COLUMN {name} {kind}")
        db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def _unusable(self, why: str) -> JournalError:
        return JournalError(f"{self.name} is not a usable journal ({why}). Move it away, or give --journal another "
                            "file, and run again: threads already on the server are then found by their "
                            "identifiers. Nothing was sent.")

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None
        self._held.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _ready(self) -> sqlite3.Connection:
        """The database, created with its first record (called under `_lock`)."""
        if self._db is None:
            self.file.parent.mkdir(parents=True, exist_ok=True)
            self._db = self._connect()
        return self._db

    def _rows(self, sql: str, args: tuple[Any, ...]) -> list[Any]:
        with self._lock:
            if self._db is None:
                return []
            try:
                return self._db.execute(sql, args).fetchall()
            except sqlite3.DatabaseError as exc:
                raise self._unusable(str(exc)) from None

    def get_many(self, keys: list[str]) -> dict[str, Entry]:
        out: dict[str, Entry] = {}
        for i in range(0, len(keys), 500):
            chunk = keys[i:i + 500]
            marks = ",".join("?" * len(chunk))
            rows = self._rows(f"SELECT {self._columns} FROM threads WHERE target=? AND key IN ({marks})",
                              (self.target, *chunk))
            for row in rows:
                out[row[0]] = self._entry(row)
            if rows and self._rows_of_entries:
                for key, url, ref, version, digest in self._rows(
                        f"SELECT key, url, ref, version, hash FROM entries WHERE target=? AND key IN ({marks})",
                        (self.target, *chunk)):
                    if (entry := out.get(key)) is not None:
                        entry.ids[url] = ref
                        entry.entries[url] = [version, digest]
        return out

    def _entry(self, row: tuple[Any, ...]) -> Entry:
        key, state, fingerprint, ids, in_flight, error, entries, settles = row
        try:
            return Entry(key, State(state), fingerprint, orjson.loads(ids), orjson.loads(in_flight), error,
                         orjson.loads(entries), float(settles))
        except (ValueError, TypeError, orjson.JSONDecodeError):
            raise self._unusable(f"thread {key!r} has a row this version of thread-bundler did not write") from None

    def put(self, entry: Entry, *, changed: bool = False) -> None:
        """Record `entry` (nothing, in a read-only journal), in one transaction. `changed`: its `ids` (and `entries`)
        hold only the entries that changed since this thread was last recorded, the others stay as they are; else
        they are all of them, and the thread's other entry rows are dropped."""
        if self.read_only:
            return
        self._write([entry], time.time(), changed=changed)

    def put_many(self, entries: list[Entry]) -> None:
        """Record `entries` in one transaction (nothing, in a read-only journal)."""
        if self.read_only or not entries:
            return
        self._write(entries, time.time(), changed=False)

    def _write(self, entries: list[Entry], now: float, *, changed: bool) -> None:
        """Record `entries` before returning, in a transaction shared with the writes other threads asked for
        meanwhile (a group commit): the one that takes the lock writes every write queued, in the order asked,
        and the others find theirs done. A load's workers each record their thread as it commits; one transaction
        each, they queued for the lock and the interpreter (a tenth of a local load's time)."""
        mine = _Write(entries, now, changed)
        with self._queued_lock:
            self._queued.append(mine)
        with self._lock:
            if not mine.done:
                with self._queued_lock:
                    group, self._queued = self._queued, []
                self._write_group(group)
        if mine.error is not None:
            raise mine.error

    def _write_group(self, group: list[_Write]) -> None:
        """(Under `_lock`) the writes of `group` in one transaction, each marked done (or with the error that
        rolled them all back)."""
        try:
            with _transaction(self._ready()) as db:
                for w in group:
                    db.executemany(_PUT, [self._row(e, w.now) for e in w.entries])
                    for e in w.entries:
                        if not w.changed:
                            db.execute("DELETE FROM entries WHERE target=? AND key=?", (self.target, e.key))
                        if e.ids:
                            db.executemany(_PUT_ENTRY, self._entry_rows(e))
        except BaseException as exc:
            for w in group:
                w.done, w.error = True, exc
            raise
        for w in group:
            w.done = True

    def _row(self, e: Entry, now: float) -> tuple[Any, ...]:
        # (ids and entries go in rows of their own: the columns are what journals of version 2 kept)
        return (self.target, e.key, e.state, e.fingerprint, "{}", orjson.dumps(e.in_flight).decode(), e.error, now,
                "{}", e.settles)

    def _entry_rows(self, e: Entry) -> Iterator[tuple[str, str, str, str, str, str]]:
        target, key, states = self.target, e.key, e.entries
        for url, ref in e.ids.items():
            version, digest = ((states.get(url) or []) + ["", ""])[:2]
            yield target, key, url, ref, version or "", digest or ""

    def note(self, key: str, note: str | None) -> None:
        """Set (None: clear) the note of a thread's committed row: that copies of it were found on the server, or
        could not be looked for (`duplicates`); the next run looks again. (A row in another state keeps its error.)"""
        if self.read_only or self._db is None:
            return
        with self._lock:
            self._db.execute("UPDATE threads SET error=?, updated=? WHERE target=? AND key=? AND state=?",
                             (note, time.time(), self.target, key, State.COMMITTED))

    def delete_many(self, keys: list[str]) -> None:
        """Forget the rows of `keys` (threads whose first request was recorded, then never sent)."""
        if self.read_only or not keys or self._db is None:
            return
        with self._lock, _transaction(self._db) as db:
            for table in ("threads", "entries"):
                db.executemany(f"DELETE FROM {table} WHERE target=? AND key=?", [(self.target, k) for k in keys])

    def get_resources(self, keys: list[str]) -> dict[str, str]:
        """What the journal knows of resources other than threads' (a created participant by its conditional
        reference, an uploaded file by its hash): key → the server's `Type/<id>` of it."""
        if self._columns is _COLUMNS_V1 or not keys:
            return {}
        with self._lock:
            if self._db is None or not self._db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND "
                                                        "name='resources'").fetchone():
                return {}  # (a journal of a version before participants, read by a dry run)
        out: dict[str, str] = {}
        for i in range(0, len(keys), 500):
            chunk = keys[i:i + 500]
            rows = self._rows(f"SELECT key, reference FROM resources WHERE target=? AND key IN "
                              f"({','.join('?' * len(chunk))})", (self.target, *chunk))
            out |= {str(k): str(r) for k, r in rows}
        return out

    def put_resources(self, found: dict[str, str]) -> None:
        """Record resources that are on the server: key → `Type/<id>` (see `get_resources`)."""
        if self.read_only or not found:
            return
        now = time.time()
        with self._lock, _transaction(self._ready()) as db:
            db.executemany("INSERT INTO resources (target, key, reference, updated) VALUES (?, ?, ?, ?) ON "
                           "CONFLICT (target, key) DO UPDATE SET reference=excluded.reference, "
                           "updated=excluded.updated", [(self.target, k, r, now) for k, r in found.items()])

    def get_meta(self, name: str) -> str | None:
        if self._columns is _COLUMNS_V1:
            return None  # an old journal has no meta table
        rows = self._rows("SELECT value FROM meta WHERE target=? AND name=?", (self.target, name))
        return str(rows[0][0]) if rows else None

    def set_meta(self, name: str, value: str) -> None:
        if self.read_only:
            return
        with self._lock:
            self._ready().execute("INSERT INTO meta (target, name, value) VALUES (?, ?, ?) ON CONFLICT (target, name) "
                                  "DO UPDATE SET value=excluded.value", (self.target, name, value))

    def counts(self) -> dict[str, int]:
        rows = self._rows("SELECT state, count(*) FROM threads WHERE target=? GROUP BY state", (self.target,))
        return dict(rows)
