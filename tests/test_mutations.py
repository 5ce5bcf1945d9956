"""bundler.testing.mutations: each mutation copies, never changes, its input; every rule has one. That each breaks a
generated valid bundle so that exactly its rule fires is held through `invalid_bundles` (test_strategies)."""

from __future__ import annotations

import copy
import random
from typing import Any

import pytest
from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st

from bundler.build import build_bundle
from bundler.check import BUNDLE_RULES, validate
from bundler.testing.mutations import MUTATIONS, NotApplicable, rng_from_draw
from bundler.testing.strategies import bundles

VALID = bundles(min_messages=2, max_messages=5, drafts=True)


def test_every_rule_has_a_mutation() -> None:
    assert set(MUTATIONS) == set(BUNDLE_RULES)


@pytest.mark.parametrize("code", sorted(MUTATIONS))
@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
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


def test_mutations_need_messages() -> None:
    header_only = build_bundle({"thread": "t", "topic": "x", "participants": {"a": {"reference": "Patient/1"}}})
    with pytest.raises(NotApplicable):
        MUTATIONS["thread.header-payload"](header_only, random.Random(1))
    assert {i.code for i in validate(MUTATIONS["bundle.type"](header_only, random.Random(1)))} == {"bundle.type"}
