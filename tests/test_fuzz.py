"""Fuzzing every reader of outside input: spec files, Bundle JSON, NDJSON (this file), the migrate mapping and
legacy exports (test_fuzz_migrate.py).

The property, for any input: a result, or our own error (`SpecError`) whose problems name the file and a
line; never another exception, never more than a fixed time and memory (`fuzzing.bounded`). A spec that
reads clean also builds a bundle that validates clean, byte for byte the same by both builders.

Inputs: random bytes; random YAML/JSON trees, alone or grafted into valid specs and bundles from our
strategies; and random edits of the fixtures' bytes. The budget is `--fuzz-examples N` (default small and
derandomized; README, "Bad input", says how to run longer).
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from fuzzing import (
    as_json,
    as_yaml,
    bounded,
    check_problems,
    encodable,
    fuzz_settings,
    mutated_bytes,
    mutated_tree,
    one_of_our_words,
    trees,
)
from hypothesis import given
from hypothesis import strategies as st

from bundler import build_bundle, bundle_bytes
from bundler.check import validate
from bundler.check.files import validate_files
from bundler.errors import SpecError
from bundler.spec import load_specs
from bundler.testing.strategies import bundles, thread_specs

REPO = Path(__file__).resolve().parent.parent
SPEC_FIXTURES = sorted((REPO / "fixtures" / "threads").glob("*.yaml")) + sorted(
    p for p in (REPO / "fixtures" / "invalid").rglob("*") if p.suffix in (".yaml", ".json"))
BUNDLE_FIXTURES = sorted((REPO / "fixtures" / "bundles").glob("*.json"))


@pytest.fixture(scope="module")
def folder() -> Iterator[Path]:
    """One folder for every example of a test (function-scoped fixtures do not mix with hypothesis)."""
    with tempfile.TemporaryDirectory(prefix="fuzz-") as tmp:
        yield Path(tmp)


def read_spec(raw: bytes, file: Path) -> None:
    """`raw` as a spec file: specs that build clean bundles, or SpecError at a line, in our words."""
    file.write_bytes(raw)
    with bounded():
        try:
            specs = load_specs([file])
        except SpecError as exc:
            check_problems(exc.problems, str(file))
            assert all(one_of_our_words(p.message) for p in exc.problems), [str(p) for p in exc.problems]
            return
        for spec in specs:  # what reads clean builds clean
            bundle = build_bundle(spec)
            assert bundle_bytes(spec) == orjson.dumps(bundle)
            assert [i for i in validate(bundle, limits="none", structure=False) if i.severity == "error"] == []


def read_bundles(raw: bytes, file: Path) -> None:
    """`raw` as a Bundle (or NDJSON, or spec) file for `validate`: a report, or SpecError at a line."""
    file.write_bytes(raw)
    with bounded():
        try:
            validate_files([file], workers=1)
        except SpecError as exc:
            check_problems(exc.problems, str(file))


# --- spec files -----------------------------------------------------------------------------------------------


@fuzz_settings()
@given(raw=st.binary(max_size=400), suffix=st.sampled_from([".yaml", ".json"]))
def test_random_bytes_as_a_spec(folder: Path, raw: bytes, suffix: str) -> None:
    read_spec(raw, folder / f"t{suffix}")


@fuzz_settings()
@given(data=trees(), json_=st.booleans())
def test_random_trees_as_a_spec(folder: Path, data: object, json_: bool) -> None:
    text = as_json(data) if json_ else as_yaml(data)
    read_spec(encodable(text), folder / ("t.json" if json_ else "t.yaml"))


@fuzz_settings()
@given(data=thread_specs(max_messages=4).flatmap(mutated_tree), json_=st.booleans())
def test_specs_with_random_grafts(folder: Path, data: object, json_: bool) -> None:
    text = as_json(data) if json_ else as_yaml(data)
    read_spec(encodable(text), folder / ("t.json" if json_ else "t.yaml"))


@fuzz_settings()
@given(raw=st.sampled_from(SPEC_FIXTURES).flatmap(lambda p: mutated_bytes(p.read_bytes()).map(lambda b: (p, b))))
def test_mutated_spec_fixtures(folder: Path, raw: tuple[Path, bytes]) -> None:
    path, content = raw
    read_spec(content, folder / f"t{path.suffix}")


# --- Bundles and NDJSON ---------------------------------------------------------------------------------------


@fuzz_settings()
@given(raw=st.binary(max_size=400), suffix=st.sampled_from([".json", ".ndjson", ".yaml"]))
def test_random_bytes_as_bundles(folder: Path, raw: bytes, suffix: str) -> None:
    read_bundles(raw, folder / f"b{suffix}")


@fuzz_settings()
@given(data=bundles(specs=thread_specs(max_messages=3)).flatmap(mutated_tree), suffix=st.sampled_from([".json",
                                                                                                         ".yaml"]))
def test_bundles_with_random_grafts(folder: Path, data: object, suffix: str) -> None:
    read_bundles(encodable(as_json(data) if suffix == ".json" else as_yaml(data)), folder / f"b{suffix}")


@fuzz_settings()
@given(lines=st.lists(bundles(specs=thread_specs(max_messages=2)).flatmap(mutated_tree).map(as_json)
                      | trees().map(as_json) | st.text(max_size=40), min_size=1, max_size=4))
def test_ndjson_lines_with_random_grafts(folder: Path, lines: list[str]) -> None:
    read_bundles(encodable("\n".join(line.replace("\n", " ") for line in lines) + "\n"), folder / "b.ndjson")


@fuzz_settings()
@given(raw=st.sampled_from(BUNDLE_FIXTURES).flatmap(lambda p: mutated_bytes(p.read_bytes())),
       ndjson=st.booleans())
def test_mutated_bundle_fixtures(folder: Path, raw: bytes, ndjson: bool) -> None:
    read_bundles(raw.replace(b"\n", b" ") + b"\n" if ndjson else raw, folder / ("b.ndjson" if ndjson else "b.json"))
