"""`migrate` on the exports people really have (nested JSON, epoch times, several attachments, filters,
phone numbers), bad inputs (one table), exit status, shard summaries, and a kill -9."""

from __future__ import annotations

import contextlib
import gzip
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

from bundler.cli import main
from bundler.migrate import migrate
from bundler.migrate.keys import alias, thread_key
from bundler.migrate.stream import Shard
from bundler.spec import load_specs

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))
from legacy_export import MAPPING as SYNTHETIC_MAPPING  # noqa: E402
from legacy_export import write_export  # noqa: E402

CHAT_MAPPING = """\
thread: {id: thread.id, topic: thread.title}
message:
  id: id
  sender: author.id
  sender_display: author.name
  sent: {column: ts, format: epoch}
  text: text
  attachments: {each: files, url: url, content_type: mime, title: name}
  reply_to: reply_to
skip:
  - {column: author.kind, equals: bot}
participants:
  rules:
    - match: "^u-(?P<n>[0-9]+)$"
      reference: "Practitioner/{n}"
    - match: "^\\\\+(?P<n>[0-9]+)$"
      reference: "Patient?identifier=tel|{n}"
"""


def _jsonl(path: Path, rows: list[dict[str, object]]) -> Path:
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    return path


def _row(mid: str, thread: str, ts: object, text: str = "hi", author: str = "u-7", kind: str = "staff",
         **more: object) -> dict[str, object]:
    return {"id": mid, "thread": {"id": thread, "title": f"About {thread}"}, "author": {"id": author, "name": "Ann",
            "kind": kind}, "ts": ts, "text": text, **more}


# --- the two real-world fixtures, tested as fixtures/legacy is -------------------------------------------------

FIXTURES = [("sms-gateway", "messages.csv", "mapping.yaml"), ("chat-export", "messages.jsonl", "mapping.yaml"),
            ("chat-export", "messages-ms.jsonl", "mapping-ms.yaml")]


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize(("folder", "export", "mapping"), FIXTURES)
def test_fixture_exports_give_exactly_the_expected_specs_and_rejects(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                      folder: str, export: str, mapping: str,
                                                                      workers: int) -> None:
    monkeypatch.chdir(REPO)
    where = Path("fixtures") / folder
    expected = where / "expected"
    out, rejects = tmp_path / "specs", tmp_path / "rejects.jsonl"
    summary = migrate([where / export], where / mapping, to="specs", out=out, rejects=rejects, workers=workers)
    names = sorted(p.name for p in (expected / "specs").iterdir())
    assert sorted(p.name for p in out.iterdir()) == names
    for name in names:
        assert (out / name).read_bytes() == (expected / "specs" / name).read_bytes(), name
    got = [orjson.loads(line) for line in rejects.read_bytes().splitlines()]
    want = [orjson.loads(line) for line in (expected / "rejects.jsonl").read_bytes().splitlines()]
    if export == "messages.jsonl" or export.endswith(".csv"):
        assert rejects.read_bytes() == (expected / "rejects.jsonl").read_bytes()
    else:  # the same rows in milliseconds: the same rows rejected for the same reasons
        assert [(r["row"], r["severity"], r["reason"]) for r in got] == \
            [(r["row"], r["severity"], r["reason"]) for r in want]
    assert summary.accounted and summary.rejected == sum(r["severity"] == "reject" for r in want)


