"""The constrained values of the spec format, one type each: what it accepts, how a refusal is worded, and its
JSON Schema (a `$defs` entry the generated schema refers to by name).

Every grammar, code list and hint comes from `bundler.vocabulary`. Checks run inside pydantic-core where a
pattern says it all (anchored `^...$`, which there matches only at the very end, like `fullmatch`: "abc\\n"
is no key), in Python where a rule needs more (a real date, a reference type allowed in a role). A
refusal is one error of the scalar's own type (`key`, `alias`, `instant`, ...), worded from the input by
`WORDING` when it is reported: so the hot path never builds a message.

Keys, ids and aliases may be written as YAML/JSON integers and become strings (`12` → "12"; `007` is a
string already); booleans never do. A type annotated `str | None` takes only strings: its None is the
default when the field is left out, never a value data may hold (`text: null` is refused).
"""

from __future__ import annotations

import functools
import re
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
    LEADING_DOT_HINT,
    MIME_TYPE_HINT,
    MIME_TYPE_PATTERN,
    READ_MODELS,
    REFERENCE_HINT,
    REFERENCE_PATTERN,
    REQUEST_PRIORITIES,
    SURELY_REAL_INSTANT_PATTERN,
    THREAD_KEY_HINT,
    THREAD_KEY_PATTERN,
    instant_problem,
    is_alias,
    is_instant,
    is_instant_shaped,
    is_key,
    is_reference,
    reference_pattern,
    reference_type,
)
from .problems import WORDING, expected, fail
from .source import shown

ALIAS_MESSAGE: Final = "must be a participant alias"
ALIAS_OR_REFERENCE_MESSAGE: Final = ("must be a participant alias or a reference (Type/id or "
                                     "Type?identifier=system|value)")
STATUS_MESSAGE: Final = "must be a Communication status"
PRIORITY_MESSAGE: Final = "must be a request priority"
READ_MODEL_MESSAGE: Final = "must be a read model"

DEFS: dict[str, dict[str, Any]] = {}
"""name → JSON Schema of every named scalar, for the generated schema's `$defs`."""
DEF_KEY: Final = "x-def"
"""Where a scalar's JSON Schema names its `$defs` entry: `bundler.spec.schema` turns it into a `$ref`."""


def anchored(pattern: str) -> str:
    """A vocabulary pattern (used with fullmatch) as JSON Schema and pydantic-core write it: `^...$`."""
    return f"^{pattern}$"


def not_allowed(kind: str, what: str, role: str) -> str:
    """`FHIR R4 does not allow a Location as a participant of a Communication (allowed: ...)`."""
    return (f"FHIR R4 does not allow a {kind} as {what} of a Communication (allowed: "
            f"{', '.join(sorted(COMMUNICATION_TARGETS[role]))})")


def text_of(value: Any) -> str | None:
    """A string as it is, an integer (not a boolean) as its digits, anything else None."""
    if isinstance(value, str):
        return value
    return str(value) if type(value) is int else None


def as_key(value: Any) -> str | None:
    """`value` as a key or message id, or None if it is not one."""
    text = text_of(value)
    return text if text is not None and is_key(text) else None


def as_alias(value: Any) -> str | None:
    """`value` as a participant alias, or None if it is not one."""
    text = text_of(value)
    return text if text is not None and is_alias(text) else None


def as_alias_or_reference(value: Any) -> str | None:
    text = text_of(value)
    return text if text is not None and (is_alias(text) or is_reference(text)) else None


# --- wording: a refused value → our message (looked up by `problems` from the error's type) -----------------

def _grammar(hint: str, *, integers: bool = True) -> Callable[[Any], str]:
    def words(value: Any) -> str:
        text = text_of(value) if integers else value if isinstance(value, str) else None
        if text is None:
            return expected("a string or an integer" if integers else "a string", value)
        return f"{shown(text)} {hint}"
    return words


def _thread_key_words(value: Any) -> str:
    text = text_of(value)
    if text is not None and is_key(text):  # a key, but for its leading '.'
        return f"{shown(text)} {LEADING_DOT_HINT}"
    return _grammar(KEY_HINT)(value)


def _instant_words(value: Any) -> str:
    if not isinstance(value, str):
        return expected("a string", value)
    if not is_instant_shaped(value):
        return f"{shown(value)} {INSTANT_HINT}"
    return instant_problem(value) or INSTANT_HINT


def _reference_words(value: Any) -> str:
    if not isinstance(value, str):
        return expected("a string", value)
    if not is_reference(value):
        return f"{shown(value)} {REFERENCE_HINT}"
    return not_allowed(reference_type(value), "a participant", "recipient")


