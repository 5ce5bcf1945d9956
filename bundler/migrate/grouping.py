"""Grouping rows by conversation on disk: a throwaway SQLite database, so memory stays flat.

Rows go in as they are read (big `executemany` batches into a plain rowid table, no index, no
journal, no fsync); they come out once, through SQLite's external merge sort, ordered by thread key,
then sent instant, then input order. Rejects are kept here too and come out ordered by file and row.

    with GroupStore(work_dir) as store:
        store.add([(key, sent_micros, seq, blob), ...])
        for key, rows in store.groups(): ...
"""

from __future__ import annotations

import shutil
import sqlite3
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import orjson

from .rejects import Reject

TOMBSTONE = -(2**62)
"""The sent key of a rejected row's tombstone (its conversation and message id): first in its group."""

Row = tuple[str, int, int, bytes]  # (thread key, sent µs, input order, message data)


class GroupStore:
    """The on-disk store of one migration run; its folder is removed on close."""

    def __init__(self, work_dir: str | Path | None = None, *, cache_mb: int = 16) -> None:
        if work_dir is not None:
            Path(work_dir).mkdir(parents=True, exist_ok=True)
        self.dir = Path(tempfile.mkdtemp(prefix="thread-bundler-migrate-", dir=work_dir))
        self.db = sqlite3.connect(self.dir / "rows.sqlite", isolation_level=None, check_same_thread=False)
        # the sorter's spill files go next to the database, not to a small /tmp
        self.db.execute(f"PRAGMA temp_store_directory = '{str(self.dir).replace(chr(39), chr(39) * 2)}'")
        for pragma in ("journal_mode=OFF", "synchronous=OFF", "locking_mode=EXCLUSIVE", "temp_store=FILE",
                       f"cache_size=-{cache_mb * 1024}", "threads=2"):
            self.db.execute(f"PRAGMA {pragma}")
        self.db.execute("CREATE TABLE msgs (key TEXT NOT NULL, sent INTEGER NOT NULL, seq INTEGER NOT NULL, "
                        "data BLOB NOT NULL)")
        self.db.execute("CREATE TABLE rejects (file INTEGER, row INTEGER, line INTEGER, name TEXT, reason TEXT, "
                        "message TEXT, raw BLOB)")
        self.db.execute("CREATE TABLE roles (id TEXT NOT NULL, role TEXT NOT NULL, PRIMARY KEY (id, role)) "
                        "WITHOUT ROWID")
        self.db.execute("BEGIN")

    def add(self, rows: list[Row]) -> None:
        self.db.executemany("INSERT INTO msgs VALUES (?, ?, ?, ?)", rows)

    def add_roles(self, pairs: list[tuple[str, str]]) -> None:
        self.db.executemany("INSERT OR IGNORE INTO roles VALUES (?, ?)", pairs)

    def roles_of(self, legacy_id: str) -> frozenset[str]:
        return frozenset(r for (r,) in self.db.execute("SELECT role FROM roles WHERE id = ?", (legacy_id,)))

    def add_rejects(self, rejects: list[tuple[int, Reject]]) -> None:
        self.db.executemany("INSERT INTO rejects VALUES (?, ?, ?, ?, ?, ?, ?)", [
            (i, r.row, r.line, r.file, r.reason, r.message, orjson.dumps(r.raw)) for i, r in rejects])

    def finish_loading(self) -> None:
        self.db.execute("COMMIT")

    def groups(self) -> Iterator[tuple[str, list[tuple[int, int, bytes]]]]:
        """(thread key, [(sent µs, input order, data), ...]) per key, keys in order, rows by (sent, order)."""
        cursor = self.db.execute("SELECT key, sent, seq, data FROM msgs ORDER BY key, sent, seq")
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

    def rejects(self) -> Iterator[tuple[int, Reject]]:
        """(input index, reject), ordered by input and row."""
        for file, name, row, line, reason, message, raw in self.db.execute(
                "SELECT file, name, row, line, reason, message, raw FROM rejects ORDER BY file, row"):
            yield file, Reject(name, row, line, reason, message, orjson.loads(raw))

    def close(self) -> None:
        try:
            self.db.close()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> GroupStore:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def stats(self) -> dict[str, Any]:
        size = sum(p.stat().st_size for p in self.dir.iterdir() if p.is_file())
        return {"dir": str(self.dir), "bytes": size}
