"""The journal's lock is the real file's: every path to one journal meets the same lock."""

from __future__ import annotations

import functools
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from bundler.errors import JournalBusy, JournalError
from bundler.load.journal import Entry, Journal, State

TARGET = "http://127.0.0.1:8103/|urn:thread-bundler:thread"


def _journal(path: Path) -> Journal:
    journal = Journal(path, TARGET)
    journal.put(Entry("t1", State.COMMITTED, "f"))  # (the file exists from the first record on)
    return journal


@pytest.mark.parametrize("other", ["symlink", "relative", "dotted", "symlinked folder", "symlink to a symlink"])
def test_every_path_to_one_journal_meets_its_lock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  other: str) -> None:
    folder = tmp_path / "runs"
    folder.mkdir()
    journal = folder / "j.sqlite"
    monkeypatch.chdir(folder)
    if other == "symlink":
        (tmp_path / "link.sqlite").symlink_to(journal)
        second = tmp_path / "link.sqlite"
    elif other == "relative":
        second = Path("j.sqlite")
    elif other == "dotted":
        second = Path("./j.sqlite")
    elif other == "symlinked folder":
        (tmp_path / "alias").symlink_to(folder, target_is_directory=True)
        second = tmp_path / "alias" / "j.sqlite"
    else:
        (tmp_path / "a.sqlite").symlink_to(journal)
        (tmp_path / "b.sqlite").symlink_to(tmp_path / "a.sqlite")
        second = tmp_path / "b.sqlite"
    with _journal(journal):
        with pytest.raises(JournalBusy) as busy:
            Journal(second, TARGET)
        assert "in use by another load (thread-bundler load: process" in str(busy.value)
        if other not in ("relative", "dotted"):
            assert f"{second} (the file {journal})" in str(busy.value), "it names the file it found locked"
    with Journal(second, TARGET) as again:  # (released: the second one gets it, and reads the same rows)
        assert again.get_many(["t1"])["t1"].state == State.COMMITTED


def test_a_symlink_to_a_journal_not_made_yet_locks_the_file_it_will_be(tmp_path: Path) -> None:
    (tmp_path / "link.sqlite").symlink_to(tmp_path / "j.sqlite")
    with _journal(tmp_path / "link.sqlite"):
        assert (tmp_path / "j.sqlite").is_file() and (tmp_path / "j.sqlite.lock").is_file()
        assert not (tmp_path / "link.sqlite.lock").exists()
        with pytest.raises(JournalBusy):
            Journal(tmp_path / "j.sqlite", TARGET)


def test_a_journal_with_two_names_is_refused_for_writing(tmp_path: Path) -> None:
    with _journal(tmp_path / "j.sqlite"):
        pass
    os.link(tmp_path / "j.sqlite", tmp_path / "copy.sqlite")
    for name in ("j.sqlite", "copy.sqlite"):
        with pytest.raises(JournalError) as refused:
            Journal(tmp_path / name, TARGET)
        assert "has 2 names (hard links)" in str(refused.value) and "nothing was sent" in str(refused.value)
        assert not isinstance(refused.value, JournalBusy)
        assert not (tmp_path / f"{name}.lock").exists(), "the lock is let go"
    with Journal(tmp_path / "copy.sqlite", TARGET, read_only=True) as read:  # a dry run only reads: it may
        assert read.get_many(["t1"])["t1"].state == State.COMMITTED
    (tmp_path / "copy.sqlite").unlink()
    with Journal(tmp_path / "j.sqlite", TARGET):
        pass


def test_a_symlink_loop_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "a.sqlite").symlink_to(tmp_path / "b.sqlite")
    (tmp_path / "b.sqlite").symlink_to(tmp_path / "a.sqlite")
    with pytest.raises(JournalError) as refused:
        Journal(tmp_path / "a.sqlite", TARGET)
    assert f"cannot use the journal {tmp_path / 'a.sqlite'}" in str(refused.value)
    assert "nothing was sent" in str(refused.value)


def test_a_note_on_a_committed_row_is_kept_and_cleared(tmp_path: Path) -> None:
    with _journal(tmp_path / "j.sqlite") as journal:
        journal.note("t1", "duplicates: 2 of its resources are on the server more than once")
        assert journal.get_many(["t1"])["t1"].error == "duplicates: 2 of its resources are on the server more than once"
        journal.note("t1", None)
        entry = journal.get_many(["t1"])["t1"]
        assert entry.error is None and entry.state == State.COMMITTED


def _together(journal: Journal, calls: list[Callable[[], None]]) -> None:
    """Run `calls` (each a write) on threads of their own while the journal's lock is held (as if a write were under
    way), wait until every one is queued behind it (each queues before it takes the lock), then let them go."""
    journal._lock.acquire()
    workers = [threading.Thread(target=call) for call in calls]
    for w in workers:
        w.start()
    deadline = time.monotonic() + 30
    while len(journal._queued) < len(calls):
        assert time.monotonic() < deadline, f"{len(journal._queued)} of {len(calls)} writes queued"
        time.sleep(0.001)
    journal._lock.release()
    for w in workers:
        w.join()


def test_writes_asked_for_meanwhile_share_one_transaction_and_all_land(tmp_path: Path) -> None:
    """A load's workers each record their thread as it commits: while one writes, the others' writes queue, and
    the next to take the lock writes them all in one transaction (a group commit). Each put returns only once its
    rows are in."""
    with Journal(tmp_path / "j.sqlite", TARGET) as journal:
        groups: list[int] = []
        write_group = journal._write_group
        journal._write_group = lambda group: (groups.append(len(group)), write_group(group))[1]  # type: ignore
        entries = [Entry(f"t{n}", State.COMMITTED, "f", {f"urn:uuid:{n}": f"Communication/c{n}"}, [], None,
                         {f"urn:uuid:{n}": ["1", f"h{n}"]}) for n in range(6)]
        _together(journal, [functools.partial(journal.put, e) for e in entries])
        assert groups == [6], "the six writes queued meanwhile went in one transaction"
        rows = journal.get_many([e.key for e in entries])
        assert {k: (r.ids, r.entries) for k, r in rows.items()} == {e.key: (e.ids, e.entries) for e in entries}


def test_a_failed_group_fails_every_write_in_it_and_records_none(tmp_path: Path) -> None:
    with Journal(tmp_path / "j.sqlite", TARGET) as journal:
        journal.put(Entry("before", State.COMMITTED, "f"))
        good = [Entry(f"t{n}", State.COMMITTED, "f") for n in range(3)]
        bad = Entry("bad", None, "f")  # type: ignore[arg-type]  # (NOT NULL: the transaction fails)
        errors: dict[str, BaseException] = {}

        def put(entry: Entry) -> None:
            try:
                journal.put(entry)
            except BaseException as exc:  # (what each writer was told)
                errors[entry.key] = exc

        _together(journal, [functools.partial(put, e) for e in [*good, bad]])
        assert set(errors) == {"t0", "t1", "t2", "bad"}, "every write of the group was told it failed"
        assert all(isinstance(e, sqlite3.IntegrityError) for e in errors.values())
        assert set(journal.get_many(["before", "t0", "t1", "t2", "bad"])) == {"before"}, "none of it recorded"
        journal.put(Entry("after", State.COMMITTED, "f"))  # (the journal goes on)
        assert set(journal.get_many(["after"])) == {"after"}
