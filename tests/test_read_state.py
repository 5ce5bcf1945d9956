"""Read state, priority and drafts: Medplum's three read models in specs, bundles, loads and delta loads.

Unread counts are asked of the server the way Medplum's docs ask them ("Read Receipts and Message Status"):
`Communication?recipient=...&status:not=completed,entered-in-error,stopped,unknown&part-of:missing=false` for the
simple model, `Task?code=https://medplum.com/task-codes|read-receipt&owner=...&status=requested&_total=accurate`
for tasks, the header's thread-read-state extension read back for header-extension; they must be what the specs
say, before and after a delta load marks messages read.
"""

from __future__ import annotations

import collections
import copy
from pathlib import Path
from typing import Any

import orjson
import pytest
from faultproxy import FaultProxy
from hypothesis import given, settings
from loadkit import client_for, load, transactions

from bundler import build_bundle, parse_spec
from bundler.build import entry_values, read_receipts
from bundler.check import validate
from bundler.load import Outcome
from bundler.load.plan import RequestLimits, cut
from bundler.load.verify import resolve_references, verify
from bundler.medplum.client import FhirClient
from bundler.spec import ThreadSpec, load_specs
from bundler.spec.model import with_read_model
from bundler.testing.strategies import thread_specs
from bundler.vocabulary import (
    READ_RECEIPT_CODE,
    READ_RECEIPT_SYSTEM,
    READ_STATE_EXTENSION,
    UNREAD_EXCLUDED_STATUSES,
)

REPO = Path(__file__).resolve().parent.parent
FIXTURES = {"simple": "read-state-simple.yaml", "tasks": "care-team-tasks.yaml",
            "header-extension": "drafts-priorities.yaml"}


def fixture(model: str, prefix: str = "") -> dict[str, Any]:
    """The fixture thread of a read model as spec data; with `prefix`, its key and participants' ids made unique
    (a real Medplum keeps what earlier tests loaded)."""
    data = load_specs([REPO / "fixtures" / "threads" / FIXTURES[model]])[0].to_data()
    if prefix:
        data["thread"] = f"{prefix}-{data['thread']}"
        for p in data["participants"].values():
            if "create" in p:  # created when missing (a strict project has nothing else): its own identifiers
                del p["reference"]
                for ident in p["create"]["identifier"]:
                    ident["value"] = f"{prefix}-{ident['value']}"
            else:
                kind, ident = p["reference"].split("/")
                p["reference"] = f"{kind}/{prefix}-{ident}"
    return data


def on_server(client: FhirClient, spec: ThreadSpec) -> dict[str, str]:
    """Each participant's reference in `spec` → the reference the server stores: a conditional one
    (`Patient?identifier=...`) as the `Type/id` it matched when loaded."""
    stored = resolve_references(client, [spec])
    return {p.reference: stored[p.reference]["reference"] if p.reference in stored else p.reference
            for p in spec.participants.values()}


def read_everything(data: dict[str, Any]) -> dict[str, Any]:
    """`data` with every sent message read by all its recipients (late on the day it was sent: the fixtures send
    in UTC)."""
    out = copy.deepcopy(data)
    spec = parse_spec(out)
    for m, raw in zip(spec.messages, out["messages"], strict=True):
        if m.sent is None:
            continue
        recipients = m.recipient if m.recipient is not None else [a for a in spec.participants if a != m.sender]
        raw["read_by"] = {a: raw.get("read_by", {}).get(a, f"{m.sent[:10]}T23:59:00Z") for a in recipients}
    return out


# --- what the specs say --------------------------------------------------------------------------------------


def expected_unread(spec: ThreadSpec) -> collections.Counter[str]:
    """Unread messages per participant reference, as each model's documented query would count them."""
    refs = {a: p.reference for a, p in spec.participants.items()}
    out: collections.Counter[str] = collections.Counter({r: 0 for r in refs.values()})
    if spec.read_model == "tasks":
        for i, alias in read_receipts(spec):
            out[refs[alias]] += alias not in spec.messages[i].read_by
        return out
    for m in spec.messages:  # simple: a read message is completed; the query leaves completed ones (and others) out
        status = "completed" if m.read_by else m.status or spec.status
        recipients = m.recipient if m.recipient is not None else [a for a in refs if a != m.sender]
        for alias in recipients:
            out[refs[alias]] += status not in UNREAD_EXCLUDED_STATUSES
    return out