def _status_words(value: Any) -> str:
    if not isinstance(value, str):
        return expected(f"a Communication status (one of: {', '.join(COMMUNICATION_STATUSES)})", value)
    return f"{shown(value)} {STATUS_MESSAGE} (one of: {', '.join(COMMUNICATION_STATUSES)})"


def _one_of(message: str, codes: tuple[str, ...]) -> Callable[[Any], str]:
    """The wording of a refused code of `codes` (a priority, a read model)."""
    def words(value: Any) -> str:
        if not isinstance(value, str):
            return expected(f"a string (one of: {', '.join(codes)})", value)
        return f"{shown(value)} {message} (one of: {', '.join(codes)})"
    return words


WORDING.update({
    "priority": _one_of(PRIORITY_MESSAGE, REQUEST_PRIORITIES),
    "read_model": _one_of(READ_MODEL_MESSAGE, READ_MODELS),
    "key": _grammar(KEY_HINT),
    "thread_key": _thread_key_words,
    "alias": _grammar(ALIAS_MESSAGE),
    "alias_or_reference": _grammar(ALIAS_OR_REFERENCE_MESSAGE),
    "participant_reference": _reference_words,
    "instant": _instant_words,
    "status": _status_words,
    "mime_type": _grammar(MIME_TYPE_HINT, integers=False),
})


# --- checks --------------------------------------------------------------------------------------------------

def _pattern(pattern: str, *, integers: bool = True) -> CoreSchema:
    """A string matching `pattern` (a vocabulary pattern), or with `integers` an integer whose digits do."""
    text = core_schema.str_schema(pattern=anchored(pattern), strict=True)
    if not integers:
        return text
    digits = core_schema.chain_schema([core_schema.int_schema(strict=True),
                                       core_schema.no_info_plain_validator_function(str), text])
    return core_schema.union_schema([text, digits], mode="left_to_right")


def _real_instant(value: Any) -> str:
    if isinstance(value, str) and is_instant(value):
        return value
    raise ValueError  # (worded by `_instant_words`)


