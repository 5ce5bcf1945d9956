"""The words of a spec problem: pydantic's errors (its `type`, `loc`, `input`) → `Problem`s with file, line,
column and field path, in our wording.

Three kinds of error reach this module. A scalar's refusal (type `key`, `alias`, `instant`, ...), worded
from the refused input by the function the scalar registered in `WORDING`. Our own, raised by the
spec's validators with their message written (`fail()`: type `spec`, about the value at the error's
location, or `spec_key`, about the mapping key there). And pydantic's, worded here by type: `missing`,
`extra_forbidden`, `string_type`, `model_type`, `string_too_short`, ... (a pydantic dataclass says
`unexpected_keyword_argument` and `dataclass_type` where a model says `extra_forbidden` and `model_type`).
Any other type keeps pydantic's message (none is known to reach it).
"""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Final, get_args, get_origin

from pydantic import BaseModel, ValidationError
from pydantic.dataclasses import is_pydantic_dataclass
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails, InitErrorDetails, PydanticCustomError

from ..errors import Problem
from .source import Document, Path_, shown

SPEC_ERROR = "spec"
"""Error type of our own messages about the value at the error's location."""
SPEC_KEY_ERROR = "spec_key"
"""Error type of our own messages about the mapping key at the error's location (its position is the key's)."""


WORDING: dict[str, Callable[[Any], str]] = {}
"""Error type → the message for the refused input: the spec's scalars register theirs (`key`, `instant`, ...)."""


_MISSING_HINTS: Final[dict[Path_, str]] = {
    ("participants",): ": list the thread's participants here, or give a participants file (--participants FILE, "
                       "participants=) that has them",
}
"""What to say after "missing required field" where there is more than one way to give the field."""

def fail(message: str, *, key: bool = False) -> PydanticCustomError:
    """An error with our message, for a validator to raise (braces in `message` are kept as they are)."""
    return PydanticCustomError(SPEC_KEY_ERROR if key else SPEC_ERROR, message)


def describe(value: Any) -> str:
    """What a value is, for 'got ...': `an integer (42)`, `a string ('x')`, `a list`, `nothing (null)`."""
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, int):
        return f"an integer ({value})"
    if isinstance(value, str):
        return f"a string ({shown(value)})"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def expected(what: str, value: Any) -> str:
    """`expected a string, got an integer (42) (quote it in YAML)`: the hint only where quoting would help."""
    quote = " (quote it in YAML)" if "a string" in what and not isinstance(value, dict | list | tuple | None) else ""
    return f"expected {what}, got {describe(value)}{quote}"


def wrong_type(what: str, value: Any) -> PydanticCustomError:
    return fail(expected(what, value))


_TYPE_WORDS = {
    "string_type": "a string", "model_type": "a mapping", "model_attributes_type": "a mapping",
    "dataclass_type": "a mapping", "dict_type": "a mapping", "tuple_type": "a list", "list_type": "a list",
    "int_type": "an integer",
}


def reraise(errors: list[ErrorDetails]) -> ValidationError:
    """A ValidationError holding `errors` (from `exc.errors()`, locations possibly changed), for a validator to
    raise: pydantic keeps each one's type, location and context."""
    details: list[InitErrorDetails] = []
    for e in errors:
        kind: str | PydanticCustomError = e["type"]
        if kind in (SPEC_ERROR, SPEC_KEY_ERROR) or kind in WORDING:  # ours: pydantic knows them by instance only
            kind = PydanticCustomError(kind, e["msg"])
        detail: InitErrorDetails = {"type": kind, "loc": e["loc"], "input": e["input"]}
        if "ctx" in e and not isinstance(kind, PydanticCustomError):
            detail["ctx"] = e["ctx"]
        details.append(detail)
    return ValidationError.from_exception_data("ThreadSpec", details)


def problems_of(exc: ValidationError, doc: Document, model: Any) -> list[Problem]:
    """Every error of `exc` (from validating `doc.data` as `model`: a model, or a type holding models) as a
    Problem at its file:line:col."""
    return [p for e in exc.errors(include_url=False) for p in _problem(e, doc, model)]


def _problem(e: ErrorDetails, doc: Document, model: Any) -> Iterator[Problem]:
    loc: Path_ = tuple(e["loc"])
    kind, value = e["type"], e["input"]
    if kind in WORDING:
        yield doc.problem(loc, WORDING[kind](value))
    elif kind == SPEC_ERROR:
        yield doc.problem(loc, e["msg"])
    elif kind == SPEC_KEY_ERROR:
        yield doc.problem(loc, e["msg"], key=True)
    elif kind == "missing":
        yield doc.problem(loc[:-1], f"missing required field '{loc[-1]}'{_MISSING_HINTS.get(loc, '')}")
    elif kind in ("extra_forbidden", "unexpected_keyword_argument"):  # (a model's word, a dataclass's)
        yield doc.problem(loc, _unknown_field(str(loc[-1]), fields_at(model, loc[:-1])), key=True)
    elif kind in _TYPE_WORDS:
        yield doc.problem(loc, expected(_TYPE_WORDS[kind], value))
    elif kind in ("string_too_short", "too_short"):
        yield doc.problem(loc, "must not be empty")
    else:  # pragma: no cover - every type the spec's validators can raise is worded above
        yield doc.problem(loc, e["msg"])


def _unknown_field(name: str, allowed: list[str]) -> str:
    close = difflib.get_close_matches(name, allowed, n=1, cutoff=0.6)
    if close:
        return f"unknown field '{name}' (did you mean '{close[0]}'?)"
    return f"unknown field '{name}' (allowed: {', '.join(sorted(allowed))})" if allowed else f"unknown field '{name}'"


def data_names(model: type[Any]) -> list[str]:
    """The field names of `model` (a model or a pydantic dataclass) as data writes them (aliases), leaving out
    fields data never holds."""
    return [f.alias or name for name, f in _fields(model).items() if not f.exclude]


def fields_at(model: Any, path: Path_) -> list[str]:
    """The data names allowed in the mapping at `path` below `model` (following its fields' types; `model` may
    also be a list or mapping type of models)."""
    current: Any = model
    for part in path:
        if _is_model(current):
            current = next((f.annotation for name, f in _fields(current).items() if part in (name, f.alias)), None)
        else:
            current = _item(current)  # `part` is a list index or a mapping key
        if current is None:
            return []
    current = _unwrap(current)
    return data_names(current) if _is_model(current) else []


def _is_model(tp: Any) -> bool:
    """A pydantic model, or a pydantic dataclass (the spec's slotted classes)."""
    return isinstance(tp, type) and (issubclass(tp, BaseModel) or is_pydantic_dataclass(tp))


def _fields(model: type[Any]) -> dict[str, FieldInfo]:
    fields: dict[str, FieldInfo] = model.__pydantic_fields__
    return fields


def _unwrap(tp: Any) -> Any:
    """`X` for `X | None` and `Annotated[X, ...]`."""
    origin = get_origin(tp)
    if origin is typing.Annotated:
        return _unwrap(get_args(tp)[0])
    if origin in (typing.Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        return _unwrap(args[0]) if len(args) == 1 else tp
    return tp


def _item(tp: Any) -> Any:
    """The type of an item of a list or mapping type: `Message` for `tuple[Message, ...]`."""
    tp = _unwrap(tp)
    model = getattr(tp, "__item_model__", None)  # a mapping type of models (Participants)
    if model is not None:
        return model
    origin = get_origin(tp)
    if origin in (tuple, list):
        return get_args(tp)[0]
    if origin is not None and isinstance(origin, type) and issubclass(origin, Mapping):
        return get_args(tp)[1]
    return None
