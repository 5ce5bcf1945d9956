"""`migrate`: legacy exports in, threads out, every row accounted for."""

from __future__ import annotations

import csv
import gzip
import io
import random
import re
import sys
from collections import Counter
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from bundler.cli.migrate import migrate_command
from bundler.errors import SpecError
from bundler.migrate import RowRejected, iter_threads, load_mapping, migrate
from bundler.migrate.keys import message_id, thread_key
from bundler.migrate.records import TOMBSTONE_SENT, MessageRecord, Tombstone, decode, encode
from bundler.migrate.times import SentParser, TimeRejected
from bundler.spec import load_specs, parse_spec
from bundler.vocabulary import micros, parse_instant

REPO = Path(__file__).resolve().parent.parent
LEGACY = Path("fixtures/legacy")
EXPORT, MAPPING = LEGACY / "export.csv", LEGACY / "mapping.yaml"
EXPECTED = LEGACY / "expected"

sys.path.insert(0, str(REPO / "bench"))
from legacy_export import MAPPING as SYNTHETIC_MAPPING  # noqa: E402
from legacy_export import write_export  # noqa: E402


@pytest.fixture(autouse=True)
def _in_repo(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)


def _rows(path: Path) -> tuple[list[str], list[list[str]]]:
    with path.open(encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))
    return rows[0], rows[1:]


def _write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with path.open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def _accounted(summary) -> None:  # type: ignore[no-untyped-def]
    assert summary.rows_read == summary.messages + summary.rejected + summary.rows_other_shards


# --- the small realistic export ------------------------------------------------------------------


@pytest.mark.parametrize("workers", [1, 2])
def test_fixture_export_gives_exactly_the_expected_specs_and_rejects(tmp_path: Path, workers: int) -> None:
    out, rejects = tmp_path / "specs", tmp_path / "rejects.jsonl"
    summary = migrate([EXPORT], MAPPING, to="specs", out=out, rejects=rejects, workers=workers)
    expected = sorted(p.name for p in (EXPECTED / "specs").iterdir())
    assert sorted(p.name for p in out.iterdir()) == expected
    for name in expected:
        assert (out / name).read_text(encoding="utf-8") == (EXPECTED / "specs" / name).read_text(encoding="utf-8")
    assert rejects.read_bytes() == (EXPECTED / "rejects.jsonl").read_bytes()
    assert (summary.rows_read, summary.messages, summary.threads, summary.threads_all_rejected) == (23, 14, 4, 1)
    assert summary.rejected == 9 and sum(summary.warnings.values()) == 2
    assert summary.rejected + 2 == len(rejects.read_bytes().splitlines())
    _accounted(summary)


def test_fixture_rejects_name_file_row_reason_and_raw_row() -> None:
    lines = [orjson.loads(line) for line in (EXPECTED / "rejects.jsonl").read_bytes().splitlines()]
    reasons = {(r["row"], r["reason"]) for r in lines}
    assert reasons == {
        (5, "missing-sender"), (7, "unknown-participant"), (9, "nonexistent-time"), (11, "missing-thread"),
        (13, "empty-message"), (14, "bad-time"), (17, "reply-to-unknown"), (20, "reply-to-rejected"),
        (21, "bad-status"), (22, "duplicate-message-id"), (23, "bad-row")}
    header, rows = _rows(EXPORT)
    for r in lines:
        assert r["file"] == str(EXPORT)
        if r["reason"] != "bad-row":
            assert r["raw"] == dict(zip(header, rows[r["row"] - 1], strict=True))
    assert next(r for r in lines if r["reason"] == "bad-row")["raw"] == rows[22]


def test_every_thread_is_a_valid_spec_equal_to_what_its_file_reads_back(tmp_path: Path) -> None:
    with iter_threads([EXPORT], MAPPING, rejects=tmp_path / "r.jsonl") as threads:
        specs = list(threads)
    assert [s.key for s in specs] == sorted(s.key for s in specs)
    for spec in specs:
        assert parse_spec(spec.to_data()) == spec
    assert load_specs([EXPECTED / "specs"]) == specs


