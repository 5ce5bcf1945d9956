"""Folders of spec files stream (`bundler.spec.files.SpecStream`): every file is checked before anything is sent,
then the files are read again one at a time as their threads are sent; an attached file's bytes are read when its
request is made. Observed through hooks on the readers and the server's answers, never the clock."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
from loadkit import client_for, copies

import bundler.spec.attachments
import bundler.spec.files
from bundler import SpecError, load_specs, parse_spec
from bundler.bundle_files import build_files
from bundler.errors import BundlerError
from bundler.load import Outcome, load
from bundler.load.report import LoadWatcher, ThreadResult
from bundler.spec.attachments import Changed
from bundler.spec.files import SpecStream
from bundler.testing.strategies import sample_specs
from bundler.vocabulary import MAX_INLINE_FILE_BYTES


def write_files(folder: Path, prefix: str, files: int, threads: int, *, seed: int = 31) -> list[Path]:
    """`files` spec files (a-…, b-…) of `threads` threads each (2 messages a thread)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for n in range(files):
        data = sample_specs(threads, 2, prefix=f"{prefix}-{'abcdefgh'[n]}", seed=seed + n)
        path = folder / f"{'abcdefgh'[n]}.json"
        path.write_text(json.dumps(data, indent=1))
        paths.append(path)
    return paths


def keys_of(path: Path) -> list[str]:
    return [t["thread"] for t in json.loads(path.read_text())]


