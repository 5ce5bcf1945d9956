"""The spec model: one set of rules for data and for Python construction, a lossless way back to data
(`to_data`), and specs that are values (equal, hashable) whatever file they came from."""

from __future__ import annotations

import copy
import dataclasses
import pickle
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from bundler.errors import SpecError
from bundler.migrate import spec_yaml
from bundler.spec import (
    Attachment,
    Coding,
    Message,
    Participant,
    ThreadSpec,
    check_document,
    load_specs,
    parse_spec,
)
from bundler.spec.dump import dump_yaml
from bundler.spec.source import parse_text
from bundler.testing.strategies import instants, thread_specs
from bundler.vocabulary import instant_problem, is_instant

REPO = Path(__file__).resolve().parent.parent
SETTINGS = settings(max_examples=200)
SENT = "2024-04-10T10:00:00Z"


def _from_yaml(text: bytes) -> ThreadSpec:
    """A spec read back by our own reader, as `thread-bundler build` reads a file."""
    (doc,), problems = parse_text(text.decode("utf-8"), "x.yaml")
    assert problems == []
    spec, problems = check_document(doc)
    assert problems == [], [str(p) for p in problems]
    assert spec is not None
    return spec


def _messages(problems: list[Any]) -> list[str]:
    return [str(p) for p in problems]


# --- the way back: to_data ------------------------------------------------------------------------------------


@SETTINGS
@given(thread_specs(drafts=True))
def test_to_data_reads_back_equal(data: dict[str, Any]) -> None:
    spec = parse_spec(data)
    assert parse_spec(spec.to_data()) == spec
    assert hash(parse_spec(spec.to_data())) == hash(spec)  # (read_by too: a ThreadSpec is hashable)
    assert _from_yaml(dump_yaml(spec.to_data())) == spec
    assert _from_yaml(spec_yaml(spec)) == spec


@SETTINGS
@given(thread_specs(drafts=True))
def test_to_data_of_data_is_that_data_less_its_defaults(data: dict[str, Any]) -> None:
    """Nothing a user wrote is changed on the way back: only what equals a default may be left out."""
    spec = parse_spec(data)
    back = spec.to_data()
    for field in ("thread", "topic", "subject", "sender", "sent", "participants"):
        if field in data:
            assert back[field] == data[field]
    assert back.get("status", "in-progress") == data.get("status", "in-progress")
    assert back.get("category", []) == data.get("category", [])
    for i, (mine, theirs) in enumerate(zip(back.get("messages", []), data["messages"], strict=True)):
        assert {k: v for k, v in theirs.items() if k != "id"} == {k: v for k, v in mine.items() if k != "id"}
        assert mine.get("id", str(i + 1)) == str(theirs.get("id", i + 1))


def test_spec_yaml_keeps_a_code_without_system_and_every_display() -> None:
    """spec_yaml writes a code without a system as its code alone (never 'None|c'), and every participant's display."""
    spec = parse_spec({
        "thread": "t", "topic": "x", "category": [{"code": "c"}, "http://s|d", {"system": "http://s", "code": "e",
                                                                                  "display": "E"}],
        "participants": {"a": {"reference": "Patient/1", "display": "Homer"}, "b": {"reference": "Patient/2"}},
        "messages": [{"sender": "a", "sent": SENT, "text": "hi"}]})
    back = _from_yaml(spec_yaml(spec))
    assert back == spec
    assert back.category == (Coding("c"), Coding("d", "http://s"), Coding("e", "http://s", "E"))
    assert back.participants["a"].display == "Homer"
    assert spec.to_data()["category"] == [{"code": "c"}, "http://s|d", {"system": "http://s", "code": "e",
                                                                        "display": "E"}]


def test_to_data_leaves_out_defaults_and_keeps_explicit_values() -> None:
    spec = parse_spec({"thread": 7, "topic": "x", "status": "in-progress",
                       "participants": {"a": {"reference": "Patient/1"}},
                       "messages": [{"id": 1, "sender": "a", "sent": SENT, "text": "a"},
                                    {"id": "m", "sender": "a", "sent": SENT, "text": "b", "status": "in-progress"}]})
    assert spec.to_data() == {"thread": "7", "topic": "x", "participants": {"a": {"reference": "Patient/1"}},
                              "messages": [{"sender": "a", "sent": SENT, "text": "a"},
                                           {"id": "m", "sender": "a", "sent": SENT, "text": "b",
                                            "status": "in-progress"}]}


