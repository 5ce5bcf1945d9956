"""The record framework the spec classes are made of: `SpecModel` (a frozen pydantic model, equal by value),
`Record` with `@slotted` (a frozen pydantic dataclass with slots that offers a model's methods, checked the same
way, at a fraction of a model's memory), `FrozenMap` (an immutable mapping in the order written), and what they
share: a construction's errors as `SpecError`, a model's error when a field is set, `error` for a rule's
problem. Nothing here knows what a thread is (`bundler.spec.model` does).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, ItemsView, Iterator, KeysView, Mapping, ValuesView
from typing import Any, ClassVar, Self, TypeVar, cast, dataclass_transform

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
)
from pydantic.dataclasses import dataclass as pydantic_dataclass
from pydantic.fields import FieldInfo
from pydantic_core import CoreSchema, ErrorDetails, PydanticCustomError, SchemaSerializer, SchemaValidator

from ..errors import Problem, SpecError
from .problems import problems_of
from .source import Document, Path_

__all__ = ["RECORD_CONFIG", "FrozenMap", "Record", "SpecModel", "constructor", "error", "slotted", "spec_error",
           "without_defaults"]


RECORD_CONFIG = ConfigDict(extra="forbid", validate_by_alias=True, validate_by_name=False,
                            revalidate_instances="never")
"""No unknown fields, data names (aliases) when reading data, instances taken as they are (checked when made)."""


class SpecModel(BaseModel):
    """Frozen, no unknown fields, data names (aliases) when reading data; equal and hashed by value."""

    model_config = ConfigDict(frozen=True, **RECORD_CONFIG)

    def _validate(self, data: dict[str, Any]) -> None:
        """The constructors' work: validate `data` (by Python names) into self; SpecError listing every problem."""
        try:
            self.__pydantic_validator__.validate_python(data, self_instance=self, by_alias=False, by_name=True)
        except ValidationError as exc:
            raise spec_error(exc, data, type(self)) from None

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return self.__dict__ == other.__dict__  # fields only: where a spec was read from is not part of it

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Self:
        """A copy; with `update` (Python names), a new object checked like any other (SpecError if invalid)."""
        if not update:
            return super().model_copy(deep=deep)
        return type(self)(**{**{name: getattr(self, name) for name in type(self).model_fields}, **update})

    @classmethod
    def model_construct(cls, _fields_set: set[str] | None = None, **values: Any) -> Self:
        """Checked like any construction: a spec model is never made unchecked (SpecError if invalid)."""
        new = cls.__new__(cls)
        new._validate(values)
        return new


_Init = TypeVar("_Init", bound=Callable[..., None])


def constructor(init: _Init) -> _Init:
    """Marks a model's `__init__` (Python names, positional too) as not pydantic's entry point when reading
    data: `model_validate` keeps validating the data directly, by data names (pydantic calls a model's own
    `__init__` with the data otherwise)."""
    setattr(init, "__pydantic_base_init__", True)  # noqa: B010 - the flag pydantic's own __init__ carries
    return init


def without_defaults(**values: Any) -> dict[str, Any]:
    """Keyword arguments left at their defaults (None, or an empty tuple of attachments) are left out, so the
    model's defaults apply: in Python, None is 'not given'; data never holds it."""
    return {k: v for k, v in values.items() if v is not None and v != ()}


class Record:
    """Base of the spec classes a ThreadSpec holds (Participant, Coding, Message, Attachment): frozen pydantic
    dataclasses with slots (`slotted`), equal and hashed by value, offering the model methods a model offers
    (each checked the same way) and raising a model's errors when a field is set. Their own `__init__`
    (Python names; None is 'not given') validates a dict of its arguments into the new object through the
    class's schema."""

    __slots__ = ()
    __pydantic_core_schema__: ClassVar[CoreSchema]
    __pydantic_validator__: ClassVar[SchemaValidator]
    __pydantic_serializer__: ClassVar[SchemaSerializer]
    __pydantic_fields__: ClassVar[dict[str, FieldInfo]]
    model_fields: ClassVar[dict[str, FieldInfo]]
    model_config: ClassVar[ConfigDict] = ConfigDict(frozen=True, **RECORD_CONFIG)

    def _check(self, data: dict[str, Any]) -> None:
        """The constructors' work: validate `data` (by Python names) into self; SpecError listing every problem."""
        try:
            self.__pydantic_validator__.validate_python(data, self_instance=self, by_alias=False, by_name=True)
        except ValidationError as exc:
            raise spec_error(exc, data, type(self)) from None

    @classmethod
    def model_validate(cls, data: Any, **options: Any) -> Self:
        """From spec data (data names), as a model reads it: pydantic's ValidationError if invalid. `options`:
        those of `SchemaValidator.validate_python` (`strict`, `context`, ...)."""
        out: Self = cls.__pydantic_validator__.validate_python(data, **options)
        return out

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Self:
        """A copy; with `update` (Python names), a new object checked like any other (SpecError if invalid)."""
        if not update:
            return copy.deepcopy(self) if deep else copy.copy(self)
        return type(self)(**{**{name: getattr(self, name) for name in self.model_fields}, **update})

    @classmethod
    def model_construct(cls, _fields_set: set[str] | None = None, **values: Any) -> Self:
        """Checked like any construction: a spec object is never made unchecked (SpecError if invalid)."""
        new = cls.__new__(cls)
        new._check(values)
        return new

    def __iter__(self) -> Iterator[tuple[str, Any]]:  # a model's: (name, value) of each field, so dict(obj) works
        for name in self.model_fields:
            yield name, getattr(self, name)

    def __str__(self) -> str:  # a model's: its fields without the class's name (repr is the dataclass's, the same)
        return " ".join(f"{name}={getattr(self, name)!r}" for name in self.model_fields)

    def __setattr__(self, name: str, value: Any) -> None:
        raise _frozen(type(self), name, value)

    def __delattr__(self, name: str) -> None:
        raise _frozen(type(self), name, None)

    def model_dump(self, **options: Any) -> dict[str, Any]:
        """The fields by Python name, nested objects as dicts, as a model dumps. `options`: those of
        `SchemaSerializer.to_python` (`mode`, `by_alias`, `exclude_none`, ...)."""
        out: dict[str, Any] = type(self).__pydantic_serializer__.to_python(self, **options)
        return out

    def model_dump_json(self, **options: Any) -> str:
        """As JSON, as a model dumps it (`SchemaSerializer.to_json`'s options: `by_alias`, `indent`, ...)."""
        return type(self).__pydantic_serializer__.to_json(self, **options).decode()

    @classmethod
    def model_validate_json(cls, data: str | bytes, **options: Any) -> Self:
        """From spec data as JSON, as a model reads it: pydantic's ValidationError if invalid."""
        out: Self = cls.__pydantic_validator__.validate_json(data, **options)
        return out

    @classmethod
    def model_json_schema(cls, **options: Any) -> dict[str, Any]:
        """Its JSON Schema, as a model gives it (`TypeAdapter.json_schema`'s options: `by_alias`, `mode`, ...)."""
        return TypeAdapter(cls).json_schema(**options)