@pytest.fixture
def parses(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """("parse", file name) each time a spec file is parsed."""
    events: list[tuple[str, str]] = []
    real = bundler.spec.files.parse_text

    def parse_text(text: str, file: str, **kw: Any) -> Any:
        events.append(("parse", Path(file).name))
        return real(text, file, **kw)

    monkeypatch.setattr(bundler.spec.files, "parse_text", parse_text)
    return events


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """("read", file name) each time an attached file (not a spec) is read."""
    events: list[tuple[str, str]] = []
    real = bundler.spec.attachments.read_regular

    def read_regular(path: Any, limit: int | None = None) -> bytes:
        if limit is not None:  # (a spec file is read without a limit)
            events.append(("read", Path(path).name))
        return real(path, limit)

    monkeypatch.setattr(bundler.spec.attachments, "read_regular", read_regular)
    return events


def telling(events: list[Any]) -> LoadWatcher:
    def on_thread(result: ThreadResult, messages: int) -> None:
        events.append(("sent", result.key))

    return LoadWatcher(on_thread=on_thread)


# --- without a server -------------------------------------------------------------------------------------


def test_the_stream_is_checked_whole_when_made_and_counts_what_it_holds(tmp_path: Path,
                                                                        parses: list[tuple[str, str]]) -> None:
    write_files(tmp_path, "s", 3, 4)
    stream = SpecStream([tmp_path])
    assert parses == [("parse", "a.json"), ("parse", "b.json"), ("parse", "c.json")]
    assert (stream.threads, stream.messages, len(stream)) == (12, 24, 12)
    parses.clear()
    first = next(iter(stream))
    assert first.key == "s-a-31-0" and parses == [("parse", "a.json")]  # b and c not read for a's threads
    assert [s.key for s in stream] == [s.key for s in load_specs([tmp_path])]


def test_a_bad_spec_in_the_last_file_stops_the_stream_before_it_gives_a_thread(tmp_path: Path) -> None:
    paths = write_files(tmp_path, "s", 3, 2)
    data = json.loads(paths[2].read_text())
    data[1]["messages"][0]["sent"] = "yesterday"
    paths[2].write_text(json.dumps(data, indent=1))
    with pytest.raises(SpecError) as raised:
        SpecStream([tmp_path])
    assert [(Path(p.file).name, p.path) for p in raised.value.problems] == [("c.json", "[2].messages[1].sent")]


def test_a_key_used_twice_across_files_names_the_first_at_its_line(tmp_path: Path) -> None:
    """The keys are kept on disk, not the specs: the first one's line is found again when a key repeats (a JSON
    file is read without positions)."""
    paths = write_files(tmp_path, "s", 2, 3)
    first, second = json.loads(paths[0].read_text()), json.loads(paths[1].read_text())
    second[2]["thread"] = first[1]["thread"].upper()
    paths[1].write_text(json.dumps(second, indent=1))
    with pytest.raises(SpecError) as raised:
        SpecStream([tmp_path])
    [problem] = raised.value.problems
    assert problem.file == str(paths[1]) and "differs only in case" in problem.message
    assert re.search(re.escape(f"({paths[0]}:") + r"\d+\)", problem.message), problem.message


def test_a_file_changed_between_the_passes_stops_before_its_threads(tmp_path: Path) -> None:
    paths = write_files(tmp_path, "s", 2, 2)
    stream = SpecStream([tmp_path])
    given = iter(stream)
    assert [next(given).key, next(given).key] == keys_of(paths[0])
    paths[1].write_text(paths[1].read_text().replace("Thread 1", "Thread one"))
    with pytest.raises(Changed) as raised:
        next(given)
    assert str(paths[1]) in str(raised.value) and "changed since it was checked" in str(raised.value)


def test_an_attached_file_is_hashed_when_checked_and_read_again_only_when_its_bytes_are_asked_for(
        tmp_path: Path, reads: list[tuple[str, str]]) -> None:
    (tmp_path / "scan.bin").write_bytes(os.urandom(3000))
    spec = {"thread": "att-1", "topic": "t", "participants": {"a": {"reference": "Patient/a"}},
            "messages": [{"id": "m0", "sender": "a", "sent": "2024-01-01T00:00:00Z",
                          "attachments": [{"file": "scan.bin"}]},
                         {"id": "m1", "sender": "a", "sent": "2024-01-01T00:01:00Z",
                          "attachments": [{"file": "scan.bin"}]}]}
    (tmp_path / "t.json").write_text(json.dumps(spec))
    stream = SpecStream([tmp_path])
    assert reads == [("read", "scan.bin")]  # checked (size, hash) once for both attachments
    [loaded] = list(stream)
    assert reads == [("read", "scan.bin")]  # the second pass takes the figures the check found
    assert loaded.files[loaded.messages[0].attachments[0].hash or ""] == (tmp_path / "scan.bin").read_bytes()
    assert reads == [("read", "scan.bin")] * 2
    (tmp_path / "scan.bin").write_bytes(b"other bytes")
    with pytest.raises(Changed, match=r"scan\.bin: the attached file changed since its spec was checked"):
        loaded.files[loaded.messages[0].attachments[0].hash or ""]


def test_build_writes_nothing_when_a_later_file_holds_an_entry_too_large(tmp_path: Path) -> None:
    """build checks every bundle as it writes into a staging folder: nothing in `out` unless all are good."""
    paths = write_files(tmp_path / "in", "s", 2, 2)
    data = json.loads(paths[1].read_text())
    data[0]["messages"][0]["text"] = "x" * 1_100_000  # one entry over Medplum's 1 MB body
    paths[1].write_text(json.dumps(data))
    with pytest.raises(SpecError):
        build_files([tmp_path / "in"], out=tmp_path / "out")
    assert not list((tmp_path / "out").glob("*.json"))
    paths[1].write_text(json.dumps(json.loads(paths[0].read_text().replace("s-a", "s-b"))))
    summary = build_files([tmp_path / "in"], out=tmp_path / "out")
    assert (summary.threads, summary.messages, len(summary.files)) == (4, 8, 4)
    assert sorted(summary.files) == sorted((tmp_path / "out").glob("*.json"))


def test_a_given_spec_without_its_files_bytes_is_still_refused_at_build(tmp_path: Path) -> None:
    spec = parse_spec({"thread": "nf", "topic": "t", "participants": {"a": {"reference": "Patient/a"}},
                       "messages": [{"id": "m0", "sender": "a", "sent": "2024-01-01T00:00:00Z",
                                     "attachments": [{"file": "x.bin", "size": 3,
                                                      "hash": "qZk+NkcGgWq6PiVxeFDCbJzQ2J0="}]}]})
    with pytest.raises(SpecError, match="were not read"):
        bundler.build_bundle(spec)


# --- through a server -------------------------------------------------------------------------------------


def test_a_bad_spec_in_the_last_file_means_nothing_is_sent(project: Any, tmp_path: Path) -> None:
    paths = write_files(tmp_path / "threads", project.prefix, 3, 2)
    data = json.loads(paths[2].read_text())
    data[0]["participants"]["p0"]["reference"] = "Nothing/here"
    paths[2].write_text(json.dumps(data, indent=1))
    with client_for(project) as client:
        before = client.requests
        with pytest.raises(SpecError):
            load([tmp_path / "threads"], client, journal=tmp_path / "j.sqlite")
        assert client.requests == before  # not even a login or a search
        specs = [parse_spec(t) for t in json.loads(paths[0].read_text())]
        assert not any(copies(client, specs).values())


def test_the_second_file_is_not_read_before_the_first_files_threads_are_sent(
        project: Any, tmp_path: Path, parses: list[tuple[str, str]]) -> None:
    paths = write_files(tmp_path / "threads", project.prefix, 2, 2)
    events: list[Any] = parses
    with client_for(project) as client:
        report = load([tmp_path / "threads"], client, journal=tmp_path / "j.sqlite", window=2,
                      watcher=telling(events))
    assert report.ok and report.total == 4
    a, b = keys_of(paths[0]), keys_of(paths[1])
    checked = [("parse", "a.json"), ("parse", "b.json")]
    assert events[:2] == checked
    rest = events[2:]
    assert rest[0] == ("parse", "a.json")
    assert sorted(rest[1:3]) == sorted(("sent", k) for k in a)  # a's threads are in before b is read again
    assert rest[3] == ("parse", "b.json")
    assert sorted(rest[4:]) == sorted(("sent", k) for k in b)


def test_a_file_changed_during_the_load_stops_it_before_any_of_its_threads(project: Any, tmp_path: Path) -> None:
    paths = write_files(tmp_path / "threads", project.prefix, 2, 2)
    events: list[Any] = []
    watcher = telling(events)
    told = watcher.on_thread
    assert told is not None

    def on_thread(result: ThreadResult, messages: int) -> None:
        told(result, messages)
        if len(events) == 1:  # (while a's threads load: b is rewritten before the second pass reaches it)
            paths[1].write_text(paths[1].read_text().replace("Thread 0", "Thread zero"))

    with client_for(project) as client:
        with pytest.raises(BundlerError) as raised:
            load([tmp_path / "threads"], client, journal=tmp_path / "j.sqlite", window=2,
                 watcher=LoadWatcher(on_thread=on_thread))
        assert isinstance(raised.value, Changed) and str(paths[1]) in str(raised.value)
        assert "none of its threads is sent" in str(raised.value)
        a = [parse_spec(t) for t in json.loads(paths[0].read_text())]
        b = [parse_spec(t) for t in json.loads(paths[1].read_text())]
        assert set(copies(client, a).values()) == {1}
        assert set(copies(client, b).values()) == {0}


def test_a_large_files_bytes_are_read_when_its_upload_is_made(project: Any, tmp_path: Path,
                                                             reads: list[tuple[str, str]]) -> None:
    (tmp_path / "big.bin").write_bytes(os.urandom(MAX_INLINE_FILE_BYTES + 1000))
    (tmp_path / "small.bin").write_bytes(os.urandom(1000))
    spec = {"thread": f"{project.prefix}-files", "topic": "t",
            "participants": {"a": {"reference": f"Patient/{project.prefix}-a"}},
            "messages": [{"id": "m0", "sender": "a", "sent": "2024-01-01T00:00:00Z",
                          "attachments": [{"file": "big.bin"}, {"file": "small.bin"}]}]}
    (tmp_path / "t.json").write_text(json.dumps(spec))
    events: list[Any] = reads
    with client_for(project) as client:
        upload = client.upload_binary

        def upload_binary(data: bytes, content_type: str) -> str:
            events.append(("upload", len(data)))
            return upload(data, content_type)

        client.upload_binary = upload_binary  # type: ignore[method-assign]
        report = load([tmp_path / "t.json"], client, journal=tmp_path / "j.sqlite", keep_results=True)
    assert report.threads[0].outcome == Outcome.LOADED, report.threads[0].error
    checked = sorted([("read", "big.bin"), ("read", "small.bin")])
    assert sorted(events[:2]) == checked  # the check: each file hashed, its bytes let go
    # then the build of the thread reads the small file it carries; the big one is read when it is uploaded, and
    # the small one again when the request that carries it is made
    assert events[2:] == [("read", "small.bin"), ("read", "big.bin"), ("upload", MAX_INLINE_FILE_BYTES + 1000),
                          ("read", "small.bin")]


def test_an_attached_file_changed_after_the_check_fails_its_thread_saying_so(project: Any, tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(MAX_INLINE_FILE_BYTES + 1000))
    spec = {"thread": f"{project.prefix}-chg", "topic": "t",
            "participants": {"a": {"reference": f"Patient/{project.prefix}-a"}},
            "messages": [{"id": "m0", "sender": "a", "sent": "2024-01-01T00:00:00Z",
                          "attachments": [{"file": "big.bin"}]}]}
    (tmp_path / "t.json").write_text(json.dumps(spec))
    stream = SpecStream([tmp_path / "t.json"])
    big.write_bytes(os.urandom(MAX_INLINE_FILE_BYTES + 1000))
    with client_for(project) as client:
        report = load(stream, client, journal=tmp_path / "j.sqlite", keep_results=True)
    [result] = report.threads
    assert result.outcome == Outcome.FAILED
    assert result.error is not None and "big.bin: the attached file changed since its spec was checked" in result.error
