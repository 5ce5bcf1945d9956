"""Migrating into an empty project: the mapping says how to create each kind of participant (a rule's `create`, a
YAML table's participants), or `--participants` gives a participants file; `migrate --load` creates them when
missing, as `load` creates a spec's (one home: `bundler.load.participants.Ensurer`)."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

from bundler.cli.migrate import migrate_command
from bundler.errors import SpecError
from bundler.medplum.client import ClientCredentials, FhirClient
from bundler.migrate import migrate
from bundler.migrate.mapping import load_mapping
from bundler.spec import load_specs

SMS = Path(__file__).resolve().parent.parent / "fixtures" / "sms-gateway"


def _named_export(folder: Path) -> Path:
    """An SMS export with the sender's name in a column: Ann's name only on her second message, Bo never named."""
    path = folder / "sms.csv"
    path.write_text("id;conv;from;from_name;to;sent;body\n"
                    "1;c1;+13125550100;Clinic;+17735550123;2024-03-09T10:00:00Z;Hello\n"
                    "2;c1;+17735550123;;+13125550100;2024-03-09T10:01:00Z;Hi\n"
                    "3;c2;+17735550123;Ann Lee;+13125550100;2024-03-09T10:02:00Z;Me again\n"
                    "4;c3;+13125550100;Clinic;+17735550199;2024-03-09T10:03:00Z;Bo?\n")
    return path


def _named_mapping(folder: Path, system: str = "https://sms.example.org") -> Path:
    path = folder / "m.yaml"
    path.write_text(f"""input: {{delimiter: ";"}}
thread: {{id: conv}}
message: {{id: id, sender: from, sender_display: from_name, recipients: to, sent: sent, text: body}}
participants:
  rules:
    - match: "^\\\\+1312(?P<n>[0-9]{{7}})$"
      create: {{resourceType: Practitioner, identifier: [{{system: "{system}/staff", value: "{{n}}"}}]}}
    - match: "^\\\\+1(?P<n>[0-9]{{10}})$"
      create:
        resourceType: Patient
        identifier: [{{system: "{system}/phone", value: "{{n}}"}}]
        telecom: [{{system: phone, value: "{{id}}"}}]
        name: [{{text: "{{name}}"}}]