def test_thread_values_ordering_and_sanitised_ids() -> None:
    specs = {s.key: s for s in load_specs([EXPECTED / "specs"])}
    c3 = specs["C-1003"]  # 01:30 EDT (05:30Z) comes before 01:10-05:00 (06:10Z), whatever the wall clock says
    assert [(m.id, m.sent) for m in c3.messages] == [("s-1", "2024-11-03T01:30:00-04:00"),
                                                     ("s-2", "2024-11-03T01:10:00-05:00"),
                                                     ("s-5", "2024-11-03T08:01:00-05:00"),
                                                     ("s-4", "2024-11-03T08:05:00-05:00")]
    assert c3.messages[3].reply_to is None  # it answered s-3, which was rejected: kept, without the link
    assert c3.subject == "pt-3003" and c3.participants["pt-3003"].display == "José Núñez"
    key = thread_key("portal/4711 (archived)")
    assert key == "portal_4711__archived_.1e33c7e390"
    group = specs[key]
    assert group.participants["cc-88"].reference == "RelatedPerson?identifier=https://portal.example.org/users|cc-88"
    assert group.participants["pt-4711"].reference == "Patient/4b6f9a0e-2d7c-4a51-9d3e-0f6f3a1c9b22"  # table wins
    assert [m.recipient for m in group.messages] == [None, None, ("dr.alice",)]
    assert group.messages[2].id == message_id("g#3") and group.messages[2].reply_to == "g-2"
    assert specs["C-1001"].messages[3].sent == "2024-04-11T16:20:00Z"  # an offset of its own is kept as written


def test_cli_writes_specs_that_build_accepts_and_prints_the_summary(tmp_path: Path) -> None:
    out = tmp_path / "threads"
    result = CliRunner().invoke(migrate_command, [str(EXPORT), "--mapping", str(MAPPING), "--to", "specs", str(out),
                                                  "--no-progress"])
    assert result.exit_code == 1, result.output  # rows were rejected
    assert "rows read" in result.stderr and "23" in result.stderr
    assert "  reply-to-rejected" in result.stderr
    assert (tmp_path / "threads.rejects.jsonl").read_bytes() == (EXPECTED / "rejects.jsonl").read_bytes()
    from bundler.cli import main
    built = CliRunner().invoke(main, ["build", str(out), "--ndjson"])
    assert built.exit_code == 0, built.output
    assert len(built.stdout.splitlines()) == 4


# --- strict ------------------------------------------------------------------------------------------


def test_strict_stops_at_the_first_reject_with_exit_2_and_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "b.ndjson"
    result = CliRunner().invoke(migrate_command, [str(EXPORT), "--mapping", str(MAPPING), "--to", "ndjson", str(out),
                                                  "--strict"])
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    assert result.stderr.startswith("error: fixtures/legacy/export.csv:7: row 5: missing-sender:")
    assert not out.exists() and not list(tmp_path.iterdir())
    with pytest.raises(RowRejected) as info:
        migrate([EXPORT], MAPPING, to="specs", out=tmp_path / "s", strict=True)
    assert info.value.reject.row == 5
    assert not list((tmp_path / "s").glob("*.yaml"))


def test_strict_passes_a_clean_export(tmp_path: Path) -> None:
    header, rows = _rows(EXPORT)
    clean = _write_csv(tmp_path / "clean.csv", header, [rows[i] for i in (0, 1, 5, 14, 9, 18)])
    summary = migrate([clean], MAPPING, to="ndjson", out=tmp_path / "b.ndjson", strict=True)
    assert (summary.messages, summary.threads, summary.rejected) == (6, 2, 0)


# --- order, shards, accounting -----------------------------------------------------------------------


def test_shuffled_rows_give_byte_identical_ndjson(tmp_path: Path) -> None:
    ordered = tmp_path / "ordered.csv"
    write_export(ordered, 2000, 150, bad_share=0.05, seed=7, shuffle=False)
    (tmp_path / "m.yaml").write_text(SYNTHETIC_MAPPING, encoding="utf-8")
    header, rows = _rows(ordered)
    random.Random(3).shuffle(rows)
    shuffled = _write_csv(tmp_path / "shuffled.csv", header, rows)
    a = migrate([ordered], tmp_path / "m.yaml", to="ndjson", out=tmp_path / "a.ndjson", workers=1)
    b = migrate([shuffled], tmp_path / "m.yaml", to="ndjson", out=tmp_path / "b.ndjson", workers=2)
    assert (tmp_path / "a.ndjson").read_bytes() == (tmp_path / "b.ndjson").read_bytes()
    assert a.threads == b.threads == 150 and a.rejects == b.rejects
    _accounted(a)
    _accounted(b)
    # the fixture too, reversed
    header, rows = _rows(EXPORT)
    reversed_ = _write_csv(tmp_path / "reversed.csv", header, rows[::-1])
    migrate([EXPORT], MAPPING, to="ndjson", out=tmp_path / "c.ndjson")
    migrate([reversed_], MAPPING, to="ndjson", out=tmp_path / "d.ndjson")
    assert (tmp_path / "c.ndjson").read_bytes() == (tmp_path / "d.ndjson").read_bytes()


