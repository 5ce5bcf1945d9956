"""The constrained values of the spec format, each one type: what it accepts, its message when it does not,
and its JSON Schema (a `$defs` entry the generated schema refers to by name).

Every grammar, code list and hint comes from `bundler.vocabulary`; patterns are matched with
`fullmatch` (the JSON Schema carries them as `^...$`). Keys, ids and aliases may be written as YAML/JSON
integers and become strings (`007` stays "007", `12` becomes "12"); booleans never do.

A type here annotated `str | None` takes only strings: the `None` is its default when the field is left
out, never a value data may hold (`text: null` is refused).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any, Final

from pydantic import GetCoreSchemaHandler, GetJsonSchemaHandler
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, core_schema

from ..vocabulary import (
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
    instant_problem,
    is_alias,
    is_instant,
    is_instant_shaped,
    is_key,
    is_mime_type,
    is_reference,
    reference_type,
)
from .problems import expected, fail, wrong_type

ALIAS_MESSAGE: Final = "must be a participant alias"
ALIAS_OR_REFERENCE_MESSAGE: Final = ("must be a participant alias or a reference (Type/id or "
                                     "Type?identifier=system|value)")
STATUS_MESSAGE: Final = "must be a Communication status"

DEFS: dict[str, dict[str, Any]] = {}
"""name → JSON Schema of every named scalar, for the generated schema's `$defs`."""


def _anchored(pattern: str) -> str:
    return f"^{pattern}$"


def not_allowed(kind: str, what: str, role: str) -> str:
    """`FHIR R4 does not allow a Location as a participant of a Communication (allowed: ...)`."""
    return (f"FHIR R4 does not allow a {kind} as {what} of a Communication (allowed: "
            f"{', '.join(sorted(COMMUNICATION_TARGETS[role]))})")


def _str_or_int(value: Any) -> str:
    if isinstance(value, str):
        return value
    if type(value) is int:
        return str(value)
    raise wrong_type("a string or an integer", value)


def check_key(value: Any) -> str:
    text = _str_or_int(value)
    if is_key(text):
        return text
    raise fail(f"{text!r} {KEY_HINT}")


def check_alias(value: Any) -> str:
    text = _str_or_int(value)
    if is_alias(text):
        return text
    raise fail(f"{text!r} {ALIAS_MESSAGE}")


def check_alias_name(value: Any) -> str:
    """A participant's alias where it is a mapping key: its problem is placed at the key."""
    kind = type(value)
    if kind is not str and kind is not int:
        raise fail(expected("a string or an integer", value), key=True)
    text = str(value)
    if is_alias(text):
        return text
    raise fail(f"{text!r} {ALIAS_HINT}", key=True)


def check_alias_or_reference(value: Any) -> str:
    text = _str_or_int(value)
    if is_alias(text) or is_reference(text):
        return text
    raise fail(f"{text!r} {ALIAS_OR_REFERENCE_MESSAGE}")


def check_participant_reference(value: Any) -> str:
    if type(value) is not str:
        raise wrong_type("a string", value)
    if not is_reference(value):
        raise fail(f"{value!r} {REFERENCE_HINT}")
    kind = reference_type(value)
    if kind not in COMMUNICATION_TARGETS["recipient"]:
        raise fail(not_allowed(kind, "a participant", "recipient"))
    return value


def check_instant(value: Any) -> str:
    if type(value) is not str:
        raise wrong_type("a string", value)
    if is_instant(value):
        return value
    if not is_instant_shaped(value):
        raise fail(f"{value!r} {INSTANT_HINT}")
    raise fail(instant_problem(value) or INSTANT_HINT)


def check_status(value: Any) -> str:
    if type(value) is str and value in COMMUNICATION_STATUSES:
        return value
    raise fail(f"{value!r} {STATUS_MESSAGE} (one of: {', '.join(COMMUNICATION_STATUSES)})")


def check_mime_type(value: Any) -> str:
    if type(value) is not str:
        raise wrong_type("a string", value)
    if is_mime_type(value):
        return value
    raise fail(f"{value!r} {MIME_TYPE_HINT}")


def as_tuple(value: Any, min_length: int = 0) -> tuple[Any, ...]:
    """A YAML/JSON list (or a Python tuple) as a tuple; anything else is refused (a set has no order to keep)."""
    kind = type(value)
    if kind is not list and kind is not tuple:
        raise wrong_type("a list", value)
    items = tuple(value)  # (the same object when it is a tuple)
    if len(items) < min_length:
        raise fail("must not be empty")
    return items


