"""The JSON Schemas we ship: the spec's is generated from the models (the committed file is what they give),
and both hold the grammars and codes of bundler.vocabulary, nothing of their own."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from hypothesis import given, settings

from bundler import assets
from bundler.errors import SpecError
from bundler.migrate.mapping import SCHEMA_DEFAULTS, load_mapping
from bundler.spec import load_specs
from bundler.spec.schema import SCHEMA_FILE, main, schema_text, spec_schema
from bundler.testing.strategies import thread_specs
from bundler.vocabulary import (
    ALIAS_HINT,
    ALIAS_PATTERN,
    CODING_HINT,
    CODING_PATTERN,
    COMMUNICATION_STATUSES,
    COMMUNICATION_TARGETS,
    INSTANT_HINT,
    INSTANT_PATTERN,
    KEY_HINT,
    KEY_PATTERN,
    MIME_TYPE_HINT,
    MIME_TYPE_PATTERN,
    REFERENCE_HINT,
    REFERENCE_PATTERN,
    THREAD_KEY_PATTERN,
    TYPE_PATTERN,
    reference_pattern,
)

REPO = Path(__file__).resolve().parent.parent
SPEC = assets.schema(SCHEMA_FILE)
MAPPING = assets.schema("migrate-mapping.schema.json")
RECIPIENT_REFERENCE = reference_pattern(COMMUNICATION_TARGETS["recipient"])
VOCABULARY_PATTERNS = {f"^{p}$" for p in (KEY_PATTERN, THREAD_KEY_PATTERN, ALIAS_PATTERN, REFERENCE_PATTERN,
                                          INSTANT_PATTERN, MIME_TYPE_PATTERN, CODING_PATTERN, TYPE_PATTERN,
                                          RECIPIENT_REFERENCE, f"(?:{ALIAS_PATTERN}|{REFERENCE_PATTERN})")}


def _walk(node: Any, path: str = "#") -> Iterator[tuple[str, dict[str, Any]]]:
    if isinstance(node, dict):
        yield path, node
        for key, value in node.items():
            yield from _walk(value, f"{path}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _walk(value, f"{path}/{i}")


def test_the_committed_spec_schema_is_what_the_models_generate() -> None:
    committed = (REPO / "schemas" / SCHEMA_FILE).read_text(encoding="utf-8")
    assert committed == schema_text(), "run: python -m bundler.spec.schema"
    assert main(["--check", str(REPO / "schemas" / SCHEMA_FILE)]) == 0


def test_the_generator_writes_the_file(tmp_path: Path) -> None:
    target = tmp_path / SCHEMA_FILE
    assert main([str(target)]) == 0
    assert target.read_text(encoding="utf-8") == schema_text()
    target.write_text("{}")
    assert main(["--check", str(target)]) == 1


@pytest.mark.parametrize("schema", [SPEC, MAPPING], ids=["thread-spec", "migrate-mapping"])
def test_every_pattern_and_status_list_is_the_vocabulary_s(schema: dict[str, Any]) -> None:
    jsonschema.Draft202012Validator.check_schema(schema)
    patterns = [(where, node["pattern"]) for where, node in _walk(schema) if isinstance(node.get("pattern"), str)]
    assert patterns
    assert [(w, p) for w, p in patterns if p not in VOCABULARY_PATTERNS] == []
    enums = [(where, node["enum"]) for where, node in _walk(schema) if "enum" in node]
    statuses = [(w, e) for w, e in enums if "in-progress" in e]
    assert statuses and all(e == list(COMMUNICATION_STATUSES) for _, e in statuses)


def test_the_spec_schema_names_its_grammars_and_hints() -> None:
    defs = SPEC["$defs"]
    assert (defs["key"]["pattern"], defs["key"]["x-message"]) == (f"^{KEY_PATTERN}$", KEY_HINT)
    assert (defs["aliasName"]["pattern"], defs["aliasName"]["x-message"]) == (f"^{ALIAS_PATTERN}$", ALIAS_HINT)
    assert defs["alias"]["pattern"] == f"^{ALIAS_PATTERN}$"
    assert (defs["reference"]["pattern"], defs["reference"]["x-message"]) == (f"^{RECIPIENT_REFERENCE}$",
                                                                              REFERENCE_HINT)
    assert (defs["instant"]["pattern"], defs["instant"]["x-message"]) == (f"^{INSTANT_PATTERN}$", INSTANT_HINT)
    assert (defs["mimeType"]["pattern"], defs["mimeType"]["x-message"]) == (f"^{MIME_TYPE_PATTERN}$", MIME_TYPE_HINT)
    coding_string = defs["coding"]["oneOf"][0]
    assert (coding_string["pattern"], coding_string["x-message"]) == (f"^{CODING_PATTERN}$", CODING_HINT)
    assert defs["status"]["enum"] == list(COMMUNICATION_STATUSES)
    assert MAPPING["$defs"]["fhirStatus"]["enum"] == list(COMMUNICATION_STATUSES)
    participant_type = MAPPING["properties"]["thread"]["properties"]["subject"]["oneOf"][0]
    assert participant_type["properties"]["participant_type"]["pattern"] == f"^{TYPE_PATTERN}$"


def test_the_schema_knows_the_model_s_fields() -> None:
    schema = spec_schema()
    assert set(schema["properties"]) == {"thread", "topic", "subject", "status", "category", "sent", "sender",
                                         "participants", "messages", "priority", "read_model"}
    assert schema["required"] == ["thread", "topic"]  # participants: in the spec, or a participants file
    message = schema["$defs"]["message"]
    assert set(message["properties"]) == {"id", "sender", "sent", "text", "attachments", "recipient", "reply_to",
                                          "status", "received", "priority", "read_by"}
    assert message["required"] == ["sender"]
    assert message["else"]["required"] == ["sent"]  # sent, unless a draft (status: preparation)
    assert set(schema["$defs"]["attachment"]["properties"]) == {"url", "file", "contentType", "title", "size", "hash"}
    assert set(schema["properties"]["participants"]["additionalProperties"]["properties"]) == {"reference",
                                                                                              "display", "create"}


VALIDATOR = jsonschema.Draft202012Validator(SPEC)


@settings(max_examples=100)
@given(thread_specs(drafts=True))
def test_what_the_model_reads_the_schema_accepts(spec: dict[str, Any]) -> None:
    VALIDATOR.validate(spec)


STRUCTURAL = ["bad-values.yaml", "unknown-fields.yaml", "wrong-types.yaml"]


@pytest.mark.parametrize("name", STRUCTURAL)
def test_what_the_schema_refuses_the_model_refuses(name: str) -> None:
    """Fixtures whose problems a schema can see: the schema and our reader refuse the same fields."""
    from bundler.spec.files import read_documents

    (doc,), _ = read_documents(REPO / "fixtures" / "invalid" / name)
    schema_paths = {".".join(map(str, e.absolute_path)) for e in VALIDATOR.iter_errors(doc.data)}
    with pytest.raises(SpecError) as info:
        load_specs([REPO / "fixtures" / "invalid" / name])
    ours = {re.sub(r"\[(\d+)\]", lambda m: f".{int(m.group(1)) - 1}", p.path) for p in info.value.problems}  # 1-based

    def covers(outer: str, inner: str) -> bool:
        return outer in ("", inner) or inner.startswith(f"{outer}.")

    assert schema_paths
    assert all(any(covers(s, o) for o in ours) for s in schema_paths)
    assert all(any(covers(s, o) for s in schema_paths) for o in ours)


def _defaults(node: Any, where: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    """(the property names leading to it, its value) of every `default` keyword of a schema."""
    if isinstance(node, dict):
        if "default" in node:
            yield where, node["default"]
        for key, value in node.items():
            if key == "properties":
                for name, sub in value.items():
                    yield from _defaults(sub, (*where, name))
            elif key in ("oneOf", "anyOf", "allOf", "items"):
                for sub in value if isinstance(value, list) else [value]:
                    yield from _defaults(sub, where)


def test_the_mapping_schema_states_the_defaults_the_reader_applies() -> None:
    """Each default of a mapping file lives in `bundler.migrate.mapping` (`SCHEMA_DEFAULTS`, which its reader uses);
    the schema says every one of them as its `default` keyword, and no other."""
    assert dict(_defaults(MAPPING)) == dict(SCHEMA_DEFAULTS)


def test_a_mapping_that_leaves_everything_to_its_defaults_reads_as_them(tmp_path: Path) -> None:
    (tmp_path / "reads.csv").write_text("m,r,t\n", encoding="utf-8")
    (tmp_path / "mapping.yaml").write_text(
        "thread: {id: c}\nmessage: {id: m, sender: s, sent: t, text: x, read_at: {column: r}}\n"
        "participants: {rules: [{prefix: p-, reference: 'Patient/{rest}'}]}\n"
        "reads: {file: reads.csv, message: m, reader: r, read_at: t}\n", encoding="utf-8")
    m = load_mapping(tmp_path / "mapping.yaml")
    assert (m.quotechar, m.encoding, m.max_row_chars, m.max_quoted_lines) == tuple(
        SCHEMA_DEFAULTS[("input", k)] for k in ("quotechar", "encoding", "max_row_chars", "max_quoted_lines"))
    assert m.reads is not None and m.reads.delimiter == SCHEMA_DEFAULTS[("reads", "delimiter")]
    for time in (m.sent, m.read_at, m.reads.read_at):
        assert time is not None
        assert (time.parser.fmt, time.parser.ambiguous, time.parser.nonexistent) == tuple(
            SCHEMA_DEFAULTS[("message", "sent", k)] for k in ("format", "ambiguous", "nonexistent"))