@dataclass(frozen=True)
class _Scalar:
    """Annotation of a named scalar: `schema` checks it, an error of type `name` refuses it (worded by
    `WORDING[name]`), and its JSON Schema is `DEFS[def_name]`, referred to by name."""

    name: str
    schema: CoreSchema = field(compare=False)
    def_name: str
    json_schema: dict[str, Any] = field(compare=False)

    def __post_init__(self) -> None:
        DEFS[self.def_name] = self.json_schema

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        return core_schema.custom_error_schema(self.schema, custom_error_type=self.name,
                                               custom_error_message=f"invalid {self.name}")

    def __get_pydantic_json_schema__(self, schema: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        return {DEF_KEY: self.def_name}


class _Text:
    """Annotation of a non-empty string kept exactly as written (pydantic's own check; `problems` words it)."""

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        return core_schema.str_schema(strict=True, min_length=1)

    def __get_pydantic_json_schema__(self, schema: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        return {"type": "string", "minLength": 1}


_KEY = _Scalar("key", _pattern(KEY_PATTERN), "key", {
    "type": ["string", "integer"], "pattern": anchored(KEY_PATTERN), "x-message": KEY_HINT})
_ALIAS = _Scalar("alias", _pattern(ALIAS_PATTERN), "alias", {
    "type": ["string", "integer"], "pattern": anchored(ALIAS_PATTERN), "x-message": ALIAS_MESSAGE})
_INSTANT = _Scalar("instant", core_schema.union_schema(  # the common case in pydantic-core, the rest in Python
    [core_schema.str_schema(pattern=anchored(SURELY_REAL_INSTANT_PATTERN), strict=True),
     core_schema.no_info_plain_validator_function(_real_instant)], mode="left_to_right"), "instant", {
    "type": "string", "pattern": anchored(INSTANT_PATTERN), "x-message": INSTANT_HINT})
_STATUS = _Scalar("status", core_schema.literal_schema(list(COMMUNICATION_STATUSES)), "status", {
    "description": "A Communication status (default in-progress).", "enum": list(COMMUNICATION_STATUSES),
    "x-message": STATUS_MESSAGE})

Key = Annotated[str, _KEY]
"""A message id: `vocabulary.KEY_PATTERN` (an integer becomes its digits)."""
ThreadKey = Annotated[str, _Scalar("thread_key", _pattern(THREAD_KEY_PATTERN), "threadKey", {
    "type": ["string", "integer"], "pattern": anchored(THREAD_KEY_PATTERN), "x-message": THREAD_KEY_HINT})]
"""A thread key: `vocabulary.THREAD_KEY_PATTERN` (an integer becomes its digits)."""
OptionalKey = Annotated[str | None, _KEY]
Alias = Annotated[str, _ALIAS]
"""A participant alias where it names a participant: `vocabulary.ALIAS_PATTERN`."""
OptionalAlias = Annotated[str | None, _ALIAS]
AliasOrReference = Annotated[str | None, _Scalar(
    "alias_or_reference", _pattern(f"(?:{ALIAS_PATTERN}|{REFERENCE_PATTERN})"), "aliasOrReference", {
        "type": ["string", "integer"], "pattern": anchored(f"(?:{ALIAS_PATTERN}|{REFERENCE_PATTERN})"),
        "x-message": ALIAS_OR_REFERENCE_MESSAGE})]
"""A participant alias or a reference string (`Type/id`, `Type?identifier=system|value`)."""
ParticipantReference = Annotated[str, _Scalar(
    "participant_reference", _pattern(reference_pattern(COMMUNICATION_TARGETS["recipient"]), integers=False),
    "reference", {
        "type": "string", "pattern": anchored(reference_pattern(COMMUNICATION_TARGETS["recipient"])),
        "x-message": REFERENCE_HINT})]
"""A reference to a resource a Communication may have as a recipient (`COMMUNICATION_TARGETS`)."""
Instant = Annotated[str, _INSTANT]
"""A real FHIR instant, kept exactly as written (`vocabulary.is_instant`)."""
OptionalInstant = Annotated[str | None, _INSTANT]
Status = Annotated[str, _STATUS]
"""A Communication status (`vocabulary.COMMUNICATION_STATUSES`)."""
OptionalStatus = Annotated[str | None, _STATUS]
OptionalPriority = Annotated[str | None, _Scalar(
    "priority", core_schema.literal_schema(list(REQUEST_PRIORITIES)), "priority", {
        "description": "A request priority (Communication.priority, Task.priority).",
        "enum": list(REQUEST_PRIORITIES), "x-message": PRIORITY_MESSAGE})]
"""A request priority (`vocabulary.REQUEST_PRIORITIES`)."""
OptionalReadModel = Annotated[str | None, _Scalar(
    "read_model", core_schema.literal_schema(list(READ_MODELS)), "readModel", {
        "description": "How read state is kept on the server (default: not at all).", "enum": list(READ_MODELS),
        "x-message": READ_MODEL_MESSAGE})]
"""One of Medplum's read models (`vocabulary.READ_MODELS`)."""
MimeType = Annotated[str | None, _Scalar("mime_type", _pattern(MIME_TYPE_PATTERN, integers=False), "mimeType", {
    "type": "string", "pattern": anchored(MIME_TYPE_PATTERN), "x-message": MIME_TYPE_HINT})]
"""Attachment.contentType: `vocabulary.MIME_TYPE_PATTERN`."""
Text = Annotated[str, _Text()]
"""Any non-empty string, kept exactly as written."""
OptionalText = Annotated[str | None, _Text()]


def _not_empty(value: str) -> str:
    if value:
        return value
    raise fail("must not be empty")


class _LongText(_Text):
    """A `_Text` that may be long (a message's text): its emptiness is asked in Python, as pydantic-core would
    first copy a non-ASCII string to UTF-8 to count its characters."""

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        return core_schema.no_info_after_validator_function(_not_empty, core_schema.str_schema(strict=True))


OptionalLongText = Annotated[str | None, _LongText()]

CODING_STRING_SCHEMA: Final = {"type": "string", "pattern": anchored(CODING_PATTERN), "x-message": CODING_HINT}
"""A code written as one string, `system|code`."""

_ALIAS_NAME = re.compile(ALIAS_PATTERN)
DEFS["aliasName"] = {"type": "string", "pattern": anchored(ALIAS_PATTERN), "x-message": ALIAS_HINT}


def check_alias_name(value: Any) -> str:
    """A participant's alias where it is a mapping key (`participants`): its problem is placed at the key."""
    text = text_of(value)
    if text is None:
        raise fail(expected("a string or an integer", value), key=True)
    if _ALIAS_NAME.fullmatch(text) is None:
        raise fail(f"{shown(text)} {ALIAS_HINT}", key=True)
    return text


def as_tuple(value: Any, min_length: int = 0) -> tuple[Any, ...]:
    """A YAML/JSON list (or a Python tuple) as a tuple; anything else is refused (a set has no order to keep)."""
    kind = type(value)
    if kind is not list and kind is not tuple:
        raise fail(expected("a list", value))
    items = tuple(value)  # (the same object when it is a tuple)
    if len(items) < min_length:
        raise fail("must not be empty")
    return items


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

