"""The JSON Schemas (2020-12) of the spec format and of the participants file, generated from the models, for
editors and other tools; and the mapping's, written by hand (`schemas/migrate-mapping.schema.json`).

    thread-bundler schema                    # the spec's schema on stdout (for an editor's YAML language server)
    thread-bundler schema --kind participants -o FILE [--check]  # written to FILE, or only compared (exit 1)
    python -m bundler.spec.schema [--check]  # the same, FILE the checkout's schemas/thread-spec.schema.json

The models are the spec format; these schemas describe it (a test holds the committed files to what
`generated_schema()` gives). Every field has a description and examples (`HOVER`: what an editor shows on hover,
where the model's own description is not enough for a person writing a spec). A schema cannot say everything the
models check (that an alias is a participant, that a date exists, that a reply follows what it answers): our own
reader says those.
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
from pathlib import Path
from typing import Any, Final

from pydantic.json_schema import GenerateJsonSchema

from .. import assets
from ..errors import OptionError
from ..files import write_atomic
from .model import Attachment, Coding, Message, Participant, Participants, ParticipantsDocument, ReadBy, ThreadSpec
from .scalars import DEF_KEY, DEFS

SCHEMA_FILE: Final = "thread-spec.schema.json"
PARTICIPANTS_FILE: Final = "participants.schema.json"
MAPPING_FILE: Final = "migrate-mapping.schema.json"
SCHEMA_FILES: Final = {"spec": SCHEMA_FILE, "participants": PARTICIPANTS_FILE, "mapping": MAPPING_FILE}
"""The schemas the package ships (`schemas/` of a checkout, `bundler/schemas/` of a wheel), by kind of file."""
GENERATED: Final = ("spec", "participants")
"""The kinds whose schema the models give (the mapping's is written by hand)."""
SCHEMA_BASE: Final = "https://thread-bundler.invalid/schemas/"
"""The base of every schema's `$id`: a name, not a place to fetch them from (point an editor at a file)."""
TITLE: Final = "thread-bundler thread spec"
DESCRIPTION: Final = ("One conversation thread: a header and its messages. A file holds one thread (an object), or "
                      "several (YAML documents separated by ---, or a JSON array of objects).")
PARTICIPANTS_TITLE: Final = "thread-bundler participants file"
PARTICIPANTS_DESCRIPTION: Final = ("Participants many specs share (thread-bundler's --participants FILE): a spec's "
                                   "participants block under the same key, each alias -> {reference, display, "
                                   "create}. A spec's own participants win.")
PARTICIPANTS_FIELD: Final = ("Each participant by its alias (what specs write: sender: homer): {reference, display, "
                             "create}.")

_PATIENT: Final = {"resourceType": "Patient", "identifier": [{"system": "https://example.org/mrn", "value": "12345"}],
                   "name": [{"given": ["Homer"], "family": "Simpson"}], "birthDate": "1956-05-12"}
_PARTICIPANTS_EXAMPLE: Final = {"homer": {"display": "Homer Simpson", "create": _PATIENT},
                                "hibbert": {"reference": "Practitioner/0b0c2a4e-54a4-4e47-8c4b-1f0f3f3a2d10",
                                            "display": "Dr. Hibbert"}}
_PARTICIPANT: Final = "/properties/participants/additionalProperties/properties"
_MESSAGE: Final = "/$defs/message/properties"
_PARTICIPANT_HOVER: Final[dict[str, dict[str, Any]]] = {
    "reference": {"examples": ["Patient/0b0c2a4e-54a4-4e47-8c4b-1f0f3f3a2d10",
                               "Patient?identifier=https://example.org/mrn|12345"]},
    "display": {"examples": ["Homer Simpson"]},
    "create": {"examples": [_PATIENT]},
    "create/properties/resourceType": {
        "description": "The type of the resource to create: one a Communication may have as a recipient (the "
                       "types listed here).",
        "examples": ["Patient", "Practitioner"]},
    "create/properties/identifier": {
        "description": "Its identifiers, at least one: the first ({system, value}) finds it, as the conditional "
                       "reference Type?identifier=system|value that stands for the participant.",
        "examples": [[{"system": "https://example.org/mrn", "value": "12345"}]]},
}
HOVER: Final[dict[str, dict[str, dict[str, Any]]]] = {
    "spec": {
        "/properties/thread": {"examples": ["homer-lab-results-2024-04-10"]},
        "/properties/topic": {"examples": ["Lab results for Homer Simpson - April 10th"]},
        "/properties/participants": {"examples": [_PARTICIPANTS_EXAMPLE]},
        "/properties/messages": {
            "description": "The messages, in the order they were written: each a Communication partOf the header, "
                           "with a sender, text or attachments, and sent (only a draft may leave it out).",
            "examples": [[{"id": "question", "sender": "homer", "sent": "2024-04-10T10:05:00Z",
                           "text": "Will the results be ready by Friday?"},
                          {"sender": "hibbert", "sent": "2024-04-10T10:15:00Z", "text": "Yes, by Thursday.",
                           "reply_to": "question"}]]},
        "/properties/subject": {"examples": ["homer", "Patient/0b0c2a4e-54a4-4e47-8c4b-1f0f3f3a2d10"]},
        "/properties/sender": {"examples": ["hibbert"]},
        "/properties/sent": {"examples": ["2024-04-10T09:00:00.000Z"]},
        "/properties/status": {
            "description": "The thread's Communication status: the header's, and every message's that has none of "
                           "its own (preparation makes a message a draft).",
            "examples": ["in-progress", "completed"]},
        "/properties/category": {
            "examples": [["http://terminology.hl7.org/CodeSystem/communication-category|notification"]]},
        "/properties/priority": {"examples": ["routine", "urgent"]},
        "/properties/read_model": {"examples": ["simple", "tasks"]},
        **{f"{_PARTICIPANT}/{name}": hover for name, hover in _PARTICIPANT_HOVER.items()},
        "/$defs/attachment/properties/url": {"examples": ["Binary/0b0c2a4e-54a4-4e47-8c4b-1f0f3f3a2d10",
                                                          "https://example.org/files/knee.png"]},
        "/$defs/attachment/properties/file": {"examples": ["scans/knee.png"]},
        "/$defs/attachment/properties/contentType": {
            "description": "The content's MIME type (Attachment.contentType); for a file, taken from its name "
                           "when left out.",
            "examples": ["image/png", "application/pdf"]},
        "/$defs/attachment/properties/title": {
            "description": "What to call it where it is shown (Attachment.title).",
            "examples": ["Knee X-ray"]},
        "/$defs/attachment/properties/size": {"examples": [48213]},
        "/$defs/attachment/properties/hash": {"examples": ["2jmj7l5rSw0yVb/vlWAYkK/YBwk="]},
        "/$defs/coding/oneOf/1/properties/code": {"description": "The code (Coding.code).",
                                                  "examples": ["notification"]},
        "/$defs/coding/oneOf/1/properties/system": {
            "description": "The URI of the code's system (Coding.system).",
            "examples": ["http://terminology.hl7.org/CodeSystem/communication-category"]},
        "/$defs/coding/oneOf/1/properties/display": {"description": "The code as people read it (Coding.display).",
                                                     "examples": ["Notification"]},
        f"{_MESSAGE}/id": {"examples": ["question"]},
        f"{_MESSAGE}/sender": {"description": "The alias of the participant who wrote it.", "examples": ["homer"]},
        f"{_MESSAGE}/sent": {"examples": ["2024-04-10T10:05:00Z"]},
        f"{_MESSAGE}/text": {"description": "What it says (its payload's contentString).",
                             "examples": ["Will the results be ready by Friday?"]},
        f"{_MESSAGE}/attachments": {
            "description": "Files or URLs it carries, each a payload contentAttachment after the text: url or file, "
                           "with contentType and title.",
            "examples": [[{"file": "scans/knee.png", "title": "Knee X-ray"}]]},
        f"{_MESSAGE}/recipient": {"examples": [["homer"]]},
        f"{_MESSAGE}/reply_to": {"examples": ["question"]},
        f"{_MESSAGE}/status": {"examples": ["completed", "preparation"]},
        f"{_MESSAGE}/received": {"examples": ["2024-04-10T10:05:02Z"]},
        f"{_MESSAGE}/priority": {"examples": ["urgent"]},
        f"{_MESSAGE}/read_by": {"examples": [{"homer": "2024-04-10T11:00:00Z"}]},
    },
    "participants": {
        "/properties/participants": {"examples": [_PARTICIPANTS_EXAMPLE]},
        **{f"{_PARTICIPANT}/{name}": hover for name, hover in _PARTICIPANT_HOVER.items()},
    },
}
"""What an editor shows on hover, by JSON pointer into each generated schema: examples for every field, and the
description of the fields whose model gives none (a test fails on a pointer that is not there, or a description
the model gives too)."""

_MODELS: Final = (ThreadSpec, Message, Attachment, Coding, Participant, Participants, ReadBy)
_DEF_NAMES: Final = {"Message": "message", "Attachment": "attachment", "Coding": "coding"}
_ORDER: Final = ("$schema", "$id", "title", "description", "examples", "$ref", "type", "enum", "pattern", "minLength",
                 "x-message", "required", "additionalProperties", "minProperties", "minItems", "propertyNames",
                 "properties", "items")


class _Generator(GenerateJsonSchema):
    def field_title_should_be_set(self, schema: Any) -> bool:
        return False


def spec_schema() -> dict[str, Any]:
    """The JSON Schema of a thread spec, as data names write it."""
    return generated_schema("spec")


def generated_schema(kind: str) -> dict[str, Any]:
    """The JSON Schema of a thread spec (`spec`) or of a participants file (`participants`), from the models, with
    `HOVER`'s descriptions and examples."""
    model = ThreadSpec if kind == "spec" else ParticipantsDocument
    raw = model.model_json_schema(by_alias=True, mode="validation", schema_generator=_Generator)
    docstrings = {inspect.cleandoc(m.__doc__ or "") for m in (*_MODELS, ParticipantsDocument)}  # about Python objects
    body = _clean(raw, docstrings)
    if kind == "spec":
        # a spec may leave its participants to a participants file: the model requires them once the file's are in
        body["required"] = [name for name in body["required"] if name != "participants"]
    defs = {_DEF_NAMES.get(name, name): value for name, value in body.pop("$defs", {}).items()}
    if kind == "spec":
        defs.update(_clean({"$defs": DEFS}, docstrings)["$defs"])
    else:  # (what the participants' fields name: the spec's scalars it uses)
        defs.update({name: value for name, value in _clean({"$defs": DEFS}, docstrings)["$defs"].items()
                     if f'"#/$defs/{name}"' in json.dumps(body)})
    title, description = (TITLE, DESCRIPTION) if kind == "spec" else (PARTICIPANTS_TITLE, PARTICIPANTS_DESCRIPTION)
    schema = {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": SCHEMA_BASE + SCHEMA_FILES[kind],
              "title": title, "description": description, **body}
    if defs:
        schema["$defs"] = dict(sorted(defs.items()))
    if kind == "participants":
        schema["properties"]["participants"]["description"] = PARTICIPANTS_FIELD
    for pointer, hover in HOVER[kind].items():
        parent, key, node = _at(schema, pointer)
        parent[key] = _ordered({**node, **{name: value for name, value in hover.items() if name not in node}})
    return _ordered(schema)


def _at(schema: dict[str, Any], pointer: str) -> tuple[Any, Any, dict[str, Any]]:
    """The part of `schema` at a JSON pointer, with what holds it and under which key (KeyError naming the pointer
    when it is not there)."""
    parent: Any = None
    key: Any = None
    node: Any = schema
    for part in pointer.strip("/").split("/"):
        try:
            parent, key = node, int(part) if isinstance(node, list) else part
            node = node[key]
        except (KeyError, IndexError, ValueError):
            raise KeyError(f"{pointer}: no {part!r} in the schema") from None
    if not isinstance(node, dict):
        raise KeyError(f"{pointer}: not a schema")
    return parent, key, node


_NAME_MAPS: Final = ("properties", "$defs")
"""Keywords whose value maps names (of fields, of definitions) to schemas: their keys are not keywords."""


def _clean(node: Any, docstrings: set[str]) -> Any:
    """Pydantic's schema as we publish it: scalars by `$ref`, our def names, no Python titles, docstrings or
    empty defaults, keywords in a readable order."""
    if isinstance(node, list):
        return [_clean(item, docstrings) for item in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "title" and isinstance(value, str):
            continue
        if key == "default" and value in (None, []):
            continue
        if key == "description" and value in docstrings:
            continue
        if key == DEF_KEY:
            out["$ref"] = f"#/$defs/{value}"
        elif key == "$ref" and isinstance(value, str):
            name = value.rsplit("/", 1)[-1]
            out["$ref"] = f"#/$defs/{_DEF_NAMES.get(name, name)}"
        elif key in _NAME_MAPS and isinstance(value, dict):
            out[key] = {name: _clean(schema, docstrings) for name, schema in value.items()}
        else:
            out[key] = _clean(value, docstrings)
    return _ordered(out)


def _ordered(node: dict[str, Any]) -> dict[str, Any]:
    rank = {key: i for i, key in enumerate(_ORDER)}
    return dict(sorted(node.items(), key=lambda kv: rank.get(kv[0], len(rank))))


def schema_text(kind: str = "spec") -> str:
    """The schema of a kind of file (`SCHEMA_FILES`) as the committed file holds it: generated for a spec and a
    participants file, the shipped file for a mapping."""
    if kind not in SCHEMA_FILES:
        raise OptionError(f"kind: {kind!r} is not one of {', '.join(SCHEMA_FILES)}")
    if kind not in GENERATED:
        return (assets.asset_dir("schemas") / SCHEMA_FILES[kind]).read_text(encoding="utf-8")
    return json.dumps(generated_schema(kind), indent=2, ensure_ascii=False) + "\n"


def write_schema(out: str | Path, *, check: bool = False, kind: str = "spec") -> bool:
    """Write `schema_text(kind)` to `out` (atomically), or with `check` only compare: whether the file is (now)
    what the models give. What `thread-bundler schema [--kind KIND] -o FILE [--check]` does."""
    out = Path(out)
    text = schema_text(kind)
    if check:
        return out.is_file() and out.read_text(encoding="utf-8") == text
    write_atomic(out, text.encode("utf-8"))
    return True


CHECKOUT_DIR: Final = Path(__file__).resolve().parents[2] / "schemas"
"""Where the committed schemas live in a source checkout (what `python -m bundler.spec.schema` writes)."""
CHECKOUT_FILE: Final = CHECKOUT_DIR / SCHEMA_FILE


def main(argv: list[str] | None = None) -> int:
    """`python -m bundler.spec.schema [PATH] [--check] [--kind KIND]`: `thread-bundler schema --kind KIND -o PATH
    [--check]`, PATH the source checkout's `schemas/` file of that kind unless given (kept for the developers'
    habit)."""
    parser = argparse.ArgumentParser(prog="python -m bundler.spec.schema", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", nargs="?", type=Path, default=None,
                        help="where to write it (default: the source checkout's schemas/)")
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 if the file differs")
    parser.add_argument("--kind", choices=GENERATED, default="spec", help="which schema (default: spec)")
    args = parser.parse_args(argv)
    path = args.path or CHECKOUT_DIR / SCHEMA_FILES[args.kind]
    ok = write_schema(path, check=args.check, kind=args.kind)
    print(f"{path}: {schema_status(ok, args.check)}", file=sys.stderr)
    return 0 if ok else 1


def schema_status(ok: bool, check: bool) -> str:
    """What `write_schema` came to, in words."""
    if not check:
        return "written"
    return "up to date" if ok else "differs from the models: run thread-bundler schema -o FILE"


if __name__ == "__main__":
    sys.exit(main())