def expected_last_read(spec: ThreadSpec) -> dict[str, tuple[str, str]]:
    """Participant reference → (id of the last message they read, when), for the header-extension model."""
    out: dict[str, tuple[str, str]] = {}
    for m in spec.messages:
        for alias, when in m.read_by.items():
            out[spec.participants[alias].reference] = (m.id, when)
    return out


# --- what the server says, asked as Medplum's docs ask it ----------------------------------------------------


def unread_simple(client: FhirClient, reference: str) -> int:
    found = client.search("Communication", {"recipient": reference, "status:not": ",".join(UNREAD_EXCLUDED_STATUSES),
                                            "part-of:missing": "false", "_sort": "-sent"})
    return len(found)


def unread_tasks(client: FhirClient, reference: str) -> int:
    page = client.search_page("Task", {"code": f"{READ_RECEIPT_SYSTEM}|{READ_RECEIPT_CODE}", "owner": reference,
                                       "status": "requested", "_total": "accurate"})
    return int(page["total"])


def last_read(client: FhirClient, header_id: str, message_ids: dict[str, str], spec: ThreadSpec
              ) -> dict[str, tuple[str, str]]:
    """The header's read state as read back: participant (its reference in `spec`) → (spec id of lastRead,
    lastReadAt)."""
    by_server_id = {f"Communication/{sid}": mid for mid, sid in message_ids.items()}
    spec_ref = {stored: ref for ref, stored in on_server(client, spec).items()}
    out = {}
    for ext in client.read(f"Communication/{header_id}").get("extension", ()):
        if ext["url"] != READ_STATE_EXTENSION:
            continue
        subs = {s["url"]: s for s in ext["extension"]}
        out[spec_ref[subs["participant"]["valueReference"]["reference"]]] = (
            by_server_id[subs["lastRead"]["valueReference"]["reference"]], subs["lastReadAt"]["valueDateTime"])
    return out


def server_state(client: FhirClient, spec: ThreadSpec, header_id: str, message_ids: dict[str, str]) -> Any:
    refs = on_server(client, spec)
    if spec.read_model == "simple":
        return collections.Counter({r: unread_simple(client, s) for r, s in refs.items()})
    if spec.read_model == "tasks":
        return collections.Counter({r: unread_tasks(client, s) for r, s in refs.items()})
    return last_read(client, header_id, message_ids, spec)


def spec_state(spec: ThreadSpec) -> Any:
    return expected_last_read(spec) if spec.read_model == "header-extension" else expected_unread(spec)


# --- the builder ---------------------------------------------------------------------------------------------


@settings(max_examples=80)
@given(thread_specs(min_messages=1, read_models=["simple", "header-extension", "tasks"], drafts=True))
def test_each_model_writes_who_read_what(data: dict[str, Any]) -> None:
    spec = parse_spec(data)
    bundle = build_bundle(spec)
    entries = [e["resource"] for e in bundle["entry"]]
    header, messages, tasks = entries[0], entries[1:len(spec.messages) + 1], entries[len(spec.messages) + 1:]
    assert [e["resource"]["identifier"][0]["value"] for e in bundle["entry"]] == entry_values(spec)
    for m, res in zip(spec.messages, messages, strict=True):
        assert res.get("priority") == (m.priority or spec.priority)
        assert res.get("sent") == m.sent
    if spec.read_model == "simple":
        for m, res in zip(spec.messages, messages, strict=True):
            assert (res["status"] == "completed") == bool(m.read_by) or res["status"] == (m.status or spec.status)
            assert res.get("received") == (m.received or next(iter(m.read_by.values()), None))
    if spec.read_model == "tasks":
        assert len(tasks) == len(read_receipts(spec))
        for (i, alias), task in zip(read_receipts(spec), tasks, strict=True):
            m = spec.messages[i]
            assert task["status"] == ("completed" if alias in m.read_by else "requested")
            assert task["owner"]["reference"] == spec.participants[alias].reference
            assert task["focus"] == {"reference": bundle["entry"][0]["fullUrl"]}
            assert task.get("executionPeriod", {}).get("end") == m.read_by.get(alias)
            assert task.get("authoredOn") == m.sent and m.status != "preparation"
    else:
        assert tasks == []
    blocks = header.get("extension", [])
    if spec.read_model == "header-extension":
        urls = {e["fullUrl"]: m.id for e, m in zip(bundle["entry"][1:], spec.messages, strict=False)}
        got = {b["extension"][0]["valueReference"]["reference"]: (urls[b["extension"][1]["valueReference"][
            "reference"]], b["extension"][2]["valueDateTime"]) for b in blocks}
        assert got == expected_last_read(spec)
    else:
        assert blocks == []
    assert validate(bundle) == []