def test_nested_paths_epoch_seconds_several_files_and_a_filtered_bot(tmp_path: Path) -> None:
    export = _jsonl(tmp_path / "chat.jsonl", [
        _row("m1", "T-100", 1710425700, files=[{"url": "https://f/1.png", "mime": "image/png", "name": "one"},
                                               {"url": "https://f/2.pdf", "mime": "application/pdf"}]),
        _row("m2", "T-100", "1710425760", author="+15551230001", reply_to="m1"),
        _row("b1", "T-100", 1710425770, author="bot-1", kind="bot"),
        _row("m3", "T-100", 1710425780.5, reply_to="m-gone"),
    ])
    (tmp_path / "m.yaml").write_text(CHAT_MAPPING, encoding="utf-8")
    summary = migrate([export], tmp_path / "m.yaml", to="specs", out=tmp_path / "s", workers=1)
    assert (summary.rows_read, summary.messages, summary.skipped, summary.rejected) == (4, 3, 1, 0)
    assert dict(summary.skipped_by) == {"author.kind = 'bot'": 1} and dict(summary.warnings) == {"reply-to-unknown": 1}
    assert summary.accounted
    [spec] = load_specs([tmp_path / "s"])
    assert spec.key == "T-100" and spec.topic == "About T-100"
    assert [m.sent for m in spec.messages] == ["2024-03-14T14:15:00Z", "2024-03-14T14:16:00Z",
                                               "2024-03-14T14:16:20.500Z"]
    assert [(a.url, a.content_type, a.title) for a in spec.messages[0].attachments] == [
        ("https://f/1.png", "image/png", "one"), ("https://f/2.pdf", "application/pdf", None)]
    assert spec.messages[1].sender == "tel-15551230001" and spec.messages[1].reply_to == "m1"
    assert spec.messages[2].reply_to is None  # its parent is unknown: kept, without the link
    warning = orjson.loads((tmp_path / "s.rejects.jsonl").read_bytes())
    assert (warning["severity"], warning["reason"], warning["row"]) == ("warning", "reply-to-unknown", 4)


def test_strict_rejects_a_reply_to_an_unknown_parent(tmp_path: Path) -> None:
    export = _jsonl(tmp_path / "chat.jsonl", [_row("m1", "T-1", 1710425700, reply_to="nope")])
    (tmp_path / "m.yaml").write_text(CHAT_MAPPING, encoding="utf-8")
    result = CliRunner().invoke(main, ["migrate", str(export), "--mapping", str(tmp_path / "m.yaml"), "--to", "specs",
                                       str(tmp_path / "s"), "--strict"])
    assert result.exit_code == 2 and "reply-to-unknown" in result.stderr


def test_epoch_milliseconds_and_numbered_attachment_columns(tmp_path: Path) -> None:
    (tmp_path / "e.csv").write_text(
        "conv;id;from;at;body;f1;f1_type;f2\n"
        "c1;1;+1-555-123-0001;1710425700123;hello;https://a/1;image/png;\n"
        "c1;2;+15551230002;1710425700999;;https://a/2;;https://a/3\n", encoding="utf-8")
    (tmp_path / "m.yaml").write_text("""\
input: {delimiter: ";"}
thread: {id: conv}
message:
  id: id
  sender: from
  sent: {column: at, format: epoch_ms, timezone: America/New_York}
  text: body
  attachments:
    - {url: f1, content_type: f1_type}
    - {url: f2}
participants:
  rules: [{prefix: "+", reference: "Patient?identifier=tel|{rest}"}]
""", encoding="utf-8")
    summary = migrate([tmp_path / "e.csv"], tmp_path / "m.yaml", to="specs", out=tmp_path / "s", workers=1)
    assert summary.rejected == 0, summary.rejects
    [spec] = load_specs([tmp_path / "s"])
    assert [m.sent for m in spec.messages] == ["2024-03-14T10:15:00.123-04:00", "2024-03-14T10:15:00.999-04:00"]
    assert [[a.url for a in m.attachments] for m in spec.messages] == [["https://a/1"], ["https://a/2", "https://a/3"]]
    assert sorted(spec.participants) == ["tel-15551230001", "tel-15551230002"]


def test_a_rule_escapes_the_fields_it_puts_in_a_reference() -> None:
    """A legacy id holding FHIR search syntax is searched as itself: `a,b` is `a\\,b` in the token (a raw ','
    would search for either side); '+' and '&' are themselves (encoded when sent)."""
    from bundler.migrate.participants import Rule

    rule = Rule("Patient?identifier=urn:x|{id}", display="{id}")
    assert rule.apply("a,b|c", frozenset()) == ("Patient?identifier=urn:x|a\\,b\\|c", "a,b|c", None)  # (no create)
    assert rule.apply("+1&2", frozenset()) == ("Patient?identifier=urn:x|+1&2", "+1&2", None)


