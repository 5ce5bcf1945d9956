"""bundler.mutations: each mutation breaks a generated valid bundle so that exactly its rule fires."""

from __future__ import annotations

import copy
import random
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bundler.build import build_bundle
from bundler.mutations import MUTATIONS, NotApplicable, rng_from_draw
from bundler.strategies import thread_specs
from bundler.validate import RULES, validate


def _fhir_subject(spec: dict[str, Any]) -> dict[str, Any]:
    subject = spec.get("subject")
    if subject is not None and not spec["participants"][subject]["reference"].startswith(("Patient", "Group")):
        del spec["subject"]
    return spec


VALID = thread_specs(min_messages=2, max_messages=5).map(_fhir_subject).map(build_bundle)


def test_every_rule_has_a_mutation() -> None:
    assert set(MUTATIONS) == set(RULES)


@pytest.mark.parametrize("code", sorted(MUTATIONS))
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(bundle=VALID, data=st.data())
def test_mutation_fires_exactly_its_rule(code: str, bundle: dict[str, Any], data: st.DataObject) -> None:
    assert validate(bundle) == []
    before = copy.deepcopy(bundle)
    broken = MUTATIONS[code](bundle, rng_from_draw(data.draw))
    assert bundle == before, "a mutation must copy, not change, its input"
    issues = validate(broken)
    assert {i.code for i in issues} == {code}, [str(i) for i in issues]


def test_mutations_need_messages() -> None:
    header_only = build_bundle({"thread": "t", "topic": "x", "participants": {"a": {"reference": "Patient/1"}}})
    with pytest.raises(NotApplicable):
        MUTATIONS["thread.header-payload"](header_only, random.Random(1))
    assert {i.code for i in validate(MUTATIONS["bundle.type"](header_only, random.Random(1)))} == {"bundle.type"}