# --- values: equal, hashable, picklable -------------------------------------------------------------------------


def test_specs_are_hashable_values_whatever_file_they_came_from(tmp_path: Path) -> None:
    text = (REPO / "fixtures/threads/homer-lab-results.yaml").read_text()
    (tmp_path / "a.yaml").write_text(text)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "a.yaml").write_text("\n\n" + text)
    (one,), (two,) = load_specs([tmp_path / "a.yaml"]), load_specs([tmp_path / "b" / "a.yaml"])
    assert one.origin() != two.origin()  # positions differ, and are not part of the value
    assert one == two and hash(one) == hash(two) and len({one, two}) == 1
    assert one == parse_spec(one.to_data()) == pickle.loads(pickle.dumps(one)) == copy.deepcopy(one)
    assert one.participants == dict(one.participants.items())
    assert one != one.model_copy(update={"topic": "other"})


def test_participant_order_is_part_of_the_value() -> None:
    people = {"a": {"reference": "Patient/1"}, "b": {"reference": "Patient/2"}}
    one = parse_spec({"thread": "t", "topic": "x", "participants": people})
    two = parse_spec({"thread": "t", "topic": "x", "participants": dict(reversed(people.items()))})
    assert one != two  # the header lists its recipients in this order


# --- a ThreadSpec only exists checked -----------------------------------------------------------------------------


def _people() -> dict[str, Participant]:
    return {"a": Participant("a", "Patient/1"), "team": Participant("team", "CareTeam/2")}


@pytest.mark.parametrize("make, expected", [
    (lambda: Message(id="1", sender="a", sent="yesterday", text="x"),
     ["<spec>: sent: 'yesterday' must be a FHIR instant with seconds and a time zone, like 2024-04-10T10:00:00Z or "
      "2024-04-10T12:00:00.000+02:00"]),
    (lambda: Message(id="abc\n", sender="a", sent="2024-02-30T10:00:00Z", text=""),
     ["<spec>: id: 'abc\\n' must be 1-128 letters, digits, '.', '_', '-' or ':'",
      "<spec>: sent: '2024-02-30T10:00:00Z' is not a real date (day is out of range for month)",
      "<spec>: text: must not be empty"]),
    (lambda: Message(id="1", sender="a", sent=SENT), ["<spec>: a message needs text or attachments"]),
    (lambda: Message(id="1", sender="a", sent=SENT, text="x", recipient=()), ["<spec>: recipient: must not be empty"]),
    (lambda: Attachment("Binary/1", "png"),
     ["<spec>: content_type: 'png' must be a MIME type like image/png or text/plain; charset=utf-8"]),
    (lambda: Participant("a b", "Location/1"),
     ["<spec>: alias: 'a b' must be a participant alias",
      "<spec>: reference: FHIR R4 does not allow a Location as a participant of a Communication (allowed: CareTeam, "
      "Device, Group, HealthcareService, Organization, Patient, Practitioner, PractitionerRole, RelatedPerson)"]),
    (lambda: ThreadSpec(key="k" * 129, topic="t", participants={}),
     ["<spec>: key: '" + "k" * 60 + "'... (129 characters) must be 1-128 letters, digits, '.', '_', '-' or ':'",
      "<spec>: participants: needs at least one participant"]),
    (lambda: ThreadSpec(key="k", topic="t", participants=_people(), sender="team", subject="team", messages=(
        Message(id="1", sender="b", sent=SENT, text="x", reply_to="2"),
        Message(id="1", sender="a", sent=SENT, text="y", recipient=("a", "a")))),
     ["<spec>: messages[1].reply_to: no message with id '2' in this thread (ids: 1)",
      "<spec>: messages[1].sender: 'b' is not a participant (known: a, team)",
      "<spec>: messages[2].id: duplicate message id '1': messages[1] has it too",
      "<spec>: messages[2].recipient[2]: 'a' is listed twice",
      "<spec>: sender: 'team' is a CareTeam: FHIR R4 does not allow a CareTeam as the sender of a Communication "
      "(allowed: Device, HealthcareService, Organization, Patient, Practitioner, PractitionerRole, RelatedPerson)",
      "<spec>: subject: 'team' is a CareTeam: FHIR R4 does not allow a CareTeam as the subject of a Communication "
      "(allowed: Group, Patient)"]),
    (lambda: ThreadSpec(key="k", topic="t", participants={"a": Participant("b", "Patient/1")}),
     ["<spec>: participants.a: is the participant aliased 'b': give it under that key"]),
])
def test_a_bad_construction_in_python_raises_spec_error_listing_every_problem(make: Any, expected: list[str]) -> None:
    with pytest.raises(SpecError) as info:
        make()
    assert _messages(info.value.problems) == sorted(expected)


