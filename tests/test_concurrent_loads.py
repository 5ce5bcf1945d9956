"""Loads that run at the same time: two loads of the same specs with two journals
never leave a silent double (strict mode: no double at all; the default: every double reported, exit 1), and a
transaction the server could not serialize (409, Medplum's serialization failure) is sent again, not failed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import orjson
import pytest
from faultproxy import Event, FaultProxy, Rule
from loadkit import (
    CHECK,
    POST,
    assert_exactly_once,
    checks,
    cli,
    client_for,
    copies,
    env,
    header_value,
    load,
    specs_for,
    transactions,
    write_specs,
)

from bundler import build_bundle, parse_spec
from bundler.load import Outcome, verify
from bundler.load.dedupe import dedupe
from bundler.testing.strategies import sample_specs
from bundler.vocabulary import SERIALIZATION_FAILURE

SERIALIZATION = orjson.dumps({
    "resourceType": "OperationOutcome", "id": "conflict",
    "issue": [{"severity": "error", "code": "conflict", "details": {
        "coding": [{"code": SERIALIZATION_FAILURE}],
        "text": "could not serialize access due to read/write dependencies among transactions"}}]})
"""What Medplum 5.0.10 answers (HTTP 409) when Postgres could not serialize a transaction (seen on the real
server with two strict loads at once; its tracing extension left out)."""
VERSION_CONFLICT = orjson.dumps({
    "resourceType": "OperationOutcome",
    "issue": [{"severity": "error", "code": "conflict",
               "diagnostics": "HAPI-0989: Trying to update Communication/1/_history/2 but this is not the current "
                              "version"}]})
"""A 409 of another kind: how a HAPI server words a version conflict (Medplum answers those 412)."""
FHIR_JSON = {"Content-Type": "application/fhir+json"}


# --- two loads of the same specs with two journals, at the same time --------------------------------------


def _reported(report: dict[str, Any]) -> set[str]:
    return {d["identifier"] for t in report["threads"] for d in t.get("duplicates", ())}


@pytest.mark.parametrize("mode", ["quarantine", "strict"])
def test_two_loads_with_two_journals_at_once_never_leave_a_silent_double(project: Any, tmp_path: Path,
                                                                          mode: str) -> None:
    data = sample_specs(6, 3, prefix=project.prefix, seed=21)
    specs = [parse_spec(d) for d in data]
    write_specs(tmp_path / "threads", data)

    def args(name: str) -> list[str]:
        return ["load", str(tmp_path / "threads"), "--journal", str(tmp_path / f"{name}.sqlite"), "--report",
                str(tmp_path / f"{name}.json"), "--no-progress", "--exactly-once", mode]

    def both_sending(log: list[Event]) -> bool:  # each load (its own token) found the threads missing, and sends
        return len({e.headers.get("authorization") for e in transactions(log, project.prefix)}) >= 2

    with FaultProxy(project.target.base_url) as proxy:
        proxy.add(Rule("hold", method="POST", path=POST, body_contains=project.prefix, until=both_sending))
        environ = {**os.environ, **env(project), "MEDPLUM_BASE_URL": proxy.url}
        procs = {name: subprocess.Popen([sys.executable, "-m", "bundler", *args(name)], env=environ, text=True,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for name in ("a", "b")}
        out = {name: proc.communicate(timeout=300)[1] for name, proc in procs.items()}
        reports = {name: json.loads((tmp_path / f"{name}.json").read_text()) for name in procs}
        assert all("Traceback" not in text for text in out.values()), out
        with client_for(project) as client:
            counts = copies(client, specs, whole_store=project.server is not None)
        assert min(counts.values()) >= 1, "every thread is on the server"
        doubled = {ident for ident, n in counts.items() if n > 1}
        for ident in doubled:  # never silent: a load that says so, and exits 1
            said = [name for name in procs if ident in _reported(reports[name])]
            assert said, f"{ident} is on the server {counts[ident]} times, and no load said so: {out}"
            assert all(procs[name].returncode == 1 for name in said), out
        if mode == "strict":  # conditional creates: the second load finds the first's
            assert not doubled and all(proc.returncode == 0 for proc in procs.values()), out
            return
        assert doubled, "both loads sent every thread before either committed: the check had doubles to find"
        assert all("duplicated:" in out[name] and "(this load's)" in out[name] for name in procs
                   if _reported(reports[name])), out
        # what the duplicated threads' advice says: dedupe with every load's report, each load again, verify
        reports_given = [str(tmp_path / f"{name}.json") for name in procs]
        dry = cli(["dedupe", *reports_given, "--dry-run", "--json"], env(project))
        assert dry.returncode == 0, dry.stderr
        planned = json.loads(dry.stdout)
        assert planned["dry_run"] and planned["deleted"] == 0
        assert sum(len(t["delete"]) for t in planned["threads"]) == sum(counts[i] - 1 for i in doubled)
        with client_for(project) as client:
            assert copies(client, specs, whole_store=project.server is not None) == counts, "a dry run deletes nothing"
        deduped = cli(["dedupe", *reports_given], env(project))
        assert deduped.returncode == 0, deduped.stderr
        assert "now run each load again with its journal" in deduped.stderr
        proxy.clear()  # (the journals keep the server's address: run again at the same one)
        again = {name: cli(args(name), {**env(project), "MEDPLUM_BASE_URL": proxy.url}) for name in procs}
    assert all(run.returncode == 0 for run in again.values()), {k: v.stderr for k, v in again.items()}
    for name in procs:  # each journal's copy was kept (skipped), or deleted and the thread found again (existing)
        counted = json.loads((tmp_path / f"{name}.json").read_text())["counts"]
        assert set(counted) <= {"skipped", "existing"} and sum(counted.values()) == 6, (name, counted)
    verified = cli(["verify", str(tmp_path / "threads")], env(project))
    assert verified.returncode == 0, verified.stderr
    with client_for(project) as client:
        assert_exactly_once(client, specs, project)


def test_a_copy_made_while_a_load_ran_is_found_by_its_check_and_dedupe_keeps_the_one_no_journal_doubts(project: Any,
                                                                                       tmp_path: Path) -> None:
    specs = specs_for(project, 3, 2, seed=4)
    key = specs[1].key

    def others_in(log: list[Event]) -> bool:  # the held one arrived, the load's two others are in
        held = [e for e in log if "hold" in e.actions]
        done = [e for e in transactions(log, project.prefix) if e not in held and e.upstream_status == 200]
        return bool(held) and len(done) == 2

    with FaultProxy(project.target.base_url) as proxy:
        # the thread's transaction is held until another load (its own journal) has loaded the same thread
        proxy.add(Rule("hold", method="POST", path=POST, body_contains=header_value(key), times=1,
                       until=lambda log: False))
        with client_for(project, proxy.url) as client, client_for(project) as other:
            first: dict[str, Any] = {}
            runner = threading.Thread(target=lambda: first.update(report=load(
                specs, client, journal=tmp_path / "a.sqlite", report=tmp_path / "a.json")))
            runner.start()
            try:
                assert proxy.wait(others_in, timeout=60)
                meanwhile = load(specs, other, journal=tmp_path / "b.sqlite", report=tmp_path / "b.json")
                assert meanwhile.ok and meanwhile.counts() == {"existing": 2, "loaded": 1}
            finally:
                proxy.release()
                runner.join(120)
            report = first["report"]
            assert not report.ok
            [doubled] = [t for t in report.threads if t.outcome == Outcome.DUPLICATED]
            assert doubled.key == key and len(doubled.duplicates) == 3  # the header and its two messages
            assert all(d.ours and len(d.others) == 1 for d in doubled.duplicates)
            assert "another load sent them at the same time" in (doubled.error or "")
            assert "thread-bundler dedupe" in (doubled.error or "")
            assert report.counts() == {"duplicated": 1, "loaded": 2}
            again = load(specs, client, journal=tmp_path / "a.sqlite")  # the next run checks it again: still said
            assert again.counts() == {"duplicated": 1, "skipped": 2}
            # b's check ran before a's copy committed: only a's report lists the thread. Going by it alone ("delete
            # the others") would delete b's copy under b's journal, which skips the thread next time, trusting it
            [decision] = dedupe([tmp_path / "a.json", tmp_path / "b.json"], other).decisions
            assert sorted(decision.delete) == sorted(str(d.ours) for d in doubled.duplicates), "a's copy goes"
            assert sorted(decision.keep.values()) == sorted(d.others[0] for d in doubled.duplicates)
            assert "found none" in decision.why
            assert_exactly_once(client, specs, project)
            seen = len(proxy.log)
            clean = load(specs, client, journal=tmp_path / "a.sqlite")  # its copy gone: found again, in this run
            assert clean.ok and clean.counts() == {"existing": 1, "skipped": 2}
            assert not transactions(proxy.log[seen:], project.prefix), "nothing sent: found"
            [found] = [t for t in clean.threads if t.key == key]
            assert {f"Communication/{found.header_id}"} == {decision.keep[d.identifier] for d in doubled.duplicates
                                                             if d.entry == "header"}
            assert load(specs, client, journal=tmp_path / "a.sqlite").counts() == {"skipped": 3}, "journaled"
            assert load(specs, other, journal=tmp_path / "b.sqlite").counts() == {"skipped": 3}
            verified = verify(specs, other)
            assert all(v.ok for v in verified), [v.differences for v in verified]
            assert_exactly_once(client, specs, project)


def test_a_failed_check_is_said_and_done_by_the_next_run(project: Any, tmp_path: Path) -> None:
    specs = specs_for(project, 3, 2, seed=6)
    with FaultProxy(project.target.base_url) as proxy:
        proxy.add(Rule("status", status=500, method="POST", path=POST, body_contains=CHECK, headers=FHIR_JSON,
                       body=b'{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"exception",'
                            b'"details":{"text":"Internal server error"}}]}'))
        with client_for(project, proxy.url) as client:
            report = load(specs, client, journal=tmp_path / "j.sqlite")
            assert report.counts() == {"loaded": 3} and report.unchecked == 3 and not report.ok
            assert "Internal server error" in report.unchecked_why
            assert report.as_json()["unchecked"] == 3
            proxy.clear()
            seen = len(proxy.log)
            again = load(specs, client, journal=tmp_path / "j.sqlite")
            assert again.ok and again.counts() == {"skipped": 3} and again.unchecked == 0
            assert len(checks(proxy.log[seen:], project.prefix)) == 1
            assert not transactions(proxy.log[seen:], project.prefix)
            seen = len(proxy.log)
            assert load(specs, client, journal=tmp_path / "j.sqlite").ok
            assert proxy.log[seen:] == [], "checked once: nothing left to look at"


# --- a transaction the server could not serialize ---------------------------------------------------------


def test_a_serialization_failure_is_sent_again_and_another_conflict_is_not(project: Any, tmp_path: Path) -> None:
    specs = specs_for(project, 3, 4, seed=9)
    retried, refused = specs[0].key, specs[1].key
    with FaultProxy(project.target.base_url) as proxy:
        proxy.add(Rule("status", status=409, method="POST", path=POST, body_contains=header_value(retried), times=3,
                       headers=FHIR_JSON, body=SERIALIZATION))
        proxy.add(Rule("status", status=409, method="POST", path=POST, body_contains=header_value(refused), times=1,
                       headers=FHIR_JSON, body=VERSION_CONFLICT))
        with client_for(project, proxy.url) as client:
            report = load(specs, client, journal=tmp_path / "j.sqlite", exactly_once="strict")
            assert client.serialization_retries == 3
        by_key = {t.key: t for t in report.threads}
        assert by_key[retried].outcome == Outcome.LOADED
        assert len(transactions(proxy.log, header_value(retried))) == 4  # three 409s, then the one that went in
        assert by_key[refused].outcome == Outcome.FAILED
        assert "HTTP 409: HAPI-0989: Trying to update" in (by_key[refused].error or "")
        assert len(transactions(proxy.log, header_value(refused))) == 1, "another conflict is not sent again"
        assert by_key[specs[2].key].outcome == Outcome.LOADED
    with client_for(project) as client:
        assert_exactly_once(client, [specs[0], specs[2]], project)


def test_a_serialization_failure_that_keeps_coming_fails_the_thread_saying_so(project: Any, tmp_path: Path) -> None:
    specs = specs_for(project, 1, 2, seed=10)
    with FaultProxy(project.target.base_url) as proxy:
        proxy.add(Rule("status", status=409, method="POST", path=POST, body_contains=project.prefix, headers=FHIR_JSON,
                       body=SERIALIZATION))
        with client_for(project, proxy.url, max_attempts=2) as client:
            [result] = load(specs, client, journal=tmp_path / "j.sqlite", exactly_once="strict").threads
    assert result.outcome == Outcome.FAILED
    assert "HTTP 409: could not serialize access" in (result.error or "")
    assert "4 times; nothing of it was stored: run again" in (result.error or "")
    assert len(transactions(proxy.log, project.prefix)) == 4


def test_entries_of_a_batch_rolled_back_for_serialization_are_sent_again(project: Any, tmp_path: Path) -> None:
    # a project without atomic transactions runs each conditional create as its own serializable transaction: the
    # batch answers 200 with such entries 409 (here made up at the proxy: the whole first answer)
    specs = specs_for(project, 2, 3, seed=12)
    key = specs[0].key
    entries = len(build_bundle(specs[0])["entry"])
    answer = orjson.dumps({"resourceType": "Bundle", "type": "transaction-response", "entry": [
        {"response": {"status": "409", "outcome": orjson.loads(SERIALIZATION)}}] * entries})
    with FaultProxy(project.target.base_url) as proxy:
        proxy.add(Rule("status", status=200, method="POST", path=POST, body_contains=header_value(key), times=1,
                       headers=FHIR_JSON, body=answer))
        with client_for(project, proxy.url) as client:
            report = load(specs, client, journal=tmp_path / "j.sqlite", atomic="off")
        assert report.ok, [(t.key, t.error) for t in report.threads]
        assert len(transactions(proxy.log, header_value(key))) == 2  # rolled back, then sent again
    with client_for(project) as client:
        assert_exactly_once(client, specs, project)


def test_a_thread_of_many_messages_is_checked_in_requests_of_bounded_size() -> None:
    """The check for copies of a thread of 1,201 entries asks at most CHECK_BATCH identifiers a request, every
    identifier once (one request for the whole thread was a body Medplum refused: "File too large")."""
    from types import SimpleNamespace

    from bundler.load import duplicates

    n = 1201
    thread = SimpleNamespace(types=["Communication"] * n, identifiers=[f"s|k/m{i}" for i in range(n)],
                             urls=[f"urn:uuid:{i}" for i in range(n)])
    waiting = duplicates.Waiting(thread, None, list(range(n)), {f"urn:uuid:{i}": f"id{i}" for i in range(n)})  # type: ignore[arg-type]
    asked: list[list[str]] = []

    class Counting:
        def count_together(self, searches: list[tuple[str, dict[str, str]]]) -> list[int]:
            asked.append([v for _, params in searches for v in params["identifier"].split(",")])
            return [len(params["identifier"].split(",")) for _, params in searches]

    [found] = duplicates.find_copies(Counting(), [waiting])  # type: ignore[arg-type]
    assert found == {}  # (every one on the server once: nothing to say of any)
    assert len(asked) >= -(-n // duplicates.CHECK_BATCH)
    assert all(len(a) <= duplicates.CHECK_BATCH for a in asked)
    assert sorted(v for a in asked for v in a) == sorted(f"s|k/m{i}" for i in range(n))


def _asked(log: list[Event], marker: str) -> list[str]:
    """Every identifier the load's checks for copies counted or searched (`system|value`, as sent)."""
    from urllib.parse import parse_qs, urlsplit

    asked = []
    for event in checks(log, marker):
        for entry in orjson.loads(event.body)["entry"]:
            query = parse_qs(urlsplit(entry["request"]["url"]).query)
            asked += [v.replace("\\,", ",") for v in query["identifier"][0].split(",")]
    return asked