def test_readable_aliases_and_keys() -> None:
    assert alias("+15551230001") == "tel-15551230001" == alias("+1 (555) 123-0001")
    assert alias("dr.alice") == "dr.alice"
    assert thread_key("+15551230001") == "tel-15551230001"
    assert thread_key(".hidden").startswith("_hidden.") and thread_key("ok.key") == "ok.key"


# --- bad inputs: each a clear answer, never a traceback --------------------------------------------


CSV_HEADER = "conversation_id,message_id,created_at,sender_id,body\n"
CSV_MAPPING = """\
thread: {id: conversation_id}
message: {id: message_id, sender: sender_id, sent: {column: created_at, timezone: UTC}, text: body}
participants: {rules: [{prefix: "u", reference: "Patient/{rest}"}]}
"""


def _csv_rows(n: int, start: int = 1) -> str:
    return "".join(f"c{i % 3},m{i},2024-05-01 10:{i % 60:02d}:00,u{i % 2},text {i}\n" for i in range(start, start + n))


_ONE = orjson.dumps(_row("m1", "T", 1)) + b"\n"
_MAX_LINES = "input: {max_quoted_lines: 10}\nparticipants:"

BAD_INPUTS = [
    # (what, input name, its bytes, mapping, changes to it, (exit code, text in stderr), reject counts or None:
    # nothing written)
    ("a mapping path that no JSON row has", "x.jsonl", _ONE, CHAT_MAPPING, {"thread.id": "thread.key"},
     (2, "'thread.key' is in none of the first 1 rows of"), None),
    ("an epoch value that is not a number", "x.jsonl", orjson.dumps(_row("m1", "T", "soon")) + b"\n", CHAT_MAPPING,
     {}, (1, ""), {"bad-time": 1}),
    ("a strptime %s format", "x.jsonl", _ONE, CHAT_MAPPING, {"format: epoch": "format: '%s'"},
     (2, "is not 'iso', 'epoch' (seconds since 1970)"), None),
    ("a files value that is not an array of objects", "x.jsonl",
     orjson.dumps(_row("m1", "T", 1, files="nope")) + b"\n", CHAT_MAPPING, {}, (1, ""), {"bad-attachment": 1}),
    ("an over-long JSON line", "x.jsonl",
     orjson.dumps(_row("m1", "T", 1, text="x" * 5000)) + b"\n" + orjson.dumps(_row("m2", "T", 2)) + b"\n",
     CHAT_MAPPING, {"participants:": "input: {max_row_chars: 1000}\nparticipants:"}, (1, ""), {"bad-row": 1}),
    ("an unterminated quote", "e.csv",
     (CSV_HEADER + _csv_rows(10) + 'c1,bad,2024-05-01 11:00:00,u1,"never closed\n' + _csv_rows(20, 12)).encode(),
     CSV_MAPPING, {}, (1, "rows rejected       1"), {"bad-row": 1}),
    ("a quote over max_quoted_lines", "e.csv",
     (CSV_HEADER + 'c1,bad,2024-05-01 11:00:00,u1,"opens\n' + _csv_rows(20) + 'c2,x,2024-05-01,u1,"closes"\n').encode(),
     CSV_MAPPING, {"participants:": _MAX_LINES}, (1, ""), {"bad-row": 1, "bad-time": 1}),
    ("an over-size CSV row", "e.csv", (CSV_HEADER + _csv_rows(2) + "c1,big,2024-05-01 11:00:00,u1," + "y" * 3000
                                       + "\n" + _csv_rows(2, 4)).encode(), CSV_MAPPING,
     {"participants:": "input: {max_row_chars: 1000}\nparticipants:"}, (1, ""), {"bad-row": 1}),
    ("a delimiter the mapping does not set", "e.csv", (CSV_HEADER.replace(",", ";") + "c;m;t;s;b\n").encode(),
     CSV_MAPPING, {}, (2, "set input.delimiter: ';'"), None),
    ("a Latin-1 export read as UTF-8", "e.csv",
     (CSV_HEADER + "c1,m1,2024-05-01 10:00:00,u1,Jos\xe9\n").encode("latin-1"), CSV_MAPPING, {},
     (1, "set input.encoding"), {"bad-encoding": 1}),
]


