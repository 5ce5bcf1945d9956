"""How the commands write numbers, summaries and progress: one way everywhere (bundler.cli.display)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from bundler.cli.display import Bar, count, duration, path, problems_summary, table
from bundler.errors import Problem


def test_count_writes_thousands_and_plurals() -> None:
    assert [count(0), count(1013), count(1_000_000)] == ["0", "1,013", "1,000,000"]
    assert [count(1, "thread"), count(2, "thread"), count(1000, "entry", "entries")] == [
        "1 thread", "2 threads", "1,000 entries"]


def test_tables_write_numbers_as_count_does() -> None:
    text = table(["outcome", "threads"], [["loaded", 1000], ["failed", 13]])
    assert text.splitlines()[2:] == ["loaded     1,000", "failed        13"]


def test_durations_are_never_negative() -> None:
    assert [duration(-0.4), duration(-5), duration(75.4), duration(3725)] == ["0:00", "0:00", "1:15", "1:02:05"]


def test_the_last_progress_line_says_done_not_an_eta() -> None:
    out = io.StringIO()
    bar = Bar("loading", 2, 1013, stream=out, live=False, every=0)
    bar.advance(1000)
    bar.advance(13, failed=True)
    first, last = out.getvalue().splitlines()
    assert "1/2 threads · 1,000/1,013 messages" in first and "ETA " in first
    assert "2/2 threads · 1,013/1,013 messages" in last and "done in 0:00" in last and "ETA" not in last
    assert last.endswith("· 1 failed")


def test_problem_summaries_name_folders_as_folders(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    folder, file = str(tmp_path / "in"), str(tmp_path / "t.yaml")
    assert problems_summary([Problem(folder, None, None, "", "folder has no *.yaml files")]) == "1 problem in 1 folder"
    assert problems_summary([Problem(file, 1, 1, "", "x"), Problem(file, 2, 1, "", "y"),
                             Problem(folder, None, None, "", "z")]) == "3 problems in 1 file and 1 folder"
    assert problems_summary([Problem("", None, None, "", "x")]) == "1 problem"


def test_paths_are_shown_relative_to_the_current_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert path(tmp_path / "threads.journal.sqlite") == "threads.journal.sqlite"
    assert path("threads/a.yaml") == "threads/a.yaml"
    assert path("/") == "/"


class _Terminal(io.StringIO):
    """A terminal of `width` columns, as far as a Bar can tell."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.width = width

    def isatty(self) -> bool:
        return True

    def fileno(self) -> int:
        raise io.UnsupportedOperation("no descriptor")


def test_a_live_line_is_cleared_before_it_is_rewritten_and_never_wider_than_the_terminal(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    out = _Terminal(80)
    bar = Bar("loading", 1, 3, stream=out)
    bar.start("reading the journal and looking for the threads on the server, which takes a while on a large one")
    bar.advance(3)
    bar.close()
    writes = out.getvalue().split("\r\x1b[2K")[1:]
    assert len(writes) == 3 and all(len(w.rstrip("\n")) < 80 for w in writes), writes
    assert writes[0].endswith("…") and writes[-1].endswith("done in 0:00\n")
    assert writes[0].startswith("[" + "." * 10)  # the bar is empty at the start


def test_a_bar_without_a_total_shows_no_bar_and_ends_its_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """export: how many threads there are is not known, so no bar (it was full from the start), and the table
    that follows starts on a line of its own."""
    monkeypatch.setenv("COLUMNS", "120")
    out = _Terminal(120)
    bar = Bar("exporting", 0, 0, stream=out)
    bar.start()
    bar.advance(1)
    bar.close()
    text = out.getvalue()
    assert "[#" not in text and "[." not in text and "exporting 1 thread · 1 message ·" in text and text.endswith("\n")
    assert "exporting 0 threads" in text


def test_a_bar_can_count_files_without_messages() -> None:
    out = io.StringIO()
    bar = Bar("validating", 2, None, stream=out, live=False, every=0, unit="file")
    bar.advance()
    assert "validating 1/2 files · " in out.getvalue() and "message" not in out.getvalue()