def test_no_read_model_writes_no_read_state() -> None:
    data = fixture("tasks")
    del data["read_model"]
    bundle = build_bundle(data)
    assert {e["resource"]["resourceType"] for e in bundle["entry"]} == {"Communication"}
    assert all("extension" not in e["resource"] and e["resource"]["status"] == "in-progress" for e in bundle["entry"])
    assert build_bundle(with_read_model(parse_spec(data), "tasks")) == build_bundle(fixture("tasks"))


def test_the_command_line_model_overrides_the_spec_s() -> None:
    spec = parse_spec(fixture("simple"))
    tasks = with_read_model(spec, "tasks")
    assert tasks.read_model == "tasks" and tasks.origin() == spec.origin()
    assert with_read_model(spec, None) is spec
    kinds = collections.Counter(e["resource"]["resourceType"] for e in build_bundle(tasks)["entry"])
    assert kinds == {"Communication": 4, "Task": 3}


def test_a_message_and_its_read_receipts_go_in_one_part() -> None:
    spec = parse_spec(fixture("tasks"))
    n = len(spec.messages)
    units = [None, *range(n), *(i for i, _ in read_receipts(spec))]
    order = sorted(range(len(units)), key=lambda k: (-1 if units[k] is None else units[k], k))
    parts = cut(order, [100] * len(units), RequestLimits(max_entries=4), units=units)
    for part in parts:  # each message's receipts are in its part
        for k in part:
            if k > n:
                assert units[k] + 1 in part
    assert sorted(k for part in parts for k in part) == list(range(len(units)))


def test_drafts_have_no_sent_and_no_receipts() -> None:
    spec = parse_spec(fixture("header-extension"))
    drafts = [m for m in spec.messages if m.status == "preparation"]
    assert drafts and all(m.sent is None and not m.read_by for m in drafts)
    bundle = build_bundle(with_read_model(spec, "tasks"))
    owners = {e["resource"]["identifier"][0]["value"].split("/")[1] for e in bundle["entry"]
              if e["resource"]["resourceType"] == "Task"}
    assert owners == {"referral", "slot"}


# --- against the server --------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", sorted(FIXTURES))
def test_unread_counts_match_the_specs_before_and_after_a_delta(project: Any, tmp_path: Path, model: str) -> None:
    data = fixture(model, project.prefix)
    spec, later = parse_spec(data), parse_spec(read_everything(data))
    with FaultProxy(project.target.base_url) as proxy, client_for(project, proxy.url) as client:
        [first] = load([spec], client, journal=tmp_path / "j.sqlite").threads
        assert first.outcome == Outcome.LOADED, first.error
        assert server_state(client, spec, first.header_id, first.message_ids) == spec_state(spec)
        assert any(spec_state(spec).values()) and spec_state(spec) != spec_state(later)
        proxy.clear(log=True)
        [delta] = load([later], client, journal=tmp_path / "j.sqlite", update=True).threads
        assert delta.outcome == Outcome.UPDATED, delta.error
        assert server_state(client, later, first.header_id, first.message_ids) == spec_state(later)
        assert [r.differences for r in verify([later], client)] == [[]]
        # what changed is the read state, and nothing else: one update per resource whose read state moved, each
        # If-Match on the version loaded
        sent = [orjson.loads(e.body) for e in transactions(proxy.log, project.prefix)]
        updates = [e for body in sent for e in body["entry"]]
        assert all(e["request"]["method"] == "PUT" and e["request"]["ifMatch"].startswith('W/"') for e in updates)
        assert delta.updated == len(updates) == _read_state_moves(spec, later)
        assert {e["resource"]["resourceType"] for e in updates} == ({"Task"} if model == "tasks"
                                                                     else {"Communication"})


def _read_state_moves(before: ThreadSpec, after: ThreadSpec) -> int:
    """How many resources hold read state that differs between two versions of a thread."""
    if after.read_model == "tasks":
        return sum(alias in after.messages[i].read_by and alias not in before.messages[i].read_by
                   for i, alias in read_receipts(after))
    if after.read_model == "simple":
        return sum(bool(a.read_by) != bool(b.read_by) or a.read_by != b.read_by
                   for a, b in zip(after.messages, before.messages, strict=True))
    return int(expected_last_read(before) != expected_last_read(after))