def _frozen(cls: type[Any], name: str, value: Any) -> ValidationError:
    """What a frozen model raises when a field is set or deleted (a frozen dataclass raises FrozenInstanceError,
    or in Python 3.11, for a name that is not a field, TypeError)."""
    return ValidationError.from_exception_data(cls.__name__, [{"type": "frozen_instance", "loc": (name,),
                                                               "input": value}])


def spec_error(exc: ValidationError, data: dict[str, Any], cls: type[Any]) -> SpecError:
    """A construction's errors (from validating `data` by Python names) as SpecError."""
    return SpecError(problems_of(exc, Document("<spec>", data), cls))


_R = TypeVar("_R", bound=Record)


@dataclass_transform(field_specifiers=(Field,), frozen_default=True)
def slotted(cls: type[_R]) -> type[_R]:
    """`cls` as a frozen pydantic dataclass with slots, its own `__init__` kept: pydantic's own validates its
    arguments as ArgsKwargs, 1.5 times as slow by keyword as our dict, and raises ValidationError, not SpecError."""
    init = cls.__dict__["__init__"]
    out = cast("type[_R]", pydantic_dataclass(frozen=True, slots=True, config=RECORD_CONFIG)(cls))
    setattr(out, "__init__", init)  # noqa: B010 - (mypy refuses assigning a method)
    del out.__setattr__, out.__delattr__  # the dataclass's go: `Record`'s raise a model's error instead
    out.model_fields = out.__pydantic_fields__
    return out


_V = TypeVar("_V")


class FrozenMap(Mapping[str, _V]):
    """An immutable, hashable mapping alias → value in the order written (what a spec's mappings are): equal to
    another of its kind with the same items in the same order, and to any mapping with the same items."""

    __slots__ = ("_items",)
    _items: dict[str, _V]

    def __init__(self, data: Mapping[str, Any] | None = None) -> None:
        """From data, or a mapping of checked values; checked like the models (SpecError listing every problem)."""
        try:
            self._items = self._validated(data or {})._items
        except PydanticCustomError as exc:
            raise SpecError([Problem("<spec>", None, None, "", exc.message())]) from None
        except ValidationError as exc:
            raise SpecError(problems_of(exc, Document("<spec>", data), type(self))) from None

    @classmethod
    def _validated(cls, data: Any) -> Self:
        """`data` checked, as an object of this class (PydanticCustomError or ValidationError if invalid)."""
        raise NotImplementedError

    @classmethod
    def _of(cls, items: dict[str, _V]) -> Self:
        new = object.__new__(cls)
        new._items = items
        return new

    def __getitem__(self, alias: str) -> _V:
        return self._items[alias]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, alias: object) -> bool:
        return alias in self._items

    def keys(self) -> KeysView[str]:  # (the dict's own views: the builder reads them for every thread)
        return self._items.keys()

    def values(self) -> ValuesView[_V]:
        return self._items.values()

    def items(self) -> ItemsView[str, _V]:
        return self._items.items()

    def get(self, alias: str, default: Any = None) -> Any:
        return self._items.get(alias, default)

    def __eq__(self, other: object) -> bool:
        if type(other) is type(self):
            return list(self._items.items()) == list(other._items.items())  # the order is part of a spec
        if isinstance(other, Mapping):
            return self._items == dict(other.items())
        return NotImplemented

    def __hash__(self) -> int:
        return hash(tuple(self._items.items()))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._items!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self)._of, (self._items,))


def error(message: str, loc: Path_, value: Any, *, on_key: bool = False) -> ErrorDetails:
    return {"type": "spec_key" if on_key else "spec", "loc": loc, "msg": message, "input": value}
