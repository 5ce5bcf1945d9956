"""`export`: threads out of a project as specs. Round trips against the server (the local Medplum, or MEDPLUM_BASE_URL),
a copy between two local servers, threads that are not in our shape, and the shaping itself (pure)."""

from __future__ import annotations

import datetime as dt
import json
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from loadkit import cli, client_for, env, load

from bundler import DEFAULT_IDENTIFIER_SYSTEM, bundle_bytes, load_specs, parse_spec
from bundler.errors import BundlerError, OptionError, Unreachable
from bundler.export import REPORT_NAME, ThreadExport, export, shape_thread
from bundler.export.shape import aliases_for, slug
from bundler.load.verify import conditional_references, resolve_references
from bundler.medplum.client import ClientCredentials, FhirClient
from bundler.medplum.localserver import LocalServer
from bundler.spec import ThreadSpec, read_participants
from bundler.spec.dump import dump_yaml
from bundler.testing.strategies import sample_specs, thread_specs
from bundler.vocabulary import (
    CURSOR_MIN_COUNT,
    MAX_SEARCH_OFFSET,
    READ_RECEIPT_CODE,
    READ_RECEIPT_SYSTEM,
    READ_STATE_EXTENSION,
    READ_STATE_LAST_READ,
    READ_STATE_LAST_READ_AT,
    READ_STATE_PARTICIPANT,
    format_instant,
    parse_instant,
    search_query,
)

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "fixtures/threads"
SYSTEM = DEFAULT_IDENTIFIER_SYSTEM


def _ours(spec: ThreadSpec | dict[str, Any], prefix: str) -> ThreadSpec:
    """`spec` under a key and topic of this test's own (a remote server keeps what every test loads)."""
    data = spec.to_data() if isinstance(spec, ThreadSpec) else dict(spec)
    data["thread"] = f"{prefix}-{data['thread']}"[:128]
    data["topic"] = f"{prefix} {data['topic']}"
    return parse_spec(data).with_files(spec.files if isinstance(spec, ThreadSpec) else {})


def _untied(data: dict[str, Any]) -> dict[str, Any]:
    """Spec data whose messages are sent at strictly increasing moments (export orders messages by `sent`, and
    the order of messages sent at the same moment is the server's, which FHIR leaves undefined); a read moved
    before its message's new moment is moved with it."""
    last: dt.datetime | None = None
    messages, drafts = [], []
    for m in data.get("messages", []):
        if "sent" not in m:  # a draft: never sent, so export puts it after the messages that were
            drafts.append(m)
            continue
        moment = parse_instant(m["sent"])
        if last is not None and moment <= last:
            moment = (last + dt.timedelta(milliseconds=1)).astimezone(moment.tzinfo)
            m = {**m, "sent": format_instant(moment, digits=3)}
            if m.get("read_by"):
                m["read_by"] = {a: w if parse_instant(w) >= moment else m["sent"] for a, w in m["read_by"].items()}
        last = moment
        messages.append(m)
    return {**data, "messages": messages + drafts}


def _exported(folder: Path) -> dict[str, ThreadSpec]:
    return {s.key: s for s in load_specs([folder])}


def _report(folder: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (folder / REPORT_NAME).read_text().splitlines()]


def assert_same_bundles(originals: list[ThreadSpec], exported: dict[str, ThreadSpec],
                        stored: dict[str, dict[str, str]] | None = None) -> None:
    """Each original, as the server stores it, builds exactly the bundle its export builds (aliases are not in a
    bundle), once the literal references the server made of conditional ones are taken back to them (`stored`:
    conditional reference → the Reference stored in its place, `resolve_references`; `_as_loaded`, `_as_stored`)."""
    for spec in originals:
        assert spec.key in exported, f"{spec.key} not exported"
        back = _as_loaded(exported[spec.key], stored) if stored else exported[spec.key]
        assert bundle_bytes(back) == bundle_bytes(_as_stored(spec, stored) if stored else spec), spec.key


# --- round trips on the server -----------------------------------------------------------------------


def test_fixtures_and_sample_threads_round_trip(project: Any, tmp_path: Path) -> None:
    specs = [_ours(s, project.prefix) for s in load_specs([FIXTURES])]
    specs += [_ours(s, project.prefix) for s in sample_specs(6, 4, prefix="s")]
    with client_for(project) as client:
        assert load(specs, client, journal=tmp_path / "j.sqlite").ok
        # pages of 2: headers and messages both come in several pages; the fixtures' files come back as files
        report = export(client, tmp_path / "out", topic=project.prefix, page_size=2, attachments="download")
        stored = resolve_references(client, specs)  # the fixtures' participants are created ones
    # drafts, priorities and each read model among them
    assert any(m.sent is None for s in specs for m in s.messages) and any(s.priority for s in specs)
    assert {s.read_model for s in specs} == {None, "simple", "header-extension", "tasks"}
    assert (report.threads, report.written, report.failed, report.not_in_shape) == (len(specs), len(specs), 0, 0)
    assert report.messages == sum(len(s.messages) for s in specs)
    exported = _exported(tmp_path / "out")
    assert_same_bundles(specs, exported, stored)  # read receipts and the header's extension among them
    lines = {line.get("key"): line for line in _report(tmp_path / "out")}
    assert all(lines[s.key]["in_shape"] for s in specs)
    assert lines[None]["summary"]["written"] == len(specs)
    for spec in specs:  # who read what: as the spec says (tasks); its high-water mark (header-extension)
        back = exported[spec.key]
        if spec.read_model == "tasks":  # aliases from the receipts' identifiers: the original ones
            assert back.read_model == "tasks"
            assert [dict(m.read_by) for m in back.messages] == [dict(m.read_by) for m in spec.messages]
        elif spec.read_model == "header-extension":
            assert back.read_model == "header-extension"
            assert [sorted(m.read_by.values()) for m in back.messages] == [sorted(m.read_by.values())
                                                                            for m in spec.messages]
        elif spec.read_model == "simple":  # plain fields (status, received): the same bundle, no model assumed
            assert back.read_model is None and not any(m.read_by for m in back.messages)
            assert [m.status for m in back.messages] == ["completed", "completed", None]


