"""`migrate` over several processes: the pool, its failures, its progress, and what crosses between processes."""

from __future__ import annotations

import os
import pickle
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from bundler.cli.migrate import migrate_command
from bundler.errors import BundlerError, Problem, SpecError
from bundler.migrate import Progress, RowRejected, ThreadStream, migrate, pipeline
from bundler.migrate.grouping import GroupStore, max_stores
from bundler.migrate.rejects import Reject

REPO = Path(__file__).resolve().parent.parent
LEGACY = REPO / "fixtures" / "legacy"
EXPORT, MAPPING = LEGACY / "export.csv", LEGACY / "mapping.yaml"

sys.path.insert(0, str(REPO / "bench"))
from legacy_export import MAPPING as SYNTHETIC_MAPPING  # noqa: E402
from legacy_export import write_export  # noqa: E402

real_load_rows = ThreadStream.load_rows
real_threads_from = ThreadStream.threads_from


def _nothing_left(tmp_path: Path, *expected: str) -> None:
    """Only `expected` names in tmp_path (no output, no reject file, no temporary file), the work dir empty."""
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["work", *expected])
    assert list((tmp_path / "work").iterdir()) == []


def _synthetic(tmp_path: Path, rows: int = 3000, conversations: int = 200) -> tuple[Path, Path]:
    export, mapping = tmp_path / "in" / "e.csv", tmp_path / "in" / "m.yaml"
    export.parent.mkdir()
    write_export(export, rows, conversations, bad_share=0.05, seed=21)
    mapping.write_text(SYNTHETIC_MAPPING, encoding="utf-8")
    return export, mapping


# --- failures: the run fails with a clear error, nothing written, nothing left ------------------------


@pytest.mark.parametrize("to", ["ndjson", "specs"])
@pytest.mark.parametrize("step", ["load", "assemble"])
def test_a_worker_that_raises_fails_the_run_with_a_bundler_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 to: str, step: str) -> None:
    def load_rows(self: ThreadStream, store: GroupStore, share: tuple[int, int] = (0, 1)) -> list[str]:
        if share[0] == 1:
            raise ValueError("worker 1 broke")
        return real_load_rows(self, store, share)

    def threads_from(self: ThreadStream, store: Any) -> Iterator[Any]:
        if store.own == 1:
            raise ValueError("worker 1 broke")
        return real_threads_from(self, store)

    if step == "load":
        monkeypatch.setattr(ThreadStream, "load_rows", load_rows)  # the forked pool runs this too
    else:
        monkeypatch.setattr(ThreadStream, "threads_from", threads_from)
    with pytest.raises(BundlerError, match="migrate worker 1 failed: ValueError: worker 1 broke") as info:
        migrate([EXPORT], MAPPING, to=to, out=tmp_path / "out", workers=2, work_dir=tmp_path / "work")
    assert isinstance(info.value.__cause__, ValueError)
    if to == "specs" and step == "assemble":  # the folder is made before step 2 writes (as in one process): empty
        assert list((tmp_path / "out").iterdir()) == []
        (tmp_path / "out").rmdir()
    _nothing_left(tmp_path)


def test_a_worker_that_dies_fails_the_run_with_a_bundler_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                               ) -> None:
    def load_rows(self: ThreadStream, store: GroupStore, share: tuple[int, int] = (0, 1)) -> list[str]:
        if share[0] == 1:
            os._exit(3)  # as if killed: no exception, no result
        return real_load_rows(self, store, share)

    monkeypatch.setattr(ThreadStream, "load_rows", load_rows)
    with pytest.raises(BundlerError, match="a migrate worker process died"):
        migrate([EXPORT], MAPPING, to="ndjson", out=tmp_path / "o.ndjson", workers=3, work_dir=tmp_path / "work")
    _nothing_left(tmp_path)