@pytest.mark.parametrize(("what", "name", "data", "mapping", "changes", "expected", "counts"), BAD_INPUTS,
                         ids=[b[0] for b in BAD_INPUTS])
def test_bad_inputs(tmp_path: Path, what: str, name: str, data: bytes, mapping: str, changes: dict[str, str],
                    expected: tuple[int, str], counts: dict[str, int] | None) -> None:
    """Each bad input: a clear answer with the right exit status, never a traceback; the rows it
    spoils rejected one by one (the rest still messages), or nothing written."""
    for old, new in changes.items():
        mapping = mapping.replace(old, new)
    (tmp_path / "m.yaml").write_text(mapping, encoding="utf-8")
    (tmp_path / name).write_bytes(data)
    result = CliRunner().invoke(main, ["migrate", str(tmp_path / name), "--mapping", str(tmp_path / "m.yaml"),
                                       "--to", "ndjson", str(tmp_path / "o.ndjson"), "--summary",
                                       str(tmp_path / "sum.json")])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    assert (result.exit_code, expected[1] in result.stderr) == (expected[0], True), result.stderr
    if counts is not None:
        assert orjson.loads((tmp_path / "sum.json").read_bytes())["rejected"] == counts
    else:
        assert not (tmp_path / "o.ndjson").exists()


@pytest.mark.parametrize("workers", [1, 2])
def test_an_unterminated_quote_rejects_its_row_not_the_rest_of_the_file(tmp_path: Path, workers: int) -> None:
    text = CSV_HEADER + _csv_rows(10) + 'c1,bad,2024-05-01 11:00:00,u1,"this quote never closes\n' + \
        _csv_rows(989, start=12)
    (tmp_path / "e.csv").write_text(text, encoding="utf-8")
    (tmp_path / "m.yaml").write_text(CSV_MAPPING, encoding="utf-8")
    summary = migrate([tmp_path / "e.csv"], tmp_path / "m.yaml", to="ndjson", out=tmp_path / "o.ndjson",
                      workers=workers)
    assert (summary.rows_read, summary.messages, dict(summary.rejects)) == (1000, 999, {"bad-row": 1})
    [reject] = [orjson.loads(line) for line in (tmp_path / "o.ndjson.rejects.jsonl").read_bytes().splitlines()]
    assert (reject["row"], reject["line"]) == (11, 12)
    assert "unterminated quote" in reject["message"] and "the end of the input" in reject["message"]


def test_a_quote_running_over_the_line_limit_is_cut_and_the_lines_read_again(tmp_path: Path) -> None:
    text = (CSV_HEADER + 'c1,bad,2024-05-01 11:00:00,u1,"opens\n' + _csv_rows(30)
            + 'c2,x,2024-05-01 12:00:00,u1,"a"b"\n' + _csv_rows(5, start=40))
    (tmp_path / "e.csv").write_text(text, encoding="utf-8")
    (tmp_path / "m.yaml").write_text(CSV_MAPPING.replace("participants:", "input: {max_quoted_lines: 10}\n"
                                                                            "participants:"), encoding="utf-8")
    summary = migrate([tmp_path / "e.csv"], tmp_path / "m.yaml", to="ndjson", out=tmp_path / "o.ndjson", workers=1)
    assert summary.accounted and summary.messages >= 35 and summary.rejects["bad-row"] >= 1
    first = orjson.loads((tmp_path / "o.ndjson.rejects.jsonl").read_bytes().splitlines()[0])
    assert (first["row"], first["line"]) == (1, 2) and "max_quoted_lines: 10" in first["message"]


