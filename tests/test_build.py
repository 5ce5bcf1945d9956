"""The builder: the walkthrough field for field, determinism and the thread rules on generated specs."""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path
from typing import Any

import orjson
import yaml
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from bundler import DEFAULT_IDENTIFIER_SYSTEM, build_bundle, load_specs, parse_spec
from bundler.build import (
    URN_NAMESPACE,
    bundle_bytes,
    dumps,
    full_url,
    identifier_value,
    read_receipt_parts,
    split_identifier_value,
)
from bundler.cli import main
from bundler.testing.strategies import thread_specs
from bundler.vocabulary import ALIAS_PATTERN, KEY_PATTERN, THREAD_KEY_PATTERN, rewrite_references

REPO = Path(__file__).resolve().parent.parent
WALKTHROUGH = REPO / "fixtures/threads/homer-lab-results.yaml"
URN = re.compile(r"^urn:uuid:[0-9a-f]{8}-[0-9a-f]{4}-5[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


def _walkthrough_bundle() -> dict[str, Any]:
    (spec,) = load_specs([WALKTHROUGH])
    return build_bundle(spec)


def test_walkthrough_resources_field_for_field() -> None:
    bundle = _walkthrough_bundle()
    expected = json.loads((REPO / "fixtures/walkthrough/resources.json").read_text())["resources"]
    names = {bundle["entry"][0]["fullUrl"]: "Communication/{header}",
             bundle["entry"][2]["fullUrl"]: "Communication/{homer-asks}"}
    # the walkthrough's participants exist already; ours are created when missing, found by their identifiers
    people = {"Patient?identifier=https://example.org/mrn|12345": "Patient/homer-simpson",
              "Practitioner?identifier=http://hl7.org/fhir/sid/us-npi|1234567893": "Practitioner/doctor-alice-smith"}
    got = []
    for entry in bundle["entry"]:
        resource = rewrite_references(json.loads(json.dumps(entry["resource"])), people)
        resource.pop("identifier")
        for key in ("partOf", "inResponseTo"):
            for ref in resource.get(key, []):
                ref["reference"] = names[ref["reference"]]
        got.append(resource)
    assert got == expected


def test_walkthrough_bytes_are_the_committed_golden_bundle() -> None:
    golden = (REPO / "fixtures/bundles/homer-lab-results-2024-04-10.json").read_bytes()
    assert dumps(_walkthrough_bundle(), pretty=True) == golden


def test_identifiers_and_urns() -> None:
    bundle = _walkthrough_bundle()
    values = [e["resource"]["identifier"][0]["value"] for e in bundle["entry"]]
    assert values == ["homer-lab-results-2024-04-10", "homer-lab-results-2024-04-10/specimen-received",
                      "homer-lab-results-2024-04-10/homer-asks", "homer-lab-results-2024-04-10/3"]
    for entry, value in zip(bundle["entry"], values, strict=True):
        assert entry["resource"]["identifier"][0]["system"] == DEFAULT_IDENTIFIER_SYSTEM
        assert entry["fullUrl"] == f"urn:uuid:{uuid.uuid5(URN_NAMESPACE, f'{DEFAULT_IDENTIFIER_SYSTEM}|{value}')}"
        assert entry["request"] == {"method": "POST", "url": "Communication"}
    other = build_bundle(load_specs([WALKTHROUGH])[0], identifier_system="https://example.org/threads")
    assert other["entry"][0]["resource"]["identifier"][0]["system"] == "https://example.org/threads"
    assert other["entry"][0]["fullUrl"] != bundle["entry"][0]["fullUrl"]


def test_full_url_matches_uuid5() -> None:
    for value in ("a", "ü/ß", "x" * 300):
        assert full_url("s", value) == f"urn:uuid:{uuid.uuid5(URN_NAMESPACE, 's|' + value)}"


def test_bundle_bytes_escapes_what_a_hand_made_spec_holds() -> None:
    from bundler.spec import Attachment, Coding, Message, Participant, ThreadSpec

    # every field that takes free text (a ThreadSpec made in Python is checked like one read from a file)
    spec = ThreadSpec(key="k", topic='t"\\\u2028', participants={"a": Participant("a", 'Patient?identifier=s|"x\\\\"',
                                                                                   "\u2028\n")},
                      messages=(Message(id="m1", sender="a", sent="2024-04-10T10:00:00Z", text="\x00 </script>",
                                        attachments=(Attachment('Binary/"1"', title="\\"),)),))
    assert bundle_bytes(spec) == orjson.dumps(build_bundle(spec))
    full = spec.model_copy(update={"subject": 'Patient?identifier=a|"b"', "sender": "a", "sent": "2024-04-10T10:00:00Z",
                                   "category": (Coding("c\\", "s\"", "d\n"),)})
    assert bundle_bytes(full) == orjson.dumps(build_bundle(full))


def test_bundle_bytes_of_threads_sharing_participants() -> None:
    """A participant's Reference JSON is made once while it recurs across threads (bundle_bytes keeps it by
    reference and display): threads that share one, or name one reference with another display or none, or
    give a known display to another reference, each get exactly the bytes of their own uncached build."""
    from bundler.spec import Message, Participant, ThreadSpec

    ref = "Practitioner?identifier=https://example.org/staff|+1-312\\,9"  # its wire form is percent-encoded
    people = [
        {"dr": Participant("dr", ref, "Dr. Who"), "pt": Participant("pt", "Patient/1")},
        {"dr": Participant("dr", ref, "Dr. Who"), "pt": Participant("pt", "Patient/2", "Dr. Who")},
        {"doc": Participant("doc", ref), "pt": Participant("pt", "Patient/1", "Pat")},
        {"doc": Participant("doc", ref, "Someone else"), "pt": Participant("pt", "Patient/1")},
    ]
    for n, participants in enumerate([*people, *people]):  # the second time round, every Reference is cached
        staff = next(iter(participants))
        spec = ThreadSpec(key=f"t{n}", topic="x", participants=participants, sender=staff,
                          messages=(Message(id="1", sender=staff, sent="2024-04-10T10:00:00Z", text="hi"),
                                    Message(id="2", sender="pt", sent="2024-04-10T10:01:00Z", text="ok")))
        assert bundle_bytes(spec) == orjson.dumps(build_bundle(spec)), n


def test_what_bundle_bytes_writes_unescaped_has_nothing_to_escape() -> None:
    """bundle_bytes writes message ids, statuses and instants as they are: their grammars allow no character
    that JSON escapes (a checked ThreadSpec holds nothing else)."""
    from bundler.vocabulary import COMMUNICATION_STATUSES, is_instant, is_key

    key_chars = [chr(c) for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF and is_key(chr(c))]
    assert len(key_chars) == 66
    instant_chars = "0123456789-T:.Z+"
    assert is_instant("2024-02-29T23:59:60.123456789+14:00")
    for text in [*key_chars, instant_chars, *COMMUNICATION_STATUSES]:
        assert orjson.dumps(text) == b'"' + text.encode() + b'"', text


def test_result_shares_no_objects_between_resources() -> None:
    bundle = _walkthrough_bundle()
    bundle["entry"][1]["resource"]["sender"]["display"] = "changed"
    bundle["entry"][1]["request"]["method"] = "PUT"
    assert bundle["entry"][3]["resource"]["sender"]["display"] == "Dr. Alice Smith"
    assert bundle["entry"][3]["request"]["method"] == "POST"


def test_cli_writes_one_file_per_thread(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["build", str(REPO / "fixtures/threads"), "-o", str(tmp_path)])
    assert result.exit_code == 0, result.output
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["abe-discharge-2024-11.json", "bart-school-form-2024-09.json",
                     "homer-lab-results-2024-04-10.json", "marge-refill-2024-05.json", "moe-referral-2024-12.json",
                     "ned-flu-shot-2024-10.json"]
    assert json.loads((tmp_path / "homer-lab-results-2024-04-10.json").read_text()) == _walkthrough_bundle()
    for name in names:  # the committed fixtures are what build makes today
        assert (tmp_path / name).read_bytes() == (REPO / "fixtures/bundles" / name).read_bytes()
    result = CliRunner().invoke(main, ["build", str(REPO / "fixtures/threads"), "--ndjson", "-o",
                                       str(tmp_path / "all.ndjson")])
    assert result.exit_code == 0
    lines = [json.loads(line) for line in (tmp_path / "all.ndjson").read_text().splitlines()]
    in_file_order = ["abe-discharge-2024-11.json", "moe-referral-2024-12.json", "homer-lab-results-2024-04-10.json",
                     "marge-refill-2024-05.json", "bart-school-form-2024-09.json", "ned-flu-shot-2024-10.json"]
    assert lines == [json.loads((tmp_path / name).read_text()) for name in in_file_order]


def _resources(bundle: dict[str, Any]) -> list[dict[str, Any]]:
    return [e["resource"] for e in bundle["entry"]]


def _all_references(value: Any) -> list[str]:
    if isinstance(value, dict):
        own = [value["reference"]] if isinstance(value.get("reference"), str) else []
        return own + [r for v in value.values() for r in _all_references(v)]
    if isinstance(value, list):
        return [r for v in value for r in _all_references(v)]
    return []


@settings(max_examples=150)
@given(thread_specs(drafts=True))
def test_properties_of_built_bundles(spec: dict[str, Any]) -> None:
    bundle = build_bundle(spec)
    # determinism: same spec, same bytes, also after a round trip of the spec through JSON and YAML
    assert dumps(build_bundle(spec)) == dumps(bundle)
    assert dumps(build_bundle(json.loads(json.dumps(spec)))) == dumps(bundle)
    from bundler.spec import check_document
    from bundler.spec.source import parse_text

    (doc,), _ = parse_text(yaml.safe_dump(spec, allow_unicode=True, sort_keys=False), "x.yaml")
    reparsed, problems = check_document(doc)
    assert problems == []
    assert dumps(build_bundle(reparsed)) == dumps(bundle)  # type: ignore[arg-type]
    assert orjson.loads(dumps(bundle)) == bundle
    assert bundle_bytes(spec) == orjson.dumps(bundle)  # the fast path writes exactly the same bytes
    assert bundle_bytes(spec, identifier_system="https://example.org/t") == orjson.dumps(
        build_bundle(spec, identifier_system="https://example.org/t"))
    # urns: lowercase canonical uuids, unique, and every urn reference resolves to an entry
    urls = [e["fullUrl"] for e in bundle["entry"]]
    assert all(URN.match(u) for u in urls) and len(set(urls)) == len(urls)
    refs = _all_references(bundle)
    assert all(r in urls for r in refs if r.startswith("urn:"))
    header, *rest = _resources(bundle)
    messages = rest[:len(spec["messages"])]  # then the read receipts, if any (tests/test_read_state.py)
    # header: no payload, no partOf, every participant a recipient
    assert "payload" not in header and "partOf" not in header
    assert [r["reference"] for r in header["recipient"]] == [p["reference"] for p in spec["participants"].values()]
    assert header["topic"] == {"text": spec["topic"]}
    assert header["status"] == spec.get("status", "in-progress")
    ids = []
    for msg_spec, message in zip(spec["messages"], messages, strict=True):
        ids.append(str(msg_spec.get("id", len(ids) + 1)))
        assert message["partOf"] == [{"reference": urls[0]}]
        assert message.get("sent") == msg_spec.get("sent")  # (a draft has none)
        assert message["sender"]["reference"] == spec["participants"][msg_spec["sender"]]["reference"]
        texts = [p["contentString"] for p in message["payload"] if "contentString" in p]
        assert texts == ([msg_spec["text"]] if "text" in msg_spec else [])
        recipients = msg_spec.get("recipient", [a for a in spec["participants"] if a != msg_spec["sender"]])
        assert [r["reference"] for r in message.get("recipient", [])] == [
            spec["participants"][a]["reference"] for a in recipients]
        if "reply_to" in msg_spec:
            assert message["inResponseTo"] == [{"reference": urls[1 + ids.index(str(msg_spec["reply_to"]))]}]
        else:
            assert "inResponseTo" not in message
        assert message["identifier"][0]["value"] == f"{spec['thread']}/{ids[-1]}"


def test_parse_spec_rejects_bad_plain_data() -> None:
    import pytest

    from bundler.errors import SpecError

    with pytest.raises(SpecError) as info:
        parse_spec({"thread": "t", "topic": "x", "participants": {}})
    assert [str(p) for p in info.value.problems] == ["<spec>: participants: needs at least one participant"]


@given(st.from_regex(THREAD_KEY_PATTERN, fullmatch=True), st.none() | st.from_regex(KEY_PATTERN, fullmatch=True),
       st.none() | st.from_regex(ALIAS_PATTERN, fullmatch=True) | st.just("read"))
def test_identifier_values_split_back_into_what_made_them(key: str, message_id: str | None, reader: str | None
                                                          ) -> None:
    """`split_identifier_value` reads what `identifier_value` writes, ids and aliases named 'read' included."""
    reader = reader if message_id is not None else None
    value = identifier_value(key, message_id, reader)
    assert split_identifier_value(value) == (key, message_id, reader)
    parts = read_receipt_parts(value)
    assert parts == ((identifier_value(key, message_id), reader) if reader is not None else None)
