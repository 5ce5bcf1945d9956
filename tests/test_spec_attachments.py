"""What a spec can make us read: regular files only, opened without waiting, bounded in size even when
they grow, from the spec's own folder unless allowed; stdin read once and bounded. (The commands' refusals are
rows of tests/test_bad_input.py.)"""

from __future__ import annotations

import io
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from bundler.bundle_files import build_files
from bundler.check.files import validate_files
from bundler.cli import main
from bundler.errors import SpecError
from bundler.spec import attachments, load_specs
from bundler.spec.attachments import Refused, outside, read_regular, read_stdin

SPEC = """thread: f
topic: t
participants: {a: {reference: Patient/1}}
messages:
  - {sender: a, sent: 2024-01-01T00:00:00Z, attachments: [{file: %s}]}
"""


def _spec(folder: Path, file: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "t.yaml"
    path.write_text(SPEC % json.dumps(file))
    return path


# --- only regular files, bounded ---------------------------------------------------------------------------

def test_a_named_pipe_is_looked_at_not_opened(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    os.mkfifo(tmp_path / "pipe")
    opened: list[Any] = []
    monkeypatch.setattr(os, "open", lambda *args: opened.append(args))
    with pytest.raises(Refused, match=r"^is a named pipe \(FIFO\), not a regular file$"):
        read_regular(tmp_path / "pipe", 10)
    assert opened == []


def test_a_file_swapped_for_a_pipe_after_it_was_looked_at_is_refused_once_open(tmp_path: Path,
                                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    os.mkfifo(tmp_path / "pipe")
    (tmp_path / "file").write_bytes(b"x")
    real_stat = os.stat
    monkeypatch.setattr(os, "stat", lambda path, **kw: real_stat(tmp_path / "file"))  # it looked regular...
    with pytest.raises(Refused, match="named pipe"):  # ...but what was opened (without waiting) is not
        read_regular(tmp_path / "pipe", 10)


def test_a_file_over_the_limit_is_refused_by_its_size(tmp_path: Path) -> None:
    (tmp_path / "big").write_bytes(b"x" * 11)
    with pytest.raises(Refused, match=r"^is 11 bytes: a file attachment may have at most 10 "):  # (fstat's size)
        read_regular(tmp_path / "big", 10)
    assert read_regular(tmp_path / "big", 11) == b"x" * 11


def test_a_file_that_grows_while_read_is_read_no_further_than_the_limit(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "growing").write_bytes(b"x" * 1000)  # what it holds once read; fstat saw it at 5 bytes
    real_fstat = os.fstat
    monkeypatch.setattr(os, "fstat", lambda fd: os.stat_result((*real_fstat(fd)[:6], 5, *real_fstat(fd)[7:])))
    with pytest.raises(Refused, match=r"^grew past 10 bytes \(MAX_ATTACHMENT_FILE_BYTES\) while it was read"):
        read_regular(tmp_path / "growing", 10)

    class Growing(io.RawIOBase):  # a megabyte where 5 bytes were seen: only what the limit needs is asked for
        def __init__(self) -> None:
            self.given = 0

        def readable(self) -> bool:
            return True

        def readinto(self, buffer: Any) -> int:
            n = min(len(buffer), 1_000_000 - self.given)
            buffer[:n] = bytes(n)
            self.given += n
            return n

    raw = Growing()
    with pytest.raises(Refused, match="grew past 10 bytes"):
        attachments._bounded(io.BufferedReader(raw, buffer_size=4), 10, 5)
    assert raw.given <= 11 + 4


def test_a_spec_file_has_no_size_limit_but_must_be_regular(tmp_path: Path) -> None:
    (tmp_path / "t.yaml").write_bytes(b"x" * 1000)
    assert len(read_regular(tmp_path / "t.yaml")) == 1000
    with pytest.raises(Refused, match=r"^is a folder, not a file$"):
        read_regular(tmp_path)
    with pytest.raises(FileNotFoundError):
        read_regular(tmp_path / "missing.yaml")


# --- stdin: read once, bounded ------------------------------------------------------------------------------

def _stdin(monkeypatch: pytest.MonkeyPatch, data: bytes) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))


def test_stdin_is_read_once_and_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    _stdin(monkeypatch, b"hello")
    assert read_stdin(5) == b"hello"
    assert read_stdin(5) == b"hello"  # the second file: - attaches the same bytes, not what is left (nothing)
    _stdin(monkeypatch, b"x" * 6)
    with pytest.raises(Refused, match=r"^reads stdin, which holds more than 5 bytes"):
        read_stdin(5)


def test_file_dash_in_a_spec_read_from_stdin_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["build", "-", "--ndjson"], input=SPEC % "'-'")
    assert result.exit_code == 2, result.output
    assert "<stdin>:5:" in result.stderr
    assert "messages[1].attachments[1].file: '-' reads stdin, which a spec was read from" in result.stderr