def test_an_over_size_row_is_a_reject_read_at_bounded_memory(tmp_path: Path) -> None:
    """A 20 MB line against a 100,000-character cap: the reader never holds more than the cap of it."""
    big = "x" * 20_000_000
    text = CSV_HEADER + _csv_rows(2) + f"c1,big,2024-05-01 11:00:00,u1,{big}\n" + _csv_rows(2, start=5)
    (tmp_path / "e.csv.gz").write_bytes(gzip.compress(text.encode(), 1))
    (tmp_path / "m.yaml").write_text(CSV_MAPPING.replace("participants:", "input: {max_row_chars: 100000}\n"
                                                                            "participants:"), encoding="utf-8")
    code = ("import sys, json, tracemalloc; from bundler.migrate import migrate; tracemalloc.start(); "
            f"s = migrate([{str(tmp_path / 'e.csv.gz')!r}], {str(tmp_path / 'm.yaml')!r}, to='ndjson', "
            f"out={str(tmp_path / 'o.ndjson')!r}, workers=1); "
            "print(json.dumps([s.messages, dict(s.rejects), tracemalloc.get_traced_memory()[1]]))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    messages, rejects, peak = orjson.loads(done.stdout)
    assert (messages, rejects) == (4, {"bad-row": 1})
    assert peak < 5_000_000  # bytes Python allocated at most: a fraction of the 20 MB line
    reject = orjson.loads((tmp_path / "o.ndjson.rejects.jsonl").read_bytes())
    assert reject["line"] == 4 and "over 100,000 characters (20,000,031" in reject["message"]


def test_mapping_problems_come_all_at_once_with_a_delimiter_hint(tmp_path: Path) -> None:
    (tmp_path / "e.csv").write_text("conversation_id;message_id;created_at;sender_id;body\nc;m;t;s;b\n",
                                    encoding="utf-8")
    (tmp_path / "m.yaml").write_text(CSV_MAPPING.replace("timezone: UTC", "timezone: Mars/Base").replace(
        "message: {", "message: {colour: red, "), encoding="utf-8")
    result = CliRunner().invoke(main, ["migrate", str(tmp_path / "e.csv"), "--mapping", str(tmp_path / "m.yaml"),
                                       "--to", "specs", str(tmp_path / "s")])
    assert result.exit_code == 2
    err = result.stderr
    assert "unknown field 'colour'" in err and "'Mars/Base' is not an IANA time zone" in err  # schema and values
    assert "column 'conversation_id' is not in the header" in err  # and the input's header, in one go
    assert "set input.delimiter: ';'" in err


# --- exit status ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("rows", "code"), [(_csv_rows(3), 0), (_csv_rows(3) + "c1,,x,u1,b\n", 1), ("", 1)])
def test_exit_status_says_whether_anything_was_rejected(tmp_path: Path, rows: str, code: int) -> None:
    (tmp_path / "e.csv").write_text(CSV_HEADER + rows, encoding="utf-8")
    (tmp_path / "m.yaml").write_text(CSV_MAPPING, encoding="utf-8")
    result = CliRunner().invoke(main, ["migrate", str(tmp_path / "e.csv"), "--mapping", str(tmp_path / "m.yaml"),
                                       "--to", "ndjson", str(tmp_path / "o.ndjson")])
    assert result.exit_code == code, result.output


# --- shards from a Kubernetes Indexed Job, and their summaries combined -------------------------------


def test_shard_index_from_the_environment() -> None:
    assert Shard.parse("env/4", {"JOB_COMPLETION_INDEX": "3"}) == Shard(3, 4)
    for text, env, why in [("env/4", {}, "not set"), ("env/4", {"JOB_COMPLETION_INDEX": "4"}, "K must be 0..N-1"),
                           ("env/x", {"JOB_COMPLETION_INDEX": "1"}, "is not K/N")]:
        with pytest.raises(ValueError, match=why):
            Shard.parse(text, env)


def test_report_adds_up_the_shards_and_names_a_missing_one(tmp_path: Path) -> None:
    export = tmp_path / "e.csv"
    write_export(export, 600, 60, bad_share=0.05, seed=3)
    (tmp_path / "m.yaml").write_text(SYNTHETIC_MAPPING, encoding="utf-8")
    whole = migrate([export], tmp_path / "m.yaml", to="ndjson", out=tmp_path / "all.ndjson")
    for k in range(3):
        result = CliRunner().invoke(main, ["migrate", str(export), "--mapping", str(tmp_path / "m.yaml"), "--to",
                                           "ndjson", str(tmp_path / f"s{k}.ndjson"), "--shard", "env/3", "--summary",
                                           str(tmp_path / f"shard-{k}.json")], env={"JOB_COMPLETION_INDEX": str(k)})
        assert result.exit_code in (0, 1), result.output
    result = CliRunner().invoke(main, ["report", *(str(tmp_path / f"shard-{k}.json") for k in range(3))])
    assert "of shards 0/3, 1/3, 2/3" in result.stderr
    assert [line.split()[-1] for line in result.stderr.splitlines() if line.startswith("messages written")] == \
        [f"{whole.messages:,}"]
    assert result.exit_code == (0 if whole.rejected == 0 else 1)
    partial = CliRunner().invoke(main, ["report", str(tmp_path / "shard-0.json"), str(tmp_path / "shard-2.json")])
    assert partial.exit_code == 1 and "missing: shard 1/3" in partial.stderr
    bad = CliRunner().invoke(main, ["report", str(export)])
    assert bad.exit_code == 2 and "not JSON" in bad.stderr


# --- kill -9 -----------------------------------------------------------------------------------------


def _children(pid: int) -> set[int]:
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            found |= {int(c) for c in (task / "children").read_text().split()}
    return found


def _group(pgid: int) -> set[int]:
    """The live processes of process group `pgid`: a run's parent and every worker it started (workers keep
    their parent's group, also when it dies and they are handed to init). A process is live while any of its
    threads is: a killed process's first thread can be a zombie while another still closes the files they
    share (and so still holds their locks)."""
    found: set[int] = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            if _stat_fields(stat)[2] == str(pgid) and any(
                    _stat_fields(task)[0] not in ("Z", "X") for task in stat.parent.glob("task/*/stat")):
                found.add(int(stat.parent.name))
    return found


def _stat_fields(stat: Path) -> list[str]:
    """The fields of a /proc stat file after the command's name: state, ppid, pgrp, ..."""
    return stat.read_text().rsplit(")", 1)[-1].split()


def _leftovers(work: Path, left_by_kill: list[str]) -> str:
    """What a failure should say: each folder left, whose it was, what is in it, who holds its lock."""
    lines = []
    for folder in sorted(work.iterdir()):
        whose = "the killed run's" if folder.name in left_by_kill else "the re-run's"
        held = folder / ".held"
        holders = []
        if held.exists():
            inode = held.stat().st_ino
            holders = [line for line in Path("/proc/locks").read_text().splitlines() if f":{inode} " in line]
            for fd in Path("/proc").glob("[0-9]*/fd/*"):
                with contextlib.suppress(OSError):
                    if os.readlink(fd) == str(held):
                        holders.append(f"open in {fd}: {Path(fd.parent.parent, 'cmdline').read_bytes()[:120]!r}")
        inside = sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))[:20]
        lines.append(f"{folder.name} ({whose}): {inside}; lock: {holders}")
    return "\n".join(lines)


