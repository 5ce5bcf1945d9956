"""bundler.testing.strategies: what they generate is valid (schema, parse, validator), honours every option,
breaks bundles in exactly the named way, and shrinks to small examples."""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Callable
from typing import Any

import jsonschema
import pytest
from hypothesis import Phase, find, given, settings
from hypothesis import strategies as st

from bundler import assets
from bundler.build import build_bundle
from bundler.check import BUNDLE_RULES, validate
from bundler.spec import parse_spec
from bundler.testing import strategies
from bundler.testing.mutations import MUTATIONS
from bundler.testing.strategies import (
    bundles,
    categories,
    instants,
    invalid_bundles,
    messages,
    participants,
    references,
    sample_specs,
    texts,
    thread_specs,
)
from bundler.vocabulary import instant_problem

SCHEMA = jsonschema.Draft202012Validator(assets.schema("thread-spec.schema.json"))
INSTANT = re.compile(assets.schema("thread-spec.schema.json")["$defs"]["instant"]["pattern"])
QUICK = settings(max_examples=40)
NO_DB = settings(database=None, phases=[Phase.generate, Phase.shrink])


def assert_valid_spec(spec: dict[str, Any]) -> None:
    """Valid per the JSON Schema and parse_spec, and its bundle validates clean (no errors, no warnings)."""
    SCHEMA.validate(spec)
    parsed = parse_spec(spec)
    assert len(parsed.messages) == len(spec["messages"])
    issues = validate(build_bundle(parsed))
    assert issues == [], [str(i) for i in issues]


def _sent_values(spec: dict[str, Any]) -> list[str]:
    return ([spec["sent"]] if "sent" in spec else []) + [m["sent"] for m in spec["messages"]]


# --- valid data ---------------------------------------------------------------------------------------

OPTIONS: list[dict[str, Any]] = [
    {},
    {"alphabet": "ab c", "zones": ("+05:30",), "precisions": (9,), "max_messages": 4},
    {"styles": ("conditional",), "participant_types": ("Organization", "PractitionerRole"), "min_participants": 3},
    {"min_messages": 3, "max_messages": 10, "reply_share": 1.0, "attachment_share": 1.0},
    {"min_messages": 0, "max_messages": 0, "with_category": False, "styles": ("literal",)},
    {"text": st.just("ok"), "attachments": False, "key": st.uuids().map(str), "max_participants": 1},
]


@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: ",".join(o) or "defaults")
@QUICK
@given(data=st.data())
def test_thread_specs_are_valid_and_honour_their_options(options: dict[str, Any], data: st.DataObject) -> None:
    spec = data.draw(thread_specs(**options))
    assert_valid_spec(spec)
    msgs = spec["messages"]
    assert options.get("min_messages", 1) <= len(msgs) <= options.get("max_messages", 8)  # (no `messages: []`
    # unless asked: min_messages=0)
    assert options.get("min_participants", 1) <= len(spec["participants"]) <= options.get("max_participants", 5)
    if "alphabet" in options:
        assert all(set(m.get("text", "")) <= set(options["alphabet"]) for m in msgs)
    if "zones" in options:
        assert all(s.endswith("+05:30") and re.search(r"\.\d{9}\+", s) for s in _sent_values(spec))
    if "styles" in options and options["styles"] == ("conditional",):
        assert all("?identifier=" in p["reference"] for p in spec["participants"].values())
    if "participant_types" in options:
        assert {p["reference"].split("?")[0] for p in spec["participants"].values()} <= {"Organization",
                                                                                         "PractitionerRole"}
    if options.get("reply_share") == 1.0:
        assert all("reply_to" in m for m in msgs[1:])
    if options.get("attachment_share") == 1.0:
        assert all("attachments" in m for m in msgs)
    if options.get("attachments") is False:
        assert not any("attachments" in m for m in msgs)
    if options.get("with_category") is False:
        assert "category" not in spec
    if "text" in options:
        assert all(m["text"] == "ok" for m in msgs)


@QUICK
@given(bundles())
def test_bundles_validate_clean(bundle: dict[str, Any]) -> None:
    assert validate(bundle) == []