def test_copies_and_constructs_are_checked_too() -> None:
    spec = parse_spec({"thread": "t", "topic": "x", "participants": {"a": {"reference": "Patient/1"}}})
    with pytest.raises(SpecError, match="sent: 'soon' must be a FHIR instant"):
        spec.model_copy(update={"sent": "soon"})
    with pytest.raises(SpecError, match="missing required field 'participants'"):
        ThreadSpec.model_construct(key="t", topic="x")
    assert spec.model_copy(update={"sent": SENT}).sent == SENT
    message = Message("1", "a", SENT, text="x")
    copies: list[Callable[[], Message]] = [lambda: message.model_copy(update={"sent": "soon"}),
                                           lambda: dataclasses.replace(message, sent="soon")]
    for changed in copies:
        with pytest.raises(SpecError, match="sent: 'soon' must be a FHIR instant"):
            changed()
    with pytest.raises(SpecError, match="a message needs text or attachments"):
        message.model_copy(update={"text": None})
    with pytest.raises(SpecError, match=r"a message needs sent \(only a draft"):
        Message.model_construct(id="1", sender="a", text="x")
    with pytest.raises(SpecError, match="url: must not be empty"):
        Attachment("Binary/1").model_copy(update={"url": ""})
    assert message.model_copy(update={"status": "completed"}) == Message("1", "a", SENT, text="x", status="completed")


def test_what_a_thread_holds_are_slotted_frozen_values() -> None:
    """Each is a slotted object (no __dict__: ~100 bytes, not ~500 as a model), still a frozen value, equal and
    hashed by its fields, whichever way it was made or copied."""
    attachment = Attachment("Binary/1", "image/png")
    message = Message("1", "a", SENT, attachments=(attachment,), recipient=["b"])
    for obj in (message, attachment, Participant("a", "Patient/1"), Coding("c", "http://s")):
        assert not hasattr(obj, "__dict__")
        assert obj == copy.copy(obj) == pickle.loads(pickle.dumps(obj)) and hash(obj) == hash(copy.deepcopy(obj))
        for name in ("title", "display"):  # as a frozen model: pydantic's frozen_instance error
            with pytest.raises(ValidationError, match="Instance is frozen"):
                setattr(obj, name, "x")
            with pytest.raises(ValidationError, match="Instance is frozen"):
                delattr(obj, name)
    same = Message(id="1", sender="a", sent=SENT, recipient=("b",),
                   attachments=[Attachment(url="Binary/1", content_type="image/png")])
    assert message == same and hash(message) == hash(same) and len({message, same}) == 1
    assert message.recipient == ("b",) and message.attachments == (attachment,)
    assert repr(attachment) == ("Attachment(url='Binary/1', file=None, content_type='image/png', title=None, "
                                "size=None, hash=None)")  # as a model's
    assert str(attachment) == "url='Binary/1' file=None content_type='image/png' title=None size=None hash=None"
    fields = {"url": "Binary/1", "file": None, "content_type": "image/png", "title": None, "size": None, "hash": None}
    assert dict(attachment) == fields
    assert (message == pickle.loads(pickle.dumps(message)) == copy.copy(message) == copy.deepcopy(message)
            == message.model_copy() == Message.model_validate(message.to_data(2)))
    assert message != message.model_copy(update={"text": "x"}) and message.model_dump()["attachments"] == (fields,)
    spec = ThreadSpec(key="t", topic="x", participants={"a": Participant("a", "Patient/1"),
                                                         "b": Participant("b", "Patient/2")}, messages=[message])
    assert spec.messages[0] is message  # checked when it was made: taken as it is


