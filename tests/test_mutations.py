"""bundler.testing.mutations: each mutation copies, never changes, its input; every rule has one. That each breaks a
generated valid bundle so that exactly its rule fires is held through `invalid_bundles` (test_strategies)."""

from __future__ import annotations

import copy
import random
from typing import Any

import pytest
from hypothesis import example, given, reject, settings
from hypothesis import strategies as st

from bundler.build import build_bundle
from bundler.check import BUNDLE_RULES, validate
from bundler.testing.mutations import MUTATIONS, NotApplicable, rng_from_draw
from bundler.testing.strategies import bundles

VALID = bundles(min_messages=2, max_messages=5, drafts=True)


def test_every_rule_has_a_mutation() -> None:
    assert set(MUTATIONS) == set(BUNDLE_RULES)


@pytest.mark.parametrize("code", sorted(MUTATIONS))
@settings(max_examples=5)
@given(bundle=VALID, data=st.data())
def test_mutation_copies_its_input(code: str, bundle: dict[str, Any], data: st.DataObject) -> None:
    before = copy.deepcopy(bundle)
    try:
        broken = MUTATIONS[code](bundle, rng_from_draw(data.draw))
    except NotApplicable:  # its documented answer (entry.fullurl-missing when every entry is pointed at)
        assert bundle == before, "a mutation must copy, not change, its input"
        reject()
    assert bundle == before, "a mutation must copy, not change, its input"
    assert broken != bundle


class Picks(random.Random):
    """A `random.Random` that answers with the numbers it is given, then with zeros (each call draws as many bits
    as its choice needs, and a number too big for it is passed over): an example names a mutation's choices."""

    def __init__(self, *picks: int) -> None:
        self.given, self.picks = picks, list(picks)
        super().__init__(0)

    def getrandbits(self, k: int, /) -> int:
        return self.picks.pop(0) % (1 << k) if self.picks else 0

    def random(self) -> float:
        return self.getrandbits(53) / (1 << 53)

    def __repr__(self) -> str:
        return f"Picks({', '.join(map(str, self.given))})"


CLOSED_GROUP = build_bundle({"thread": "0", "topic": "Lab results", "status": "completed",
                             "participants": {"a": {"reference": "Patient/0"}, "b": {"reference": "Practitioner/0"},
                                              "c": {"reference": "Patient/00"}},
                             "messages": [{"sender": "a", "sent": "2000-01-01T00:00:01Z", "text": "0",
                                           "received": "2000-01-01T00:00:02Z"}]})
"""A closed thread of three whose message is completed and received: read in the simple model, were the thread
open (`read.simple-group`)."""


@settings(max_examples=50)
@example(code="fhir.structure", bundle=CLOSED_GROUP, rng=Picks(0, 2)).via(
    "the header's status made 7: the thread no longer closed, read.simple-group fired too")
@given(code=st.sampled_from(sorted(MUTATIONS)), bundle=bundles(min_messages=1, max_messages=4, drafts=True),
       rng=st.randoms(use_true_random=False))
def test_mutations_break_exactly_their_rule(code: str, bundle: dict[str, Any], rng: random.Random) -> None:
    """What `invalid_bundles` makes, in its parts (a mutation's choices drawn as `rng_from_draw` draws them), so
    that an example names each part; drafts too."""
    try:
        broken = MUTATIONS[code](bundle, rng)
    except NotApplicable:
        reject()
    issues = validate(broken)
    assert {i.code for i in issues} == {code}, [str(i) for i in issues]


def test_mutations_need_messages() -> None:
    header_only = build_bundle({"thread": "t", "topic": "x", "participants": {"a": {"reference": "Patient/1"}}})
    with pytest.raises(NotApplicable):
        MUTATIONS["thread.header-payload"](header_only, random.Random(1))
    assert {i.code for i in validate(MUTATIONS["bundle.type"](header_only, random.Random(1)))} == {"bundle.type"}