def test_the_cli_reports_a_failed_worker_in_one_line_not_a_traceback(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    def load_rows(self: ThreadStream, store: GroupStore, share: tuple[int, int] = (0, 1)) -> list[str]:
        if share[0] == 1:
            raise ValueError("worker 1 broke")
        return real_load_rows(self, store, share)

    monkeypatch.setattr(ThreadStream, "load_rows", load_rows)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)  # the CLI's default: 2 processes here too
    result = CliRunner().invoke(migrate_command, [str(EXPORT), "--mapping", str(MAPPING), "--to", "ndjson",
                                                  str(tmp_path / "o.ndjson"), "--work-dir", str(tmp_path / "work")])
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    assert result.stderr == "error: migrate worker 1 failed: ValueError: worker 1 broke\n"
    _nothing_left(tmp_path)


def test_a_spec_error_in_a_worker_reaches_the_caller_with_its_problems(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A SpecError crosses from a worker with its problems (pickled as problems, not as a string): a worker's
    unreadable input is a SpecError in the parent, never an AttributeError."""
    problem = Problem(str(EXPORT), 9, None, "", "cannot read on: truncated")

    def load_rows(self: ThreadStream, store: GroupStore, share: tuple[int, int] = (0, 1)) -> list[str]:
        if share[0] == 1:
            raise SpecError([problem])
        return real_load_rows(self, store, share)

    monkeypatch.setattr(ThreadStream, "load_rows", load_rows)
    with pytest.raises(SpecError) as info:
        migrate([EXPORT], MAPPING, to="ndjson", out=tmp_path / "o.ndjson", workers=2, work_dir=tmp_path / "work")
    assert info.value.problems == [problem]
    _nothing_left(tmp_path)


def test_errors_of_ours_cross_processes_intact() -> None:
    spec_error = SpecError([Problem("b.csv", 2, 3, "x", "two"), Problem("a.csv", 1, None, "", "one")])
    back = pickle.loads(pickle.dumps(spec_error))
    assert type(back) is SpecError and back.problems == spec_error.problems and str(back) == str(spec_error)
    rejected = RowRejected(Reject("a.csv", 5, 7, "missing-sender", "no sender id", ["x"]))
    back_rejected = pickle.loads(pickle.dumps(rejected))
    assert back_rejected.reject == rejected.reject and str(back_rejected) == str(rejected)


def test_when_this_process_fails_the_workers_are_stopped_before_it_returns(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Worker 1 reports progress until it is told to stop (it would go on for a minute otherwise); the parent
    fails in its own share. The worker was stopped by the time migrate raises, and nothing is left."""
    marker = tmp_path / "stopped"

    def load_rows(self: ThreadStream, store: GroupStore, share: tuple[int, int] = (0, 1)) -> list[str]:
        if share[0] == 0:
            raise ValueError("this process broke")
        import time
        deadline = time.monotonic() + 60
        assert self.progress is not None
        while time.monotonic() < deadline:
            try:
                self.progress(Progress("reading", 1, 0, 0, 0.0))
            except pipeline.Stopped:
                marker.write_text("stopped")
                raise
        return real_load_rows(self, store, share)

    monkeypatch.setattr(ThreadStream, "load_rows", load_rows)
    with pytest.raises(ValueError, match="this process broke"):
        migrate([EXPORT], MAPPING, to="ndjson", out=tmp_path / "o.ndjson", workers=2, work_dir=tmp_path / "work")
    assert marker.read_text() == "stopped"
    marker.unlink()
    _nothing_left(tmp_path)


# --- same bytes, however the processes start and however many there are -------------------------------


def test_workers_started_by_spawn_give_the_same_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing a worker needs comes from fork: tasks, arguments and results all cross by pickling."""
    export, mapping = _synthetic(tmp_path)
    one = migrate([export], mapping, to="ndjson", out=tmp_path / "1.ndjson", rejects=tmp_path / "1.csv", workers=1)
    monkeypatch.setattr(pipeline, "START_METHOD", "spawn")
    many = migrate([export], mapping, to="ndjson", out=tmp_path / "3.ndjson", rejects=tmp_path / "3.csv", workers=3)
    assert (tmp_path / "3.ndjson").read_bytes() == (tmp_path / "1.ndjson").read_bytes()
    assert (tmp_path / "3.csv").read_bytes() == (tmp_path / "1.csv").read_bytes()
    assert (many.rows_read, many.messages, many.threads, many.rejects) == \
        (one.rows_read, one.messages, one.threads, one.rejects)


def test_more_workers_than_sqlite_can_attach_stores(tmp_path: Path) -> None:
    """More workers asked for than SQLite can attach stores (`max_stores`) run as that many: the same output, never
    sqlite3.OperationalError (too many attached databases)."""
    limit = max_stores()
    export, mapping = _synthetic(tmp_path, rows=600, conversations=40)
    one = migrate([export], mapping, to="ndjson", out=tmp_path / "1.ndjson", workers=1)
    many = migrate([export], mapping, to="ndjson", out=tmp_path / "n.ndjson", workers=limit + 2)
    assert (tmp_path / "n.ndjson").read_bytes() == (tmp_path / "1.ndjson").read_bytes()
    assert (tmp_path / "n.ndjson.rejects.jsonl").read_bytes() == (tmp_path / "1.ndjson.rejects.jsonl").read_bytes()
    assert many.messages == one.messages and many.rejects == one.rejects
    assert len(many.peak_rss) <= limit


# --- progress ------------------------------------------------------------------------------------------


def test_progress_of_a_parallel_run_counts_every_process_and_ends_with_the_summary(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("bundler.migrate.stream.PROGRESS_EVERY", 500)  # rows; forked workers see it too
    monkeypatch.setattr("bundler.migrate.stream.PROGRESS_SECONDS", 0.0)  # while assembling: every thread
    export, mapping = _synthetic(tmp_path, rows=6000, conversations=400)
    seen: list[Progress] = []
    summary = migrate([export], mapping, to="ndjson", out=tmp_path / "o.ndjson", workers=3, progress=seen.append)
    phases = [p.phase for p in seen]
    assert phases[-1] == "done" and phases.count("done") == 1
    assert "reading" in phases and "writing" in phases
    assert phases.index("writing") > max(i for i, ph in enumerate(phases) if ph == "reading")  # reading, then writing
    last = seen[-1]
    assert (last.rows, last.messages, last.threads) == (summary.rows_read, summary.messages, summary.threads)
    rows = [p.rows for p in seen]
    assert rows == sorted(rows) and 0 < rows[0] < summary.rows_read  # live: partial counts came first
    writing = [p.messages for p in seen if p.phase == "writing"]
    assert writing == sorted(writing) and writing[-1] == summary.messages
    assert any(0 < m < summary.messages for m in writing)  # live while assembling too
    assert all(p.rows == summary.rows_read for p in seen if p.phase == "writing")


def test_the_cli_progress_line_ends_with_the_totals(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    result = CliRunner().invoke(migrate_command, [str(EXPORT), "--mapping", str(MAPPING), "--to", "ndjson",
                                                  str(tmp_path / "o.ndjson"), "--progress"])
    assert result.exit_code == 1, result.output  # the fixture has rejected rows
    assert "done: 23 rows read, 14 messages in 4 threads" in result.stderr


def test_no_scratch_is_left_beside_the_output_or_in_the_work_dir(tmp_path: Path) -> None:
    work = tmp_path / "work"
    migrate([EXPORT], MAPPING, to="ndjson", out=tmp_path / "out-ndjson", workers=2, work_dir=work)
    migrate([EXPORT], MAPPING, to="specs", out=tmp_path / "out-specs", workers=2, work_dir=work)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out-ndjson", "out-ndjson.rejects.jsonl", "out-specs",
                                                          "out-specs.rejects.jsonl", "work"]
    assert not [p for p in (tmp_path / "out-specs").iterdir() if p.name.startswith(".")]
    assert list(work.iterdir()) == []
    shutil.rmtree(work)
