"""bundler.validate: every rule with a hand-made bundle that breaks only it, the fixture, origins, CLI."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import orjson
import pytest
from click.testing import CliRunner
from hypothesis import given, settings

from bundler.build import build_bundle
from bundler.check import BUNDLE_RULES, RULES, Issue, validate, validate_many
from bundler.check.limits import REQUEST_ENVELOPE_BYTES, Limits, request_entry_bytes
from bundler.load.plan import RequestLimits, TooLarge, cut, entry_sizes
from bundler.spec import load_specs
from bundler.testing.strategies import bundles
from bundler.vocabulary import (
    MAX_BODY_BYTES,
    MAX_REQUEST_BYTES,
    READ_RECEIPT_CODE,
    READ_RECEIPT_SYSTEM,
    READ_STATE_EXTENSION,
)

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "fixtures" / "threads" / "homer-lab-results.yaml"

H = "urn:uuid:11111111-1111-4111-8111-111111111111"
M1 = "urn:uuid:22222222-2222-4222-8222-222222222222"
M2 = "urn:uuid:33333333-3333-4333-8333-333333333333"
PAT = "Patient/8c9f6f2e-1d1b-4a61-9a55-4a5f0c6b1f01"
DOC = "Practitioner/0d4e3f2a-7b8c-4d9e-8f01-2a3b4c5d6e7f"
POST = {"method": "POST", "url": "Communication"}


def base() -> dict[str, Any]:
    """A small valid bundle by hand: a header and two messages, the second replying to the first."""
    return {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": H, "request": dict(POST), "resource": {
            "resourceType": "Communication", "status": "in-progress", "subject": {"reference": PAT},
            "topic": {"text": "Lab results"}, "sent": "2024-04-10T09:00:00Z",
            "recipient": [{"reference": PAT}, {"reference": DOC}], "sender": {"reference": DOC}}},
        {"fullUrl": M1, "request": dict(POST), "resource": {
            "resourceType": "Communication", "status": "in-progress", "partOf": [{"reference": H}],
            "sent": "2024-04-10T10:00:00Z", "sender": {"reference": DOC}, "recipient": [{"reference": PAT}],
            "payload": [{"contentString": "Your results are in."}]}},
        {"fullUrl": M2, "request": dict(POST), "resource": {
            "resourceType": "Communication", "status": "in-progress", "partOf": [{"reference": H}],
            "inResponseTo": [{"reference": M1}], "sent": "2024-04-10T12:05:00+02:00",
            "sender": {"reference": PAT}, "recipient": [{"reference": DOC}],
            "payload": [{"contentString": "Thanks!"}]}},
    ]}


def res(b: dict[str, Any], i: int) -> dict[str, Any]:
    return b["entry"][i]["resource"]


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """A breaker setting `entry[i].a.b` (a dotted path below the Bundle) to `value`."""

    def apply(b: dict[str, Any]) -> None:
        node: Any = b
        parts = path.split(".")
        for p in parts[:-1]:
            node = node[int(p)] if p.isdigit() else node[p]
        node[int(parts[-1]) if parts[-1].isdigit() else parts[-1]] = value

    return apply


def _del(path: str) -> Callable[[dict[str, Any]], None]:
    def apply(b: dict[str, Any]) -> None:
        node: Any = b
        parts = path.split(".")
        for p in parts[:-1]:
            node = node[int(p)] if p.isdigit() else node[p]
        del node[parts[-1]]

    return apply


def _rename(b: dict[str, Any], old: str, new: str) -> None:
    """Change a fullUrl consistently: in the entry and in every reference to it."""
    b["entry"] = json.loads(json.dumps(b["entry"]).replace(json.dumps(old)[1:-1], json.dumps(new)[1:-1]))


def _pad_conditional(b: dict[str, Any]) -> None:
    for n in range(7):
        e = copy.deepcopy(b["entry"][1])
        e["fullUrl"] = f"urn:uuid:44444444-4444-4444-8444-{n:012d}"
        b["entry"].append(e)
    b["entry"][0]["resource"]["identifier"] = [{"system": "urn:x", "value": "t1"}]  # (what it searches: else
    b["entry"][0]["request"]["ifNoneExist"] = "identifier=urn:x|t1"                 # ref.created-identifier fires)


def _many_puts(b: dict[str, Any]) -> None:
    for n in range(51):
        rid = f"55555555-5555-4555-8555-{n:012d}"
        b["entry"].append({"fullUrl": f"urn:uuid:{rid}", "request": {"method": "PUT", "url": f"Communication/{rid}"},
                           "resource": {**copy.deepcopy(res(b, 1)), "id": rid}})


OTHER = "Practitioner/9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d"
TASK = "urn:uuid:66666666-6666-4666-8666-666666666666"


def _block(participant: str = PAT, last_read: str = M1, at: Any = "2024-04-10T11:00:00Z",
           drop: str | None = None) -> Callable[[dict[str, Any]], None]:
    """A breaker adding a thread-read-state extension to the header (without sub-extension `drop`)."""
    def apply(b: dict[str, Any]) -> None:
        subs = [{"url": "participant", "valueReference": {"reference": participant}},
                {"url": "lastRead", "valueReference": {"reference": last_read}},
                {"url": "lastReadAt", "valueDateTime": at}]
        res(b, 0).setdefault("extension", []).append({"url": READ_STATE_EXTENSION,
                                                      "extension": [x for x in subs if x["url"] != drop]})
    return apply


def _receipt(**fields: Any) -> Callable[[dict[str, Any]], None]:
    """A breaker adding a read receipt of M1 for PAT, with `fields` changed (None: left out)."""
    def apply(b: dict[str, Any]) -> None:
        res(b, 1)["identifier"] = [{"system": "urn:x", "value": "t1/1"}]
        task = {"resourceType": "Task", "identifier": [{"system": "urn:x", "value": "t1/1/read/pat"}],
                "status": "requested", "intent": "order",
                "code": {"coding": [{"system": READ_RECEIPT_SYSTEM, "code": READ_RECEIPT_CODE}]},
                "focus": {"reference": H}, "for": {"reference": PAT}, "authoredOn": "2024-04-10T10:00:00Z",
                "owner": {"reference": PAT}}
        task.update(fields)
        b["entry"].append({"fullUrl": TASK, "request": {"method": "POST", "url": "Task"},
                           "resource": {k: v for k, v in task.items() if v is not None}})
    return apply


def _simple_in_a_group(b: dict[str, Any]) -> None:
    res(b, 0)["recipient"].append({"reference": OTHER})
    res(b, 1).update(status="completed", received="2024-04-10T10:30:00Z")


# code → one hand-made break that should fire exactly that code
BREAKS: dict[str, list[Callable[[dict[str, Any]], None]]] = {
    "bundle.resource-type": [_set("resourceType", "Parameters")],
    "bundle.type": [_set("type", "collection"), _del("type")],
    "bundle.empty": [_set("entry", []), _del("entry"), _set("entry", {"fullUrl": H}), _set("entry", "x")],
    "entry.resource": [_del("entry.2.resource"), _set("entry.2.resource.resourceType", "Communicaton"),
                       lambda b: b["entry"].append("not an entry"),
                       lambda b: b["entry"].append({"request": {"method": "DELETE", "url": PAT}, "resource": {}})],
    "entry.fullurl-missing": [_del("entry.2.fullUrl")],
    "entry.fullurl-duplicate": [_set("entry.2.fullUrl", M1)],
    "entry.fullurl-format": [lambda b: _rename(b, M2, M2.upper()), lambda b: _rename(b, M2, "urn:uuid:abc"),
                             lambda b: _rename(b, M2, M2 + "\n"),
                             _set("entry.2.fullUrl", "https://example.org/fhir/Communication/1")],
    "entry.request": [_set("entry.1.request.method", "post"), _del("entry.1.request"), _del("entry.1.request.url"),
                      _set("entry.0.request.ifNoneExist", "Communication?identifier=x")],
    "entry.request-url": [_set("entry.1.request.url", "Patient"),
                          _set("entry.1.request", {"method": "PUT", "url": "Communication"}),
                          _set("entry.1.request", {"method": "PUT", "url": "Patient?identifier=a|b"}),
                          lambda b: b["entry"].append({"request": {"method": "DELETE", "url": "Communication/ x"}}),
                          lambda b: b["entry"].append({"request": {"method": "GET", "url": "https://x.org/Patient/1"}})],
    "entry.client-id": [_set("entry.1.resource.id", "8c9f6f2e-1d1b-4a61-9a55-4a5f0c6b1f99"),
                        lambda b: (_set("entry.1.request", {"method": "PUT", "url": "Communication?identifier=a|b"})(b),
                                   _set("entry.1.resource.id", "8c9f6f2e-1d1b-4a61-9a55-4a5f0c6b1f99")(b))],
    "ref.unresolved": [_set("entry.2.resource.inResponseTo.0.reference", "urn:uuid:99999999-9999-4999-8999-99999999"),
                       lambda b: b["entry"].pop(1)],
    "ref.format": [_set("entry.0.resource.subject.reference", "Patient/"),
                   _set("entry.0.resource.subject.reference", "homer simpson")],
    "ref.type-unknown": [_set("entry.0.resource.subject.reference", "Pateint/1"),
                         _set("entry.0.resource.subject.reference", "Pateint?identifier=a|b")],
    "ref.conditional": [_set("entry.0.resource.subject.reference", "Patient?identifier"),
                        _set("entry.0.resource.subject.reference", "Patient?identifier=a|b&")],
    "ref.query-encoding": [_set("entry.0.resource.subject.reference", "Patient?identifier=tel|+1-312-555-0777"),
                           _set("entry.0.resource.subject.reference", "Patient?identifier=urn:x|100%"),
                           lambda b: b["entry"].append({"fullUrl": "urn:uuid:88888888-8888-4888-8888-888888888888",
                                                        "request": {"method": "POST", "url": "Patient",
                                                                    "ifNoneExist": "identifier=tel|+1-312"},
                                                        "resource": {"resourceType": "Patient", "identifier": [
                                                            {"system": "tel", "value": " 1-312"}]}})],
    "ref.in-text": [_set("entry.1.resource.payload.0.contentString", f"see {M2}"),
                    _set("entry.0.resource.identifier", [{"system": "urn:x", "value": H}])],
    "ref.target-type": [_set("entry.0.resource.subject.reference", DOC),
                        _set("entry.0.resource.subject.reference", M1)],
    "ref.created-identifier": [
        lambda b: b["entry"].append({"fullUrl": "urn:uuid:88888888-8888-4888-8888-888888888888",
                                     "request": {"method": "POST", "url": "Patient",
                                                 "ifNoneExist": "identifier=https://example.org/mrn|1"},
                                     "resource": {"resourceType": "Patient", "identifier": [
                                         {"system": "https://example.org/mrn", "value": "2"}]}}),
        lambda b: b["entry"].append({"fullUrl": "urn:uuid:88888888-8888-4888-8888-888888888888",
                                     "request": {"method": "POST", "url": "Practitioner",
                                                 "ifNoneExist": "identifier=urn:npi|1"},
                                     "resource": {"resourceType": "Practitioner"}})],
    "thread.header-count": [lambda b: (_set("entry.0.resource.identifier", [{"system": "urn:x", "value": "t1"}])(b),
                                       b["entry"].append({**copy.deepcopy(b["entry"][0]),
                                                          "fullUrl": "urn:uuid:66666666-6666-4666-8666-666666666666"})),
                            _set("entry.1.resource.partOf", [{"reference": H}, {"reference": "Communication/x1"}])],
    "thread.header-payload": [_set("entry.0.resource.payload", [{"contentString": "hello"}])],
    "thread.header-partof": [_set("entry.0.resource.partOf", [{"reference": "Communication/1"}])],
    "thread.message-payload": [_del("entry.2.resource.payload")],
    "thread.message-partof": [_del("entry.2.resource.partOf")],
    "thread.partof-target": [_set("entry.2.resource.partOf.0.reference", M1),
                             _set("entry.2.resource.partOf.0.reference", PAT)],
    "thread.reply-target": [_set("entry.2.resource.inResponseTo.0.reference", H),
                            _set("entry.2.resource.inResponseTo.0.reference", "Communication/1")],
    "thread.sent": [_set("entry.1.resource.sent", "2024-02-30T10:00:00Z"),
                    _set("entry.1.resource.sent", "2024-04-10T10:00:00"),
                    _set("entry.0.resource.sent", "2024-04-10T09:00:00+14:30")],
    "thread.sent-order": [_set("entry.1.resource.sent", "2024-04-10T08:59:00Z")],
    "thread.reply-order": [_set("entry.2.resource.sent", "2024-04-10T11:30:00+02:00")],
    "thread.header-recipients": [_set("entry.0.resource.recipient", [{"reference": PAT}])],
    "read.simple-group": [_simple_in_a_group],
    "read.extension": [_block(at="yesterday"), _block(drop="lastRead"), _block(last_read=H),
                       _block(participant=OTHER), lambda b: (_block()(b), _block(last_read=M2)(b)),
                       _block(last_read="Patient/1"),
                       lambda b: res(b, 0).update(extension=[{"url": READ_STATE_EXTENSION, "valueString": "x"}])],
    "read.task": [_receipt(intent="plan"), _receipt(status="ready"), _receipt(focus={"reference": M1}),
                  _receipt(code={"coding": [{"system": "http://example.org", "code": READ_RECEIPT_CODE}]}),
                  _receipt(owner=None)],
    "read.task-owner": [_receipt(owner={"reference": OTHER}), _receipt(owner={"reference": DOC})],
    "fhir.structure": [_set("entry.1.resource.payload.0.contentString", 5), _set("entry.1.resource.colour", "x"),
                       _set("entry.1.resource.payload.0", {}), _set("meta", {"lastUpdated": "yesterday"})],
    "fhir.code": [_set("entry.1.resource.status", "bogus"), _set("entry.1.resource.priority", "high"),
                  _set("entry.1.resource.payload", [{"contentAttachment": {"url": "Binary/1", "contentType": "png"}}]),
                  _set("entry.1.resource.payload", [{"contentAttachment": {"url": "Binary/1",
                                                                           "contentType": "image/png\n"}}])],
    "fhir.base64": [_set("entry.1.resource.payload", [{"contentAttachment": {"contentType": "text/plain",
                                                                             "data": "QUJD="}}]),
                    _set("entry.1.resource.payload", [{"contentAttachment": {"contentType": "text/plain",
                                                                             "data": "QUJD", "hash": "abc"}}]),
                    lambda b: b["entry"].append({"fullUrl": "urn:uuid:77777777-7777-4777-8777-777777777777",
                                                 "request": {"method": "POST", "url": "Binary"},
                                                 "resource": {"resourceType": "Binary", "contentType": "text/plain",
                                                              "data": "QU JD"}})],
    "limit.body-size": [lambda b: (_set("entry.1.resource.payload.0.contentString", "x" * 600_000)(b),
                                   _set("entry.2.resource.payload.0.contentString", "x" * 600_000)(b))],
    "limit.entry-size": [_set("entry.1.resource.payload.0.contentString", "x" * 1_048_576),
                         _set("entry.2.resource.payload.0.contentString", "x" * 1_000_000),
                         _set("entry.0.resource.recipient", [{"reference": PAT}, {"reference": DOC}]
                              + [{"reference": f"Patient/{n}"} for n in range(40_000)])],
    "limit.conditional-entries": [_pad_conditional],
    "limit.put-entries": [_many_puts],
    "limit.uuid-id": [lambda b: (_set("entry.1.request", {"method": "PUT", "url": "Communication/msg-1"})(b),
                                 _set("entry.1.resource.id", "msg-1")(b))],
}

CASES = [(code, n) for code, breaks in BREAKS.items() for n in range(len(breaks))]


def test_base_and_fixture_are_clean() -> None:
    assert validate(base()) == []
    spec = load_specs([FIXTURE])[0]
    assert validate(build_bundle(spec)) == []


def test_every_rule_has_a_hand_made_break() -> None:
    assert set(BREAKS) == set(BUNDLE_RULES)


@pytest.mark.parametrize(("code", "n"), CASES, ids=[f"{c}-{n}" for c, n in CASES])
def test_each_break_fires_only_its_rule(code: str, n: int) -> None:
    b = base()
    BREAKS[code][n](b)
    issues = validate(b)
    assert {i.code for i in issues} == {code}, [str(i) for i in issues]
    assert all(i.severity == RULES[code][0] for i in issues)


def test_paths_name_the_element() -> None:
    b = base()
    b["entry"][2]["resource"]["inResponseTo"][0]["reference"] = "urn:uuid:99999999-9999-4999-8999-999999999999"
    b["entry"][1]["resource"]["payload"][0]["contentString"] = 5
    paths = {i.code: i.path for i in validate(b)}
    assert paths == {"ref.unresolved": "Bundle.entry[2].resource.inResponseTo[0].reference",
                     "fhir.structure": "Bundle.entry[1].resource.payload[0].contentString"}


def test_validate_does_not_modify_its_input() -> None:
    for code, breaks in BREAKS.items():
        for brk in breaks:
            b = base()
            brk(b)
            before = copy.deepcopy(b)
            validate(b)
            assert b == before, code


def test_limits_none_and_structure_off() -> None:
    b = base()
    BREAKS["limit.body-size"][0](b)
    assert {i.code for i in validate(b)} == {"limit.body-size"}
    assert validate(b, limits="none") == []
    assert validate(b, limits=Limits(max_body_bytes=2_000_000)) == []
    b = base()
    res(b, 1)["colour"] = "blue"
    assert validate(b, structure=False) == []
    with pytest.raises(ValueError, match="unknown limits profile"):
        validate(base(), limits="hapi")


@pytest.mark.parametrize("extra", [0, 1])
def test_an_entry_is_too_large_at_the_byte_the_loader_cuts_at(extra: int) -> None:
    """validate measures an entry as the loader's cutting does (load.plan), against the same limit: at the limit
    it gets a request of its own; one byte more is validate's error and the loader's TooLarge."""
    b = base()
    res(b, 2)["payload"][0]["contentString"] = ""
    text = MAX_REQUEST_BYTES - REQUEST_ENVELOPE_BYTES - request_entry_bytes(b["entry"][2]) + extra
    res(b, 2)["payload"][0]["contentString"] = "x" * text
    codes = {i.code for i in validate(b, structure=False)}
    if extra:
        assert codes == {"limit.entry-size"}
        with pytest.raises(TooLarge, match=f"entry 2 is {MAX_REQUEST_BYTES - REQUEST_ENVELOPE_BYTES + 1:,} bytes"):
            cut(range(3), entry_sizes(b), RequestLimits())
    else:
        assert codes == set()
        assert cut(range(3), entry_sizes(b), RequestLimits()) == [[0, 1], [2]]


def test_transaction_limits_do_not_apply_to_batches() -> None:
    b = base()
    _pad_conditional(b)
    b["type"] = "batch"
    assert validate(b) == []


def test_messages_of_an_existing_thread_need_no_header() -> None:
    b = base()
    del b["entry"][0]
    for e in b["entry"]:
        e["resource"]["partOf"] = [{"reference": "Communication/8c9f6f2e-1d1b-4a61-9a55-4a5f0c6b1faa"}]
    assert validate(b) == []
    b["entry"][1]["resource"]["inResponseTo"] = [{"reference": "Communication/8c9f6f2e-1d1b-4a61-9a55-4a5f0c6b1fbb"}]
    assert validate(b) == []  # a reply to an older message of that existing thread


def test_conditional_partof_matches_a_header_by_identifier() -> None:
    b = base()
    res(b, 0)["identifier"] = [{"system": "urn:x", "value": "t1"}]
    for i in (1, 2):
        res(b, i)["partOf"] = [{"reference": "Communication?identifier=urn:x|t1"}]
    assert validate(b) == []
    res(b, 0)["payload"] = [{"contentString": "hi"}]  # now that header has a payload
    assert {i.code for i in validate(b)} == {"thread.header-payload"}


def test_origins_name_the_spec_file_and_line() -> None:
    spec = load_specs([FIXTURE])[0]
    b = build_bundle(spec)
    b["entry"][2]["resource"]["sent"] = "2024-13-01T00:00:00Z"
    b["type"] = "collection"
    issues = validate(b, origin=lambda i: spec.origin(i - 1 if i else None))
    by_code = {i.code: i for i in issues}
    assert by_code["thread.sent"].file == str(FIXTURE)
    assert by_code["thread.sent"].line == spec.origin(1)[1] == 14
    assert by_code["bundle.type"].line == 1
    assert str(by_code["thread.sent"]).startswith(f"{FIXTURE}:14: error[thread.sent] Bundle.entry[2].resource.sent: ")


def test_issue_is_frozen_and_rules_are_described() -> None:
    issue = validate({"resourceType": "Patient"})[0]
    with pytest.raises(AttributeError):
        issue.code = "x"  # type: ignore[misc]
    assert isinstance(issue, Issue) and issue.code == "bundle.resource-type"
    assert all(sev in ("error", "warning") and desc for sev, desc in RULES.values())
    assert validate([1, 2])[0].code == "bundle.resource-type"


def test_validate_many_in_parallel_matches_serial() -> None:
    bundles = []
    for n in range(80):
        b = base()
        if n % 3 == 0:
            res(b, 1)["colour"] = "blue"
        if n % 5 == 0:
            del res(b, 2)["payload"]
        bundles.append(b)
    serial = [validate(b) for b in bundles]
    assert list(validate_many(bundles, workers=2, chunk_size=7)) == serial
    assert sum(1 for s in serial if s) == 37  # n % 3 == 0 or n % 5 == 0


# --- property-based ----------------------------------------------------------------------------------


@settings(max_examples=60)
@given(bundles(drafts=True))
def test_builder_bundles_are_clean_and_untouched(bundle: dict[str, Any]) -> None:
    before = orjson.dumps(bundle)
    assert validate(bundle) == []
    assert orjson.dumps(bundle) == before


# --- CLI ---------------------------------------------------------------------------------------------


@pytest.fixture
def cli() -> click.Command:
    from bundler.cli.validate import validate_command

    return validate_command


def _write(path: Path, data: Any) -> Path:
    path.write_bytes(orjson.dumps(data))
    return path


def test_cli_clean_spec_and_bundle(tmp_path: Path, cli: click.Command) -> None:
    bundle = _write(tmp_path / "b.json", base())
    result = CliRunner().invoke(cli, [str(FIXTURE), str(bundle)])
    assert result.exit_code == 0, result.output
    assert ("0 errors, 0 warnings in 3 bundles: 2 threads in 2 files, and 1 bundle of participants to create when "
            "missing") in result.output


def test_cli_errors_exit_1_grouped_by_file_and_entry(tmp_path: Path, cli: click.Command) -> None:
    b = base()
    del res(b, 2)["payload"]
    res(b, 0)["recipient"] = [{"reference": DOC}]
    path = tmp_path / "bad.json"
    path.write_bytes(orjson.dumps(b, option=orjson.OPT_INDENT_2))
    result = CliRunner().invoke(cli, [str(tmp_path)])
    assert result.exit_code == 1
    lines = result.output.splitlines()
    assert lines[0] == str(path)
    assert lines[1] == "  entry 0 (line 5):"
    assert lines[2].startswith("    warning[thread.header-recipients] Bundle.entry[0].resource.recipient:")
    assert any(line.startswith("  entry 2 (line ") for line in lines)
    assert lines[-1] == "1 error, 1 warning in 1 bundle (1 file)"


def test_cli_warnings_only_exit_0(tmp_path: Path, cli: click.Command) -> None:
    b = base()
    res(b, 0)["recipient"] = [{"reference": DOC}]
    result = CliRunner().invoke(cli, [str(_write(tmp_path / "w.json", b))])
    assert result.exit_code == 0
    assert "warning[thread.header-recipients]" in result.output


def test_cli_json_output_and_ndjson(tmp_path: Path, cli: click.Command) -> None:
    good, bad = base(), base()
    bad["type"] = "collection"
    nd = tmp_path / "all.ndjson"
    nd.write_bytes(orjson.dumps(good) + b"\n\n" + orjson.dumps(bad) + b"\n")
    result = CliRunner().invoke(cli, [str(nd), "--format", "json", "--limits", "none", "--no-structure"])
    assert result.exit_code == 1
    out = json.loads(result.output)
    assert (out["files"], out["bundles"], out["errors"], out["warnings"]) == (1, 2, 1, 0)
    assert out["issues"] == [{"severity": "error", "code": "bundle.type", "path": "Bundle.type",
                              "message": "must be 'transaction' or 'batch', got 'collection'", "file": str(nd),
                              "line": 3, "entry": None, "related": None, "related_line": None}]


def test_cli_spec_issue_names_spec_line(tmp_path: Path, cli: click.Command) -> None:
    from bundler.build import DEFAULT_IDENTIFIER_SYSTEM, full_url

    header_urn = full_url(DEFAULT_IDENTIFIER_SYSTEM, "homer-lab-results-2024-04-10")
    spec = tmp_path / "t.yaml"
    spec.write_text(FIXTURE.read_text().replace("We will notify you here.", f"See {header_urn}."))
    result = CliRunner().invoke(cli, [str(spec), "--format", "json"])
    assert result.exit_code == 0  # a warning only
    [issue] = json.loads(result.output)["issues"]
    line = next(n for n, text in enumerate(spec.read_text().splitlines(), 1) if "- sender: alice" in text
                and n > 15)
    assert (issue["code"], issue["file"], issue["line"]) == ("ref.in-text", str(spec), line)


def test_a_spec_s_conditional_references_and_creates_go_encoded_and_validate_clean() -> None:
    from bundler.build import created_participants, participant_bundles
    from bundler.spec import parse_spec

    spec = parse_spec({"thread": "k", "topic": "t", "subject": "p", "participants": {
        "p": {"reference": "Patient?identifier=tel|+1-312-555-0777"},
        "c": {"create": {"resourceType": "Practitioner", "identifier": [{"system": "urn:x", "value": "a+b%&c"}]}}},
        "messages": [{"sender": "c", "sent": "2024-01-01T00:00:00Z", "text": "hi"}]})
    bundle = build_bundle(spec)
    assert bundle["entry"][0]["resource"]["subject"] == {"reference": "Patient?identifier=tel|%2B1-312-555-0777"}
    assert bundle["entry"][1]["resource"]["sender"] == {"reference": "Practitioner?identifier=urn:x|a%2Bb%25%26c"}
    assert validate(bundle) == []
    (creates,) = participant_bundles(created_participants([spec]))
    assert creates["entry"][0]["request"]["ifNoneExist"] == "identifier=urn:x|a%2Bb%25%26c"
    assert validate(creates) == []


def test_displays_medplum_will_not_keep_are_said_once_at_their_line(tmp_path: Path) -> None:
    """A conditional reference's display is replaced by Medplum's name for what it matches: said where the display
    is written (once, however many specs use it), with what it becomes when the spec creates the participant."""
    from bundler.check import validate_files

    npi = "http://hl7.org/fhir/sid/us-npi"
    (tmp_path / "people.yaml").write_text(f"""participants:
  hibbert: {{display: Dr. Hibbert, create: {{resourceType: Practitioner, identifier: [{{system: "{npi}", value: "1"}}],
            name: [{{given: [Julius], family: Hibbert}}]}}}}
  nick: {{display: Dr. Nick, create: {{resourceType: Practitioner, identifier: [{{system: "{npi}", value: "2"}}]}}}}
  homer: {{display: Homer Simpson, create: {{resourceType: Patient, identifier: [{{system: "urn:mrn", value: "3"}}],
          name: [{{given: [Homer], family: Simpson}}]}}}}
  doc: {{reference: "Practitioner?identifier={npi}|4", display: Dr. Nobody}}
  alice: {{reference: Practitioner/1, display: Dr. Alice}}
