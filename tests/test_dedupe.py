"""`dedupe`: which copy of a doubled thread is kept, going by every load's report (pure), and on a server: a thread
the server already holds twice is not loaded by a load that finds it so, verify says so, and dedupe does not guess
which copy to keep when no report says whose each is."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
from loadkit import cli, client_for, copies, env, load, specs_for, write_specs

from bundler import build_bundle
from bundler.load import Outcome, verify
from bundler.load.dedupe import Listing, plan_dedupe, read_listings
from bundler.testing.strategies import sample_specs

H, M = "s|t1", "s|t1/m0"  # a thread's header and message identifiers


def listing(report: str, ours: dict[str, str | None], others: dict[str, list[str]], *, late: bool = False
            ) -> Listing:
    return Listing(report, "t1", ours, others, late=late, entries={H: "header", M: "messages[1] (m0)"})


def test_a_thread_only_the_second_load_found_keeps_the_first_loads_copy() -> None:
    # a committed first and checked before b's commit: its report says nothing of t1 (its journal trusts a's copy)
    b = listing("b.json", {H: "Communication/bh", M: "Communication/bm"},
                {H: ["Communication/ah"], M: ["Communication/am"]})
    [d] = plan_dedupe([b])
    assert d.keep == {H: "Communication/ah", M: "Communication/am"}
    assert d.delete == ["Communication/bm", "Communication/bh"], "messages before their header"
    assert d.headers == ["Communication/bh"] and not d.unresolved


def test_a_thread_both_loads_found_keeps_the_first_reports_copy_whichever_order_they_list_it() -> None:
    a = listing("a.json", {H: "Communication/ah", M: "Communication/am"},
                {H: ["Communication/bh"], M: ["Communication/bm"]})
    b = listing("b.json", {H: "Communication/bh", M: "Communication/bm"},
                {H: ["Communication/ah"], M: ["Communication/am"]})
    [first_a] = plan_dedupe([a, b])
    [first_b] = plan_dedupe([b, a])
    assert first_a.keep == {H: "Communication/ah", M: "Communication/am"} and "a.json" in first_a.why
    assert first_b.keep == {H: "Communication/bh", M: "Communication/bm"} and "b.json" in first_b.why
    assert sorted(first_a.delete) == ["Communication/bh", "Communication/bm"], "never both copies"


def test_a_thread_whose_copies_are_its_own_late_requests_keeps_the_journals_copy() -> None:
    a = listing("a.json", {H: "Communication/ah"}, {H: ["Communication/late"]}, late=True)
    [d] = plan_dedupe([a])
    assert d.keep == {H: "Communication/ah"} and d.delete == ["Communication/late"] and "late requests" in d.why


def test_copies_no_given_report_owns_are_left_alone_and_said() -> None:
    # a load that found the header twice before sending (it made neither): which to keep is not its to say
    found = listing("c.json", {H: None}, {H: ["Communication/x", "Communication/y"]})
    [d] = plan_dedupe([found])
    assert d.unresolved == [H] and d.delete == [] and d.keep == {}
    # with the report of one maker, the other copy is the one whose load found none: kept
    maker = listing("a.json", {H: "Communication/x"}, {H: ["Communication/y"]})
    [d] = plan_dedupe([found, maker])
    assert d.keep == {H: "Communication/y"} and d.delete == ["Communication/x"] and not d.unresolved


def test_reports_are_read_as_load_writes_them_and_a_wrong_file_is_refused_by_name(tmp_path: Path) -> None:
    good = tmp_path / "a.json"
    good.write_bytes(orjson.dumps({"threads": [
        {"key": "t0", "outcome": "loaded"},
        {"key": "t1", "outcome": "duplicated", "landed_late": 1, "duplicates": [
            {"entry": "header", "identifier": H, "ours": "Communication/ah", "others": ["Communication/late"]}]}],
        "ok": False}))
    [only] = read_listings([good])
    assert only.key == "t1" and only.late and only.ours == {H: "Communication/ah"}
    bad = tmp_path / "b.json"
    for text, said in [("not json", "not JSON"), ("[]", "no \"threads\" list"),
                       ('{"threads": [{"key": "t1", "duplicates": [{"identifier": "s|v"}]}]}',
                        "threads[0].duplicates")]:
        bad.write_text(text)
        run = cli(["dedupe", str(bad), "--dry-run"], {"MEDPLUM_BASE_URL": "http://127.0.0.1:9/",
                                                     "MEDPLUM_CLIENT_ID": "x", "MEDPLUM_CLIENT_SECRET": "y"})
        assert run.returncode != 0 and f"{bad}: " in run.stderr and said in run.stderr, run.stderr
        assert "Traceback" not in run.stderr


def test_a_thread_the_server_holds_twice_is_not_loaded_is_said_by_verify_and_not_guessed_by_dedupe(
        project: Any, tmp_path: Path) -> None:
    [spec, other] = specs_for(project, 2, 2, seed=31)
    bundle = build_bundle(spec)
    with client_for(project) as client:
        for _ in range(2):  # two loads without journals, whose checks nobody read: the thread twice
            client.transaction(orjson.dumps(bundle), entries=len(bundle["entry"]))
        before = copies(client, [spec], whole_store=project.server is not None)
        assert set(before.values()) == {2}
        report = load([spec, other], client, journal=tmp_path / "c.sqlite", report=tmp_path / "c.json")
        [twice] = [t for t in report.threads if t.key == spec.key]
        assert twice.outcome == Outcome.DUPLICATED and not report.ok
        assert "the server holds this thread 2 times" in (twice.error or "") and "dedupe" in (twice.error or "")
        [header] = twice.duplicates
        assert header.entry == "header" and header.ours is None and len(header.others) == 2
        assert report.counts() == {"duplicated": 1, "loaded": 1}
        assert copies(client, [spec], whole_store=project.server is not None) == before, "nothing of it sent"
        [said, fine] = verify([spec, other], client)
        assert fine.ok and not said.ok
        assert any("on the server 2 times" in d for d in said.differences), said.differences
    run = cli(["dedupe", str(tmp_path / "c.json")], env(project))
    assert run.returncode == 1 and "left as it is" in run.stderr and "give the report of every load" in run.stderr
    with client_for(project) as client:
        assert copies(client, [spec], whole_store=project.server is not None) == before, "nothing deleted"


def test_the_load_command_says_a_doubled_thread_and_exits_1_sending_nothing_of_it(project: Any,
                                                                                 tmp_path: Path) -> None:
    data = sample_specs(1, 2, prefix=project.prefix, seed=32)
    write_specs(tmp_path / "threads", data)
    [spec] = specs_for(project, 1, 2, seed=32)
    bundle = build_bundle(spec)
    with client_for(project) as client:
        for _ in range(2):
            client.transaction(orjson.dumps(bundle), entries=len(bundle["entry"]))
    run = cli(["load", str(tmp_path / "threads"), "--journal", str(tmp_path / "j.sqlite"), "--report",
               str(tmp_path / "r.json"), "--no-progress"], env(project))
    assert run.returncode == 1, run.stderr
    assert "duplicated:" in run.stderr and "the server holds this thread 2 times" in run.stderr
    assert json.loads((tmp_path / "r.json").read_text())["counts"] == {"duplicated": 1}
    with client_for(project) as client:
        assert set(copies(client, [spec], whole_store=project.server is not None).values()) == {2}


def test_a_report_is_read_a_line_at_a_time_as_load_writes_it_and_whole_when_reformatted(tmp_path: Path) -> None:
    from bundler.load.report import Duplicate as Dup
    from bundler.load.report import LoadReport, ReportWriter, ThreadResult

    path = tmp_path / "r.json"
    writer = ReportWriter(path)
    writer.add(ThreadResult("duplicates", Outcome.LOADED))  # (the word alone is not a listing)
    copies_of_t1 = [Dup("header", H, "Communication/a", ["Communication/b"])]
    writer.add(ThreadResult("t1", Outcome.DUPLICATED, duplicates=copies_of_t1))
    writer.finish(LoadReport())
    assert path.read_bytes().startswith(b'{"threads": [\n')
    [streamed] = read_listings([path])
    assert streamed.key == "t1" and streamed.others == {H: ["Communication/b"]} and not streamed.late
    path.write_bytes(orjson.dumps(orjson.loads(path.read_bytes()), option=orjson.OPT_INDENT_2))  # as jq leaves it
    assert read_listings([path]) == [streamed]