@QUICK
@given(bundles(specs=thread_specs(max_messages=2).map(lambda s: {**s, "topic": "fixed"}),
               identifier_system="https://example.org/threads"))
def test_bundles_take_a_spec_strategy_and_an_identifier_system(bundle: dict[str, Any]) -> None:
    header = bundle["entry"][0]["resource"]
    assert header["topic"] == {"text": "fixed"}
    assert header["identifier"][0]["system"] == "https://example.org/threads"
    assert validate(bundle) == []


@QUICK
@given(st.data())
def test_messages_compose_with_participants(data: st.DataObject) -> None:
    people = data.draw(participants(min_size=2, max_size=3))
    msgs = data.draw(messages(list(people), min_size=1, max_size=4, precisions=(0,), zones=("-05:00",),
                              recipient_share=1.0, id_share=1.0))
    spec = {"thread": "t", "topic": "x", "participants": people, "messages": msgs}
    assert_valid_spec(spec)
    assert all(re.fullmatch(r".*T\d\d:\d\d:\d\d-05:00", m["sent"]) for m in msgs)
    assert all("id" in m and m["sender"] not in m.get("recipient", ()) for m in msgs)
    assert all(set(m.get("recipient", ())) <= set(people) for m in msgs)


@QUICK
@given(participants(min_size=2, max_size=4, types=("Patient",), styles=("literal",)))
def test_participants(people: dict[str, dict[str, str]]) -> None:
    refs = [p["reference"] for p in people.values()]
    assert 2 <= len(people) <= 4 and len(set(refs)) == len(refs)
    assert all(re.fullmatch(r"Patient/[a-z0-9.-]{1,64}", r) for r in refs)


@QUICK
@given(instants(precisions=(0, 9), zones=("Z", "+14:00", "-12:00")), references(styles=("conditional",)),
       categories())
def test_instants_references_and_categories(instant: str, reference: str, category: list[Any]) -> None:
    assert INSTANT.match(instant) and instant_problem(instant) is None
    assert instant.endswith(("Z", "+14:00", "-12:00"))
    assert re.search(r":\d\d(\.\d{9})?(Z|[+-]\d\d:\d\d)$", instant)
    assert "?identifier=" in reference
    SCHEMA.validate({"thread": "t", "topic": "x", "participants": {"a": {"reference": reference}},
                     "category": category})


@QUICK
@given(texts(), texts(alphabet="xy z", max_size=5, long_text=False))
def test_texts_are_trimmed_and_keep_to_their_alphabet(text: str, small: str) -> None:
    assert text and text.strip() == text
    assert small and small.strip() == small and len(small) <= 5 and set(small) <= set("xy z")


def test_texts_reach_long_rtl_and_emoji_text() -> None:
    many = settings(NO_DB, max_examples=5_000)  # find() stops at the first match; this only bounds a miss
    assert len(find(texts(), lambda t: len(t) >= 1_000, settings=many)) == 1_000
    rtl = find(texts(), lambda t: any(unicodedata.bidirectional(c) in ("R", "AL") for c in t), settings=many)
    emoji = find(texts(), lambda t: any(0x1F300 <= ord(c) <= 0x1FAFF for c in t), settings=many)
    assert rtl and emoji


def test_sample_specs_are_valid() -> None:
    for spec in sample_specs(3, 5, seed=4):
        assert_valid_spec(spec)


# --- invalid bundles ----------------------------------------------------------------------------------


@pytest.mark.parametrize("code", sorted(BUNDLE_RULES))
@settings(max_examples=8)
@given(data=st.data())
def test_invalid_bundles_break_exactly_the_named_rule(code: str, data: st.DataObject) -> None:
    if code not in MUTATIONS:
        pytest.fail(f"rule {code!r} has no mutation in bundler.testing.mutations.MUTATIONS: invalid_bundles cannot "
                    "break it")
    bundle = data.draw(invalid_bundles(rule=code, max_messages=4))
    issues = validate(bundle)
    assert {i.code for i in issues} == {code}, [str(i) for i in issues]


@settings(max_examples=60)
@given(invalid_bundles(max_messages=3))
def test_invalid_bundles_of_any_rule_break_one(bundle: dict[str, Any]) -> None:
    assert len({i.code for i in validate(bundle)}) == 1