def test_messages_and_attachments_in_data_are_worded_as_before() -> None:
    """Pydantic names a dataclass's errors its own way (unexpected_keyword_argument, dataclass_type): the words
    are a model's."""
    with pytest.raises(SpecError) as info:
        parse_spec({"thread": "t", "topic": "x", "participants": {"a": {"reference": "Patient/1"}}, "messages": [
            "hi", {"sender": "a", "sent": SENT, "attachments": ["x", {"url": "u", "content_type": "text/plain"}, {}]},
            {"sender": "a", "sent": SENT, "text": "x", "from": "b"}]})
    assert _messages(info.value.problems) == [
        "<spec>: messages[1]: expected a mapping, got a string ('hi')",
        "<spec>: messages[2].attachments[1]: expected a mapping, got a string ('x')",
        "<spec>: messages[2].attachments[2].content_type: unknown field 'content_type' (did you mean 'contentType'?)",
        "<spec>: messages[2].attachments[3]: needs url (where the content is) or file (a file to attach)",
        "<spec>: messages[3].from: unknown field 'from' (allowed: attachments, id, priority, read_by, received, "
        "recipient, reply_to, sender, sent, status, text)"]


def test_keys_ids_and_aliases_follow_the_grammar_whole() -> None:
    base: dict[str, Any] = {"topic": "x", "participants": {"a": {"reference": "Patient/1"}}}
    assert parse_spec({**base, "thread": 12}).key == "12"
    for bad in ("abc\n", "\nabc", "a b", "", int("9" * 300), True, 1.5, None, ["a"]):
        with pytest.raises(SpecError):
            parse_spec({**base, "thread": bad})
    assert parse_spec({**base, "thread": int("9" * 128)}).key == "9" * 128
    for bad_alias in ("a\n", "a/b", "a:b"):
        with pytest.raises(SpecError):
            parse_spec({**base, "thread": "t", "participants": {bad_alias: {"reference": "Patient/1"}}})


def test_structure_and_meaning_problems_are_reported_together() -> None:
    with pytest.raises(SpecError) as info:
        parse_spec({"thread": "t", "topic": 3, "sender": "nobody", "participants": {
            "a": {"reference": "Patient/1", "dispaly": "A"}, "g": {"reference": "Group/1"}}, "messages": [
            {"sender": "g", "sent": "2024-04-10"},
            {"sender": "zed", "sent": SENT, "txt": "hi", "reply_to": "9"},
            {"sender": "a", "sent": SENT, "text": "ok", "recipient": ["a", "q"]}]})
    assert _messages(info.value.problems) == [
        "<spec>: messages[1]: a message needs text or attachments",
        "<spec>: messages[1].sender: 'g' is a Group: FHIR R4 does not allow a Group as the sender of a Communication "
        "(allowed: Device, HealthcareService, Organization, Patient, Practitioner, PractitionerRole, RelatedPerson)",
        "<spec>: messages[1].sent: '2024-04-10' must be a FHIR instant with seconds and a time zone, like "
        "2024-04-10T10:00:00Z or 2024-04-10T12:00:00.000+02:00",
        "<spec>: messages[2]: a message needs text or attachments",
        "<spec>: messages[2].reply_to: no message with id '9' in this thread (ids: 1, 2)",
        "<spec>: messages[2].sender: 'zed' is not a participant (known: a, g)",
        "<spec>: messages[2].txt: unknown field 'txt' (did you mean 'text'?)",
        "<spec>: messages[3].recipient[2]: 'q' is not a participant (known: a, g)",
        "<spec>: participants.a.dispaly: unknown field 'dispaly' (did you mean 'display'?)",
        "<spec>: sender: 'nobody' is not a participant (known: a, g)",
        "<spec>: topic: expected a string, got an integer (3) (quote it in YAML)",
    ]


def test_null_is_not_absent() -> None:
    for field in ("subject", "sender", "sent", "status", "category", "messages"):
        with pytest.raises(SpecError, match=f"{field}: expected .*, got nothing \\(null\\)"):
            parse_spec({"thread": "t", "topic": "x", "participants": {"a": {"reference": "Patient/1"}}, field: None})


