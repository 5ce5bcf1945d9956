"""The JSON Schemas as an editor's YAML language server uses them: each with a `$id`, a title and a description,
every field with a description and examples (the hover text), the examples valid, and every fixture valid against
its schema. The schemas walked are the ones the package ships (`assets.asset_dir("schemas")`: the checkout's
`schemas/`, or the wheel's `bundler/schemas/`), so what editors get and what the tool reads are one set of files.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from bundler import assets
from bundler.spec import schema as spec_schema
from bundler.spec.files import read_documents
from bundler.spec.schema import GENERATED, HOVER, SCHEMA_BASE, SCHEMA_FILES, generated_schema, schema_text

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "fixtures"
SCHEMAS = assets.asset_dir("schemas")
CONDITIONS = {"if", "then", "else", "not", "dependentSchemas"}
"""Keywords whose subschemas are conditions on a field, not fields an editor describes."""

FIXTURE_FILES = {
    "spec": sorted((FIXTURES / "threads").glob("*.yaml")),
    "participants": sorted((FIXTURES / "participants").glob("*.yaml")),
    "mapping": sorted(FIXTURES.glob("*/mapping*.yaml")),
}
"""Every fixture of each kind (the invalid ones, in fixtures/invalid/, are not fixtures of a kind)."""


def _load(kind: str) -> dict[str, Any]:
    return assets.schema(SCHEMA_FILES[kind])


def _fields(node: Any, pointer: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every field a schema describes: (JSON pointer, its schema), outside conditions."""
    if isinstance(node, list):
        for i, item in enumerate(node):
            yield from _fields(item, f"{pointer}/{i}")
        return
    if not isinstance(node, dict):
        return
    for key, value in node.items():
        if key in CONDITIONS:
            continue
        if key == "properties" and isinstance(value, dict):
            for name, field in value.items():
                yield f"{pointer}/properties/{name}", field
                yield from _fields(field, f"{pointer}/properties/{name}")
        elif isinstance(value, dict | list):
            yield from _fields(value, f"{pointer}/{key}")


def test_the_package_ships_one_schema_a_kind_and_no_other() -> None:
    assert sorted(p.name for p in SCHEMAS.glob("*.json")) == sorted(SCHEMA_FILES.values())


@pytest.mark.parametrize("kind", sorted(SCHEMA_FILES))
def test_a_schema_has_an_id_a_title_and_a_description(kind: str) -> None:
    schema = _load(kind)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"] == SCHEMA_BASE + SCHEMA_FILES[kind]
    assert schema["title"].startswith("thread-bundler ") and len(schema["description"]) > 40
    jsonschema.Draft202012Validator.check_schema(schema)


@pytest.mark.parametrize("kind", sorted(SCHEMA_FILES))
def test_every_field_has_a_description_and_examples(kind: str) -> None:
    fields = list(_fields(_load(kind)))
    assert len(fields) >= 5
    bare = [f"{SCHEMA_FILES[kind]}#{pointer}: no description" for pointer, field in fields
            if not isinstance(field.get("description"), str) or len(field["description"]) < 10]
    bare += [f"{SCHEMA_FILES[kind]}#{pointer}: no examples" for pointer, field in fields
             if not isinstance(field.get("examples"), list) or not field["examples"]]
    assert bare == []


@pytest.mark.parametrize("kind", sorted(SCHEMA_FILES))
def test_every_example_is_valid_for_its_field(kind: str) -> None:
    schema = _load(kind)
    wrong = []
    for pointer, field in _fields(schema):
        alone = {k: v for k, v in field.items() if k != "examples"}
        validator = jsonschema.Draft202012Validator({**alone, "$defs": schema.get("$defs", {})})
        wrong += [f"{pointer}: {example!r}: {error.message}" for example in field.get("examples", [])
                  for error in validator.iter_errors(example)]
    assert wrong == []


@pytest.mark.parametrize(("kind", "file"), [(kind, f) for kind, files in FIXTURE_FILES.items() for f in files],
                         ids=lambda v: v.name if isinstance(v, Path) else v)
def test_every_fixture_is_valid_against_its_schema(kind: str, file: Path) -> None:
    """Read as the tool reads it (YAML 1.2: a time stays text), each document against the schema of its kind."""
    docs, problems = read_documents(file)
    assert problems == [] and docs
    validator = jsonschema.Draft202012Validator(_load(kind))
    for doc in docs:
        for item in doc.data if isinstance(doc.data, list) else [doc.data]:
            errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(item)]
            assert errors == [], file.name


def test_every_kind_has_fixtures() -> None:
    assert all(FIXTURE_FILES.values()) and set(FIXTURE_FILES) == set(SCHEMA_FILES)


@pytest.mark.parametrize("kind", GENERATED)
def test_the_committed_generated_schemas_are_what_the_models_give(kind: str) -> None:
    assert (SCHEMAS / SCHEMA_FILES[kind]).read_text(encoding="utf-8") == schema_text(kind)


@pytest.mark.parametrize("kind", GENERATED)
def test_hover_adds_only_what_the_models_do_not_say(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A description lives in one place: the model's field, or HOVER where the model has none."""
    monkeypatch.setattr(spec_schema, "HOVER", {k: {} for k in HOVER})
    bare = generated_schema(kind)
    twice = []
    for pointer, hover in HOVER[kind].items():
        node: Any = bare
        for part in pointer.strip("/").split("/"):
            node = node[int(part)] if isinstance(node, list) else node[part]
        if "description" in hover and "description" in node:
            twice.append(pointer)
    assert twice == []


def test_the_mapping_schema_s_text_is_the_shipped_file() -> None:
    assert schema_text("mapping") == (SCHEMAS / SCHEMA_FILES["mapping"]).read_text(encoding="utf-8")


MODELINE = "# yaml-language-server: $schema=../schemas/thread-spec.schema.json"
"""The line DOCS-NOTES.md tells users to put at the top of a spec in threads/, beside schemas/ written by
`thread-bundler schema -o schemas/thread-spec.schema.json`."""


def test_the_documented_modeline_finds_the_written_schema_and_the_spec_is_valid(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from bundler.cli import main

    runner = CliRunner()
    assert runner.invoke(main, ["schema", "-o", str(tmp_path / "schemas" / "thread-spec.schema.json")]).exit_code == 0
    spec = tmp_path / "threads" / "homer.yaml"
    spec.parent.mkdir()
    spec.write_text(MODELINE + "\n" + (FIXTURES / "threads" / "homer-lab-results.yaml").read_text(encoding="utf-8"),
                    encoding="utf-8")
    target = (spec.parent / MODELINE.split("$schema=", 1)[1]).resolve()  # relative to the file, as the server does
    (doc,), problems = read_documents(spec)
    assert problems == []
    jsonschema.validate(doc.data, json.loads(target.read_text(encoding="utf-8")))
    result = runner.invoke(main, ["validate", str(spec)])
    assert result.exit_code == 0, result.output