def test_invalid_bundles_of_any_rule_reach_several_rules() -> None:
    seen: set[str] = set()

    @settings(max_examples=120, derandomize=True)  # the same draws every run, under any profile
    @given(invalid_bundles(max_messages=2))
    def collect(bundle: dict[str, Any]) -> None:
        seen.update(i.code for i in validate(bundle, structure=False))

    collect()
    assert len(seen) >= 10, seen


def test_unknown_rule_and_bad_options_are_refused() -> None:
    with pytest.raises(ValueError, match=r"unknown rule 'thread\.nope'; known rules: bundle\.resource-type, .*"
                                         r"thread\.reply-target"):
        invalid_bundles(rule="thread.nope")
    with pytest.raises(ValueError, match="Group"):
        thread_specs(participant_types=("Patient", "Group"))
    with pytest.raises(ValueError, match=r"\+14:30"):
        thread_specs(zones=("Z", "+14:30"))
    with pytest.raises(ValueError, match=r"Z\\n"):
        thread_specs(zones=("Z\n",))
    with pytest.raises(ValueError, match="precisions"):
        instants(precisions=(12,))
    with pytest.raises(ValueError, match="reply_share"):
        messages(["a"], reply_share=1.5)
    with pytest.raises(ValueError, match="styles"):
        references(styles=("relative",))
    with pytest.raises(TypeError, match="max_messages"):
        bundles(specs=thread_specs(), max_messages=3)


# --- shrinking ----------------------------------------------------------------------------------------


def _shrunk(strategy: st.SearchStrategy[Any], condition: Callable[[Any], bool]) -> Any:
    # derandomized: the same example every run (a random seed shrinks further on some runs than on others)
    return find(strategy, condition, settings=settings(NO_DB, max_examples=200, derandomize=True))


def test_specs_shrink_to_small_readable_examples() -> None:
    spec = _shrunk(thread_specs(), lambda s: any("reply_to" in m for m in s["messages"]))
    assert set(spec) == {"thread", "topic", "participants", "messages"}, spec  # no optional header field
    assert len(spec["thread"]) == 1 and len(spec["participants"]) <= 2
    # hypothesis does not always reach the very smallest example: a few messages, maybe one attachment
    assert 2 <= len(spec["messages"]) <= 5, spec
    assert all(set(m) <= {"sender", "sent", "text", "reply_to", "attachments"} for m in spec["messages"]), spec
    assert all(len(m.get("text", "")) <= 40 for m in spec["messages"]), spec  # "0", or a short sample text
    assert len(json.dumps(spec)) < 1000


def test_invalid_bundles_shrink_to_small_examples() -> None:
    bundle = _shrunk(invalid_bundles(rule="thread.reply-target"), lambda b: True)
    assert len(bundle["entry"]) == 2  # a header and one message
    assert len(json.dumps(bundle)) < 1_500


def test_invalid_bundles_shrink_the_mutations_choices_too() -> None:
    # each choice a mutation makes is drawn, so it shrinks to its first option: not to what a seed of 0 picks
    assert _shrunk(invalid_bundles(rule="bundle.type"), lambda b: True)["type"] == "collection"
    request = _shrunk(invalid_bundles(rule="entry.request"), lambda b: True)["entry"][0]["request"]
    assert request["method"] == "SEND"
    read = _shrunk(invalid_bundles(rule="fhir.structure"), lambda b: True)["entry"][0]["resource"]
    assert read["colour"] == "blue"


# --- documentation ------------------------------------------------------------------------------------

PUBLIC = [strategies.keys, texts, references, participants, instants, messages, categories, thread_specs, bundles,
          invalid_bundles, sample_specs]


@pytest.mark.parametrize("function", PUBLIC, ids=lambda f: f.__name__)
def test_public_strategies_have_a_docstring_with_an_example(function: Callable[..., Any]) -> None:
    doc = function.__doc__ or ""
    name = function.__name__
    assert re.search(rf"^\n?\s{{8}}.*\b({name}\(|@given\()", doc, re.M), f"{name}: add an indented example of use"
