"""jsonschema's errors in our words, for the input files we check with a JSON Schema (the migrate mapping):
`Problem`s with file, line, column and field path, the same wording as a spec's problems.

    problems = [p for e in validator.iter_errors(doc.data) for p in schema_problems(doc, e)]

A schema may give a message of its own with `x-message` (for `anyOf`/`oneOf`, `enum`, `pattern`,
`maxLength`, `minItems`/`minProperties`); otherwise the wording comes from the failed keyword.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from jsonschema.exceptions import ValidationError, best_match

from ..errors import Problem
from .problems import describe, expected
from .source import Document, Path_

_TYPE_NAMES = {"string": "a string", "integer": "an integer", "object": "a mapping", "array": "a list",
               "boolean": "true/false", "null": "null", "number": "a number"}


def schema_problems(doc: Document, error: ValidationError) -> Iterator[Problem]:
    """The Problems of one jsonschema error found in `doc.data`."""
    path: Path_ = tuple(error.absolute_path)
    schema: Mapping[str, Any] = error.schema if isinstance(error.schema, Mapping) else {}
    custom = schema.get("x-message")
    v = error.validator
    value: Any = error.validator_value
    if v == "anyOf" and custom:
        yield doc.problem(path, custom)
        return
    if v in ("oneOf", "anyOf"):
        subs = [e for e in error.context or () if e.validator != "type"]
        if subs:
            yield from schema_problems(doc, best_match(subs))
            return
        yield doc.problem(path, f"{custom or 'is not valid here'}; got {describe(error.instance)}")
        return
    if v == "additionalProperties":
        allowed = sorted(schema.get("properties", {}))
        instance: Any = error.instance
        for key in sorted(set(instance) - set(allowed)):
            hint = f" (allowed: {', '.join(allowed)})" if allowed else ""
            yield doc.problem(path + (key,), f"unknown field '{key}'{hint}", key=True)
        return
    if v == "required":
        given: Any = error.instance
        missing = [name for name in value if name not in given]
        yield doc.problem(path, f"missing required field '{missing[0] if missing else '?'}'")
        return
    if v == "type":
        wants = [value] if isinstance(value, str) else list(value)
        yield doc.problem(path, expected(" or ".join(_TYPE_NAMES.get(w, w) for w in wants), error.instance))
        return
    if v == "propertyNames":
        for sub in error.context or ():
            name = str(sub.instance)
            sub_schema: Mapping[str, Any] = sub.schema if isinstance(sub.schema, Mapping) else {}
            yield doc.problem(path + (name,), f"{name!r} {sub_schema.get('x-message', sub.message)}", key=True)
        return
    if v == "enum":
        options = ", ".join(map(str, value))
        yield doc.problem(path, f"{error.instance!r} {custom or 'is not allowed'} (one of: {options})")
        return
    if v in ("pattern", "maxLength") and custom:
        yield doc.problem(path, f"{error.instance!r} {custom}")
        return
    if v == "minLength":
        yield doc.problem(path, "must not be empty")
        return
    if v in ("minItems", "minProperties"):
        yield doc.problem(path, custom or "must not be empty")
        return
    yield doc.problem(path, custom or error.message)