@pytest.mark.parametrize("workers", [2, 3, 5])
def test_any_number_of_workers_gives_the_same_bytes_over_several_inputs(tmp_path: Path, workers: int) -> None:
    """Rows of one conversation spread over two inputs (CSV and JSONL.gz) and every worker's share:
    bundles, reject file (CSV) and summary as one process gives them."""
    export = tmp_path / "e.csv"
    write_export(export, 3000, 170, bad_share=0.05, seed=13)
    header, rows = _rows(export)
    first = _write_csv(tmp_path / "a.csv", header, rows[:1700])
    second = tmp_path / "b.jsonl.gz"
    second.write_bytes(gzip.compress(b"".join(orjson.dumps(dict(zip(header, r, strict=True))) + b"\n"
                                              for r in rows[1700:])))
    mapping = tmp_path / "m.yaml"
    mapping.write_text(SYNTHETIC_MAPPING, encoding="utf-8")
    inputs = [first, second]
    one = migrate(inputs, mapping, to="ndjson", out=tmp_path / "1.ndjson", rejects=tmp_path / "1.csv", workers=1)
    many = migrate(inputs, mapping, to="ndjson", out=tmp_path / "n.ndjson", rejects=tmp_path / "n.csv",
                   workers=workers)
    assert (tmp_path / "n.ndjson").read_bytes() == (tmp_path / "1.ndjson").read_bytes()
    assert (tmp_path / "n.csv").read_bytes() == (tmp_path / "1.csv").read_bytes()
    assert (many.rows_read, many.messages, many.threads, many.rejects) == \
        (one.rows_read, one.messages, one.threads, one.rejects)
    # this process, then each pool process that ran a task (one may have run two, if another was slow to start)
    assert 2 <= len(many.peak_rss) <= workers and all(peak > 0 for peak in many.peak_rss)
    _accounted(many)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no scratch left behind


def test_more_workers_than_conversations_and_an_empty_export(tmp_path: Path) -> None:
    header, rows = _rows(EXPORT)
    one_thread = _write_csv(tmp_path / "one.csv", header, [r for r in rows if r[0] == "C-1001"])
    empty = _write_csv(tmp_path / "empty.csv", header, [])
    (tmp_path / "participants.csv").write_bytes((LEGACY / "participants.csv").read_bytes())
    (tmp_path / "mapping.yaml").write_bytes(MAPPING.read_bytes())
    for path in (one_thread, empty):
        a = migrate([path], tmp_path / "mapping.yaml", to="ndjson", out=tmp_path / "a.ndjson", workers=1)
        b = migrate([path], tmp_path / "mapping.yaml", to="ndjson", out=tmp_path / "b.ndjson", workers=4)
        assert (tmp_path / "a.ndjson").read_bytes() == (tmp_path / "b.ndjson").read_bytes()
        assert (tmp_path / "a.ndjson.rejects.jsonl").read_bytes() == (tmp_path / "b.ndjson.rejects.jsonl").read_bytes()
        assert (a.threads, a.rejects) == (b.threads, b.rejects)
    assert a.rows_read == 0


def test_fixture_specs_with_three_workers_roles_seen_by_another_worker(tmp_path: Path) -> None:
    """The caregiver's role is in one worker's rows, its thread maybe in another's key range."""
    out = tmp_path / "specs"
    migrate([EXPORT], MAPPING, to="specs", out=out, rejects=tmp_path / "r.jsonl", workers=3)
    expected = sorted(p.name for p in (EXPECTED / "specs").iterdir())
    assert sorted(p.name for p in out.iterdir()) == expected
    for name in expected:
        assert (out / name).read_bytes() == (EXPECTED / "specs" / name).read_bytes()
    assert (tmp_path / "r.jsonl").read_bytes() == (EXPECTED / "rejects.jsonl").read_bytes()