""")
    for key in ("a", "b"):
        (tmp_path / f"{key}.yaml").write_text(f"thread: {key}\ntopic: t\nsubject: homer\nmessages:\n" + "".join(
            f"  - {{sender: {a}, sent: 2024-01-01T00:00:00Z, text: hi}}\n"
            for a in ("hibbert", "nick", "homer", "doc", "alice")))
    report = validate_files([tmp_path / "a.yaml", tmp_path / "b.yaml"], participants=tmp_path / "people.yaml",
                            structure=False)
    people = str(tmp_path / "people.yaml")
    assert [(i.file, i.line, i.path, i.message) for i in report.issues] == [
        (people, 2, "participants.hibbert.display", "'Dr. Hibbert' will be stored as 'Julius Hibbert' (Medplum names "
                                                    "a conditional reference after the resource it matches)"),
        (people, 4, "participants.nick.display", "'Dr. Nick' will not be stored: the Practitioner it creates has no "
                                                 "name, and Medplum names a conditional reference after the resource "
                                                 "it matches"),
        (people, 7, "participants.doc.display", "'Dr. Nobody' will be replaced by Medplum's name for the Practitioner "
                                                "it matches (Medplum names a conditional reference after the "
                                                "resource it matches)")]
    assert {i.code for i in report.issues} == {"ref.display-replaced"} and report.warnings == 3


@pytest.mark.parametrize("content", [b"{not json", b"\x00\x01binary", b"thread: [unclosed"])
def test_cli_unreadable_input_exits_2_without_traceback(tmp_path: Path, cli: click.Command, content: bytes) -> None:
    path = tmp_path / ("x.json" if content.startswith(b"{") else "x.yaml")
    path.write_bytes(content)
    result = CliRunner().invoke(cli, [str(path)])
    assert result.exit_code == 2
    assert str(path) in result.output
    assert "Traceback" not in result.output


def test_cli_missing_file_and_bad_ndjson_exit_2(tmp_path: Path, cli: click.Command) -> None:
    result = CliRunner().invoke(cli, [str(tmp_path / "nope.json")])
    assert result.exit_code == 2 and "no such file" in result.output
    nd = tmp_path / "b.ndjson"
    nd.write_bytes(orjson.dumps(base()) + b"\n{oops\n")
    result = CliRunner().invoke(cli, [str(nd)])
    assert result.exit_code == 2 and f"{nd}:2" in result.output


def _command(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """`thread-bundler ARGS` as a user runs it."""
    return subprocess.run([sys.executable, "-m", "bundler", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=120)


def test_cli_identifier_system_is_the_one_build_and_load_use(tmp_path: Path) -> None:
    """A spec just under Medplum's body limit as built with the default system goes over it with a longer system:
    `validate --identifier-system` checks the bundle `build`/`load` make with it, not the default's."""
    system = "https://example.org/" + "s" * 200
    data = load_specs([FIXTURE])[0].to_data()
    entries = 1 + len(data["messages"])
    room = MAX_BODY_BYTES - len(orjson.dumps(build_bundle(data))) - 100  # spread over the messages: each fits
    for k, message in enumerate(data["messages"]):                          # a request of its own
        share = room // len(data["messages"]) + (room % len(data["messages"]) if k == 0 else 0)
        message["text"] += " " + "x" * (share - 1)
    assert len(orjson.dumps(build_bundle(data))) == MAX_BODY_BYTES - 100
    assert len(orjson.dumps(build_bundle(data, identifier_system=system))) > MAX_BODY_BYTES + entries * 100
    (tmp_path / "t.json").write_bytes(orjson.dumps(data))
    plain = _command("validate", "t.json", "--no-structure", cwd=tmp_path)
    assert plain.returncode == 0 and "0 errors, 0 warnings" in plain.stdout, plain.stdout + plain.stderr
    longer = _command("validate", "t.json", "--no-structure", "--identifier-system", system, cwd=tmp_path)
    assert longer.returncode == 0, longer.stdout + longer.stderr
    assert "warning[limit.body-size]" in longer.stdout and "0 errors, 1 warning" in longer.stdout
    built = _command("build", "t.json", "-o", "out", "--identifier-system", system, cwd=tmp_path)
    assert "warning[limit.body-size]" in built.stderr  # the same words, from the same bundle
