"""Seeding a fresh, strict project: participants created when missing (once per run, journaled), shared through a
participants file; against the local server with checkReferencesOnWrite on (or a real Medplum)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from faultproxy import FaultProxy, Rule
from loadkit import cli, client_for, env, load

from bundler import build_bundle, load_specs, parse_spec
from bundler.errors import SpecError
from bundler.load import Outcome
from bundler.load.verify import verify
from bundler.spec import ThreadSpec
from bundler.vocabulary import attachment_hash, binary_reference, identifier_token

MRN = "https://example.org/mrn"
NPI = "http://hl7.org/fhir/sid/us-npi"


def strict(project: Any) -> None:
    """checkReferencesOnWrite on the local server (a real Medplum is what it is: the tests hold either way)."""
    if project.server is not None:
        project.configure(check_references_on_write=True)


def person(kind: str, system: str, value: str, given: str, family: str) -> dict[str, Any]:
    return {"resourceType": kind, "identifier": [{"system": system, "value": value}],
            "name": [{"given": [given], "family": family}]}


def people(prefix: str) -> dict[str, Any]:
    return {"homer": {"display": "Homer Simpson", "create": person("Patient", MRN, f"{prefix}-1", "Homer", "Simpson")},
            "hibbert": {"display": "Dr. Hibbert",
                        "create": person("Practitioner", NPI, f"{prefix}-2", "Julius", "Hibbert")}}


def thread(prefix: str, key: str, participants: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"thread": f"{prefix}-{key}", "topic": f"About {key}", "subject": "homer",
                           "sender": "hibbert",
                           "messages": [{"sender": "hibbert", "sent": "2024-04-10T09:00:00Z", "text": "Your results"},
                                        {"sender": "homer", "sent": "2024-04-10T09:05:00-05:00", "text": "Thanks!",
                                         "reply_to": "1"}]}
    if participants is not None:
        out["participants"] = participants
    return out


def found(client: Any, kind: str, system: str, value: str) -> int:
    return len(client.search(kind, {"identifier": f"{system}|{value}", "_count": "5"}))


def test_a_first_run_creates_participants_and_threads_a_second_creates_nothing(project: Any, tmp_path: Path
                                                                                ) -> None:
    strict(project)
    specs = [parse_spec(thread(project.prefix, k, people(project.prefix))) for k in ("a", "b")]
    with client_for(project) as client:
        first = load(specs, client, journal=tmp_path / "j.sqlite")
        assert first.ok, [t.error for t in first.threads]
        assert [t.outcome for t in first.threads] == [Outcome.LOADED, Outcome.LOADED]
        assert (first.participants.created, first.participants.existing, first.participants.failed) == (2, 0, 0)
        assert found(client, "Patient", MRN, f"{project.prefix}-1") == 1
        assert found(client, "Practitioner", NPI, f"{project.prefix}-2") == 1
        assert all(r.ok for r in verify(specs, client)), [r.differences for r in verify(specs, client)]
        header = client.read(f"Communication/{first.threads[0].header_id}")
        assert header["subject"]["reference"].startswith("Patient/")  # resolved by the server
        second = load(specs, client, journal=tmp_path / "j.sqlite")
        assert [t.outcome for t in second.threads] == [Outcome.SKIPPED, Outcome.SKIPPED]
        assert second.participants.created == 0 and second.requests == 0
        # a fresh journal: the server's conditional creates find them (200), nothing is created twice
        third = load([parse_spec(thread(project.prefix, "c", people(project.prefix)))], client,
                     journal=tmp_path / "other.sqlite")
        assert third.ok and (third.participants.created, third.participants.existing) == (0, 2)
        assert found(client, "Patient", MRN, f"{project.prefix}-1") == 1


def test_identifier_values_with_any_printable_character_create_each_participant_once(project: Any, tmp_path: Path
                                                                                      ) -> None:
    """Participants created when missing whose identifier values hold every printable ASCII character ('+' is a
    space in a query, '%' starts a byte, '&' '#' '?' cut it, ',' '|' '$' '\\' are FHIR search syntax), others and
    emoji: each created once, found again by a fresh journal's run (conditional creates: 200), referenced by threads
    (by alias, and a subject written as a conditional reference), verified."""
    strict(project)
    values = {"ascii": "".join(chr(c) for c in range(33, 127)), "phone": "tel:+1-312-555-0777", "plus": "x+",
              "encoded": "x%2B", "intl": "é-中-😀"}
    people = {alias: {"create": person("Patient" if alias != "phone" else "Practitioner",
                                       MRN if alias != "phone" else NPI, f"{project.prefix}-{value}", alias.title(),
                                       "Test")} for alias, value in values.items()}
    people["ascii"]["display"] = "Ascii Test"
    by_alias = parse_spec(thread(project.prefix, "a", {"homer": people["ascii"], "hibbert": people["phone"],
                                                      **{a: people[a] for a in ("plus", "encoded", "intl")}}))
    data = thread(project.prefix, "b", {"hibbert": people["phone"], "homer": people["plus"]})
    data["subject"] = f"Patient?identifier={identifier_token(MRN, f'{project.prefix}-x%2B')}"  # (spec form)
    specs = [by_alias, parse_spec(data)]
    with client_for(project) as client:
        first = load(specs, client, journal=tmp_path / "j.sqlite")
        assert first.ok, [t.error for t in first.threads]
        assert (first.participants.created, first.participants.existing) == (5, 0)
        for alias, value in values.items():
            kind = "Practitioner" if alias == "phone" else "Patient"
            found = client.search(kind, {"identifier": identifier_token(NPI if alias == "phone" else MRN,
                                                                        f"{project.prefix}-{value}")})
            assert [r["identifier"][0]["value"] for r in found] == [f"{project.prefix}-{value}"], alias
        header = client.read(f"Communication/{first.threads[1].header_id}")
        assert header["subject"] == {"reference": f"Patient/{found_id(client, MRN, f'{project.prefix}-x%2B')}",
                                     "display": "Encoded Test"}
        again = load(specs, client, journal=tmp_path / "fresh.sqlite")
        assert again.ok and (again.participants.created, again.participants.existing) == (0, 5)
        assert [t.outcome for t in again.threads] == [Outcome.EXISTING, Outcome.EXISTING], [t.error for t in
                                                                                          again.threads]
        checked = verify(specs, client)
        assert all(r.ok for r in checked), [r.differences for r in checked]


def found_id(client: Any, system: str, value: str) -> str:
    (resource,) = client.search("Patient", {"identifier": identifier_token(system, value)})
    return str(resource["id"])


def test_two_specs_sharing_a_participant_create_it_once(project: Any, tmp_path: Path) -> None:
    strict(project)
    shared = people(project.prefix)
    a = thread(project.prefix, "a", shared)
    b = thread(project.prefix, "b", {"homer": shared["homer"],
                                     "nick": {"display": "Dr. Nick",
                                              "create": person("Practitioner", NPI, f"{project.prefix}-3", "Nick",
                                                               "Riviera")}})
    b["sender"] = "nick"
    for m in b["messages"]:
        m["sender"] = "nick" if m["sender"] == "hibbert" else m["sender"]
    with client_for(project) as client:
        report = load([parse_spec(a), parse_spec(b)], client, journal=tmp_path / "j.sqlite")
        assert report.ok, [t.error for t in report.threads]
        assert report.participants.created == 3
        assert found(client, "Patient", MRN, f"{project.prefix}-1") == 1


@pytest.mark.parametrize("atomic", [True, False], ids=["atomic", "batch"])
def test_an_invalid_create_fails_only_the_threads_that_need_it_with_the_spec_line(project: Any, tmp_path: Path,
                                                                                   atomic: bool) -> None:
    strict(project)
    if not atomic:
        project.configure(transaction_bundles=False)  # (a project without atomic transactions answers per entry)
    bad = people(project.prefix)
    bad["homer"]["create"]["birthDate"] = "sometime in May"  # not a FHIR date: the server refuses the Patient
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(thread(project.prefix, "bad", bad), sort_keys=False))
    good = people(project.prefix)
    good["homer"]["create"]["identifier"][0]["value"] = f"{project.prefix}-9"
    (tmp_path / "good.yaml").write_text(yaml.safe_dump(thread(project.prefix, "good", good), sort_keys=False))
    specs = load_specs([tmp_path / "bad.yaml", tmp_path / "good.yaml"])
    line = next(n for n, text in enumerate((tmp_path / "bad.yaml").read_text().splitlines(), 1) if "homer:" in text)
    with client_for(project) as client:
        report = load(specs, client, journal=tmp_path / "j.sqlite")
        bad_result, good_result = report.threads
        assert bad_result.outcome == Outcome.FAILED and good_result.outcome == Outcome.LOADED, good_result.error
        assert bad_result.error is not None
        assert bad_result.error.startswith(f"{tmp_path / 'bad.yaml'}:{line + 1}: participants.homer: could not be "
                                           f"created (Patient?identifier={MRN}|{project.prefix}-1)"), bad_result.error
        assert "birthDate" in bad_result.error
        assert (report.participants.created, report.participants.failed) == (2, 1)  # hibbert, the good homer
        assert found(client, "Patient", MRN, f"{project.prefix}-1") == 0
        assert bad_result.requests == 0  # the thread itself was never sent


def write_people(path: Path, prefix: str) -> Path:
    path.write_text(yaml.safe_dump({"participants": people(prefix)}, sort_keys=False))
    return path


def test_a_participants_file_serves_many_specs_through_the_cli(project: Any, tmp_path: Path) -> None:
    strict(project)
    folder = tmp_path / "threads"
    folder.mkdir()
    for key in ("a", "b", "c"):
        (folder / f"{key}.json").write_bytes(orjson.dumps(thread(project.prefix, key)))  # no participants of its own
    people_file = write_people(tmp_path / "people.yaml", project.prefix)
    args = ["load", str(folder), "--participants", str(people_file), "--journal", str(tmp_path / "j.sqlite")]
    run = cli(args, env(project))
    assert run.returncode == 0, run.stderr
    assert "participants: 2 created, 0 existing" in run.stderr
    again = cli(args, env(project))
    assert again.returncode == 0 and "participants:" not in again.stderr, again.stderr  # nothing left to do
    verified = cli(["verify", str(folder), "--participants", str(people_file)], env(project))
    assert verified.returncode == 0 and "3 of 3 threads match" in verified.stderr, verified.stderr


def test_a_dry_run_plans_the_participants_it_would_create(project: Any, tmp_path: Path) -> None:
    strict(project)
    specs = [parse_spec(thread(project.prefix, "a", people(project.prefix)))]
    with client_for(project) as client:
        report = load(specs, client, journal=tmp_path / "j.sqlite", dry_run=True)
        assert report.ok, [t.error for t in report.threads]  # references to participants it would create are fine
        assert report.participants.planned == 2 and report.plan is not None and report.plan.requests == 2
        assert found(client, "Patient", MRN, f"{project.prefix}-1") == 0


def test_specs_read_with_a_participants_file(tmp_path: Path) -> None:
    people_file = write_people(tmp_path / "people.yaml", "p")
    own = {"nurse": {"reference": "Practitioner/1", "display": "Nurse"}}
    (tmp_path / "t.json").write_bytes(orjson.dumps(thread("p", "t", own)))
    (spec,) = load_specs([tmp_path / "t.json"], participants=people_file)
    assert list(spec.participants) == ["nurse", "homer", "hibbert"]  # its own, then the file's by first use
    assert spec.origin(None, "participants", "homer") == (str(people_file), 3)  # its first field
    assert spec.participants["homer"].reference == f"Patient?identifier={MRN}|p-1"
    assert parse_spec(spec.to_data()) == spec and isinstance(hash(spec), int)
    overridden = {"homer": {"reference": "Patient/2", "display": "Another Homer"}}
    (tmp_path / "u.json").write_bytes(orjson.dumps(thread("p", "u", overridden)))
    (spec,) = load_specs([tmp_path / "u.json"], participants=people_file)
    assert spec.participants["homer"].reference == "Patient/2"  # the spec's own wins


def test_an_alias_in_neither_the_spec_nor_the_file_names_the_file_and_what_both_know(tmp_path: Path) -> None:
    people_file = tmp_path / "people.yaml"
    people_file.write_text("participants:\n" + "".join(f"  p{n:02d}: {{reference: Patient/{n}}}\n" for n in range(25)))
    lone = thread("p", "t", {"nurse": {"reference": "Practitioner/1"}})
    lone["messages"][1]["sender"] = "bart"
    nobody = thread("p", "u")  # no participants of its own, none of the file's named
    nobody["sender"] = "bart"
    for data in (lone, nobody):
        (tmp_path / "t.json").write_bytes(orjson.dumps(data))
        with pytest.raises(SpecError) as info:
            load_specs([tmp_path / "t.json"], participants=people_file)
        known = ", ".join([*(["nurse"] if data is lone else []), *(f"p{n:02d}" for n in range(25))][:20])
        more = 6 if data is lone else 5
        assert {p.message for p in info.value.problems} == {  # (homer, the subject; hibbert, a sender)
            f"'{who}' is not a participant of the thread nor of {people_file} (known: {known}, and {more} more)"
            for who in ("bart", "homer", "hibbert")}


def test_one_participant_to_create_may_be_written_in_many_places_alike(tmp_path: Path) -> None:
    """The same create block in the file, in a spec and in another spec under another alias is one participant;
    the first place that changes it is refused, naming where the first is written."""
    people_file = write_people(tmp_path / "people.yaml", "p")
    again = {"homer2": people("p")["homer"]}
    folder = tmp_path / "threads"
    folder.mkdir()
    (folder / "a.json").write_bytes(orjson.dumps(thread("p", "a", people("p"))))
    b = thread("p", "b", again)
    b["subject"] = "homer2"
    (folder / "b.json").write_bytes(orjson.dumps(b))
    specs = load_specs([folder], participants=people_file)
    assert len({p.reference for s in specs for p in s.participants.values()}) == 2
    b["participants"]["homer2"]["create"]["name"][0]["given"] = ["Max"]
    (folder / "b.json").write_bytes(orjson.dumps(b))
    with pytest.raises(SpecError) as info:
        load_specs([folder], participants=people_file)
    (problem,) = info.value.problems
    assert (problem.file, problem.path) == (str(folder / "b.json"), "participants.homer2.create")
    assert problem.message.startswith(f"creates Patient?identifier={MRN}|p-1 differently from participants.homer at "
                                      f"{people_file}:5 (the same first identifier, another create)")


def test_read_model_from_the_command_line_keeps_where_participants_and_files_came_from(tmp_path: Path) -> None:
    """--read-model makes a new spec: it keeps the bytes of its file attachments and the participants file it took
    participants from (their lines), as the spec it replaces had them."""
    people_file = write_people(tmp_path / "people.yaml", "p")
    data = thread("p", "t")
    data["messages"][0]["attachments"] = [{"file": "note.txt"}]
    (tmp_path / "note.txt").write_text("hello")
    (tmp_path / "t.json").write_bytes(orjson.dumps(data))
    (spec,) = load_specs([tmp_path / "t.json"], participants=people_file, read_model="tasks")
    assert spec.read_model == "tasks" and spec.files
    assert spec.origin(None, "participants", "homer") == (str(people_file), 3)
    run = cli(["build", str(tmp_path / "t.json"), "--participants", str(people_file), "--read-model", "tasks",
               "--ndjson"], {})
    assert run.returncode == 0 and '"resourceType":"Binary"' in run.stdout, run.stderr


def specs_using(spec: ThreadSpec) -> list[str]:
    return list(spec.participants)


@pytest.mark.parametrize("command", ["build", "validate"])
def test_build_and_validate_take_a_participants_file(tmp_path: Path, command: str) -> None:
    people_file = write_people(tmp_path / "people.yaml", "p")
    (tmp_path / "t.json").write_bytes(orjson.dumps(thread("p", "t")))
    extra = ["-o", str(tmp_path / "out")] if command == "build" else []
    run = cli([command, str(tmp_path / "t.json"), "--participants", str(people_file), *extra], {})
    assert run.returncode == 0, run.stderr
    if command == "build":
        bundle = orjson.loads((tmp_path / "out" / "p-t.json").read_bytes())
        assert bundle["entry"][0]["resource"]["subject"]["reference"] == f"Patient?identifier={MRN}|p-1"
    else:
        assert "0 errors, 1 warning in 2 bundles" in run.stdout, run.stdout  # the thread, the participants
        line = next(n for n, text in enumerate(people_file.read_text().splitlines(), 1) if "Dr. Hibbert" in text)
        assert f"  spec (line {line}):\n    warning[ref.display-replaced] participants.hibbert.display: " \
               "'Dr. Hibbert' will be stored as 'Julius Hibbert' (Medplum names a conditional reference after the " \
               "resource it matches)" in run.stdout, run.stdout  # (Homer Simpson's display is the one stored)


# --- attachments from files ------------------------------------------------------------------------------

def files_thread(prefix: str, folder: Path, small: bytes, large: bytes) -> Path:
    """A thread whose messages attach a small file (inline), the same again, and a large one (uploaded first)."""
    (folder / "scans").mkdir(parents=True, exist_ok=True)
    (folder / "scans" / "knee.png").write_bytes(small)
    (folder / "scans" / "mri.dcm").write_bytes(large)
    spec = thread(prefix, "files", people(prefix))
    spec["messages"][0]["attachments"] = [{"file": "scans/knee.png", "title": "Knee"}, {"file": "scans/mri.dcm"}]
    spec["messages"].append({"sender": "hibbert", "sent": "2024-04-10T10:00:00Z", "text": "Again",
                             "attachments": [{"file": "scans/knee.png"}]})
    path = folder / "t.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


@pytest.mark.parametrize("atomic", [True, False], ids=["atomic", "batch"])
def test_file_attachments_round_trip_byte_identical_and_upload_once(project: Any, tmp_path: Path, atomic: bool
                                                                     ) -> None:
    strict(project)
    if not atomic:
        project.configure(transaction_bundles=False)
    small, large = bytes(range(256)) * 12, os.urandom(800_000)  # 3 KB inline; 800 KB: its base64 is over 1 MB
    path = files_thread(project.prefix, tmp_path / "in", small, large)
    (spec,) = load_specs([path])
    a, b = spec.messages[0].attachments
    assert (a.size, a.hash, a.content_type) == (len(small), attachment_hash(small), "image/png")
    assert (b.size, b.content_type) == (len(large), "application/dicom")
    bundle = build_bundle(spec)
    assert [e["resource"]["resourceType"] for e in bundle["entry"]][-1] == "Binary"  # the small one, once
    assert sum(e["resource"]["resourceType"] == "Binary" for e in bundle["entry"]) == 1
    with FaultProxy(project.target.base_url) as proxy, client_for(project, proxy.url) as client:
        report = load([spec], client, journal=tmp_path / "j.sqlite")
        assert report.ok, [t.error for t in report.threads]
        uploads = [n for n, e in enumerate(proxy.log) if e.method == "POST" and e.path.endswith("/Binary")]
        assert len(uploads) == 1 and proxy.log[uploads[0]].body == large  # the large file, raw
        thread_posts = [n for n, e in enumerate(proxy.log) if e.method == "POST" and spec.key.encode() in e.body]
        assert uploads[0] < thread_posts[0]  # first
        assert sum(b'"resourceType":"Binary"' in proxy.log[n].body for n in thread_posts) == 1  # the small, inline
        assert report.files["uploaded"] == 1
        [result] = report.threads
        stored = client.read(f"Communication/{result.message_ids['1']}")
        urls = [p["contentAttachment"]["url"] for p in stored["payload"] if "contentAttachment" in p]
        assert all(binary_reference(u) for u in urls), urls
        assert client.read_binary(binary_reference(urls[0]) or "") == small
        assert client.read_binary(binary_reference(urls[1]) or "") == large
        [checked] = verify([spec], client)
        assert checked.ok, checked.differences
        proxy.clear(log=True)
        (again,) = load_specs([path])  # a re-run, even of a changed thread: nothing uploaded twice
        report = load([again], client, journal=tmp_path / "j.sqlite")
        assert report.ok and not [e for e in proxy.log if e.path.endswith("/Binary")]


def test_verify_finds_bytes_that_differ(project: Any, tmp_path: Path) -> None:
    strict(project)
    path = files_thread(project.prefix, tmp_path / "in", b"small file", b"x" * 800_000)
    with client_for(project) as client:
        assert load(load_specs([path]), client, journal=tmp_path / "j.sqlite").ok
        (tmp_path / "in" / "scans" / "knee.png").write_bytes(b"another file")
        [checked] = verify(load_specs([path]), client)
        assert not checked.ok
        assert any("(scans/knee.png): Binary/" in d and "reads back 10 bytes" in d for d in checked.differences), \
            checked.differences


def test_a_missing_file_is_a_spec_error_at_its_line(tmp_path: Path) -> None:
    path = files_thread("p", tmp_path, b"a", b"b")
    (tmp_path / "scans" / "mri.dcm").unlink()
    run = cli(["build", str(path), "-o", str(tmp_path / "out")], {})
    assert run.returncode == 2 and not (tmp_path / "out").exists()
    line = next(n for n, text in enumerate(path.read_text().splitlines(), 1) if "mri.dcm" in text)
    assert f"{path}:{line}:" in run.stderr and "cannot read 'scans/mri.dcm'" in run.stderr, run.stderr


def test_a_lost_answer_to_a_participants_creation_creates_nothing_twice(project: Any, tmp_path: Path) -> None:
    """The server created them, the answer was lost: the conditional creates are sent again, and find them."""
    strict(project)
    specs = [parse_spec(thread(project.prefix, "lost", people(project.prefix)))]
    with FaultProxy(project.target.base_url) as proxy, client_for(project, proxy.url, max_attempts=2) as client:
        proxy.add(Rule("drop_after", method="POST", body_contains=b'"ifNoneExist"', times=1))
        report = load(specs, client, journal=tmp_path / "j.sqlite")
        assert report.ok, [t.error for t in report.threads]
        creates = [e for e in proxy.log if e.method == "POST" and b'"ifNoneExist"' in e.body]
        assert len(creates) == 2  # the one whose answer was lost, and again
        assert (report.participants.created, report.participants.existing) == (0, 2)  # the second found them
        assert found(client, "Patient", MRN, f"{project.prefix}-1") == 1


def test_the_report_file_counts_the_participants(project: Any, tmp_path: Path) -> None:
    strict(project)
    (tmp_path / "t.json").write_bytes(orjson.dumps(thread(project.prefix, "r", people(project.prefix))))
    run = cli(["load", str(tmp_path / "t.json"), "--report", str(tmp_path / "r.json"), "--journal",
               str(tmp_path / "j.sqlite")], env(project))
    assert run.returncode == 0, run.stderr
    assert orjson.loads((tmp_path / "r.json").read_bytes())["participants"] == {"created": 2, "existing": 0,
                                                                                 "failed": 0}