def test_the_fast_instant_check_agrees_on_every_day_of_the_year() -> None:
    """The fast pattern's days by month (29 and 30 but in February, 31 where the month has it): never real where the
    parser says not, in leap years and others (1900 is not one, 2000 is)."""
    from bundler.vocabulary import SURELY_REAL_INSTANT_PATTERN
    surely = re.compile(SURELY_REAL_INSTANT_PATTERN)
    for year in (1900, 2000, 2023, 2024):
        for month in range(0, 14):
            for day in range(0, 33):
                value = f"{year:04d}-{month:02d}-{day:02d}T10:00:00-05:00"
                real = instant_problem(value) is None
                assert is_instant(value) == real, value
                if surely.fullmatch(value):
                    assert real, value
                else:
                    assert not real or (month == 2 and day == 29), value  # only Feb 29 is left to the parser
                spec_ok = True
                try:
                    Message(id="1", sender="a", sent=value, text="x")
                except SpecError:
                    spec_ok = False
                assert spec_ok == real, value


@settings(max_examples=300)
@given(st.one_of(instants(), st.from_regex(r"\A[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}"
                                           r"(\.[0-9]{1,9})?(Z|[+-][0-9]{2}:[0-9]{2})\Z")))
def test_the_fast_instant_check_agrees_with_the_parser(value: str) -> None:
    assert is_instant(value) == (instant_problem(value) is None)
    spec_ok = True
    try:
        Message(id="1", sender="a", sent=value, text="x")
    except SpecError:
        spec_ok = False
    assert spec_ok == (instant_problem(value) is None)


def test_participants_are_checked_when_made_alone() -> None:
    from bundler.spec import Participants

    people = Participants({"a": Participant("a", "Patient/1")})
    assert people == {"a": Participant("a", "Patient/1")} and hash(people) == hash(Participants(people))
    with pytest.raises(SpecError) as info:
        Participants({"a": {"reference": "Patient/1", "dispaly": "x"}, "b c": {"reference": "Patient/2"}})
    assert _messages(info.value.problems) == [
        "<spec>: a.dispaly: unknown field 'dispaly' (did you mean 'display'?)",
        "<spec>: b c: 'b c' is not a valid alias: use 1-64 letters, digits, '.', '_' or '-'"]
    with pytest.raises(SpecError, match="needs at least one participant"):
        Participants({})


def test_a_recipient_that_is_no_alias_is_reported_once() -> None:
    with pytest.raises(SpecError) as info:
        parse_spec({"thread": "t", "topic": "x", "participants": {"a": {"reference": "Patient/1"}},
                    "messages": [{"sender": "a", "sent": SENT, "text": "x", "recipient": [{"b": 1}, "c"]}]})
    assert _messages(info.value.problems) == [
        "<spec>: messages[1].recipient[1]: expected a string or an integer, got a mapping",
        "<spec>: messages[1].recipient[2]: 'c' is not a participant (known: a)"]


@pytest.mark.parametrize("make", [
    lambda: Attachment("Binary/1", "image/png\n"),
    lambda: Participant("a", "Patient/1\n"),
    lambda: Participant("a\n", "Patient/1"),
    lambda: Message(id="1", sender="a", sent=SENT + "\n", text="x"),
    lambda: Message(id="1\n", sender="a", sent=SENT, text="x"),
    lambda: Message(id="1", sender="a\n", sent=SENT, text="x"),
    lambda: Message(id="1", sender="a", sent=SENT, text="x", reply_to="0\n"),
    lambda: Message(id="1", sender="a", sent=SENT, text="x", status="completed\n"),
    lambda: Coding("c", None, None).model_copy(update={"code": ""}),
    lambda: parse_spec({"thread": "t", "topic": "x", "participants": {"a": {"reference": "Patient/1"}},
                        "subject": "Patient/2\n"}),
    lambda: parse_spec({"thread": "t", "topic": "x", "participants": {"a": {"reference": "Patient/1"}},
                        "category": ["http://s|c\n"]}),
], ids=lambda f: "")
def test_every_grammar_matches_the_whole_value(make: Any) -> None:
    """A value that only starts like a valid one (a trailing newline) is refused everywhere."""
    with pytest.raises(SpecError):
        make()