@settings(max_examples=3, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(thread_specs(styles=["literal"], max_participants=4, max_messages=6), min_size=4, max_size=4))
def test_generated_threads_round_trip(project: Any, tmp_path_factory: pytest.TempPathFactory,
                                      drawn: list[dict[str, Any]]) -> None:
    run = f"{project.prefix}{uuid.uuid4().hex[:6]}"  # hypothesis runs this body several times in one test
    specs = [_ours(_untied({**d, "thread": f"g{n}"}), run) for n, d in enumerate(drawn)]
    folder = tmp_path_factory.mktemp("export")
    with client_for(project) as client:
        assert load(specs, client, journal=folder / "j.sqlite").ok
        report = export(client, folder / "out", topic=run, page_size=3)
    assert report.ok, [t.problems for t in report.problems]
    assert_same_bundles(specs, _exported(folder / "out"))


def _prefixed(data: dict[str, Any], run: str) -> dict[str, Any]:
    """Thread data whose conditional references (and the identifiers of participants to create) name values of
    this run's own."""
    def ref(value: str) -> str:
        return value.replace("?identifier=https://example.org/ids|", f"?identifier=https://example.org/ids|{run}-")

    people = {}
    for alias, p in data["participants"].items():
        p = {**p, "reference": ref(p["reference"])} if "reference" in p else dict(p)
        if "create" in p:
            first = {**p["create"]["identifier"][0], "value": f"{run}-{p['create']['identifier'][0]['value']}"}
            p["create"] = {**p["create"], "identifier": [first, *p["create"]["identifier"][1:]]}
        people[alias] = p
    out = {**data, "participants": people}
    if isinstance(data.get("subject"), str):
        out["subject"] = ref(data["subject"])
    return out


def _create_participants(client: FhirClient, specs: list[ThreadSpec]) -> None:
    """Each resource the specs' conditional references name, created if missing (a conditional create)."""
    refs = sorted(conditional_references(specs))
    for start in range(0, len(refs), 8):  # Medplum's cap on conditional entries in a transaction
        entries = []
        for ref in refs[start:start + 8]:
            kind, query = ref.split("?identifier=", 1)
            system, value = query.split("|", 1)
            entries.append({"resource": {"resourceType": kind, "identifier": [{"system": system, "value": value}]},
                            "request": {"method": "POST", "url": kind, "ifNoneExist": search_query(
                                {"identifier": query})}})
        body = json.dumps({"resourceType": "Bundle", "type": "transaction", "entry": entries}).encode()
        client.transaction(body, entries=len(entries))


def _as_loaded(exported: ThreadSpec, stored: dict[str, dict[str, str]]) -> ThreadSpec:
    """`exported` with each literal reference the server made of a conditional one (`stored`: conditional → the
    Reference stored in its place) back to the conditional one; its display, the server's, kept."""
    back = {v["reference"]: k for k, v in stored.items()}
    data = exported.to_data()
    for p in data["participants"].values():
        p["reference"] = back.get(p["reference"], p["reference"])
    if data.get("subject") in back:
        data["subject"] = back[data["subject"]]
    return parse_spec(data).with_files(exported.files)


def _as_stored(spec: ThreadSpec, stored: dict[str, dict[str, str]]) -> ThreadSpec:
    """`spec` with the display of each conditional reference the one a server stores in its place (its own name for
    what the reference matched: `stored`), or none where it stores none."""
    data = spec.to_data()
    for p in data["participants"].values():
        if (reference := stored.get(p.get("reference", ""))) is not None:
            p.pop("display", None)
            if "display" in reference:
                p["display"] = reference["display"]
    return parse_spec(data).with_files(spec.files)


@settings(max_examples=2, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(thread_specs(styles=["conditional"], participant_types=("Patient", "Practitioner", "Organization"),
                             max_participants=3, max_messages=4), min_size=3, max_size=3))
def test_conditional_references_come_back_as_the_literal_ones_the_server_made(
        project: Any, tmp_path_factory: pytest.TempPathFactory, drawn: list[dict[str, Any]]) -> None:
    run = f"{project.prefix}{uuid.uuid4().hex[:6]}"
    ours = [_prefixed(d, run) for d in drawn]  # identifiers of this run's own: a remote server keeps every test's
    specs = [_ours(_untied({**d, "thread": f"c{n}"}), run) for n, d in enumerate(ours)]
    folder = tmp_path_factory.mktemp("export")
    with client_for(project) as client:
        _create_participants(client, specs)
        assert load(specs, client, journal=folder / "j.sqlite").ok
        report = export(client, folder / "out", topic=run)
        stored = resolve_references(client, specs)
    assert report.ok, [t.problems for t in report.problems]
    exported = _exported(folder / "out")
    for spec in specs:
        assert all("?" not in p.reference for p in exported[spec.key].participants.values())
    assert_same_bundles(specs, exported, stored)