def test_shards_cover_every_conversation_exactly_once(tmp_path: Path) -> None:
    export = tmp_path / "e.csv"
    write_export(export, 3000, 240, bad_share=0.03, seed=5)
    mapping = tmp_path / "m.yaml"
    mapping.write_text(SYNTHETIC_MAPPING, encoding="utf-8")
    whole = migrate([export], mapping, to="ndjson", out=tmp_path / "all.ndjson")
    keys: list[str] = []
    rejected: list[tuple[int, str]] = []
    messages = 0
    for k in range(3):
        part = migrate([export], mapping, to="ndjson", out=tmp_path / f"s{k}.ndjson", shard=f"{k}/3")
        _accounted(part)
        assert part.rows_read == whole.rows_read and part.rows_other_shards > 0
        lines = (tmp_path / f"s{k}.ndjson").read_bytes().splitlines()
        keys += [orjson.loads(line)["entry"][0]["resource"]["identifier"][0]["value"] for line in lines]
        messages += part.messages
        rejected += [(r["row"], r["reason"]) for r in map(orjson.loads,
                                                           (tmp_path / f"s{k}.ndjson.rejects.jsonl").read_bytes()
                                                           .splitlines())]
    assert len(keys) == len(set(keys)) == whole.threads == 240
    assert messages == whole.messages
    whole_rejects = [(r["row"], r["reason"]) for r in map(orjson.loads, (tmp_path / "all.ndjson.rejects.jsonl")
                                                          .read_bytes().splitlines())]
    assert sorted(rejected) == sorted(whole_rejects)


def test_the_reject_file_accounts_for_every_row(tmp_path: Path) -> None:
    export = tmp_path / "e.csv"
    made_bad = write_export(export, 4000, 300, bad_share=0.05, seed=11)["bad"]
    mapping = tmp_path / "m.yaml"
    mapping.write_text(SYNTHETIC_MAPPING, encoding="utf-8")
    summary = migrate([export], mapping, to="ndjson", out=tmp_path / "o.ndjson", rejects=tmp_path / "r.csv")
    _accounted(summary)
    with (tmp_path / "r.csv").open(encoding="utf-8", newline="") as f:
        lines = list(csv.DictReader(f))
    rejects = [r for r in lines if r["severity"] == "reject"]
    assert Counter(r["reason"] for r in lines if r["severity"] == "warning") == summary.warnings
    assert len(rejects) == summary.rejected
    assert summary.rejected + summary.warnings.total() >= made_bad > 0  # (replies to unknown ids are kept)
    assert Counter(r["reason"] for r in rejects) == summary.rejects
    rows = {int(r["row"]) for r in rejects}
    assert len(rows) == len(rejects)  # one line per row
    written = sum(len(orjson.loads(line)["entry"]) - 1 for line in (tmp_path / "o.ndjson").read_bytes().splitlines())
    assert written == summary.messages == 4000 - len(rows)
    assert all(orjson.loads(r["raw"])["conversation_id"] for r in rejects)


# --- inputs ------------------------------------------------------------------------------------------


def test_gzip_and_jsonl_inputs_give_the_same_threads(tmp_path: Path) -> None:
    header, rows = _rows(EXPORT)
    good = [r for r in rows if len(r) == len(header)]
    gz = tmp_path / "export.csv.gz"
    gz.write_bytes(gzip.compress(EXPORT.read_bytes()))
    jsonl = tmp_path / "export.jsonl.gz"
    jsonl.write_bytes(gzip.compress(b"".join(orjson.dumps(dict(zip(header, r, strict=True))) + b"\n"
                                             for r in good)))
    mapping = tmp_path / "mapping.yaml"  # the same mapping, without the fixed csv format
    mapping.write_text(MAPPING.read_text(encoding="utf-8").replace("  format: csv\n", ""), encoding="utf-8")
    (tmp_path / "participants.csv").write_bytes((LEGACY / "participants.csv").read_bytes())
    with iter_threads([EXPORT], MAPPING, rejects=tmp_path / "a.jsonl") as a:
        expected = list(a)
    with iter_threads([gz], mapping, rejects=tmp_path / "b.jsonl") as b:
        assert list(b) == expected
        assert b.summary.rejected == 9
    with iter_threads([jsonl], mapping, rejects=tmp_path / "c.jsonl") as c:
        assert list(c) == expected
        assert c.summary.rejected == 8  # the short CSV row has no JSON counterpart
    first = orjson.loads((tmp_path / "c.jsonl").read_bytes().splitlines()[0])
    assert first["file"] == str(jsonl) and first["line"] == 5 and first["raw"]["message_id"] == "m-5"