""")
    return path


def test_a_rule_creates_a_patient_from_the_phone_and_the_first_name_the_export_gives(tmp_path: Path) -> None:
    summary = migrate([_named_export(tmp_path)], _named_mapping(tmp_path), to="specs", out=tmp_path / "out")
    assert summary.rejected == 0
    specs = {s.key: s for s in load_specs([tmp_path / "out"])}
    ann = specs["c1"].participants["tel-17735550123"]
    assert ann.reference == "Patient?identifier=https://sms.example.org/phone|7735550123"
    assert ann.create is not None and ann.create.resource() == {
        "resourceType": "Patient", "identifier": [{"system": "https://sms.example.org/phone", "value": "7735550123"}],
        "telecom": [{"system": "phone", "value": "+17735550123"}], "name": [{"text": "Ann Lee"}]}
    # the same create in every thread (the first name in input order, not the thread's): `load` reads them together
    assert specs["c2"].participants["tel-17735550123"].create == ann.create
    bo = specs["c3"].participants["tel-17735550199"].create
    assert bo is not None and "name" not in bo.resource()  # never named: the empty name is left out
    clinic = specs["c1"].participants["tel-13125550100"]
    assert clinic.reference == "Practitioner?identifier=https://sms.example.org/staff|5550100"


def test_the_same_creates_whatever_the_number_of_workers(tmp_path: Path) -> None:
    export, mapping = _named_export(tmp_path), _named_mapping(tmp_path)
    outs = []
    for workers in (1, 3):
        migrate([export], mapping, to="ndjson", out=tmp_path / f"{workers}.ndjson", workers=workers)
        outs.append((tmp_path / f"{workers}.ndjson").read_bytes())
    assert outs[0] == outs[1]


def test_a_yaml_table_holds_participants_to_create(tmp_path: Path) -> None:
    summary = migrate([SMS / "messages.csv"], SMS / "mapping-create.yaml", to="specs", out=tmp_path / "out")
    specs = load_specs([tmp_path / "out"])
    desk = specs[0].participants["tel-13125550100"]
    assert desk.display == "Front desk (clinic line)" and desk.create is not None
    assert desk.reference == "Practitioner?identifier=https://sms.example.org/staff|front-desk"
    assert all(p.create is not None for s in specs for p in s.participants.values())
    assert summary.threads == 2


def test_a_participants_file_comes_first_keyed_by_the_alias_of_each_legacy_id(tmp_path: Path) -> None:
    people = tmp_path / "people.yaml"
    people.write_text("participants:\n"
                      "  tel-17735550123: {display: Ann, create: {resourceType: Patient, identifier: "
                      "[{system: 'https://x.org/mrn', value: '42'}]}}\n"
                      "  tel-13125550100: {reference: Organization/clinic, display: Clinic}\n")
    runner = CliRunner()
    result = runner.invoke(migrate_command, [str(SMS / "messages.csv"), "--mapping", str(SMS / "mapping.yaml"),
                                             "--participants", str(people), "--to", "specs", str(tmp_path / "out")])
    assert result.exit_code == 1, result.output  # (the fixture's rejected rows)
    spec = next(s for s in load_specs([tmp_path / "out"]) if s.key == "conv-8812")
    assert spec.participants["tel-17735550123"].reference == "Patient?identifier=https://x.org/mrn|42"
    assert spec.participants["tel-13125550100"].reference == "Organization/clinic"


@pytest.mark.parametrize(("rule", "says"), [
    ("{match: '^x(?P<n>.*)$', create: {resourceType: Patient}}",
     ["m.yaml:5:", "participants.rules[1].create", "identifier", "a create is a FHIR resource with an identifier"]),
    ("{prefix: x, create: {resourceType: Location, identifier: [{system: 's', value: '{rest}'}]}}",
     ["participants.rules[1].create", "Location"]),
    ("{prefix: x, create: {resourceType: Patient, identifier: [{system: 's', value: '{nope}'}]}}",
     ["participants.rules[1].create: unknown field {nope} (known here: id, name, rest)"]),
    ("{prefix: x, create: {resourceType: Patient, identifier: [{system: 's', value: '{name}'}]}}",
     ["{name} is the name the export gives a user: it needs message.sender_display"]),
    ("{prefix: x}", ["participants.rules[1]", "needs reference, or create"]),
])
def test_a_bad_create_says_what_to_write_at_its_line(tmp_path: Path, rule: str, says: list[str]) -> None:
    (tmp_path / "m.yaml").write_text("thread: {id: c}\nmessage: {id: i, sender: s, sent: t, text: b}\n"
                                     f"participants:\n  rules:\n    - {rule}\n")
    with pytest.raises(SpecError) as info:
        load_mapping(tmp_path / "m.yaml")
    text = "\n".join(map(str, info.value.problems))
    for fragment in says:
        assert fragment in text, text


def test_a_bad_yaml_table_entry_says_what_to_write(tmp_path: Path) -> None:
    (tmp_path / "t.yaml").write_text("a: {reference: Patient/1}\nb: {name: Bo}\nc: {create: {resourceType: Patient}}\n")
    (tmp_path / "m.yaml").write_text("thread: {id: c}\nmessage: {id: i, sender: s, sent: t, text: b}\n"
                                     "participants: {table: t.yaml}\n")
    with pytest.raises(SpecError) as info:
        load_mapping(tmp_path / "m.yaml")
    text = "\n".join(map(str, info.value.problems))
    assert "t.yaml:2:4: b: unknown field 'name': write a reference ('Patient/123'" in text, text
    assert "or {display, create} to create it when missing" in text
    assert "t.yaml:3:" in text and "identifier" in text


# --- into an empty strict project: every participant created, once -----------------------------------------


@pytest.mark.wire
def test_migrate_load_into_a_strict_project_creates_every_participant_once(project, tmp_path: Path  # type: ignore[no-untyped-def]
                                                                           ) -> None:
    """The SMS export (phone numbers for people) with the create mapping, into a project that checks references:
    the clinic's line (a Practitioner from the table) and each patient (from the phone) are created, every thread
    loads; the same run again (same journal) and a run with a new journal create nothing."""
    project.configure(check_references_on_write=True)
    prefix = project.prefix
    mapping = tmp_path / "mapping.yaml"
    mapping.write_text((SMS / "mapping-create.yaml").read_text().replace("https://sms.example.org/",
                                                                         f"https://sms.example.org/{prefix}/"))
    (tmp_path / "lines.yaml").write_text((SMS / "lines.yaml").read_text().replace(
        "https://sms.example.org/", f"https://sms.example.org/{prefix}/"))
    t = project.target
    env = {"MEDPLUM_BASE_URL": t.base_url, "MEDPLUM_CLIENT_ID": t.client_id, "MEDPLUM_CLIENT_SECRET": t.client_secret}

    def run(journal: str) -> dict[str, object]:
        args = [str(SMS / "messages.csv"), "--mapping", str(mapping), "--load", "--identifier-system",
                f"urn:test:{prefix}", "--journal", str(tmp_path / journal), "--rejects", str(tmp_path / "r.jsonl"),
                "--report", str(tmp_path / "report.json")]
        result = CliRunner().invoke(migrate_command, args, env=env)
        assert result.exit_code == 1, result.output  # the fixture's rejected rows; every thread loaded
        report: dict[str, object] = orjson.loads((tmp_path / "report.json").read_bytes())
        assert report["ok"], result.output
        return report

    first = run("j.sqlite")
    assert first["participants"] == {"created": 3, "existing": 0, "failed": 0}
    assert first["counts"] == {"loaded": 2}
    again = run("j.sqlite")
    assert again["counts"] == {"skipped": 2}
    assert again.get("participants", {"created": 0})["created"] == 0  # type: ignore[index]
    fresh = run("other.sqlite")  # no journal knows them: the threads are found on the server by identifier
    assert fresh["counts"] == {"existing": 2}
    assert fresh.get("participants", {"created": 0})["created"] == 0  # type: ignore[index]
    with FhirClient(t.base_url, ClientCredentials(t.client_id, t.client_secret)) as client:
        for kind, query in [("Practitioner", f"https://sms.example.org/{prefix}/staff|front-desk"),
                            ("Patient", f"https://sms.example.org/{prefix}/phone|7735550123"),
                            ("Patient", f"https://sms.example.org/{prefix}/phone|7735550199")]:
            assert len(client.search(kind, {"identifier": query})) == 1, query  # each once