def test_a_thread_longer_than_a_search_page(project: Any, tmp_path: Path) -> None:
    (spec,) = [_ours(s, project.prefix) for s in sample_specs(1, 25, prefix="long")]
    with client_for(project) as client:
        assert load([spec], client, journal=tmp_path / "j.sqlite").ok
        before = client.requests
        report = export(client, tmp_path / "out", topic=project.prefix, page_size=4)
        searches = client.requests - before
    assert report.messages == 25
    # every page of messages was read (at least CURSOR_MIN_COUNT a page, so Medplum pages them by cursor), and a
    # page of headers
    assert searches >= 1 + -(-25 // CURSOR_MIN_COUNT)
    assert_same_bundles([spec], _exported(tmp_path / "out"))


def _windowed_thread(client: FhirClient, prefix: str) -> tuple[list[str], list[str]]:
    """A thread of 23 messages posted as the server holds them: 20 sent at 7 moments (ties of three) and 3 drafts
    with no sent instant; (every message's id, those of the drafts)."""
    patient = {"reference": "Patient/p1", "display": "Pat Smith"}
    doctor = {"reference": "Practitioner/d1", "display": "Dr. Who"}
    header = {"resourceType": "Communication", "status": "in-progress", "topic": {"text": f"{prefix} windows"},
              "identifier": [{"system": SYSTEM, "value": f"{prefix}-windows"}], "recipient": [patient, doctor],
              "sender": doctor, "sent": "2024-01-01T09:00:00Z"}
    messages = []
    for n in range(23):
        m = {"resourceType": "Communication", "status": "in-progress", "partOf": [_urn(0)], "sender": patient,
             "recipient": [doctor], "payload": [{"contentString": f"message {n}"}],
             "identifier": [{"system": SYSTEM, "value": f"{prefix}-windows/m{n}"}]}
        if n < 20:
            m["sent"] = f"2024-01-01T10:0{n // 3}:00Z"
        else:
            m["status"] = "preparation"
        messages.append(m)
    ids = _transaction(client, [header, *messages])
    return ids, ids[21:]


@pytest.mark.local_only
def test_a_thread_past_the_offset_limit_is_exported_whole(project: Any, local_server: Any, tmp_path: Path) -> None:
    """Medplum answers 400 past `_offset` 10,000 (the local server's limit set to 5 here): a longer thread is read
    by cursor (`load.verify.part_of_pages`), ties and drafts included, every message once; exported whole, in the
    order of sent (drafts last)."""
    local_server.configure(max_search_offset=5)
    with client_for(project) as client:
        ids, _ = _windowed_thread(client, project.prefix)
        with pytest.raises(BundlerError, match="offset"):  # what a read by offset would meet
            client.search("Communication", {"part-of": f"Communication/{ids[0]}", "_sort": "sent", "_count": "3"})
        report = export(client, tmp_path / "out", topic=f"{project.prefix} windows", page_size=3)
    assert report.ok and report.messages == 23, _report(tmp_path / "out")
    (spec,) = _exported(tmp_path / "out").values()
    assert sorted(m.id for m in spec.messages) == sorted(f"m{n}" for n in range(23))
    assert [m.id for m in spec.messages][-3:] == ["m20", "m21", "m22"]  # no sent instant: last
    moments = [m.sent for m in spec.messages if m.sent is not None]
    assert moments == sorted(moments) and len(moments) == 20


@pytest.mark.volume
def test_a_thread_of_more_messages_than_the_server_pages_by_offset_is_exported_whole(project: Any,
                                                                                  tmp_path: Path) -> None:
    """10,150 messages, read 100 a page: a real Medplum answers 400 past `_offset` 10,000, so export must read them
    by cursor (`load.verify.part_of_pages`); every one of them is in the spec, in order. (On the local server
    this is tested with a small offset limit, above.)"""
    if project.server is not None:
        pytest.skip("slow on the local server: its offset limit is tested small in test_a_thread_past_the_...")
    n = MAX_SEARCH_OFFSET + 150
    patient = {"reference": "Patient/p1", "display": "Pat Smith"}
    doctor = {"reference": "Practitioner/d1", "display": "Dr. Who"}
    key = f"{project.prefix}-huge"
    header = {"resourceType": "Communication", "status": "in-progress", "topic": {"text": f"{project.prefix} huge"},
              "identifier": [{"system": SYSTEM, "value": key}], "recipient": [patient, doctor], "sender": doctor,
              "sent": "2024-01-01T00:00:00Z"}
    start = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    with client_for(project) as client:
        (header_id,) = _transaction(client, [header])
        for first in range(0, n, 500):
            _transaction(client, [{"resourceType": "Communication", "status": "in-progress", "sender": patient,
                                   "partOf": [{"reference": f"Communication/{header_id}"}], "recipient": [doctor],
                                   "identifier": [{"system": SYSTEM, "value": f"{key}/m{i}"}],
                                   "sent": format_instant(start + dt.timedelta(seconds=i + 1), zulu=True),
                                   "payload": [{"contentString": f"message {i}"}]}
                                  for i in range(first, min(n, first + 500))])
        report = export(client, tmp_path / "out", topic=f"{project.prefix} huge")
    assert report.ok and report.messages == n, _report(tmp_path / "out")
    (spec,) = _exported(tmp_path / "out").values()
    assert [m.id for m in spec.messages] == [f"m{i}" for i in range(n)]


def _transaction(client: FhirClient, resources: list[dict[str, Any]]) -> list[str]:
    """Post `resources` (fullUrls urn:uuid:<n>) as one transaction; their server ids."""
    entries = [{"fullUrl": f"urn:uuid:{uuid.UUID(int=n + 1)}", "resource": r,
                "request": {"method": "POST", "url": "Communication"}} for n, r in enumerate(resources)]
    body = json.dumps({"resourceType": "Bundle", "type": "transaction", "entry": entries}).encode()
    answer = client.transaction(body, entries=len(entries))
    return [e["response"]["location"].split("/")[1] for e in answer["entry"]]


def _urn(n: int) -> dict[str, str]:
    return {"reference": f"urn:uuid:{uuid.UUID(int=n + 1)}"}


def test_a_thread_not_in_our_shape_is_exported_as_far_as_it_goes(project: Any, tmp_path: Path) -> None:
    patient = {"reference": "Patient/p1", "display": "Pat Smith"}
    doctor = {"reference": "Practitioner/d1", "display": "Dr. Who"}
    header = {"resourceType": "Communication", "status": "in-progress", "topic": {"text": f"{project.prefix} odd"},
              "recipient": [patient, doctor], "payload": [{"contentString": "a header with a payload"}],
              "medium": [{"text": "portal"}]}
    good = {"resourceType": "Communication", "status": "in-progress", "partOf": [_urn(0)], "sender": patient,
            "recipient": [doctor], "sent": "2024-01-01T10:00:00Z", "payload": [{"contentString": "hello"}]}
    no_sender = {**good, "sent": "2024-01-01T11:00:00Z", "payload": [{"contentString": "who am I?"}]}
    del no_sender["sender"]
    outside = {**good, "sent": "2024-01-01T12:00:00Z", "inResponseTo": [{"reference": "Communication/elsewhere"}]}
    with client_for(project) as client:
        ids = _transaction(client, [header, good, no_sender, outside])
        result = cli(["export", "-o", str(tmp_path / "out"), "--topic", project.prefix, "--page-size", "2"],
                     env(project))
    assert result.returncode == 1, result.stderr
    (spec,) = _exported(tmp_path / "out").values()
    assert spec.key == ids[0]  # no identifier of ours: the key is the header's server id
    assert [m.id for m in spec.messages] == [ids[1], ids[3]] and spec.messages[1].reply_to is None
    (line, summary) = _report(tmp_path / "out")
    problems = "\n".join(line["problems"])
    for fragment in ["header has a payload", "header: medium, payload not in the spec format",
                     f"Communication/{ids[2]}: no sender: the message is not in the spec",
                     f"Communication/{ids[3]}: replies to Communication/elsewhere",
                     "not as on the server: header.payload: on the server but not in the spec"]:
        assert fragment in problems
        assert fragment in result.stderr or "more" in result.stderr
    assert {d.get("id") for d in line["dropped"]} == {ids[0], ids[2]}  # nothing silently dropped
    assert summary["summary"]["not_in_shape"] == 1
    assert re.search(r"not in our shape \(written, with problems\) +1\n", result.stderr)


def test_cli_exports_and_says_where(project: Any, tmp_path: Path) -> None:
    specs = [_ours(s, project.prefix) for s in load_specs([FIXTURES])]
    with client_for(project) as client:
        assert load(specs, client, journal=tmp_path / "j.sqlite").ok
        stored = resolve_references(client, specs)
    result = cli(["export", "-o", str(tmp_path / "out"), "--topic", project.prefix, "--no-progress",
                  "--attachments", "download"], env(project))
    assert result.returncode == 0, result.stderr
    assert re.search(rf"spec files written +{len(specs)}\n", result.stderr)
    assert f"report: {tmp_path / 'out' / REPORT_NAME}" in result.stderr
    assert project.target.client_secret not in result.stdout + result.stderr
    assert_same_bundles(specs, _exported(tmp_path / "out"), stored)
    kept = cli(["export", "-o", str(tmp_path / "kept"), "--topic", project.prefix], env(project))
    assert kept.returncode == 1  # a url cannot hold the size and hash of the files the fixtures attach: said
    assert "contentAttachment.size: on the server but not in the spec" in kept.stderr


def test_subject_and_since_are_asked_of_the_server(project: Any, tmp_path: Path) -> None:
    specs = [_ours(s, project.prefix) for s in sample_specs(3, 1, prefix="f")]
    with client_for(project) as client:
        assert load(specs, client, journal=tmp_path / "j.sqlite").ok
        subject = specs[1].participants[str(specs[1].subject)].reference
        export(client, tmp_path / "one", topic=project.prefix, subject=subject)
        later = export(client, tmp_path / "later", topic=project.prefix, since="2999-01-01T00:00:00Z")
        with pytest.raises(OptionError, match="since"):
            export(client, tmp_path / "bad", since="yesterday")
    assert list(_exported(tmp_path / "one")) == [specs[1].key]
    assert later.threads == 0 and [p.name for p in (tmp_path / "later").iterdir()] == [REPORT_NAME]
    assert not (tmp_path / "bad").exists()


@pytest.mark.local_only  # the scan reads every message of the project
def test_orphans_are_found_by_the_scan_and_written_as_far_as_they_go(project: Any, tmp_path: Path) -> None:
    kept, lost = [_ours(s, project.prefix) for s in sample_specs(2, 3, prefix="o")]
    with client_for(project) as client:
        assert load([kept, lost], client, journal=tmp_path / "j.sqlite").ok
        header = client.find_identifiers("Communication", [f"{SYSTEM}|{lost.key}"])[f"{SYSTEM}|{lost.key}"]
        client.delete(f"Communication/{header}")
        first = client.search("Communication", {"identifier": f"{SYSTEM}|{kept.key}/m0"})[0]
        nested = {**_message(1, identifier=None, partOf=[{"reference": f"Communication/{first['id']}"}]),
                  "sender": {"reference": kept.participants["doc"].reference, "display": "Dr. Who"}}
        _transaction(client, [{k: v for k, v in nested.items() if k != "id"}])
        blind = export(client, tmp_path / "blind")
        report = export(client, tmp_path / "out", orphans=True, page_size=2)
    assert (blind.threads, blind.orphans) == (1, 0)  # a header search cannot see them
    assert (report.threads, report.orphans, report.not_in_shape) == (3, 2, 2)
    specs = _exported(tmp_path / "out")
    assert_same_bundles([kept], specs)
    # the lost header's messages carry its key: they come back under it, as far as they go
    assert [m.id for m in specs[lost.key].messages] == [m.id for m in lost.messages]
    lines = {line.get("key"): line for line in _report(tmp_path / "out")}
    assert f"its header Communication/{header} does not exist" in lines[lost.key]["problems"]
    assert any("header: not on the server" in p for p in lines[lost.key]["problems"])
    assert lines[lost.key]["orphans"] and lines[first["id"]]["orphans"]
    assert any(p.startswith(f"part of Communication/{first['id']}, which is a message")
               for p in lines[first["id"]]["problems"])


def test_a_header_changed_during_the_export_is_exported_once(project: Any, tmp_path: Path) -> None:
    specs = [_ours(s, project.prefix) for s in sample_specs(12, 1, prefix="u")]
    with client_for(project) as client:
        assert load(specs, client, journal=tmp_path / "j.sqlite").ok
        changed: list[str] = []

        def change(result: ThreadExport) -> None:  # the first header read is changed: it comes again, last
            if not changed and result.header_id is not None:
                header = client.read(f"Communication/{result.header_id}")
                body = json.dumps({"resourceType": "Bundle", "type": "transaction", "entry": [
                    {"resource": {**header, "status": "completed"},
                     "request": {"method": "PUT", "url": f"Communication/{header['id']}"}}]}).encode()
                client.transaction(body, entries=1)
                changed.append(result.header_id)

        # one worker, pages of 2: the change is made while later pages are still to be read
        report = export(client, tmp_path / "out", topic=project.prefix, page_size=2, concurrency=1, on_thread=change)
    lines = [line for line in _report(tmp_path / "out") if "header_id" in line]
    assert [line["header_id"] for line in lines].count(changed[0]) == 1
    assert not any("another thread's too" in p for line in lines for p in line.get("problems", []))
    assert report.written == len({line["key"] for line in lines}) == len(lines)


# --- a copy between two projects ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def _another_server() -> Iterator[LocalServer]:
    with LocalServer(port=0) as server:
        yield server


@pytest.fixture
def second_server(_another_server: LocalServer) -> Iterator[LocalServer]:
    """A local server other than the project's, empty, with its default settings (one process for the module)."""
    _another_server.reset()
    try:
        yield _another_server
    finally:
        _another_server.restore_defaults()


@pytest.mark.local_only
def test_copy_between_two_servers_then_verify_there(project: Any, second_server: LocalServer,
                                                    tmp_path: Path) -> None:
    specs = [_ours(s, project.prefix) for s in load_specs([FIXTURES])]  # read state of each model among them
    specs += [_ours(s, project.prefix) for s in sample_specs(5, 3, prefix="c")]
    with client_for(project) as source:
        assert load(specs, source, journal=tmp_path / "a.sqlite").ok
    exported = cli(["export", "-o", str(tmp_path / "out"), "--attachments", "download"], env(project))
    assert exported.returncode == 0, exported.stderr
    target = {"MEDPLUM_BASE_URL": second_server.base_url, "MEDPLUM_CLIENT_ID": second_server.client_id,
              "MEDPLUM_CLIENT_SECRET": second_server.client_secret}
    loaded = cli(["load", str(tmp_path / "out"), "--journal", str(tmp_path / "b.sqlite")], target)
    assert loaded.returncode == 0, loaded.stderr
    checked = cli(["verify", str(tmp_path / "out")], target)  # files read back there and compared by hash
    assert checked.returncode == 0, checked.stderr
    assert f"{len(specs)} of {len(specs)} threads match their specs" in checked.stderr


def _people(client: FhirClient, prefix: str, n: int) -> list[tuple[str, str]]:
    """`n` Patients and Practitioners (by turns) with identifiers of this test's own: (literal reference, display)."""
    kinds = ["Patient", "Practitioner"]
    resources = [{"resourceType": kinds[i % 2], "identifier": [{"system": "https://example.org/people",
                                                                "value": f"{prefix}-{i}"}],
                  "name": [{"text": f"Person {i}"}]} for i in range(n)]
    entries = [{"resource": r, "request": {"method": "POST", "url": r["resourceType"]}} for r in resources]
    answer = client.transaction(json.dumps({"resourceType": "Bundle", "type": "transaction",
                                            "entry": entries}).encode(), entries=n)
    return [(e["response"]["location"], f"Person {i}") for i, e in enumerate(answer["entry"])]


def _threads_of(people: list[tuple[str, str]], prefix: str, threads: int) -> list[ThreadSpec]:
    """Sample threads whose participants are `people` (each thread three of them, the first the subject)."""
    out = []
    for n, data in enumerate(sample_specs(threads, 4, prefix="p")):
        chosen = [people[(n + i) % len(people)] for i in range(3)]
        if n % 2:  # the header lists them in an order no message follows
            chosen.reverse()
        data["participants"] = {f"x{i}": {"reference": ref, "display": display}
                                for i, (ref, display) in enumerate(chosen)}
        data["subject"] = next(a for a, p in data["participants"].items() if p["reference"].startswith("Patient"))
        data["sender"] = "x0"
        for k, m in enumerate(data["messages"]):
            m["sender"] = f"x{k % 2}"  # x2 never writes: a participant that only receives
            m.pop("recipient", None)
        if n % 3 == 0:  # read receipts: their identifiers give the aliases back, which the participants file renames
            data["read_model"] = "tasks"
            data["messages"][1]["read_by"] = {"x2": data["messages"][1]["sent"]}
        out.append(_ours(data, prefix))
    return out


@pytest.mark.local_only
def test_copy_with_a_participants_file_into_an_empty_strict_project(project: Any, second_server: LocalServer,
                                                                   tmp_path: Path) -> None:
    with client_for(project) as source:
        people = _people(source, project.prefix, 5)
        specs = _threads_of(people, project.prefix, 6)
        assert load(specs, source, journal=tmp_path / "a.sqlite").ok
        report = export(source, tmp_path / "out", participants_out=tmp_path / "people.yaml", topic=project.prefix)
    assert report.ok and report.participants == 5, report.participant_problems
    assert any(s.read_model for s in specs)
    shared = read_participants(tmp_path / "people.yaml")
    # a spec names a participant by alias alone where the file puts it in the same place; else in full
    texts = [f.read_text() for f in (tmp_path / "out").glob("*.yaml")]
    assert 0 < sum("participants:" not in t for t in texts) < len(texts)
    assert sorted(p.display for p in shared.participants.values()) == [f"Person {i}" for i in range(5)]
    exported = {s.key: s for s in load_specs([tmp_path / "out"], participants=shared)}
    conditional = {ref: shared.participants[a].reference for a in shared.participants
                   for ref, d in people if shared.participants[a].display == d}
    for spec in specs:  # the same bundle, but for the references: conditional ones, to be made anywhere
        if spec.read_model == "tasks":  # and the aliases in the receipts' identifiers: the file's; who read what kept
            back = exported[spec.key]
            assert back.read_model == "tasks" and "x2" not in back.participants
            assert any(m.read_by for m in back.messages)
            assert [{conditional[spec.participants[a].reference]: w for a, w in m.read_by.items()}
                    for m in spec.messages] == [{back.participants[a].reference: w for a, w in m.read_by.items()}
                                                for m in back.messages]
            continue
        original = bundle_bytes(spec).decode()
        for literal, ref in conditional.items():
            original = original.replace(f'"{literal}"', json.dumps(ref))
        assert bundle_bytes(exported[spec.key]).decode() == original
    second_server.configure(check_references_on_write=True)
    target = {"MEDPLUM_BASE_URL": second_server.base_url, "MEDPLUM_CLIENT_ID": second_server.client_id,
              "MEDPLUM_CLIENT_SECRET": second_server.client_secret}
    loaded = cli(["load", str(tmp_path / "out"), "--participants", str(tmp_path / "people.yaml"),
                  "--journal", str(tmp_path / "b.sqlite")], target)
    assert loaded.returncode == 0, loaded.stderr
    checked = cli(["verify", str(tmp_path / "out"), "--participants", str(tmp_path / "people.yaml")], target)
    assert checked.returncode == 0, checked.stderr
    assert f"{len(specs)} of {len(specs)} threads match their specs" in checked.stderr


def test_participants_that_cannot_be_created_keep_their_references_and_are_listed(project: Any,
                                                                                   tmp_path: Path) -> None:
    with client_for(project) as client:
        (named,) = _people(client, project.prefix, 1)
        anonymous = client.transaction(json.dumps({"resourceType": "Bundle", "type": "transaction", "entry": [
            {"resource": {"resourceType": "Practitioner", "name": [{"text": "No Id"}]},
             "request": {"method": "POST", "url": "Practitioner"}}]}).encode(), entries=1)
        nobody = anonymous["entry"][0]["response"]["location"]
        same = {k: v for k, v in client.read(named[0]).items() if k not in ("id", "meta")}
        same["name"] = [{"text": "Twin"}]
        twin = client.transaction(json.dumps({"resourceType": "Bundle", "type": "transaction", "entry": [
            {"resource": same, "request": {"method": "POST", "url": "Patient"}}]}).encode(), entries=1)
        twin_ref = twin["entry"][0]["response"]["location"]  # the same identifier: one conditional create for both
        data = sample_specs(1, 2, prefix="n")[0]
        data["participants"] = {"a": {"reference": named[0], "display": named[1]},
                                "b": {"reference": nobody, "display": "No Id"},
                                "c": {"reference": "Patient/not-there"},
                                "d": {"reference": twin_ref, "display": "Twin"}}
        data["subject"], data["sender"] = "a", "b"
        for m in data["messages"]:
            m["sender"] = "a"
        spec = _ours(data, project.prefix)
        assert load([spec], client, journal=tmp_path / "j.sqlite").ok
        result = cli(["export", "-o", str(tmp_path / "out"), "--topic", project.prefix, "--participants-out",
                      str(tmp_path / "people.yaml")], env(project))
    assert result.returncode == 1, result.stderr
    assert f"participant: {nobody} has no identifier, so it cannot be created conditionally" in result.stderr
    assert "participant: Patient/not-there is not on the server" in result.stderr
    created, kept = sorted([named[0], twin_ref])  # of the two with one identifier, the first by reference
    assert f"participant: {kept} has the first identifier of {created} (Patient?identifier=" in result.stderr
    shared = read_participants(tmp_path / "people.yaml")
    assert [p.display for p in shared.participants.values()] == [named[1] if created == named[0] else "Twin"]
    (exported,) = load_specs([tmp_path / "out"], participants=shared)
    assert {p.reference for p in exported.participants.values()} >= {nobody, "Patient/not-there", kept}
    lines = _report(tmp_path / "out")
    assert {line.get("participant") for line in lines} >= {nobody, "Patient/not-there", kept}
    assert lines[-1]["summary"]["participants_not_created"] == 3


@pytest.mark.local_only
def test_attachments_downloaded_travel_with_the_copy(project: Any, second_server: LocalServer, tmp_path: Path
                                                     ) -> None:
    source = tmp_path / "src"
    source.mkdir()
    (source / "scan.png").write_bytes(b"\x89PNG fake image bytes")
    (source / "lab.dat").write_bytes(b'{"resourceType": "not a spec"}')
    data = sample_specs(1, 2, prefix="att")[0]
    data["messages"][0]["attachments"] = [{"file": "scan.png", "title": "scan.png"}]
    data["messages"][1]["attachments"] = [{"file": "lab.dat", "contentType": "application/json", "title": "lab.json"}]
    (source / "t.yaml").write_bytes(dump_yaml(_ours(data, project.prefix).to_data()))
    (spec,) = load_specs([source])
    with client_for(project) as client:
        assert load([spec], client, journal=tmp_path / "a.sqlite").ok
        kept = export(client, tmp_path / "kept", topic=project.prefix)
        report = export(client, tmp_path / "out", topic=project.prefix, attachments="download")
    assert report.ok, [t.problems for t in report.problems]
    assert kept.not_in_shape == 1  # a url cannot hold the size and hash the server keeps: said
    assert any("contentAttachment.size" in p for p in kept.problems[0].problems)
    files = sorted(p.name for p in (tmp_path / "out").iterdir() if p.suffix not in (".yaml", ".jsonl"))
    assert files == [f"{spec.key}.m0.1.png", f"{spec.key}.m1.1.bin"]  # never .json: load would read it as a spec
    assert (tmp_path / "out" / files[0]).read_bytes() == (source / "scan.png").read_bytes()
    assert (tmp_path / "out" / files[1]).read_bytes() == (source / "lab.dat").read_bytes()
    (exported,) = load_specs([tmp_path / "out"])
    assert bundle_bytes(exported) == bundle_bytes(spec)  # the same bytes: the same bundle
    target = {"MEDPLUM_BASE_URL": second_server.base_url, "MEDPLUM_CLIENT_ID": second_server.client_id,
              "MEDPLUM_CLIENT_SECRET": second_server.client_secret}
    assert cli(["load", str(tmp_path / "out"), "--journal", str(tmp_path / "b.sqlite")], target).returncode == 0
    checked = cli(["verify", str(tmp_path / "out")], target)
    assert checked.returncode == 0, checked.stderr


# --- shaping, without a server -----------------------------------------------------------------------


def _without_none(resource: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in resource.items() if v is not None}


def _header(**changes: Any) -> dict[str, Any]:
    """A header of ours (thread t1, two participants), with `changes` (None: the field removed)."""
    return _without_none({
        "resourceType": "Communication", "id": "h1", "identifier": [{"system": SYSTEM, "value": "t1"}],
        "status": "in-progress", "topic": {"text": "Hello"},
        "recipient": [{"reference": "Patient/1", "display": "Ann"}, {"reference": "Practitioner/2"}]} | changes)


def _message(n: int, **changes: Any) -> dict[str, Any]:
    """Message `n` of thread t1, Ann to the doctor, with `changes` (None: the field removed)."""
    return _without_none({
        "resourceType": "Communication", "id": f"m{n}", "identifier": [{"system": SYSTEM, "value": f"t1/{n}"}],
        "partOf": [{"reference": "Communication/h1"}], "status": "in-progress", "sent": f"2024-01-01T10:0{n}:00Z",
        "recipient": [{"reference": "Practitioner/2"}], "sender": {"reference": "Patient/1", "display": "Ann"},
        "payload": [{"contentString": f"text {n}"}]} | changes)


def _mark(reader: str, last: str, at: str = "2024-01-01T12:00:00Z") -> dict[str, Any]:
    """A thread-read-state extension: `reader` read up to message `last` at `at`."""
    who = {"reference": reader, "display": "Ann"} if reader == "Patient/1" else {"reference": reader}
    return {"url": READ_STATE_EXTENSION, "extension": [
        {"url": READ_STATE_PARTICIPANT, "valueReference": who},
        {"url": READ_STATE_LAST_READ, "valueReference": {"reference": last}},
        {"url": READ_STATE_LAST_READ_AT, "valueDateTime": at}]}


def _receipt(n: int, alias: str, read: str | None = None, **changes: Any) -> dict[str, Any]:
    """The read receipt of message `n` of thread t1 for the doctor (Practitioner/2), named `alias` by its
    identifier, as the builder makes it: read at `read`, else unread."""
    task: dict[str, Any] = {
        "resourceType": "Task", "id": f"r{n}", "identifier": [{"system": SYSTEM, "value": f"t1/{n}/read/{alias}"}],
        "status": "completed" if read else "requested", "intent": "order",
        "code": {"coding": [{"system": READ_RECEIPT_SYSTEM, "code": READ_RECEIPT_CODE}]},
        "focus": {"reference": "Communication/h1"}, "authoredOn": f"2024-01-01T10:0{n}:00Z",
        "owner": {"reference": "Practitioner/2"}}
    if read:
        task["executionPeriod"] = {"end": read}
    return _without_none(task | changes)


SHAPES: dict[str, tuple[dict[str, Any], list[dict[str, Any]], list[str]]] = {
    "in our shape": (_header(), [_message(1), _message(2)], []),
    "header with a payload": (_header(payload=[{"contentString": "x"}]), [_message(1)],
                              ["header has a payload"]),
    "header without a topic": (_header(topic={"coding": [{"code": "x"}]}), [], ["header has no topic text"]),
    "status Medplum stored but FHIR has not": (_header(status="bogus"), [], ["status 'bogus' is not a Communication"]),
    "message without a sender": (_header(), [_message(1, sender=None)], ["Communication/m1: no sender"]),
    "message without sent": (_header(), [_message(1, sent=None)], ["Communication/m1: no sent instant"]),
    "message sent as a date": (_header(), [_message(1, sent="2024-01-01")], ["sent '2024-01-01' is not an instant"]),
    "message with nothing a spec holds": (_header(), [_message(1, payload=[{"contentReference": {
        "reference": "Patient/1"}}])], ["a payload part the spec cannot hold", "no text or attachment"]),
    "reply to a message of another thread": (_header(), [_message(1, inResponseTo=[{
        "reference": "Communication/x"}])], ["replies to Communication/x"]),
    "two messages with one identifier": (_header(), [_message(1), _message(2, identifier=[
        {"system": SYSTEM, "value": "t1/1"}])], ["message id '1' is another message's too"]),
    "identifiers of another system": (_header(identifier=[{"system": SYSTEM, "value": "t1"},
                                                          {"system": "urn:other", "value": "9"}]), [],
                                      ["identifiers of other systems not kept"]),
    "a field the format has not": (_header(), [_message(1, note=[{"text": "x"}])], ["note not in the spec format"]),
    "a priority FHIR has not": (_header(priority="high"), [], ["header: priority 'high' is not a request priority"]),
    "a message without recipients": (_header(), [_message(1, recipient=None)], ["no recipients"]),
    "a sender the header does not list": (_header(), [_message(1, sender={"reference": "Patient/9"})],
                                          ["header.recipient: 3 expected, 2 on the server"]),
    "an extension that is no read state": (_header(extension=[{"url": "urn:x", "valueString": "x"}]), [],
                                           ["header: extension not in the spec format"]),
    "read state pointing outside the thread": (_header(extension=[_mark("Practitioner/2", "Communication/x")]),
                                               [_message(1)], ["a thread-read-state extension the spec cannot hold"]),
    "read state of someone no participant": (_header(extension=[_mark("Patient/9", "Communication/m1")]),
                                             [_message(1)], ["a thread-read-state extension the spec cannot hold"]),
    "read state of a message its reader sent": (_header(extension=[_mark("Patient/1", "Communication/m1")]),
                                                [_message(1)], ["header.extension: on the server but not in the spec"]),
}


@pytest.mark.parametrize("name", list(SHAPES))
def test_shaping_lists_what_is_not_in_our_shape(name: str) -> None:
    header, messages, expected = SHAPES[name]
    shaped = shape_thread(header, messages, identifier_system=SYSTEM)
    problems = "\n".join(shaped.problems)
    assert [e for e in expected if e not in problems] == [], problems
    if not expected:
        assert shaped.problems == [] and shaped.spec is not None
    assert shaped.spec is not None  # as far as it goes: every one of these still makes a spec


@pytest.mark.parametrize("name", list(SHAPES))
def test_messages_held_as_bytes_shape_as_the_messages_themselves(name: str) -> None:
    """`export` holds a thread's messages as bytes while it shapes them (`Held`: a page at a time as read, the
    first read of each kept, decoded when asked for): the spec, problems and dropped resources are those the
    messages as data give, for every case of SHAPES, read twice and out of order."""
    from bundler.export.held import Held
    from bundler.export.shape import unsigned

    header, messages, _ = SHAPES[name]
    given = [*reversed(messages), *messages]  # (a page that shifted brings some again; out of sent order)
    held = Held(prepare=unsigned)
    for page in (given[:1], given[1:]):
        held.add(page)
    assert len(held) == len({m["id"] for m in messages})
    plain, stored = (shape_thread(header, m, identifier_system=SYSTEM) for m in (given, held))
    assert stored.spec is not None and plain.spec is not None
    assert (stored.spec.to_data(), stored.problems, stored.dropped) == (plain.spec.to_data(), plain.problems,
                                                                         plain.dropped)


def test_held_messages_keep_the_first_read_unsign_their_urls_and_sort_in_place() -> None:
    from bundler.export.held import Held
    from bundler.export.shape import unsigned

    signed = {"contentAttachment": {"url": "https://storage.example.com/binary/b1/v1?Signature=abc&Expires=1",
                                    "contentType": "text/plain"}}
    first = _message(1, sent="2024-01-01T10:05:00Z", payload=[signed])
    again = _message(1, sent="2024-01-01T10:06:00Z")  # (changed between pages: the first read is kept)
    held = Held([_message(2, sent="2024-01-01T10:01:00Z"), first, again], prepare=unsigned)
    assert [m["id"] for m in held] == ["m2", "m1"] and held[1]["sent"] == "2024-01-01T10:05:00Z"
    assert held[1]["payload"][0]["contentAttachment"]["url"] == "Binary/b1"
    held.sort(key=lambda m: m["id"])
    assert [m["id"] for m in held] == ["m1", "m2"] and [m["id"] for m in held[-1:]] == ["m2"]


def test_keys_and_ids_from_our_identifiers_else_from_server_ids() -> None:
    shaped = shape_thread(_header(), [_message(1)], identifier_system=SYSTEM)
    assert shaped.problems == []
    assert shaped.spec is not None and shaped.spec.key == "t1" and shaped.spec.messages[0].id == "1"
    other = shape_thread(_header(identifier=None), [_message(1, identifier=None)], identifier_system=SYSTEM)
    assert other.spec is not None and other.spec.key == "h1" and other.spec.messages[0].id == "m1"
    assert other.problems == []  # nothing lost: a derived key is a key
    foreign = shape_thread(_header(), [_message(1)], identifier_system="urn:another")
    assert foreign.spec is not None and foreign.spec.key == "h1"
    assert "identifiers of other systems not kept" in foreign.problems[0]


def test_messages_in_sent_order_whatever_the_zone_and_recipients_only_when_not_the_default() -> None:
    early = _message(2, sent="2024-01-01T11:00:00+02:00", recipient=[{"reference": "Practitioner/2"}])
    late = _message(1, sent="2024-01-01T09:30:00Z", recipient=[{"reference": "Patient/1", "display": "Ann"}],
                    sender={"reference": "Practitioner/2"})
    spec = shape_thread(_header(), [late, early], identifier_system=SYSTEM).spec
    assert spec is not None
    assert [(m.id, m.sent, m.recipient) for m in spec.messages] == [
        ("2", "2024-01-01T11:00:00+02:00", None), ("1", "2024-01-01T09:30:00Z", None)]


def test_aliases_are_readable_deterministic_and_distinct() -> None:
    assert slug("Dr. Élise O'Brien") == "dr-elise-o-brien"
    assert aliases_for([("Patient/1", "Homer Simpson"), ("RelatedPerson/2", "Homer Simpson"),
                        ("Practitioner/abcdef123456", None), ("Patient/3", "***")]) == [
        "homer-simpson", "homer-simpson-2", "practitioner-abcdef12", "patient-3"]


def test_an_export_that_fails_leaves_nothing_behind(tmp_path: Path) -> None:
    with FhirClient("http://127.0.0.1:9/", ClientCredentials("id", "secret"), max_attempts=1) as client:
        with pytest.raises(Unreachable):
            export(client, tmp_path / "new")
        (tmp_path / "old").mkdir()
        (tmp_path / "old" / "kept.yaml").write_text("x")
        with pytest.raises(Unreachable):
            export(client, tmp_path / "old")
    assert not (tmp_path / "new").exists()
    assert [p.name for p in (tmp_path / "old").iterdir()] == ["kept.yaml"]


def test_an_attachment_url_medplum_signed_on_the_way_out_is_kept_as_the_binary_it_names() -> None:
    binary = "0b6d2e55-1c1e-4c9b-8b1a-6e5f4d3c2b1a"
    signed = (f"https://storage.medplum.com/binary/{binary}/5f0c2a7e-3d3b-4b8e-9a57-0c1f2b7d6e41?Expires=1&"
              "Key-Pair-Id=K&Signature=abc")
    message = _message(1, payload=[{"contentAttachment": {"url": signed, "contentType": "image/png"}}])
    shaped = shape_thread(_header(), [message], identifier_system=SYSTEM)
    assert shaped.problems == [] and shaped.spec is not None
    assert shaped.spec.messages[0].attachments[0].url == f"Binary/{binary}"


def test_priorities_received_and_drafts_are_kept() -> None:
    draft = _message(2, sent=None, status="preparation", priority="urgent")
    read = _message(1, received="2024-01-01T10:05:00Z", priority="asap")
    spec = shape_thread(_header(priority="urgent"), [draft, read], identifier_system=SYSTEM).spec
    assert spec is not None and spec.priority == "urgent"
    assert [(m.id, m.sent, m.status, m.priority, m.received) for m in spec.messages] == [
        ("1", "2024-01-01T10:01:00Z", None, "asap", "2024-01-01T10:05:00Z"), ("2", None, "preparation", None, None)]
    gone = shape_thread(_header(), [_message(1, sent=None)], identifier_system=SYSTEM)
    assert "Communication/m1: no sent instant (only a draft, status preparation, may have none)" in gone.problems[0]


def test_read_receipts_give_read_by_and_the_aliases_their_identifiers_name() -> None:
    receipts = [_receipt(1, "doc", "2024-01-01T11:00:00Z"), _receipt(2, "doc")]
    shaped = shape_thread(_header(), [_message(1), _message(2)], identifier_system=SYSTEM, receipts=receipts)
    assert shaped.problems == [] and shaped.spec is not None
    assert shaped.spec.read_model == "tasks" and list(shaped.spec.participants) == ["ann", "doc"]
    assert [dict(m.read_by) for m in shaped.spec.messages] == [{"doc": "2024-01-01T11:00:00Z"}, {}]


@pytest.mark.parametrize(("receipts", "expected"), [
    ([_receipt(1, "doc", identifier=None)], "Task/r1: has no urn:thread-bundler:thread identifier"),
    # read before it was sent: no spec can say so
    ([_receipt(1, "doc", "2024-01-01T09:00:00Z")], "executionPeriod: on the server but not in the spec"),
    ([_receipt(1, "doc"), _receipt(2, "doc", status="cancelled")], "status: expected 'requested', got 'cancelled'"),
    ([_receipt(1, "doc"), _receipt(2, "doc"), _receipt(3, "doc")], "on the server in this thread but not in the spec"),
])
def test_read_receipts_the_spec_cannot_hold_are_listed(receipts: list[dict[str, Any]], expected: str) -> None:
    shaped = shape_thread(_header(), [_message(1), _message(2)], identifier_system=SYSTEM, receipts=receipts)
    assert shaped.spec is not None
    assert any(expected in p for p in shaped.problems), shaped.problems


def test_a_header_extension_high_water_mark_marks_each_message_up_to_it_read() -> None:
    """Medplum's header-extension model keeps the last message each participant read: every message up to it
    that they received counts as read, at the one time the server keeps (when they read the last)."""
    back = _message(3, sender={"reference": "Practitioner/2"}, recipient=[{"reference": "Patient/1",
                                                                           "display": "Ann"}])
    header = _header(extension=[_mark("Patient/1", "Communication/m3", "2024-01-01T10:40:00Z"),
                                _mark("Practitioner/2", "Communication/m2", "2024-01-01T10:30:00Z")])
    shaped = shape_thread(header, [_message(1), _message(2), back, _message(4)], identifier_system=SYSTEM)
    assert shaped.problems == [] and shaped.spec is not None
    assert shaped.spec.read_model == "header-extension"
    assert [dict(m.read_by) for m in shaped.spec.messages] == [
        {"practitioner-2": "2024-01-01T10:30:00Z"}, {"practitioner-2": "2024-01-01T10:30:00Z"},
        {"ann": "2024-01-01T10:40:00Z"}, {}]


def test_completed_and_received_stay_plain_fields_no_simple_model_is_assumed() -> None:
    read = _message(1, status="completed", received="2024-01-01T11:00:00Z")
    shaped = shape_thread(_header(), [read, _message(2)], identifier_system=SYSTEM)
    assert shaped.problems == [] and shaped.spec is not None and shaped.spec.read_model is None
    assert [(m.status, m.received, dict(m.read_by)) for m in shaped.spec.messages] == [
        ("completed", "2024-01-01T11:00:00Z", {}), (None, None, {})]