def test_bad_bytes_and_broken_json_reject_the_row_not_the_file(tmp_path: Path) -> None:
    header, rows = _rows(EXPORT)
    raw = io.BytesIO()
    raw.write(",".join(header).encode() + b"\r\n")
    buf = io.StringIO()
    csv.writer(buf).writerow(rows[0])
    raw.write(buf.getvalue().encode())
    raw.write(buf.getvalue().replace("n-3", "n-9").encode().replace(b"Marge", b"Marg\xe9"))
    (tmp_path / "latin.csv").write_bytes(raw.getvalue())
    (tmp_path / "participants.csv").write_bytes((LEGACY / "participants.csv").read_bytes())
    (tmp_path / "mapping.yaml").write_bytes(MAPPING.read_bytes())
    s = migrate([tmp_path / "latin.csv"], tmp_path / "mapping.yaml", to="ndjson", out=tmp_path / "o.ndjson")
    assert (s.messages, dict(s.rejects), dict(s.warnings)) == (1, {"bad-encoding": 1}, {"reply-to-unknown": 1})
    jsonl = tmp_path / "x.jsonl"
    jsonl.write_text('{"conversation_id": "c1"\n[1, 2]\n\n', encoding="utf-8")
    mapping = tmp_path / "mapping.yaml"
    mapping.write_text(MAPPING.read_text(encoding="utf-8").replace("  format: csv\n", ""), encoding="utf-8")
    s = migrate([jsonl], mapping, to="ndjson", out=tmp_path / "p.ndjson")
    assert (s.rows_read, dict(s.rejects)) == (2, {"bad-row": 2})


def test_sanitised_key_that_meets_a_real_id_is_a_collision(tmp_path: Path) -> None:
    header, rows = _rows(EXPORT)
    a = rows[1][:]  # C-1001 m-1, dr.alice → pt-1001
    a[0] = "x/1"
    b = a[:]
    b[0] = thread_key("x/1")
    path = _write_csv(tmp_path / "e.csv", header, [a, b])
    (tmp_path / "participants.csv").write_bytes((LEGACY / "participants.csv").read_bytes())
    (tmp_path / "mapping.yaml").write_bytes(MAPPING.read_bytes())
    s = migrate([path], tmp_path / "mapping.yaml", to="ndjson", out=tmp_path / "o.ndjson")
    assert (s.threads, dict(s.rejects)) == (1, {"id-collision": 1})
    reject = orjson.loads((tmp_path / "o.ndjson.rejects.jsonl").read_bytes())
    assert reject["row"] == 1 and "'x/1' becomes thread key" in reject["message"]


# --- time zones --------------------------------------------------------------------------------------


def test_local_times_in_new_york_around_daylight_saving() -> None:
    ny = SentParser("iso", "America/New_York")
    assert ny("2024-03-10 01:59:59")[0] == "2024-03-10T01:59:59-05:00"
    assert ny("2024-03-10 03:00:00")[0] == "2024-03-10T03:00:00-04:00"
    assert ny("2024-03-10 03:00:00")[1] - ny("2024-03-10 01:59:59")[1] == 1_000_000  # one second apart
    with pytest.raises(TimeRejected) as info:
        ny("2024-03-10 02:30:00")
    assert info.value.reason == "nonexistent-time"
    assert SentParser("iso", "America/New_York", nonexistent="shift")("2024-03-10 02:30:00")[0] == \
        "2024-03-10T03:30:00-04:00"
    assert ny("2024-11-03 01:30:00")[0] == "2024-11-03T01:30:00-04:00"  # ambiguous: the earlier by default
    assert SentParser("iso", "America/New_York", ambiguous="later")("2024-11-03 01:30:00")[0] == \
        "2024-11-03T01:30:00-05:00"
    with pytest.raises(TimeRejected) as info:
        SentParser("iso", "America/New_York", ambiguous="reject")("2024-11-03 01:30:00")
    assert info.value.reason == "ambiguous-time"
    assert ny("2024-11-03 02:00:00")[0] == "2024-11-03T02:00:00-05:00"


def test_values_with_their_own_offset_are_kept_as_written() -> None:
    ny = SentParser("iso", "America/New_York")
    assert ny("2024-05-01T09:00:00+02:00") == ("2024-05-01T09:00:00+02:00", 1714546800000000)
    assert ny("2024-05-01T09:00:00.250Z")[0] == "2024-05-01T09:00:00.250Z"
    assert ny("2024-05-01 09:00:00+05:30")[0] == "2024-05-01T09:00:00+05:30"
    assert ny("2024-05-01 09:00:00.5")[0] == "2024-05-01T09:00:00.500-04:00"
    us = SentParser("%m/%d/%Y %I:%M:%S %p", "America/Chicago")
    assert us("11/03/2024 01:30:00 PM")[0] == "2024-11-03T13:30:00-06:00"
    for bad, reason in [("", "missing-time"), ("2024-05-01", "bad-time"), ("2024-02-30 10:00:00", "bad-time"),
                        ("2024-05-01T25:00:00Z", "bad-time")]:
        with pytest.raises(TimeRejected) as info:
            ny(bad)
        assert info.value.reason == reason, bad
    with pytest.raises(TimeRejected, match="no time zone"):
        SentParser("iso")("2024-05-01 09:00:00")



