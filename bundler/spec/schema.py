"""The JSON Schema of the spec format (2020-12), generated from the models, for editors and other tools.

    thread-bundler schema                    # the schema on stdout (for an editor's YAML language server)
    thread-bundler schema -o FILE [--check]  # written to FILE, or only compared (exit 1 if it differs)
    python -m bundler.spec.schema [--check]  # the same, FILE the checkout's schemas/thread-spec.schema.json

The models are the spec format; this schema describes it (a test holds the committed file to
`spec_schema()`). It cannot say everything the models check (that an alias is a participant, that a
date exists, that a reply follows what it answers): our own reader says those.
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
from pathlib import Path
from typing import Any, Final

from pydantic.json_schema import GenerateJsonSchema

from ..files import write_atomic
from .model import Attachment, Coding, Message, Participant, Participants, ReadBy, ThreadSpec
from .scalars import DEF_KEY, DEFS

SCHEMA_FILE: Final = "thread-spec.schema.json"
SCHEMA_ID: Final = f"https://thread-bundler.invalid/schemas/{SCHEMA_FILE}"
TITLE: Final = "thread-bundler thread spec"
DESCRIPTION: Final = ("One conversation thread: a header and its messages. A file holds one thread (an object), or "
                      "several (YAML documents separated by ---, or a JSON array of objects).")

_MODELS: Final = (ThreadSpec, Message, Attachment, Coding, Participant, Participants, ReadBy)
_DEF_NAMES: Final = {"Message": "message", "Attachment": "attachment", "Coding": "coding"}
_ORDER: Final = ("$schema", "$id", "title", "description", "$ref", "type", "enum", "pattern", "minLength",
                 "x-message", "required", "additionalProperties", "minProperties", "minItems", "propertyNames",
                 "properties", "items")


class _Generator(GenerateJsonSchema):
    def field_title_should_be_set(self, schema: Any) -> bool:
        return False


def spec_schema() -> dict[str, Any]:
    """The JSON Schema of a thread spec, as data names write it."""
    raw = ThreadSpec.model_json_schema(by_alias=True, mode="validation", schema_generator=_Generator)
    docstrings = {inspect.cleandoc(m.__doc__ or "") for m in _MODELS}  # about Python objects, not about data
    body = _clean(raw, docstrings)
    # a spec may leave its participants to a participants file: the model requires them once the file's are merged
    body["required"] = [name for name in body["required"] if name != "participants"]
    defs = {_DEF_NAMES.get(name, name): value for name, value in body.pop("$defs", {}).items()}
    defs.update(_clean({"$defs": DEFS}, docstrings)["$defs"])
    return _ordered({"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": SCHEMA_ID, "title": TITLE,
                     "description": DESCRIPTION, **body, "$defs": dict(sorted(defs.items()))})


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


def schema_text() -> str:
    """`spec_schema()` as the committed file holds it."""
    return json.dumps(spec_schema(), indent=2, ensure_ascii=False) + "\n"


def write_schema(out: str | Path, *, check: bool = False) -> bool:
    """Write `schema_text()` to `out` (atomically), or with `check` only compare: whether the file is (now) what
    the models give. What `thread-bundler schema -o FILE [--check]` does."""
    out = Path(out)
    text = schema_text()
    if check:
        return out.is_file() and out.read_text(encoding="utf-8") == text
    write_atomic(out, text.encode("utf-8"))
    return True


CHECKOUT_FILE: Final = Path(__file__).resolve().parents[2] / "schemas" / SCHEMA_FILE
"""Where the committed schema lives in a source checkout (what `python -m bundler.spec.schema` writes)."""


def main(argv: list[str] | None = None) -> int:
    """`python -m bundler.spec.schema [PATH] [--check]`: `thread-bundler schema -o PATH [--check]`, PATH the
    source checkout's `schemas/` file unless given (kept for the developers' habit)."""
    parser = argparse.ArgumentParser(prog="python -m bundler.spec.schema", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", nargs="?", type=Path, default=CHECKOUT_FILE,
                        help="where to write it (default: the source checkout's schemas/)")
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 if the file differs")
    args = parser.parse_args(argv)
    ok = write_schema(args.path, check=args.check)
    print(f"{args.path}: {schema_status(ok, args.check)}", file=sys.stderr)
    return 0 if ok else 1


def schema_status(ok: bool, check: bool) -> str:
    """What `write_schema` came to, in words."""
    if not check:
        return "written"
    return "up to date" if ok else "differs from the models: run thread-bundler schema -o FILE"


if __name__ == "__main__":
    sys.exit(main())