@dataclass(frozen=True)
class _Check:
    """Annotation of a named scalar: validated by `check` alone, and `{"$ref": "#/$defs/<name>"}` in the schema."""

    check: Callable[[Any], str]
    name: str
    schema: dict[str, Any] = field(compare=False)

    def __post_init__(self) -> None:
        DEFS[self.name] = self.schema

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        return core_schema.no_info_plain_validator_function(self.check)

    def __get_pydantic_json_schema__(self, schema: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        return {"$ref": f"#/$defs/{self.name}"}


class _Text:
    """Annotation of a non-empty string kept exactly as written (pydantic's own str check, our wording)."""

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        return core_schema.str_schema(strict=True, min_length=1)

    def __get_pydantic_json_schema__(self, schema: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        return {"type": "string", "minLength": 1}


_KEY = _Check(check_key, "key", {"type": ["string", "integer"], "pattern": _anchored(KEY_PATTERN),
                                  "x-message": KEY_HINT})
_ALIAS = _Check(check_alias, "alias", {"type": ["string", "integer"], "pattern": _anchored(ALIAS_PATTERN),
                                        "x-message": ALIAS_MESSAGE})
_INSTANT = _Check(check_instant, "instant", {"type": "string", "pattern": _anchored(INSTANT_PATTERN),
                                              "x-message": INSTANT_HINT})
_STATUS = _Check(check_status, "status", {"description": "A Communication status (default in-progress).",
                                           "enum": list(COMMUNICATION_STATUSES), "x-message": STATUS_MESSAGE})

Key = Annotated[str, _KEY]
"""A thread key or message id: `vocabulary.KEY_PATTERN` (an integer becomes its digits)."""
OptionalKey = Annotated[str | None, _KEY]
Alias = Annotated[str, _ALIAS]
"""A participant alias where it names a participant: `vocabulary.ALIAS_PATTERN`."""
OptionalAlias = Annotated[str | None, _ALIAS]
AliasName = Annotated[str, _Check(check_alias_name, "aliasName", {
    "type": "string", "pattern": _anchored(ALIAS_PATTERN), "x-message": ALIAS_HINT})]
"""A participant alias where it is defined (a key of `participants`)."""
AliasOrReference = Annotated[str | None, _Check(check_alias_or_reference, "aliasOrReference", {
    "type": ["string", "integer"], "pattern": _anchored(f"(?:{ALIAS_PATTERN}|{REFERENCE_PATTERN})"),
    "x-message": ALIAS_OR_REFERENCE_MESSAGE})]
"""A participant alias or a reference string (`Type/id`, `Type?identifier=system|value`)."""
ParticipantReference = Annotated[str, _Check(check_participant_reference, "reference", {
    "type": "string", "pattern": _anchored(REFERENCE_PATTERN), "x-message": REFERENCE_HINT})]
"""A reference to a resource a Communication may have as a recipient (`COMMUNICATION_TARGETS`)."""
Instant = Annotated[str, _INSTANT]
"""A real FHIR instant, kept exactly as written (`vocabulary.is_instant`)."""
OptionalInstant = Annotated[str | None, _INSTANT]
Status = Annotated[str, _STATUS]
"""A Communication status (`vocabulary.COMMUNICATION_STATUSES`)."""
OptionalStatus = Annotated[str | None, _STATUS]
MimeType = Annotated[str | None, _Check(check_mime_type, "mimeType", {
    "type": "string", "pattern": _anchored(MIME_TYPE_PATTERN), "x-message": MIME_TYPE_HINT})]
"""Attachment.contentType: `vocabulary.MIME_TYPE_PATTERN`."""
Text = Annotated[str, _Text()]
"""Any non-empty string, kept exactly as written."""
OptionalText = Annotated[str | None, _Text()]

CODING_STRING_SCHEMA: Final = {"type": "string", "pattern": _anchored(CODING_PATTERN), "x-message": CODING_HINT}
"""A code written as one string, `system|code`."""



@dataclass(frozen=True)
class ListOf:
    """Annotation of a `tuple[item, ...]` field that data writes as a list (`min_length` 1: never empty).

    Validated as a tuple of `item` only: a field typed `tuple[...] | None` takes None as its default,
    never as a value."""

    item: Any
    min_length: int = 0

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        items = core_schema.tuple_schema([handler.generate_schema(self.item)], variadic_item_index=0)
        return core_schema.no_info_before_validator_function(functools.partial(as_tuple, min_length=self.min_length),
                                                             items)

    def __get_pydantic_json_schema__(self, schema: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        out = handler(schema)
        return {**out, "minItems": self.min_length} if self.min_length else out