def test_a_split_thread_gets_its_header_s_read_state_once_every_part_is_in(project: Any, tmp_path: Path) -> None:
    spec = parse_spec(fixture("header-extension", project.prefix))
    with FaultProxy(project.target.base_url) as proxy, client_for(project, proxy.url) as client:
        [result] = load([spec], client, journal=tmp_path / "j.sqlite", max_entries=2).threads
        assert result.outcome == Outcome.LOADED and result.updated == 0, result.error
        assert last_read(client, result.header_id, result.message_ids, spec) == expected_last_read(spec)
        assert [r.differences for r in verify([spec], client)] == [[]]
        bodies = [orjson.loads(e.body) for e in transactions(proxy.log, project.prefix)]
        first = bodies[0]["entry"][0]["resource"]  # the header, without what points at later parts
        here = {e["fullUrl"] for e in bodies[0]["entry"]}
        assert all(s["valueReference"]["reference"] in here
                   for b in first.get("extension", ()) for s in b["extension"] if s["url"] == "lastRead")
        assert len(first.get("extension", ())) < len(expected_last_read(spec))
        assert bodies[-1]["entry"][0]["request"]["method"] == "PUT"  # completed at the end, If-Match
        assert "ifMatch" in bodies[-1]["entry"][0]["request"]


def test_a_split_thread_keeps_each_receipt_with_its_message(project: Any, tmp_path: Path) -> None:
    spec = parse_spec(fixture("tasks", project.prefix))
    with FaultProxy(project.target.base_url) as proxy, client_for(project, proxy.url) as client:
        [result] = load([spec], client, journal=tmp_path / "j.sqlite", max_entries=4).threads  # (a message to
        # three people and its receipts: 4 entries)
        assert result.outcome == Outcome.LOADED, result.error
        assert [r.differences for r in verify([spec], client)] == [[]]
        bodies = [orjson.loads(e.body) for e in transactions(proxy.log, project.prefix)]
        assert len(bodies) > 2
        for body in bodies:
            values = [e["resource"]["identifier"][0]["value"] for e in body["entry"]]
            for value in values:
                if "/read/" in value:
                    assert value.split("/read/")[0] in values, values
        assert server_state(client, spec, result.header_id, result.message_ids) == spec_state(spec)


# --- migrate: read and received columns, a per-recipient read table, priority ----------------------------------

MAPPING = """\
input: {format: csv}
thread: {id: conv, topic: topic, priority: conv_priority%s}
message:
  id: mid
  sender: sender
  recipients: {column: to, separator: ";"}
  sent: sent
  text: body
  read_at: read_at
  received: received
  priority: priority
participants:
  rules:
    - prefix: "pt-"
      reference: "Patient/{rest}"
    - prefix: "dr-"
      reference: "Practitioner/{rest}"
%s"""
EXPORT = """\
conv,topic,conv_priority,mid,sender,to,sent,body,read_at,received,priority
one,Refill,urgent,m1,dr-a,pt-b,2024-05-01T10:00:00Z,Your refill is ready,2024-05-01T12:00:00Z,2024-05-01T10:00:05Z,
one,Refill,,m2,pt-b,dr-a,2024-05-01T12:05:00Z,Thanks,,,routine
one,Refill,,m3,dr-a,pt-b,2024-05-01T13:00:00Z,Read before it was sent?,2024-05-01T09:00:00Z,,
group,Care team,,g1,dr-a,dr-c;dr-d;pt-b,2024-05-02T09:00:00Z,Plan for Friday,,,asap
group,Care team,,g2,dr-c,dr-a;dr-d,2024-05-02T09:30:00Z,Agreed,,,
"""
READS = """\
message,user,at
g1,dr-c,2024-05-02T09:10:00Z
g1,pt-b,2024-05-02T18:00:00Z
g2,dr-a,2024-05-02T09:45:00Z
g2,pt-b,2024-05-02T10:00:00Z
"""


def _migrate(tmp_path: Path, *, read_model: str = "", reads: bool = True) -> tuple[dict[str, ThreadSpec], Any]:
    from bundler.migrate import iter_threads

    (tmp_path / "export.csv").write_text(EXPORT)
    (tmp_path / "reads.csv").write_text(READS)
    table = "reads: {file: reads.csv, message: message, reader: user, read_at: at}\n" if reads else ""
    (tmp_path / "m.yaml").write_text(MAPPING % (f", read_model: {read_model}" if read_model else "", table))
    with iter_threads([tmp_path / "export.csv"], tmp_path / "m.yaml", rejects=tmp_path / "r.jsonl") as stream:
        specs = {s.key: s for s in stream}
        return specs, stream.summary


