"""Threads that grow and change after they were loaded: `load` as a sync, with and without the
journal, on atomic and non-atomic projects, counted on the server."""

from __future__ import annotations

import copy
import sqlite3
from pathlib import Path
from typing import Any

import orjson
import pytest
from faultproxy import FaultProxy
from loadkit import assert_exactly_once, cli, client_for, env, load, transactions, write_specs

from bundler import parse_spec
from bundler.load import Outcome
from bundler.load.verify import verify
from bundler.medplum.client import FhirClient
from bundler.spec import ThreadSpec
from bundler.testing.strategies import sample_specs


def specs(data: list[dict[str, Any]]) -> list[ThreadSpec]:
    return [parse_spec(d) for d in data]


def grown(data: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Thread 0 with two more messages, the first a reply to m1."""
    out = copy.deepcopy(data)
    last = out[0]["messages"][-1]["sent"]
    out[0]["messages"] += [
        {"id": "late-1", "sender": "doc", "sent": last.replace("2024-01", "2024-02"), "text": "A new reply",
         "reply_to": "m1"},
        {"id": "late-2", "sender": "p1", "sent": last.replace("2024-01", "2024-03"), "text": "And another"}]
    return out


def changed(data: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Thread 0 closed (the header's status completed, its messages' left as they were) and its message m1
    edited."""
    out = copy.deepcopy(data)
    out[0]["status"] = "completed"
    for m in out[0]["messages"]:
        m.setdefault("status", "in-progress")  # what they had from the thread: the same resources
    out[0]["messages"][1]["text"] = "Edited after it was loaded"
    return out


def bodies(proxy: FaultProxy, marker: str) -> list[dict[str, Any]]:
    return [orjson.loads(e.body) for e in transactions(proxy.log, marker)]


def server_resource(client: FhirClient, reference: str) -> dict[str, Any]:
    return client.read(reference)


@pytest.fixture(params=["journal", "no journal"])
def journal_kept(request: pytest.FixtureRequest) -> bool:
    return bool(request.param == "journal")


def test_new_messages_are_sent_and_only_they(project: Any, tmp_path: Path, journal_kept: bool) -> None:
    data = sample_specs(2, 3, prefix=project.prefix, seed=11)
    more = grown(data)
    key = more[0]["thread"]
    with FaultProxy(project.target.base_url) as proxy, client_for(project, proxy.url) as client:
        [first, _] = sorted(load(specs(data), client, journal=tmp_path / "a.sqlite").threads, key=lambda t: t.key)
        proxy.clear(log=True)
        report = load(specs(more), client, journal=tmp_path / ("a.sqlite" if journal_kept else "b.sqlite"))
        [t0, t1] = sorted(report.threads, key=lambda t: t.key)
        assert t0.outcome == Outcome.APPENDED and t0.created == 2 and t0.error is None
        assert t1.outcome == (Outcome.SKIPPED if journal_kept else Outcome.EXISTING) and t1.created == 0
        [sent] = bodies(proxy, f'"value":"{key}/late-1"')
        assert [e["resource"]["identifier"][0]["value"] for e in sent["entry"]] == [f"{key}/late-1", f"{key}/late-2"]
        header = f"Communication/{first.header_id}"
        assert all(e["resource"]["partOf"] == [{"reference": header}] for e in sent["entry"])
        assert sent["entry"][0]["resource"]["inResponseTo"] == [
            {"reference": f"Communication/{first.message_ids['m1']}"}]
        assert t0.header_id == first.header_id and set(t0.message_ids) == {"m0", "m1", "m2", "late-1", "late-2"}
    with client_for(project) as client:
        assert all(r.ok for r in verify(specs(more), client))
        assert_exactly_once(client, specs(more), project)


def test_changed_fields_are_a_diff_then_updates_with_if_match(project: Any, tmp_path: Path,
                                                             journal_kept: bool) -> None:
    data = sample_specs(2, 3, prefix=project.prefix, seed=12)
    edited = changed(data)
    journal = tmp_path / ("a.sqlite" if journal_kept else "b.sqlite")
    with FaultProxy(project.target.base_url) as proxy, client_for(project, proxy.url) as client:
        [first, _] = sorted(load(specs(data), client, journal=tmp_path / "a.sqlite").threads, key=lambda t: t.key)
        proxy.clear(log=True)
        report = load(specs(edited), client, journal=journal)
        assert not report.ok
        [t0] = [t for t in report.threads if t.key == edited[0]["thread"]]
        assert t0.outcome == Outcome.CHANGED and t0.updated == 0 and "--update" in (t0.error or "")
        [checked] = [r for r in verify(specs(edited), client) if r.key == t0.key]
        assert t0.changes == checked.differences, "load and verify say the same, in the same words"
        assert t0.changes[0] == "header.status: expected 'completed', got 'in-progress'"
        assert t0.changes[1].startswith("messages[2] (m1).payload[0].contentString: expected 'Edited after it was "
                                        "loaded', got ")
        assert len(t0.changes) == 2
        assert not any(b["entry"][0]["request"]["method"] == "PUT" for b in bodies(proxy, project.prefix))
        versions = {ref: server_resource(client, ref)["meta"]["versionId"]
                    for ref in (f"Communication/{first.header_id}", f"Communication/{first.message_ids['m1']}")}

        report = load(specs(edited), client, journal=journal, update=True)
        assert report.ok, [(t.key, t.error) for t in report.threads]
        [t0] = [t for t in report.threads if t.key == edited[0]["thread"]]
        assert t0.outcome == Outcome.UPDATED and t0.updated == 2 and t0.created == 0
        [put] = [b for b in bodies(proxy, project.prefix) if b["entry"][0]["request"]["method"] == "PUT"]
        assert {e["request"]["url"]: e["request"]["ifMatch"] for e in put["entry"]} == {
            ref: f'W/"{version}"' for ref, version in versions.items()}
        assert all(r.ok for r in verify(specs(edited), client))
        header = server_resource(client, f"Communication/{first.header_id}")
        assert header["status"] == "completed"
        if journal_kept:  # the journal records the new versions: the next run has nothing to do
            with sqlite3.connect(journal) as db:
                versions = {v for (v,) in db.execute("SELECT version FROM entries WHERE key=?", (t0.key,))}
            assert header["meta"]["versionId"] in versions
            again = load(specs(edited), client, journal=journal, update=True)
            assert again.counts() == {Outcome.SKIPPED: 2} and again.requests == 0
    with client_for(project) as client:
        assert_exactly_once(client, specs(edited), project)


def test_an_update_puts_back_the_reference_and_display_the_server_made_of_a_conditional_one(project: Any,
                                                                                            tmp_path: Path) -> None:
    """Medplum names a conditional reference after what it matched, whatever display the spec gives: a read-back
    without a journal finds no difference in that, and an update sends the server's Reference (display included),
    so the next read-back finds none either."""
    mrn = "https://example.org/mrn"
    homer = {"display": "Homie", "create": {"resourceType": "Patient", "identifier": [
        {"system": mrn, "value": f"{project.prefix}-1"}], "name": [{"given": ["Homer"], "family": "Simpson"}]}}
    doc = {"display": "The doctor", "create": {"resourceType": "Practitioner", "identifier": [
        {"system": mrn, "value": f"{project.prefix}-2"}]}}  # no name: stored without a display
    data = {"thread": f"{project.prefix}-t", "topic": "t", "subject": "homer", "participants": {"homer": homer,
                                                                                            "doc": doc},
            "messages": [{"id": "m1", "sender": "doc", "sent": "2024-01-01T10:00:00Z", "text": "Hello"}]}
    edited = copy.deepcopy(data)
    edited["messages"][0]["text"] = "Hello again"
    with FaultProxy(project.target.base_url) as proxy, client_for(project, proxy.url) as client:
        assert load(specs([data]), client, journal=tmp_path / "a.sqlite").ok
        (t,) = load(specs([edited]), client, journal=tmp_path / "b.sqlite").threads
        assert t.outcome == Outcome.CHANGED and len(t.changes) == 1, t.changes  # the text only
        proxy.clear(log=True)
        (t,) = load(specs([edited]), client, journal=tmp_path / "b.sqlite", update=True).threads
        assert t.outcome == Outcome.UPDATED, t.error
        [put] = [b for b in bodies(proxy, project.prefix) if b["entry"][0]["request"]["method"] == "PUT"]
        message = put["entry"][0]["resource"]
        assert message["sender"]["reference"].startswith("Practitioner/") and "display" not in message["sender"]
        assert message["recipient"][0]["display"] == "Homer Simpson"
        assert all(r.ok for r in verify(specs([edited]), client))
        (again,) = load(specs([edited]), client, journal=tmp_path / "c.sqlite").threads
        assert again.outcome == Outcome.EXISTING, again.changes


def test_a_change_made_on_the_server_meanwhile_is_not_overwritten(project: Any, tmp_path: Path) -> None:
    data = sample_specs(1, 3, prefix=project.prefix, seed=13)
    with client_for(project) as client:
        [first] = load(specs(data), client, journal=tmp_path / "j.sqlite").threads
        ref = f"Communication/{first.message_ids['m1']}"
        theirs = server_resource(client, ref) | {"payload": [{"contentString": "Someone else's edit"}]}
        resp = client.http.put(f"{client.fhir_base}{ref}", content=orjson.dumps(theirs),
                               headers={"Content-Type": "application/fhir+json"})
        assert resp.status_code == 200, resp.text
        edited = changed(data)
        [t] = load(specs(edited), client, journal=tmp_path / "j.sqlite", update=True).threads
        assert t.outcome == Outcome.PARTIAL and t.updated == 0
        assert "messages[2] (m1): changed on the server since it was loaded" in (t.error or "")
        assert "not overwritten" in (t.error or "")
        assert server_resource(client, ref)["payload"] == [{"contentString": "Someone else's edit"}]
        assert_exactly_once(client, specs(edited), project)


def test_a_message_removed_from_the_spec_is_reported_never_deleted(project: Any, tmp_path: Path,
                                                                  journal_kept: bool) -> None:
    data = sample_specs(1, 4, prefix=project.prefix, seed=14)
    with client_for(project) as client:
        [first] = load(specs(data), client, journal=tmp_path / "a.sqlite").threads
        fewer = copy.deepcopy(data)
        fewer[0]["messages"] = [m for m in fewer[0]["messages"] if m["id"] != "m2"]
        fewer[0]["messages"] = [{k: v for k, v in m.items() if not (k == "reply_to" and v == "m2")}
                                for m in fewer[0]["messages"]]
        report = load(specs(fewer), client, journal=tmp_path / ("a.sqlite" if journal_kept else "b.sqlite"))
        [t] = report.threads
        assert t.removed == ["m2"] and t.created == 0 and report.noted_count == 1
        assert client.read(f"Communication/{first.message_ids['m2']}")["id"] == first.message_ids["m2"]
        assert_exactly_once(client, specs(data), project)  # all four still there, once


def test_updates_go_fifty_to_a_transaction(project: Any, tmp_path: Path) -> None:
    data = sample_specs(1, 60, prefix=project.prefix, seed=15)
    edited = copy.deepcopy(data)
    for m in edited[0]["messages"]:
        m["text"] = f"edited {m['id']}"
    with FaultProxy(project.target.base_url) as proxy, client_for(project, proxy.url) as client:
        load(specs(data), client, journal=tmp_path / "j.sqlite")
        proxy.clear(log=True)
        [t] = load(specs(edited), client, journal=tmp_path / "j.sqlite", update=True).threads
        assert t.outcome == Outcome.UPDATED and t.updated == 60
        puts = [len(b["entry"]) for b in bodies(proxy, project.prefix) if b["entry"][0]["request"]["method"] == "PUT"]
        assert puts == [50, 10]
        assert all(r.ok for r in verify(specs(edited), client))


def test_sync_on_a_non_atomic_project(project: Any, tmp_path: Path) -> None:
    project.configure(transaction_bundles=False)
    data = sample_specs(2, 3, prefix=project.prefix, seed=16)
    both = changed(grown(data))
    with FaultProxy(project.target.base_url) as proxy, client_for(project, proxy.url) as client:
        assert load(specs(data), client, journal=tmp_path / "j.sqlite").atomic is False
        proxy.clear(log=True)
        report = load(specs(both), client, journal=tmp_path / "j.sqlite", update=True)
        assert report.ok, [(t.key, t.error) for t in report.threads]
        [t0] = [t for t in report.threads if t.key == both[0]["thread"]]
        assert t0.outcome == Outcome.UPDATED and (t0.created, t0.updated) == (2, 2)
        posts = [b for b in bodies(proxy, project.prefix) if b["entry"][0]["request"]["method"] == "POST"]
        assert posts and all(len(b["entry"]) <= 8 and all("ifNoneExist" in e["request"] for e in b["entry"])
                             for b in posts)
        assert all(r.ok for r in verify(specs(both), client))
        assert_exactly_once(client, specs(both), project)


OLD_JOURNALS = {
    # as thread-bundler 0.1 wrote it: ids as JSON in the thread's row, no per-entry columns, no meta table
    1: """CREATE TABLE old AS SELECT t.target, t.key, t.state, t.fingerprint,
              (SELECT json_group_object(e.url, e.ref) FROM entries e WHERE e.target = t.target AND e.key = t.key)
              AS ids, t.in_flight, t.error, t.updated FROM threads t;
          DROP TABLE threads; DROP TABLE meta; DROP TABLE entries;
          CREATE TABLE threads (target TEXT NOT NULL, key TEXT NOT NULL, state TEXT NOT NULL,
              fingerprint TEXT NOT NULL, ids TEXT NOT NULL DEFAULT '{}', in_flight TEXT NOT NULL DEFAULT '[]',
              error TEXT, updated REAL NOT NULL, PRIMARY KEY (target, key));
          INSERT INTO threads SELECT * FROM old; DROP TABLE old; PRAGMA user_version=0;""",
    # version 2: each entry's id, version and hash as JSON in the thread's row, rewritten whole at every save
    2: """UPDATE threads SET
              ids = (SELECT json_group_object(e.url, e.ref) FROM entries e
                     WHERE e.target = threads.target AND e.key = threads.key),
              entries = (SELECT json_group_object(e.url, json_array(e.version, e.hash)) FROM entries e
                         WHERE e.target = threads.target AND e.key = threads.key);
          DROP TABLE entries; PRAGMA user_version=2;""",
}


@pytest.mark.parametrize("version", sorted(OLD_JOURNALS))
def test_an_old_journal_is_upgraded_in_place(project: Any, tmp_path: Path, version: int) -> None:
    data = sample_specs(2, 2, prefix=project.prefix, seed=17)
    journal = tmp_path / "j.sqlite"
    with client_for(project) as client:
        load(specs(data), client, journal=journal)
    with sqlite3.connect(journal) as db:
        db.executescript(OLD_JOURNALS[version])
    with client_for(project) as client:
        plan = load(specs(grown(data)), client, journal=journal, dry_run=True)  # read-only: still the old schema
        assert plan.counts() == {Outcome.PLANNED: 1, Outcome.SKIPPED: 1}
        report = load(specs(changed(grown(data))), client, journal=journal, update=True)
        assert report.ok and report.counts() == {Outcome.UPDATED: 1, Outcome.SKIPPED: 1}
        assert_exactly_once(client, specs(grown(data)), project)
        again = load(specs(changed(grown(data))), client, journal=journal, update=True)
        assert again.counts() == {Outcome.SKIPPED: 2} and again.requests == 0  # (both read from the old rows)
    with sqlite3.connect(journal) as db:
        columns = {row[1] for row in db.execute("PRAGMA table_info(threads)")}
        assert {"entries", "settles"} <= columns and db.execute("PRAGMA user_version").fetchone()[0] == 3
        # the thread recorded again has its entries in rows of their own; the other is as the old version left it
        rows = dict(db.execute("SELECT key, count(*) FROM entries GROUP BY key").fetchall())
        assert rows == {data[0]["thread"]: len(grown(data)[0]["messages"]) + 1}, rows


def test_the_cli_shows_the_diff_and_advice(project: Any, tmp_path: Path) -> None:
    data = sample_specs(1, 2, prefix=project.prefix, seed=18)
    write_specs(tmp_path / "v1", data)
    write_specs(tmp_path / "v2", changed(data))
    journal = ["--journal", str(tmp_path / "j.sqlite"), "--no-progress"]
    assert cli(["load", str(tmp_path / "v1"), *journal], env(project)).returncode == 0
    run = cli(["load", str(tmp_path / "v2"), *journal], env(project))
    assert run.returncode == 1
    assert "changed: " in run.stderr and "load again with --update" in run.stderr
    assert "  header.status: expected 'completed', got 'in-progress'" in run.stderr
    checked = cli(["verify", str(tmp_path / "v2")], env(project))
    assert "  header.status: expected 'completed', got 'in-progress'" in checked.stderr  # the same words
    updated = cli(["load", str(tmp_path / "v2"), *journal, "--update"], env(project))
    assert updated.returncode == 0 and "updated" in updated.stderr