def _until(condition: object, what: str, deadline: float = 60.0) -> None:
    end = time.monotonic() + deadline
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < end, f"waited {deadline:.0f}s for {what}"
        time.sleep(0.05)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_kill_9_of_the_parent_takes_its_workers_and_a_rerun_cleans_up(tmp_path: Path) -> None:
    export = tmp_path / "e.csv"
    write_export(export, 150_000, 15_000, seed=5)
    (tmp_path / "m.yaml").write_text(SYNTHETIC_MAPPING, encoding="utf-8")
    work, out = tmp_path / "work", tmp_path / "out" / "o.ndjson"
    code = ("import sys; from bundler.migrate import migrate; "
            "migrate([sys.argv[1]], sys.argv[2], to='ndjson', out=sys.argv[3], work_dir=sys.argv[4], workers=2)")
    run = subprocess.Popen([sys.executable, "-c", code, str(export), str(tmp_path / "m.yaml"), str(out), str(work)],
                           cwd=REPO, start_new_session=True)  # its own process group: every worker, also late ones
    try:
        _until(lambda: any(work.glob("thread-bundler-migrate-*/thread-bundler-migrate-*/rows.sqlite")) and
               len(list(work.glob("thread-bundler-migrate-*/thread-bundler-migrate-*"))) == 2,
               "both processes storing rows")
        workers = _children(run.pid)
        assert workers
        os.kill(run.pid, signal.SIGKILL)
        run.wait()
        # every process of the run, not only the workers seen before the kill: a pool may start one more until
        # the very end, and a worker still alive holds the run's folders (a re-run then leaves them alone)
        _until(lambda: not _group(run.pid), "the workers to end with their parent")
    finally:
        if run.poll() is None:
            run.kill()
    left_by_kill = sorted(p.name for p in work.iterdir())
    assert left_by_kill  # what the killed run left
    again = migrate([export], tmp_path / "m.yaml", to="ndjson", out=out, work_dir=work, workers=2)
    assert again.accounted and out.exists()
    assert list(work.iterdir()) == [], _leftovers(work, left_by_kill)
    assert sorted(p.name for p in out.parent.iterdir()) == ["o.ndjson", "o.ndjson.rejects.jsonl"]