@pytest.mark.parametrize("value, instant", [
    ("2023-05-02 07+05:00", "2023-05-02T07:00:00+05:00"),  # 19 characters, with an offset: it crashed the run
    ("2023-W18-2 07:30:20", "2023-05-02T07:30:20-04:00"),  # a week date: it was copied into the "instant"
    ("2023-05-02 073020.5", "2023-05-02T07:30:20.500-04:00"),  # a compact time: the same
    ("2023-05-02T07:30+01", "2023-05-02T07:30:00+01:00"),
    ("2023-05-02 07:30:20", "2023-05-02T07:30:20-04:00"),
])
def test_any_iso_form_becomes_the_instant_it_means(value: str, instant: str) -> None:
    """Every form Python's ISO reader takes is written as a FHIR instant of the same moment; only the usual
    'YYYY-MM-DD HH:MM:SS' is copied as written (the fast path), and nothing else of its length is."""
    written, us = SentParser("iso", "America/New_York")(value)
    assert written == instant
    assert us == micros(parse_instant(written))


# --- the mapping file --------------------------------------------------------------------------------


BAD_MAPPINGS = [
    ("thread: {id: conv}\nmessage: {id: m, sender: s, sent: {column: t, format: '%s'}, text: b}\n"
     "participants: {rules: [{match: '[[a]', reference: 'Patient/{id}'}]}\n",
     ["m.yaml:2:55: message.sent.format: '%s' is not 'iso', 'epoch' (seconds since 1970), 'epoch_ms' (milliseconds) "
      "or a strptime format like '%m/%d/%Y %H:%M' ('s' is a bad directive in format '%s')",
      "m.yaml:3:32: participants.rules[1].match: ambiguous regular expression: Possible nested set at position 1 "
      "(write \\[ for a literal '[')"]),
    ("thread: {id: conv}\nmessage:\n  id: mid\n  sender: s\n  sent: t\n  text: b\n  colour: red\n"
     "participants: {rules: [{prefix: x, reference: 'Patient/{rest}'}]}\n",
     ["m.yaml:7:3: message.colour: unknown field 'colour' (allowed: attachment, attachments, id, priority, read_at, "
      "received, recipients, reply_to, sender, sender_display, sender_role, sent, status, text)"]),
    ("thread: {id: conv}\nmessage:\n  id: mid\n  sender: s\n  sent: {column: t, timezone: Mars/Olympus}\n"
     "  text: b\nparticipants:\n  rules:\n    - match: '^pt-(?P<n>[0-9]+$'\n      reference: 'Patient/{n}'\n"
     "    - prefix: dr-\n      reference: 'Practitioner/{id}-{nope}'\n",
     ["m.yaml:5:31: message.sent.timezone: 'Mars/Olympus' is not an IANA time zone (like America/New_York or UTC)",
      "m.yaml:9:14: participants.rules[1].match: not a regular expression: missing ), unterminated subpattern "
      "at position 4",
      "m.yaml:10:18: participants.rules[1].reference: unknown field {n} (known here: id, name)",
      "m.yaml:12:18: participants.rules[2].reference: unknown field {nope} (known here: id, name, rest)"]),
    ("thread: {id: conv, topic: 'Re: {subject'}\nmessage:\n  id: mid\n  sender: s\n  sent: t\n"
     "participants: {table: nowhere.csv}\n",
     ["m.yaml:1:27: thread.topic: unmatched '{' in template 'Re: {subject' (write {{ for a literal brace)",
      "m.yaml:3:3: message: needs text or attachments (a message must carry one)",
      "m.yaml:6:23: participants.table: cannot read the participant table nowhere.csv: No such file or directory"]),
    ("thread:\n  id: conv\n  status: {column: st, map: {x: done}}\nmessage: {id: m, sender: s, sent: t, text: b}\n"
     "participants: {table: p.csv}\n",
     ["m.yaml:3:33: thread.status.map.x: 'done' must be a Communication status (one of: preparation, in-progress, "
      "not-done, on-hold, stopped, completed, entered-in-error, unknown)",
      "m.yaml:5:23: participants.table: cannot read the participant table p.csv: No such file or directory"]),
]