def test_migrate_maps_read_received_and_priority_columns_and_a_read_table(tmp_path: Path) -> None:
    specs, summary = _migrate(tmp_path, read_model="tasks")
    one, group = specs["one"], specs["group"]
    assert one.priority == "urgent" and group.priority is None
    m1, m2, m3 = one.messages
    assert dict(m1.read_by) == {"pt-b": "2024-05-01T12:00:00Z"} and m1.received == "2024-05-01T10:00:05Z"
    assert m2.priority == "routine" and not m2.read_by
    assert not m3.read_by  # read "before it was sent": left out, with a warning
    g1, g2 = group.messages
    assert g1.priority == "asap"
    assert dict(g1.read_by) == {"dr-c": "2024-05-02T09:10:00Z", "pt-b": "2024-05-02T18:00:00Z"}
    assert dict(g2.read_by) == {"dr-a": "2024-05-02T09:45:00Z"}  # pt-b is no recipient of g2: left out
    assert summary.warnings == {"read-before-sent": 1, "reader-not-recipient": 1}
    assert one.read_model == group.read_model == "tasks"
    assert validate(build_bundle(group)) == []


def test_migrate_simple_model_leaves_a_group_s_read_state_out_with_a_warning(tmp_path: Path) -> None:
    specs, summary = _migrate(tmp_path, read_model="simple")
    assert specs["one"].read_model == "simple" and specs["group"].read_model is None
    assert summary.warnings["read-model-simple-group"] == 1


def test_migrate_read_model_option_overrides_the_mapping(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from bundler.cli import main

    _migrate(tmp_path, read_model="header-extension")
    result = CliRunner().invoke(main, ["migrate", str(tmp_path / "export.csv"), "--mapping", str(tmp_path / "m.yaml"),
                                       "--to", "specs", str(tmp_path / "out"), "--read-model", "tasks"])
    assert result.exit_code == 0, result.output
    specs = {s.key: s for s in load_specs([tmp_path / "out"])}
    assert {s.read_model for s in specs.values()} == {"tasks"}
    assert "read-before-sent (left out)" in result.output


def test_migrate_a_read_table_with_a_bad_time_names_its_line(tmp_path: Path) -> None:
    from bundler.errors import SpecError

    (tmp_path / "reads.csv").write_text(READS + "g2,dr-d,yesterday\n")
    with pytest.raises(SpecError) as info:
        _migrate_with_table(tmp_path)
    assert [str(p) for p in info.value.problems] == [f"{tmp_path / 'reads.csv'}:6: read_at: 'yesterday' is not an "
                                                     "ISO 8601 date and time"]


def _migrate_with_table(tmp_path: Path) -> None:
    from bundler.migrate import iter_threads

    (tmp_path / "export.csv").write_text(EXPORT)
    (tmp_path / "m.yaml").write_text(MAPPING % ("", "reads: {file: reads.csv, message: message, reader: user, "
                                                    "read_at: at}\n"))
    with iter_threads([tmp_path / "export.csv"], tmp_path / "m.yaml", rejects=tmp_path / "r.jsonl") as stream:
        list(stream)


def test_migrate_read_column_without_a_read_table_and_a_received_time_before_sent(tmp_path: Path) -> None:
    """Read state from the row alone (no read table): every recipient read it then; a received time before the
    message was sent is left out with a warning, the rest of the message kept."""
    (tmp_path / "export.csv").write_text(EXPORT.replace("2024-05-01T10:00:05Z", "2024-05-01T09:59:00Z"))
    (tmp_path / "m.yaml").write_text(MAPPING % (", read_model: tasks", ""))
    from bundler.migrate import iter_threads

    with iter_threads([tmp_path / "export.csv"], tmp_path / "m.yaml", rejects=tmp_path / "r.jsonl") as stream:
        specs = {s.key: s for s in stream}
    m1, m2, m3 = specs["one"].messages
    assert dict(m1.read_by) == {"pt-b": "2024-05-01T12:00:00Z"} and m1.received is None
    assert m1.text == "Your refill is ready"
    assert not m2.read_by and not m3.read_by
    assert not any(m.read_by for m in specs["group"].messages)
    assert stream.summary.warnings == {"received-before-sent": 1, "read-before-sent": 1}