def test_a_thread_created_whole_is_checked_by_its_header_and_a_part_added_later_by_its_own_entries(
        project: Any, tmp_path: Path) -> None:
    """On an atomic project, a thread whose header and messages went in one transaction is checked for copies by its
    header alone: another load that copied a message copied the header with it (or found ours, with every message).
    Messages sent later, in a part without the header (a thread that grew), are each counted: another load may
    have sent them too, having found the header."""
    from bundler.build import DEFAULT_IDENTIFIER_SYSTEM
    from bundler.load.thread import Thread

    data = sample_specs(4, 3, prefix=project.prefix, seed=31)
    specs = [parse_spec(d) for d in data]
    with FaultProxy(project.target.base_url) as proxy, client_for(project, proxy.url) as client:
        first = load(specs, client, journal=tmp_path / "j.sqlite")
        assert first.ok and first.counts() == {"loaded": 4}
        if not first.atomic:
            pytest.skip("a project without atomic transactions: every entry is counted")
        headers = [Thread(s, DEFAULT_IDENTIFIER_SYSTEM).identifiers[0] for s in specs]
        assert sorted(_asked(proxy.log, project.prefix)) == sorted(headers), "the headers alone"
        seen = len(proxy.log)
        data[2]["messages"].append({**data[2]["messages"][-1], "id": "later", "text": "one more"})
        grown = [parse_spec(d) for d in data]
        again = load(grown, client, journal=tmp_path / "j.sqlite")
        assert again.ok and again.counts() == {"appended": 1, "skipped": 3}
        thread = Thread(grown[2], DEFAULT_IDENTIFIER_SYSTEM)
        assert _asked(proxy.log[seen:], project.prefix) == [thread.identifiers[-1]], "the message sent later"
