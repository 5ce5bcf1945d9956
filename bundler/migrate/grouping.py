"""Grouping rows by conversation on disk: a throwaway SQLite database, so memory stays flat.

Rows go in as they are read (big `executemany` batches into a plain rowid table, no index, no
journal, no fsync); they come out once, through SQLite's external merge sort, ordered by thread key,
then sent instant, then input order. Rejects are kept here too and come out ordered by file and row.

    with GroupStore(work_dir) as store:
        store.add([(key, sent_micros, seq, blob), ...])
        for key, rows in store.groups(): ...

Several processes of one run each load their share of the rows into a store of their own, `seal` it,
and then read every store together through `SealedStores`, each process one range of thread keys.
Both kinds are `Groups`: what assembling threads reads.

The store knows rows as bytes; what they hold is `records`' business (a tombstone's sent value sorts
first, so a group's tombstones come first).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import tempfile
import urllib.parse
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

import orjson

from ..files import held_folder
from .rejects import Reject

Row = tuple[str, int, int, bytes]  # (thread key, sent µs, input order, message data)
Group = tuple[str, list[tuple[int, int, bytes]]]  # (thread key, [(sent µs, input order, data), ...])

SCRATCH_PREFIX = "thread-bundler-migrate-"
"""The temporary folders of migrations (in --work-dir, or the system's temporary folder)."""

_REJECT_COLUMNS = ("file INTEGER, row INTEGER, line INTEGER, name TEXT, reason TEXT, message TEXT, raw BLOB, "
                   "severity TEXT")


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _uri(path: Path, query: str = "") -> str:
    return "file:" + urllib.parse.quote(str(path.resolve())) + query


PAGE_SIZE = 32_768
"""The stores' page size: rows of a few hundred bytes go in and come out sorted ~25% faster (in CPU) than with
SQLite's default 4,096 (300,000 rows of an export: insert 0.61 → 0.47 s, sort 0.67 → 0.49 s)."""


def _tune(db: sqlite3.Connection, folder: Path, cache_mb: int, threads: int) -> None:
    """No journal, no fsync; the sorter's spill files next to the database (not in a small /tmp); big pages
    (before the database's first table: the page size of a new database only)."""
    db.execute(f"PRAGMA temp_store_directory = {_quote(str(folder))}")
    for pragma in (f"page_size={PAGE_SIZE}", "journal_mode=OFF", "synchronous=OFF", "temp_store=FILE",
                   f"cache_size=-{cache_mb * 1024}", f"threads={threads}"):
        db.execute(f"PRAGMA {pragma}")


def _grouped(cursor: sqlite3.Cursor) -> Iterator[Group]:
    """Rows (key, sent, seq, data) ordered by key → one (key, rows) per key."""
    current: str | None = None
    rows: list[tuple[int, int, bytes]] = []
    while batch := cursor.fetchmany(4096):
        for key, sent, seq, data in batch:
            if key != current:
                if current is not None:
                    yield current, rows
                current, rows = key, []
            rows.append((sent, seq, data))
    if current is not None:
        yield current, rows


def _rejects(cursor: sqlite3.Cursor) -> Iterator[tuple[int, Reject]]:
    for file, name, row, line, reason, message, raw, severity in cursor:
        yield file, Reject(name, row, line, reason, message, orjson.loads(raw), severity)


def _insert_rejects(db: sqlite3.Connection, rejects: list[tuple[int, Reject]]) -> None:
    db.executemany("INSERT INTO rejects VALUES (?, ?, ?, ?, ?, ?, ?, ?)", [
        (i, r.row, r.line, r.file, r.reason, r.message, orjson.dumps(r.raw), r.severity) for i, r in rejects])


def max_stores() -> int:
    """How many stores `SealedStores` can read together: SQLite's limit on attached databases."""
    with contextlib.closing(sqlite3.connect(":memory:")) as db:
        return db.getlimit(sqlite3.SQLITE_LIMIT_ATTACHED)


class Groups(Protocol):
    """What assembling threads reads: groups in key order, users' roles; and where its rejects go."""

    def groups(self) -> Iterator[Group]: ...

    def roles_of(self, legacy_id: str) -> frozenset[str]: ...

    def name_of(self, legacy_id: str) -> str | None: ...

    def add_rejects(self, rejects: list[tuple[int, Reject]]) -> None: ...

    def rejects(self) -> Iterator[tuple[int, Reject]]: ...


class GroupStore:
    """The on-disk store of one migration run; its folder is removed on close."""

    def __init__(self, work_dir: str | Path | None = None, *, cache_mb: int = 16, threads: int = 2,
                 held: bool = True) -> None:
        """`held`: the store's folder is held (files.held_folder), so that a run killed with kill -9 leaves
        nothing the next run in `work_dir` does not remove; not held: inside a folder that is."""
        self._held: int | None = None
        if held:
            self.dir, self._held = held_folder(SCRATCH_PREFIX, work_dir)
        else:
            self.dir = Path(tempfile.mkdtemp(prefix=SCRATCH_PREFIX, dir=work_dir))
        self.path = self.dir / "rows.sqlite"
        self._sealed = False
        self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        _tune(self.db, self.dir, cache_mb, threads)
        self.db.execute("PRAGMA locking_mode=EXCLUSIVE")
        self.db.execute("CREATE TABLE msgs (key TEXT NOT NULL, sent INTEGER NOT NULL, seq INTEGER NOT NULL, "
                        "data BLOB NOT NULL)")
        self.db.execute(f"CREATE TABLE rejects ({_REJECT_COLUMNS})")
        self.db.execute("CREATE TABLE roles (id TEXT NOT NULL, role TEXT NOT NULL, PRIMARY KEY (id, role)) "
                        "WITHOUT ROWID")
        self.db.execute("CREATE TABLE names (id TEXT PRIMARY KEY, seq INTEGER NOT NULL, name TEXT NOT NULL) "
                        "WITHOUT ROWID")
        self.db.execute("BEGIN")

    def add(self, rows: list[Row]) -> None:
        self.db.executemany("INSERT INTO msgs VALUES (?, ?, ?, ?)", rows)

    def add_roles(self, pairs: list[tuple[str, str]]) -> None:
        self.db.executemany("INSERT OR IGNORE INTO roles VALUES (?, ?)", pairs)

    def roles_of(self, legacy_id: str) -> frozenset[str]:
        return frozenset(r for (r,) in self.db.execute("SELECT role FROM roles WHERE id = ?", (legacy_id,)))

    def add_names(self, names: list[tuple[str, int, str]]) -> None:
        """(user id, input order, name): the first name in input order is kept for each user."""
        self.db.executemany("INSERT INTO names VALUES (?, ?, ?) ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, "
                            "name = excluded.name WHERE excluded.seq < names.seq", names)

    def name_of(self, legacy_id: str) -> str | None:
        """The first name the export gives this user (message.sender_display, in input order), or None."""
        got = self.db.execute("SELECT name FROM names WHERE id = ?", (legacy_id,)).fetchone()
        return got[0] if got else None

    def add_rejects(self, rejects: list[tuple[int, Reject]]) -> None:
        _insert_rejects(self.db, rejects)

    def totals(self, tombstone: int) -> tuple[int, int]:
        """(groups, rows) stored, tombstones left out."""
        got = self.db.execute("SELECT COUNT(DISTINCT key), COUNT(*) FROM msgs WHERE sent != ?", (tombstone,)).fetchone()
        return int(got[0]), int(got[1] or 0)

    def finish_loading(self) -> None:
        self.db.execute("COMMIT")

    def seal(self) -> Path:
        """Commit and close (releasing the exclusive lock), for `SealedStores` in any process to read.
        The folder stays (neither this nor `close` removes it): whoever made the `work_dir` removes it."""
        self.db.close()
        self._sealed = True
        return self.path

    def groups(self) -> Iterator[Group]:
        """(thread key, [(sent µs, input order, data), ...]) per key, keys in order, rows by (sent, order)."""
        return _grouped(self.db.execute("SELECT key, sent, seq, data FROM msgs ORDER BY key, sent, seq"))

    def rejects(self) -> Iterator[tuple[int, Reject]]:
        """(input index, reject), ordered by input and row."""
        return _rejects(self.db.execute("SELECT file, name, row, line, reason, message, raw, severity FROM rejects "
                                        "ORDER BY file, row"))

    def close(self) -> None:
        if self._sealed:
            return
        try:
            self.db.close()
        finally:
            if self._held is not None:
                os.close(self._held)
                self._held = None
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> GroupStore:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def stats(self) -> dict[str, Any]:
        size = sum(p.stat().st_size for p in self.dir.iterdir() if p.is_file())
        return {"dir": str(self.dir), "bytes": size}


class SealedStores:
    """The sealed stores of every process of a run, read together (read-only, no locks: `immutable`):
    the groups of one range of thread keys, and every store's roles. Rejects found while reading go to
    a small database of this reader's own, and come out merged with those of store `own`.

    Ranges [lo, hi) that cover all keys give, concatenated in order, exactly what one store holding all
    the rows would give: so processes can each assemble a range and their outputs just be joined.
    """

    def __init__(self, paths: Sequence[Path], own: int, lo: str | None, hi: str | None, folder: Path, *,
                 cache_mb: int = 16, threads: int = 0) -> None:
        self.dir = folder
        self.db = sqlite3.connect(_uri(folder / "read.sqlite"), isolation_level=None, check_same_thread=False,
                                  uri=True)
        _tune(self.db, folder, cache_mb, threads)
        for i, path in enumerate(paths):
            self.db.execute(f"ATTACH DATABASE {_quote(_uri(path, '?immutable=1'))} AS s{i}")
        self.db.execute(f"CREATE TABLE rejects ({_REJECT_COLUMNS})")
        self.n = len(paths)
        self.own = own
        where = [c for c, bound in (("key >= ?", lo), ("key < ?", hi)) if bound is not None]
        self._where = (" WHERE " + " AND ".join(where)) if where else ""
        self._bounds = [b for b in (lo, hi) if b is not None]
        self._roles = " UNION ".join(f"SELECT role FROM s{i}.roles WHERE id = ?1" for i in range(self.n))
        self._names = (" UNION ALL ".join(f"SELECT seq, name FROM s{i}.names WHERE id = ?1" for i in range(self.n))
                       + " ORDER BY seq LIMIT 1")

    def groups(self) -> Iterator[Group]:
        """Like GroupStore.groups, for the keys in [lo, hi) of every store."""
        union = " UNION ALL ".join(f"SELECT key, sent, seq, data FROM s{i}.msgs{self._where}" for i in range(self.n))
        return _grouped(self.db.execute(f"{union} ORDER BY key, sent, seq", self._bounds * self.n))

    def roles_of(self, legacy_id: str) -> frozenset[str]:
        return frozenset(r for (r,) in self.db.execute(self._roles, (legacy_id,)))

    def name_of(self, legacy_id: str) -> str | None:
        """The first name any process's store holds for this user, in input order."""
        got = self.db.execute(self._names, (legacy_id,)).fetchone()
        return got[1] if got else None

    def add_rejects(self, rejects: list[tuple[int, Reject]]) -> None:
        _insert_rejects(self.db, rejects)

    def rejects(self) -> Iterator[tuple[int, Reject]]:
        """This reader's rejects and those its own store took while loading, ordered by input and row."""
        columns = "file, name, row, line, reason, message, raw, severity"
        return _rejects(self.db.execute(f"SELECT {columns} FROM main.rejects UNION ALL SELECT {columns} FROM "
                                        f"s{self.own}.rejects ORDER BY file, row"))

    def close(self) -> None:
        self.db.close()