def test_file_dash_attaches_stdin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(attachments, "_stdin", None)
    _spec(tmp_path, "-")
    _stdin(monkeypatch, b"piped bytes")
    (spec,) = load_specs([tmp_path / "t.yaml"])
    assert list(spec.files.values()) == [b"piped bytes"]
    assert spec.messages[0].attachments[0].size == len(b"piped bytes")


# --- from the spec's folder only, unless allowed ------------------------------------------------------------

@pytest.mark.parametrize("name, says", [
    ("/etc/hostname", "'/etc/hostname' is outside the spec's folder"),
    ("../secret.txt", "'../secret.txt' is outside the spec's folder"),
    ("sub/../../secret.txt", "'sub/../../secret.txt' is outside the spec's folder"),
    ("..", "'..' is outside the spec's folder"),
    ("link", "'link' is a link to {tmp}/secret.txt, outside the spec's folder"),
    ("in-link/secret.txt", "'in-link/secret.txt' is a link to {tmp}/secret.txt, outside the spec's folder"),
])
def test_a_file_outside_the_spec_s_folder_is_refused(tmp_path: Path, name: str, says: str) -> None:
    (tmp_path / "secret.txt").write_text("secret")
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "link").symlink_to(tmp_path / "secret.txt")
    (folder / "in-link").symlink_to(tmp_path)
    assert outside(folder, name) == says.format(tmp=tmp_path) + f" ({folder}): a spec attaches files from its own " \
        "folder only; allow it with --allow-outside-files (allow_outside_files=True in the library)"


@pytest.mark.parametrize("name", ["a.txt", "sub/../a.txt", "./a.txt", "..a.txt", "inner-link", "sub/a.txt"])
def test_a_file_inside_the_spec_s_folder_is_not_outside(tmp_path: Path, name: str) -> None:
    (tmp_path / "real").mkdir()
    folder = tmp_path / "spec-folder"
    folder.symlink_to(tmp_path / "real")  # the spec's folder may itself be a link
    (folder / "sub").mkdir()
    (folder / "inner-link").symlink_to(folder / "sub")
    assert outside(folder, name) is None
    assert outside(Path(os.path.relpath(folder)), name) is None


def test_every_library_function_that_reads_specs_refuses_outside_files_unless_allowed(tmp_path: Path) -> None:
    (tmp_path / "secret.txt").write_text("secret")
    spec = _spec(tmp_path / "in", "../secret.txt")
    calls = {"load_specs": lambda **kw: load_specs([spec], **kw),
             "build_files": lambda **kw: build_files([spec], out=tmp_path / "out", **kw),
             "validate_files": lambda **kw: validate_files([spec], structure=False, **kw)}
    for name, call in calls.items():
        with pytest.raises(SpecError) as info:
            call()
        (problem,) = info.value.problems
        assert (problem.file, problem.line, problem.path) == (str(spec), 5, "messages[1].attachments[1].file"), name
        assert "outside the spec's folder" in problem.message, name
        call(allow_outside_files=True)
    (loaded,) = load_specs([spec], allow_outside_files=True)
    assert list(loaded.files.values()) == [b"secret"]


def test_a_spec_from_stdin_attaches_files_of_the_current_folder_only(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "secret.txt").write_text("secret")
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.txt").write_text("a")
    monkeypatch.chdir(tmp_path / "in")
    refused = CliRunner().invoke(main, ["build", "-", "--ndjson"], input=SPEC % "../secret.txt")
    assert refused.exit_code == 2
    assert "<stdin>:5:" in refused.stderr and "'../secret.txt' is outside the spec's folder" in refused.stderr
    taken = CliRunner().invoke(main, ["build", "-", "--ndjson"], input=SPEC % "a.txt")
    assert taken.exit_code == 0, taken.output
