"""`fastyaml.fast_yaml` writes exactly what PyYAML (libyaml's emitter) writes, whenever it writes anything."""

from __future__ import annotations

from typing import Any

import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from bundler.spec.dump import _Dumper, dump_yaml
from bundler.spec.fastyaml import fast_yaml

TRICKY = "ab Z09-_:#'\"!&*?|>%@`,[]{}.~=+/\\é—\u00a0\u2028\t\n\x85\ufeff😀"
words = st.lists(st.one_of(st.text(alphabet="abcé—'\"😀:#-", min_size=1, max_size=9), st.sampled_from(["", " ", "  "])),
                 max_size=60).map(" ".join)
texts = st.one_of(st.text(alphabet=TRICKY, max_size=12), st.text(max_size=8), words,
                  st.sampled_from(["yes", "No", "on", "null", "~", "1.5", "0x1F", "-1", "2024-01-01T00:00:00Z",
                                   "2024-01-01", "1_000", ".inf", "<<", "=", "---x", "...", "- a", "a: b", "a #b",
                                   "a#b", "x:", ":x", "?x", "? x", "-x", "a" * 130, "Dr. Who", "Person 0"]))
scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12), texts)
data = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                      st.dictionaries(texts, inner, max_size=3)), max_leaves=12)


def _pyyaml(value: Any) -> str:
    return yaml.dump(value, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=120)


@settings(max_examples=800, deadline=None)
@given(st.dictionaries(texts, data, min_size=1, max_size=4))
def test_fast_yaml_writes_what_pyyaml_writes(value: dict[str, Any]) -> None:
    fast = fast_yaml(value)
    if fast is not None:
        assert fast == _pyyaml(value)


def test_fast_yaml_writes_a_spec_and_leaves_the_rest() -> None:
    spec = {"thread": "t1", "topic": "Refill: today?", "sent": "2024-01-01T00:00:00.000Z", "n": 3, "ok": True,
            "participants": {"dr-who": {"reference": "Practitioner/d0", "display": "Dr. Who"}},
            "messages": [{"id": "m0", "text": "it's 'fine' — yes 😀 " + "word " * 40 + "end",
                          "read_by": {"dr-who": "2024-01-01T00:00:01Z"}},
                         {"id": "m1", "text": "no"}]}
    assert fast_yaml(spec) is not None
    assert dump_yaml(spec) == _pyyaml(spec).encode()
    others: list[dict[str, Any]] = [{"text": "two\nlines"}, {"x": []}, {"x": {}}, {"x": 1.5}, {"k" * 200: 1},
                                    {"x": [[1]]}, {"x": "tab\there"}]
    for other in others:
        assert fast_yaml(other) is None
        assert dump_yaml(other) == _pyyaml(other).encode()