@pytest.mark.parametrize(("text", "expected"), BAD_MAPPINGS)
def test_mapping_errors_have_file_line_and_column(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str,
                                                  expected: list[str]) -> None:
    monkeypatch.chdir(tmp_path)
    Path("m.yaml").write_text(text, encoding="utf-8")
    with pytest.raises(SpecError) as info:
        load_mapping("m.yaml")
    assert [str(p) for p in info.value.problems] == expected


def test_columns_missing_from_the_header_point_at_the_mapping(tmp_path: Path) -> None:
    mapping = tmp_path / "m.yaml"
    mapping.write_text(MAPPING.read_text(encoding="utf-8").replace("text: body", "text: message_body"),
                       encoding="utf-8")
    (tmp_path / "participants.csv").write_bytes((LEGACY / "participants.csv").read_bytes())
    result = CliRunner().invoke(migrate_command, [str(EXPORT), "--mapping", str(mapping), "--to", "ndjson",
                                                  str(tmp_path / "o.ndjson")])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert f"{mapping}:17:9: message.text: column 'message_body' is not in the header of {EXPORT}" in result.stderr
    assert not (tmp_path / "o.ndjson").exists()


def test_missing_input_is_named(tmp_path: Path) -> None:
    result = CliRunner().invoke(migrate_command, ["nope.csv", "--mapping", str(MAPPING), "--to", "ndjson",
                                                  str(tmp_path / "o.ndjson")])
    assert result.exit_code == 2
    assert "nope.csv: no such file" in result.stderr


# --- end to end through the loader ---------------------------------------------------------------