# --- a delta run against the server: bulk, then a grown export ---------------------------------------


def _delta_export(path: Path, prefix: str, rows: list[tuple[str, str, str, str, str, str]]) -> Path:
    lines = ["conv,id,sender,sent,text,state"] + [",".join((f"{prefix}-{c}", m, s, t, x, st))
                                                    for c, m, s, t, x, st in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_a_delta_run_sends_only_what_is_new_and_updates_a_closed_conversation(project, tmp_path: Path  # type: ignore[no-untyped-def]
                                                                                ) -> None:
    from bundler.medplum.client import ClientCredentials, FhirClient

    prefix = project.prefix
    people = f"urn:test:{prefix}:people"
    system = f"urn:test:{prefix}"
    (tmp_path / "m.yaml").write_text(f"""\
thread:
  id: conv
  status: {{column: state, map: {{open: in-progress, closed: completed}}}}
message: {{id: id, sender: sender, sent: {{column: sent, timezone: UTC}}, text: text}}
participants:
  rules:
    - prefix: "pt-"
      reference: "Patient?identifier={people}|{{rest}}"
    - prefix: "dr-"
      reference: "Practitioner?identifier={people}|{{rest}}"
""", encoding="utf-8")
    bulk = [("a", "a1", "pt-1", "2024-05-01 09:00:00", "Hello", "open"),
            ("a", "a2", "dr-1", "2024-05-01 10:00:00", "Hi there", "open"),
            ("b", "b1", "pt-2", "2024-05-02 09:00:00", "Question", "open"),
            ("b", "b2", "dr-1", "2024-05-02 10:00:00", "Answer", "open")]
    grown = [r if r[0] != "b" else (*r[:5], "closed") for r in bulk] + [
        ("a", "a3", "pt-1", "2024-05-03 09:00:00", "One more thing", "open"),
        ("c", "c1", "pt-2", "2024-05-04 09:00:00", "A new conversation", "open")]
    t = project.target
    env = {"MEDPLUM_BASE_URL": t.base_url, "MEDPLUM_CLIENT_ID": t.client_id, "MEDPLUM_CLIENT_SECRET": t.client_secret}
    with FhirClient(t.base_url, ClientCredentials(t.client_id, t.client_secret)) as client:
        entries = [{"fullUrl": f"urn:uuid:{kind}-{n}", "request": {"method": "POST", "url": kind},
                    "resource": {"resourceType": kind, "identifier": [{"system": people, "value": str(n)}]}}
                   for kind, n in (("Patient", 1), ("Patient", 2), ("Practitioner", 1))]
        client.transaction(orjson.dumps({"resourceType": "Bundle", "type": "transaction", "entry": entries}),
                           entries=len(entries))

        def run(export: Path, *more: str) -> tuple[int, dict[str, int]]:
            result = CliRunner().invoke(main, [
                "migrate", str(export), "--mapping", str(tmp_path / "m.yaml"), "--load", "--identifier-system",
                system, "--journal", str(tmp_path / "j.sqlite"), "--report", str(tmp_path / "r.json"), *more],
                env=env)
            assert "Traceback" not in result.output, result.output
            return result.exit_code, orjson.loads((tmp_path / "r.json").read_bytes())["counts"]

        def on_server() -> list[dict[str, object]]:
            return client.search("Communication", {"identifier": f"{system}|", "_count": "100"})

        assert run(_delta_export(tmp_path / "v1.csv", prefix, bulk)) == (0, {"loaded": 2})
        before = {r["id"]: r["meta"]["versionId"] for r in on_server()}  # type: ignore[index]
        assert len(before) == 2 + 4  # two headers, four messages
        v2 = _delta_export(tmp_path / "v2.csv", prefix, grown)
        code, counts = run(v2)  # without --update: b's change is only reported
        assert (code, counts) == (1, {"appended": 1, "loaded": 1, "changed": 1})
        after = on_server()
        assert len(after) == 6 + 1 + 2  # a3; c's header and c1: nothing else created
        assert all(before[r["id"]] == r["meta"]["versionId"] for r in after if r["id"] in before)  # type: ignore[index]
        assert run(v2, "--update") == (0, {"skipped": 2, "updated": 1})
        headers = [r for r in on_server() if "partOf" not in r]
        status = {r["identifier"][0]["value"]: r["status"] for r in headers}  # type: ignore[index]
        assert status == {f"{prefix}-a": "in-progress", f"{prefix}-b": "completed", f"{prefix}-c": "in-progress"}
        assert len(on_server()) == 9


@pytest.mark.parametrize("workers", [1, 2])
def test_a_delta_run_to_specs_rewrites_only_the_threads_that_changed(tmp_path: Path, workers: int) -> None:
    (tmp_path / "m.yaml").write_text(CSV_MAPPING, encoding="utf-8")
    first = tmp_path / "v1.csv"
    first.write_text(CSV_HEADER + _csv_rows(30), encoding="utf-8")
    out = tmp_path / "specs"
    migrate([first], tmp_path / "m.yaml", to="specs", out=out, workers=workers)
    files = {p.name: p.stat() for p in out.iterdir()}
    assert sorted(files) == ["c0.yaml", "c1.yaml", "c2.yaml"]
    grown = tmp_path / "v2.csv"  # c1 gets a message (31 % 3 == 1): c0 and c2 are as they were
    grown.write_text(CSV_HEADER + _csv_rows(31), encoding="utf-8")
    migrate([grown], tmp_path / "m.yaml", to="specs", out=out, workers=workers)
    now = {p.name: p.stat() for p in out.iterdir()}
    untouched = sorted(n for n in now if (now[n].st_ino, now[n].st_mtime_ns) == (files[n].st_ino, files[n].st_mtime_ns))
    assert untouched == sorted(set(now) - {"c1.yaml"}) == ["c0.yaml", "c2.yaml"]
    for to in ("ndjson",):  # and NDJSON: the same export, the same bytes
        a = migrate([grown], tmp_path / "m.yaml", to=to, out=tmp_path / "a.ndjson", workers=workers)
        b = migrate([grown], tmp_path / "m.yaml", to=to, out=tmp_path / "b.ndjson", workers=3 - workers)
        assert a.messages == b.messages == 31
        assert (tmp_path / "a.ndjson").read_bytes() == (tmp_path / "b.ndjson").read_bytes()


def test_a_load_failure_names_the_input_file_and_line(project, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A thread the server refuses (its patient is not there) is named by the export's file and line, not <spec>."""
    (tmp_path / "m.yaml").write_text(CSV_MAPPING.replace('reference: "Patient/{rest}"',
                                                         f'reference: "Patient?identifier=urn:test:{project.prefix}'
                                                         '|{rest}"'), encoding="utf-8")
    export = tmp_path / "e.csv"
    export.write_text(CSV_HEADER + f"{project.prefix}-c,m1,2024-05-01 10:00:00,u1,hello\n"
                      f"{project.prefix}-c,m2,2024-05-01 10:01:00,u2,hi\n", encoding="utf-8")
    t = project.target
    env = {"MEDPLUM_BASE_URL": t.base_url, "MEDPLUM_CLIENT_ID": t.client_id, "MEDPLUM_CLIENT_SECRET": t.client_secret}
    result = CliRunner().invoke(main, ["migrate", str(export), "--mapping", str(tmp_path / "m.yaml"), "--load",
                                       "--identifier-system", f"urn:test:{project.prefix}", "--journal",
                                       str(tmp_path / "j.sqlite")], env=env)
    assert result.exit_code == 1, result.output
    assert f"failed: {project.prefix}-c: {export}:2" in result.stderr, result.stderr
    assert "<spec>" not in result.stderr