def test_fixture_export_loaded_into_the_server_and_read_back(project, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """migrate --load: the small export into the server (its patients and staff exist there, found by
    identifier), then every thread read back and compared with the expected specs; a re-run adds nothing."""
    import uuid

    from bundler.load.verify import verify
    from bundler.medplum.client import ClientCredentials, FhirClient

    system = f"urn:test:{project.prefix}"  # isolates this run's threads on a shared remote server
    expected = load_specs([EXPECTED / "specs"])
    conditional = sorted({p.reference for s in expected for p in s.participants.values() if "?" in p.reference})
    t = project.target
    env = {"MEDPLUM_BASE_URL": t.base_url, "MEDPLUM_CLIENT_ID": t.client_id, "MEDPLUM_CLIENT_SECRET": t.client_secret}
    with FhirClient(t.base_url, ClientCredentials(t.client_id, t.client_secret)) as client:
        entries = []
        for ref in conditional:  # the people the export names, as the target project would hold them
            kind, query = ref.split("?identifier=")
            ident_system, value = query.split("|", 1)
            if not client.search(kind, {"identifier": query}):
                resource = {"resourceType": kind, "identifier": [{"system": ident_system, "value": value}]}
                if kind == "RelatedPerson":  # R4 requires whose relative they are
                    resource["patient"] = {"reference": "Patient/4b6f9a0e-2d7c-4a51-9d3e-0f6f3a1c9b22"}
                entries.append({"fullUrl": f"urn:uuid:{uuid.uuid4()}", "request": {"method": "POST", "url": kind},
                                "resource": resource})
        if entries:
            client.transaction(orjson.dumps({"resourceType": "Bundle", "type": "transaction", "entry": entries}),
                               entries=len(entries))
        args = [str(EXPORT), "--mapping", str(MAPPING), "--load", "--identifier-system", system,
                "--journal", str(tmp_path / "j.sqlite"), "--rejects", str(tmp_path / "rejects.jsonl"),
                "--report", str(tmp_path / "report.json")]
        result = CliRunner().invoke(migrate_command, args, env=env)
        assert result.exit_code == 1, result.output  # the export has rejected rows; every thread loaded
        # real totals from the start (at most: assembling still rejects 2 of the 16 messages stored, and with
        # them a conversation's only row)
        assert "loading 0/5 threads · 0/16 messages" in result.stderr, result.stderr
        assert re.search(r"messages migrated \(given to load\) +14\n", result.stderr)
        assert re.search(r"messages of those threads on the server +14\n", result.stderr)
        report = orjson.loads((tmp_path / "report.json").read_bytes())
        assert report["ok"] and sum(report["counts"].values()) == len(expected)
        assert (tmp_path / "rejects.jsonl").read_text() == (EXPECTED / "rejects.jsonl").read_text()
        checked = verify(expected, client, identifier_system=system)
        assert [r.key for r in checked if not r.ok] == [], [r.differences for r in checked]
        again = CliRunner().invoke(migrate_command, args, env=env)
        assert again.exit_code == 1
        assert orjson.loads((tmp_path / "report.json").read_bytes())["counts"] == {"skipped": len(expected)}


# --- leap seconds ------------------------------------------------------------------------------------


@pytest.mark.parametrize("workers", [1, 2])
def test_a_leap_second_row_is_a_message_or_a_reject_never_a_crash(tmp_path: Path, workers: int) -> None:
    """A `...:60Z` row is judged the same in every process, never a crash. A leap second with
    an offset is a message, its `sent` kept as written and ordered after every other moment of its minute
    (ties in input order); a wall-clock `23:59:60` (no zone: it is no leap second in New York) a reject."""
    header, _ = _rows(EXPORT)

    def row(mid: str, sender: str, recipient: str, sent: str, text: str, reply: str = "") -> list[str]:
        values = dict.fromkeys(header, "")
        values.update(conversation_id="leap-2016", message_id=mid, created_at=sent, sender_id=sender,
                      recipient_ids=recipient, body=text, parent_id=reply, state="read")
        return [values[h] for h in header]

    rows = [row("c", "dr.alice", "pt-1001", "2017-01-01T00:00:00Z", "after", reply="b"),
            row("d", "pt-1001", "dr.alice", "2016-12-31T18:59:60.5-05:00", "the same leap second, in New York"),
            row("a", "dr.alice", "pt-1001", "2016-12-31T23:59:59Z", "before"),
            row("e", "pt-1001", "dr.alice", "2016-12-31 23:59:60", "wall clock"),
            row("b", "pt-1001", "dr.alice", "2016-12-31T23:59:60Z", "during")]
    _write_csv(tmp_path / "leap.csv", header, rows)
    (tmp_path / "participants.csv").write_bytes((LEGACY / "participants.csv").read_bytes())
    (tmp_path / "mapping.yaml").write_bytes(MAPPING.read_bytes())
    for to in ("ndjson", "specs"):
        out = tmp_path / f"out-{to}-{workers}"
        summary = migrate([tmp_path / "leap.csv"], tmp_path / "mapping.yaml", to=to, out=out,  # type: ignore[arg-type]
                          workers=workers)
        assert (summary.messages, dict(summary.rejects)) == (4, {"bad-time": 1})
        _accounted(summary)
        reject = orjson.loads(Path(f"{out}.rejects.jsonl").read_bytes())
        assert (reject["row"], reject["raw"]["message_id"]) == (4, "e")
    [spec] = load_specs([tmp_path / f"out-specs-{workers}"])
    assert [(m.id, m.sent) for m in spec.messages] == [
        ("a", "2016-12-31T23:59:59Z"), ("d", "2016-12-31T18:59:60.5-05:00"), ("b", "2016-12-31T23:59:60Z"),
        ("c", "2017-01-01T00:00:00Z")]
    assert spec.messages[3].reply_to == "b"
    [bundle] = (tmp_path / f"out-ndjson-{workers}").read_bytes().splitlines()
    assert [e["resource"].get("sent") for e in orjson.loads(bundle)["entry"][1:]] == [m.sent for m in spec.messages]


# --- records -----------------------------------------------------------------------------------------

_TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=20)  # rows with surrogates are rejected first
_MAYBE = st.none() | _TEXT
_JSON = st.recursive(st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False,
                     allow_infinity=False) | _TEXT,
                     lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_TEXT, inner, max_size=3),
                     max_leaves=8)


@given(st.builds(MessageRecord, st.integers(0, 2**20), st.integers(1, 2**40), st.integers(1, 2**40), _TEXT, _TEXT,
                 _TEXT, _MAYBE, _MAYBE, st.lists(_TEXT, max_size=3), _TEXT, _MAYBE,
                 st.lists(st.tuples(_TEXT, _MAYBE, _MAYBE).map(list), max_size=3), _MAYBE,
                 _MAYBE, _MAYBE, _MAYBE, _MAYBE, _MAYBE, _JSON),
       st.integers(-(2**62) + 1, 2**62))
def test_a_record_comes_back_from_the_store_as_it_went_in(record: MessageRecord, sent: int) -> None:
    back = decode(sent, encode(record))
    assert type(back) is MessageRecord and back == record


@given(_TEXT, _TEXT)
def test_a_tombstone_is_told_apart_by_its_sent_value_and_sorts_first(conversation: str, message_id: str) -> None:
    tombstone = Tombstone(conversation, message_id)
    back = decode(TOMBSTONE_SENT, encode(tombstone))
    assert type(back) is Tombstone and back == tombstone
    earliest = micros(parse_instant("0001-01-01T00:00:00+14:00"))
    assert earliest > TOMBSTONE_SENT
