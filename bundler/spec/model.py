"""The spec format, one model of it: frozen pydantic classes that read spec data, check it whole, and write it
back (`ThreadSpec.to_data()`); the JSON Schema is generated from them (`bundler.spec.schema`).

    spec = parse_spec({"thread": "t1", "topic": "Hello", "participants": {...}, "messages": [...]})
    spec = ThreadSpec(key="t1", topic="Hello", participants={"a": Participant("a", "Patient/1")}, messages=(...))
    parse_spec(spec.to_data()) == spec

A ThreadSpec only exists checked. Whether it is read from data (`parse_spec`, `check_document`,
`bundler.spec.load_specs`) or made in Python (`ThreadSpec(...)`, `Message(...)`, ...), the same rules
hold: the structure (fields, types, grammars of keys, aliases, references, instants, codes) and the
meaning (aliases known, a reference type FHIR allows in each role, message ids unique, a reply after
what it answers). Bad data gives `SpecError` listing every problem with its field path (and, for a
file, its line and column); so does a bad construction in Python: `SpecError` (never pydantic's
ValidationError), each problem's path naming the Python field (`messages[2].sent`).

Data names (`thread`, `contentType`) are the spec format's; Python names (`key`, `content_type`) are
the attributes and the constructors' keywords. Positions of a spec read from a file are kept aside
(`origin()`), never compared or hashed: two specs are equal when their values are.

ThreadSpec is a pydantic model; what it holds (Participant, Coding, Message, Attachment) are frozen
pydantic dataclasses with slots (`Record`): the same rules, errors, constructors and model methods as
models, at 56 bytes an object (a Message 96) instead of 480 (568), and read more than twice as fast by
the builder. Either kind is checked whenever it is made. The record framework is `bundler.spec.records`; the
rules of what the fields mean together, `bundler.spec.meaning`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Final

import orjson
from pydantic import (
    Field,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
    ModelWrapValidatorHandler,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    model_validator,
)
from pydantic.json_schema import JsonSchemaValue, SkipJsonSchema
from pydantic_core import CoreSchema, ErrorDetails, PydanticCustomError, core_schema

from ..errors import Problem, SpecError
from ..vocabulary import (
    CODING_HINT,
    COMMUNICATION_TARGETS,
    DEFAULT_STATUS,
    DRAFT_STATUS,
    IDENTIFIER_VALUE_HINT,
    READ_MODELS,
    SERVER_ELEMENTS,
    conditional_reference,
    identifier_system_problem,
    instant_problem,
    is_coding,
    is_identifier_value,
)
from .attachments import FileBytes
from .meaning import (
    NO_CONTENT,
    MessageView,
    default_ids,
    names_someone,
    read_state_meaning,
    thread_meaning,
)
from .problems import WORDING, describe, expected, fail, problems_of, reraise
from .records import (
    FrozenMap,
    Record,
    SpecModel,
    constructor,
    error,
    slotted,
    spec_error,
    without_defaults,
)
from .scalars import (
    CODING_STRING_SCHEMA,
    DEF_KEY,
    Alias,
    AliasOrReference,
    Key,
    ListOf,
    MimeType,
    OptionalAlias,
    OptionalInstant,
    OptionalKey,
    OptionalLongText,
    OptionalPriority,
    OptionalReadModel,
    OptionalStatus,
    OptionalText,
    ParticipantReference,
    Status,
    Text,
    ThreadKey,
    as_alias,
    as_alias_or_reference,
    check_alias_name,
    not_allowed,
)
from .source import Document, Path_, format_path, shown

if TYPE_CHECKING:
    from .participants import ParticipantsFile

__all__ = ["DEFAULT_STATUS", "Attachment", "Coding", "CreateResource", "Message", "Participant", "Participants",
           "ReadBy", "ThreadSpec", "check_document", "parse_spec", "with_read_model"]


# --- participants -----------------------------------------------------------------------------------


class CreateResource(str):
    """A participant's `create`: a FHIR resource as canonical JSON text (keys sorted, no spaces), so a Participant
    stays hashable and equal by value; `resource()` gives it as data."""

    __slots__ = ()

    def resource(self) -> dict[str, Any]:
        out: dict[str, Any] = orjson.loads(str(self))
        return out


def _create_problem(value: Any) -> str | None:
    """Why `value` cannot be a participant's `create` (a FHIR resource to create when missing), or None."""
    if not isinstance(value, Mapping):
        return expected("a FHIR resource (a mapping with resourceType and identifier)", value)
    kind = value.get("resourceType")
    if not isinstance(kind, str) or kind not in COMMUNICATION_TARGETS["recipient"]:
        shown_kind = kind if isinstance(kind, str) else describe(kind)
        return (f"resourceType {shown_kind!r}: " if kind is not None else "needs a resourceType: ") + \
            not_allowed("resource of that type" if kind is not None else "resource", "a participant", "recipient")
    given = [e for e in SERVER_ELEMENTS if e in value]
    if given:
        return f"must not give {' or '.join(given)}: the server sets it (the participant is found by its identifier)"
    idents = value.get("identifier")
    if not isinstance(idents, list | tuple) or not idents or not isinstance(idents[0], Mapping):
        return "needs an identifier: a list whose first item is {system, value} (its conditional reference searches it)"
    first = idents[0]
    if (why := identifier_system_problem(first.get("system"))) is not None:
        return f"identifier[0].system: {why}"
    if not is_identifier_value(first.get("value")):
        return f"identifier[0].value: {IDENTIFIER_VALUE_HINT}"
    return None


def _create(value: Any) -> CreateResource:
    """A participant's `create`, checked, as canonical JSON text."""
    if isinstance(value, CreateResource):
        return value
    if (why := _create_problem(value)) is not None:
        raise fail(why)
    try:
        return CreateResource(orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode())
    except TypeError as exc:
        raise fail(f"is not plain JSON data ({exc})") from None


def created_reference(create: Mapping[str, Any]) -> str:
    """The conditional reference of a resource to create (checked by `_create_problem`): its type and first
    identifier."""
    first = create["identifier"][0]
    return conditional_reference(create["resourceType"], first["system"], first["value"])


class _Create:
    """Annotation of a participant's `create` (`_create`); its JSON Schema: a FHIR resource with an identifier."""

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        return core_schema.no_info_plain_validator_function(_create)

    def __get_pydantic_json_schema__(self, schema: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        return {"description": "A FHIR resource to create when missing (conditional create on its first "
                               "identifier): no id, a type a Communication may have as a recipient.",
                "type": "object", "required": ["resourceType", "identifier"],
                "properties": {"resourceType": {"enum": sorted(COMMUNICATION_TARGETS["recipient"])},
                               "identifier": {"type": "array", "minItems": 1,
                                              "prefixItems": [{"type": "object", "required": ["system", "value"]}]}},
                "not": {"anyOf": [{"required": [e]} for e in SERVER_ELEMENTS]}}


OptionalCreate = Annotated[CreateResource | None, _Create()]


@slotted
class Participant(Record):
    """A person or thing in the thread: `alias` (its key in `participants`) → a reference, a display name, and how
    to create it when missing (`create`: its reference is then the conditional one of its first identifier)."""

    alias: Annotated[SkipJsonSchema[Alias], Field(exclude=True)]
    reference: Annotated[ParticipantReference, Field(description="Type/id or Type?identifier=system|value: a "
                                                                 "resource FHIR R4 allows as a Communication's "
                                                                 "recipient. Derived from `create` when omitted.")]
    display: Annotated[OptionalText, Field(description="The name shown for the participant.")] = None
    create: OptionalCreate = None

    def __init__(self, alias: str, reference: str | None = None, display: str | None = None,
                 create: Mapping[str, Any] | None = None) -> None:
        self._check(without_defaults(alias=alias, reference=reference, display=display, create=create))

    @model_validator(mode="before")
    @classmethod
    def _derived(cls, data: Any) -> Any:
        """`reference` from `create` when omitted; refused when both are given and disagree."""
        if not isinstance(data, dict):
            return data
        create = data.get("create")
        if create is None:
            if data.get("reference") is None and "reference" not in data:
                raise fail("needs a reference (Type/id or Type?identifier=system|value), or create (a FHIR "
                           "resource to create when missing)")
            return data
        if _create_problem(create) is not None and not isinstance(create, CreateResource):
            return data  # (the create field says why)
        derived = created_reference(create.resource() if isinstance(create, CreateResource) else create)
        given = data.get("reference")
        if given is None:
            return {**data, "reference": derived}
        if given != derived:
            raise fail(f"reference {given!r} does not match create: its type and first identifier make it "
                       f"{derived!r} (leave reference out)")
        return data

    @classmethod
    def __get_pydantic_json_schema__(cls, schema: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        return _reference_or_create(handler.resolve_ref_schema(handler(schema)))

    def to_data(self) -> dict[str, Any]:
        """As spec data (with `reference` also when `create` makes it: what data gave is never left out)."""
        out: dict[str, Any] = {"reference": self.reference}
        if self.display is not None:
            out["display"] = self.display
        if self.create is not None:
            out["create"] = self.create.resource()
        return out


def _reference_or_create(out: JsonSchemaValue) -> JsonSchemaValue:
    """A participant's JSON Schema: `reference`, or `create` (which makes it)."""
    out = dict(out)
    out["required"] = [name for name in out.get("required", []) if name != "reference"]
    if not out["required"]:
        del out["required"]
    out["anyOf"] = [{"required": ["reference"]}, {"required": ["create"]}]
    return out


class Participants(FrozenMap[Participant]):
    """A spec's participants: alias → Participant, in the order written; immutable and hashable.

    Read from data as a mapping alias → {reference, display}; made in Python from a mapping alias →
    Participant (each with that alias)."""

    __slots__ = ()
    __item_model__: ClassVar[type[Record]] = Participant

    @classmethod
    def _validated(cls, data: Any) -> Participants:
        return _participants(data)

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        return core_schema.no_info_plain_validator_function(_participants)

    @classmethod
    def __get_pydantic_json_schema__(cls, schema: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        return {"description": "Everyone in the thread: alias -> {reference, display, create}. May be left out, or "
                               "name only some, when a participants file (--participants) gives the others.",
                "type": "object",
                "minProperties": 1, "x-message": "needs at least one participant",
                "propertyNames": {DEF_KEY: "aliasName"},
                "additionalProperties": _reference_or_create(handler(Participant.__pydantic_core_schema__))}


def _aliased(value: Any, what: str, empty: str, out: Mapping[str, Any], errors: list[ErrorDetails]
             ) -> Iterator[tuple[Any, str, Any]]:
    """(key, alias, entry) of each entry of a mapping keyed by aliases whose key is a new valid alias (not in
    `out` yet: the caller adds what it keeps); the others are `errors`. Fails for what is not a mapping, or an
    empty one (`empty` says why)."""
    if not isinstance(value, Mapping):
        raise fail(expected(what, value))
    if not value:
        raise fail(empty)
    for key, entry in value.items():
        if type(entry) is Participant and entry.alias == key and key not in out:  # made in Python: checked already
            yield key, key, entry
            continue
        try:
            alias = check_alias_name(key)
        except PydanticCustomError as exc:
            errors.append(error(exc.message(), (key,), key, on_key=True))
            continue
        if alias in out:
            errors.append(error(f"alias {alias!r} is given twice", (key,), key, on_key=True))
        else:
            yield key, alias, entry


def _participants(value: Any) -> Participants:
    """Validate a mapping alias → participant data (or Participant): every problem in every entry at once."""
    if isinstance(value, Participants):
        return value
    out: dict[str, Participant] = {}
    errors: list[ErrorDetails] = []
    for key, alias, entry in _aliased(value, "a mapping", "needs at least one participant", out, errors):
        if isinstance(entry, Participant):
            if entry.alias != alias:
                errors.append(error(f"is the participant aliased {entry.alias!r}: give it under that key", (key,),
                                     entry))
            else:
                out[alias] = entry
        elif isinstance(entry, dict):
            data = dict(entry)
            if "alias" in data:  # the alias is the key: data never names it inside
                errors.append({"type": "extra_forbidden", "loc": (key, "alias"), "msg": "", "input": data.pop("alias")})
            try:
                out[alias] = Participant.model_validate({**data, "alias": alias})
            except ValidationError as exc:
                errors.extend({**e, "loc": (key, *e["loc"])} for e in _without_derived(exc.errors(include_url=False)))
        else:
            errors.append(error(expected("a mapping", entry), (key,), entry))
    if errors:
        raise reraise(errors)
    return Participants._of(out)


def _without_derived(errors: list[ErrorDetails]) -> list[ErrorDetails]:
    """A participant's errors, less the missing `reference` when its `create` (which would make it) is wrong."""
    if any(e["loc"][:1] == ("create",) for e in errors):
        return [e for e in errors if not (e["loc"] == ("reference",) and e["type"] == "missing")]
    return errors


# --- read state ------------------------------------------------------------------------------------


class ReadBy(FrozenMap[str]):
    """Who read a message and when: alias → FHIR instant, in the order written; immutable and hashable.

    Read from data as a mapping `{alias: instant}`; made in Python from any such mapping. Which aliases may
    read the message (its recipients) and when (not before it was sent) is the thread's to judge
    (`read_state_meaning`)."""

    __slots__ = ()

    @classmethod
    def _validated(cls, data: Any) -> ReadBy:
        return _read_by(data)

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        return core_schema.no_info_plain_validator_function(
            _read_by, serialization=core_schema.plain_serializer_function_ser_schema(dict))

    @classmethod
    def __get_pydantic_json_schema__(cls, schema: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        return {"description": "Who read the message, and when: alias -> FHIR instant. Only its recipients read it, "
                               "not before it was sent.", "type": "object", "minProperties": 1,
                "propertyNames": {DEF_KEY: "aliasName"}, "additionalProperties": {DEF_KEY: "instant"}}


NO_READS: Final = ReadBy._of({})
"""A message nobody has read (the default)."""


def _read_by(value: Any) -> ReadBy:
    """Validate a mapping alias → instant (or a ReadBy): every problem in every entry at once."""
    if isinstance(value, ReadBy):
        return value
    out: dict[str, str] = {}
    errors: list[ErrorDetails] = []
    for key, alias, when in _aliased(value, "a mapping alias -> instant",
                                     "needs at least one reader (leave read_by out for a message nobody read)",
                                     out, errors):
        if not isinstance(when, str) or instant_problem(when) is not None:
            errors.append({"type": "instant", "loc": (key,), "msg": WORDING["instant"](when), "input": when})
        else:
            out[alias] = when
    if errors:
        raise reraise(errors)
    return ReadBy._of(out)


# --- codes, attachments, messages ------------------------------------------------------------------


@slotted
class Coding(Record):
    """A code of the thread's `category`: data writes it `system|code`, or as {system, code, display}."""

    code: Text
    system: OptionalText = None
    display: OptionalText = None

    def __init__(self, code: str, system: str | None = None, display: str | None = None) -> None:
        self._check(without_defaults(code=code, system=system, display=display))

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, data: Any) -> Any:
        if isinstance(data, str):
            if not is_coding(data):
                raise fail(f"{shown(data)} {CODING_HINT}")
            system, code = data.split("|", 1)
            return {"system": system, "code": code}
        if not isinstance(data, dict | Coding):
            raise fail(f"must be 'system|code' or a mapping {{system, code, display}}; got {describe(data)}")
        return data

    @classmethod
    def __get_pydantic_json_schema__(cls, schema: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        mapping = handler.resolve_ref_schema(handler(schema))
        return {"x-message": "must be 'system|code' or a mapping {system, code, display}",
                "oneOf": [CODING_STRING_SCHEMA, mapping]}

    def to_data(self) -> str | dict[str, str]:
        """`system|code` when that says it all, else {system, code, display} without what is absent."""
        if self.system is not None and self.display is None and is_coding(f"{self.system}|{self.code}"):
            return f"{self.system}|{self.code}"
        out = {"system": self.system} if self.system is not None else {}
        out["code"] = self.code
        if self.display is not None:
            out["display"] = self.display
        return out


@slotted
class Attachment(Record):
    """A message's attachment: becomes a `payload.contentAttachment`. Either `url` (where the content is), or
    `file` (a path relative to the spec file: the bytes travel with the thread as a Binary, or are uploaded first
    when too large for a request). A file's `size` and `hash` (SHA-1, base64) are filled in when the spec is read
    from its file (`bundler.spec.load_specs`; its `contentType` too, from the file name, unless given); given in
    the spec, they must be the file's."""

    url: Annotated[OptionalText, Field(description="Where the content is: Binary/<id> for a Medplum Binary, or a "
                                                   "URL.")] = None
    file: Annotated[OptionalText, Field(description="A file whose bytes to attach, relative to the spec file.")] = None
    content_type: Annotated[MimeType, Field(alias="contentType")] = None
    title: OptionalText = None
    size: Annotated[int | None, Field(ge=0, strict=True, description="The file's size in bytes (filled in).")] = None
    hash: Annotated[OptionalText, Field(description="SHA-1 of the file, base64 (filled in).")] = None

    def __init__(self, url: str | None = None, content_type: str | None = None, title: str | None = None, *,
                 file: str | None = None, size: int | None = None, hash: str | None = None) -> None:
        self._check(without_defaults(url=url, file=file, content_type=content_type, title=title, size=size,
                                      hash=hash))

    @model_validator(mode="after")
    def _one_source(self) -> Attachment:
        if (self.url is None) == (self.file is None):
            raise fail("needs url (where the content is) or file (a file to attach), not both" if self.url else
                       "needs url (where the content is) or file (a file to attach)")
        if self.file is None and (self.size is not None or self.hash is not None):
            raise fail("size and hash are filled in for a file attachment: give file, or leave them out")
        return self

    @classmethod
    def __get_pydantic_json_schema__(cls, schema: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        out = handler.resolve_ref_schema(handler(schema))
        out["oneOf"] = [{"required": ["url"]}, {"required": ["file"]}]
        return out

    def to_data(self) -> dict[str, Any]:
        out: dict[str, Any] = {"url": self.url} if self.url is not None else {"file": self.file}
        if self.content_type is not None:
            out["contentType"] = self.content_type
        if self.title is not None:
            out["title"] = self.title
        if self.size is not None:
            out["size"] = self.size
        if self.hash is not None:
            out["hash"] = self.hash
        return out


_NO_SENT = f"a message needs sent (only a draft, status: {DRAFT_STATUS}, may leave it out)"
_DRAFT_READ = f"a draft (status: {DRAFT_STATUS}) was never sent, so nobody read it: remove read_by"


def _whole(args: tuple[dict[str, Any], Any]) -> tuple[dict[str, Any], Any]:
    """A message's fields, all valid, and its dataclass's init-only arguments (none), checked together, the first
    problem found said: it has text or attachments (when a field failed, `MessageView` says it beside their
    problems); it has `sent` unless it is a draft; a draft has no readers. (One function: migrate makes many.)"""
    fields = args[0]
    if fields["text"] is None and not fields["attachments"]:
        raise fail(NO_CONTENT)
    draft = fields["status"] == DRAFT_STATUS
    if fields["sent"] is None and not draft:
        raise fail(_NO_SENT)
    if draft and fields["read_by"]:
        raise fail(_DRAFT_READ)
    return args


@slotted
class Message(Record):
    """One message of a thread: becomes a Communication with `partOf` → the thread's header."""

    id: Annotated[Key, Field(description="Unique in the thread; default: the message's 1-based position.")]
    sender: Alias
    sent: Annotated[OptionalInstant, Field(description="When it was sent: a FHIR instant, kept exactly as written. "
                                                       "Only a draft (status: preparation) may leave it out.")] = None
    text: OptionalLongText = None
    attachments: Annotated[tuple[Attachment, ...], ListOf(Attachment, min_length=1)] = ()
    recipient: Annotated[tuple[str, ...] | None, ListOf(Alias, min_length=1),
                         Field(description="Aliases; default: every participant except the sender.")] = None
    reply_to: Annotated[OptionalKey, Field(description="The id of an earlier message in this thread.")] = None
    status: Annotated[OptionalStatus, Field(description="Its own Communication status; default: the thread's.")] = None
    received: Annotated[OptionalInstant, Field(description="When it was delivered, where a system kept that apart "
                                                           "from reading (Communication.received).")] = None
    priority: Annotated[OptionalPriority, Field(description="Its own priority; default: the thread's.")] = None
    read_by: ReadBy = NO_READS

    def __init__(self, id: str, sender: str, sent: str | None = None, text: str | None = None,
                 attachments: Sequence[Attachment] = (), recipient: Sequence[str] | None = None,
                 reply_to: str | None = None, status: str | None = None, received: str | None = None,
                 priority: str | None = None, read_by: Mapping[str, str] | None = None) -> None:
        data: dict[str, Any] = {"id": id, "sender": sender}  # (written out: migrate makes many)
        if sent is not None:
            data["sent"] = sent
        if text is not None:
            data["text"] = text
        if attachments:
            data["attachments"] = attachments
        if recipient is not None:
            data["recipient"] = recipient
        if reply_to is not None:
            data["reply_to"] = reply_to
        if status is not None:
            data["status"] = status
        if received is not None or priority is not None or read_by:
            data.update(without_defaults(received=received, priority=priority, read_by=read_by or None))
        try:  # (`_check`, inlined: migrate makes many)
            self.__pydantic_validator__.validate_python(data, self_instance=self, by_alias=False, by_name=True)
        except ValidationError as exc:
            raise spec_error(exc, data, Message) from None

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        """The dataclass's schema, its validated fields then checked together (`_whole`). Inside it, unlike
        a model validator: a Message given as one (checked when it was made) is not checked again."""
        schema = handler(source)
        if schema["type"] != "dataclass":  # pragma: no cover - what pydantic makes of a dataclass
            raise TypeError(f"expected a dataclass schema, got {schema['type']}")
        return {**schema, "schema": core_schema.no_info_after_validator_function(_whole, schema["schema"])}

    @classmethod
    def __get_pydantic_json_schema__(cls, schema: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        out = handler.resolve_ref_schema(handler(schema))
        out["required"] = [name for name in out["required"] if name != "id"]  # data may leave it out
        out["anyOf"] = [{"required": ["text"]}, {"required": ["attachments"]}]
        out["x-message"] = NO_CONTENT
        out["if"] = {"required": ["status"], "properties": {"status": {"const": DRAFT_STATUS}}}
        out["then"] = {"not": {"required": ["read_by"]}, "x-message": _DRAFT_READ}
        out["else"] = {"required": ["sent"], "x-message": _NO_SENT}
        return out

    def to_data(self, position: int) -> dict[str, Any]:
        """As spec data, for the message at 1-based `position` (whose default id is that number)."""
        out: dict[str, Any] = {} if self.id == str(position) else {"id": self.id}
        out["sender"] = self.sender
        if self.sent is not None:
            out["sent"] = self.sent
        if self.recipient is not None:
            out["recipient"] = list(self.recipient)
        if self.reply_to is not None:
            out["reply_to"] = self.reply_to
        if self.text is not None:
            out["text"] = self.text
        if self.attachments:
            out["attachments"] = [a.to_data() for a in self.attachments]
        if self.status is not None:
            out["status"] = self.status
        if self.received is not None:
            out["received"] = self.received
        if self.priority is not None:
            out["priority"] = self.priority
        if self.read_by:
            out["read_by"] = dict(self.read_by)
        return out

    @property
    def draft(self) -> bool:
        """Whether it is a draft by its own status (one left at the thread's status is judged by the thread)."""
        return self.status == DRAFT_STATUS


# --- the thread -------------------------------------------------------------------------------------


class ThreadSpec(SpecModel):
    """One conversation thread: a header Communication and its messages, checked whole.

    `participants` maps each alias to its Participant, in the order written (the header's recipients
    are in that order). `subject` is an alias or a reference string; `sender` an alias. Messages keep
    their order; a message's `recipient` None means every participant but its sender, its `status`
    None the thread's.
    """

    key: ThreadKey = Field(alias="thread", description="The thread's key, unique within a target project. It becomes "
                                                 "the header's identifier value.")
    topic: Text = Field(description="The thread title: Communication.topic.text.")
    participants: Participants
    messages: Annotated[tuple[Message, ...], ListOf(Message)] = ()
    subject: AliasOrReference = Field(None, description="Who the thread is about: a participant alias, or a "
                                                        "reference string (Type/id or Type?identifier=system|value).")
    sender: OptionalAlias = Field(None, description="The alias of the participant who started the thread.")
    sent: OptionalInstant = Field(None, description="When the thread was started (FHIR instant).")
    status: Status = DEFAULT_STATUS
    category: Annotated[tuple[Coding, ...], ListOf(Coding)] = Field(
        (), description="Codes for the header and every message: 'system|code' strings or {system, code, display} "
                        "objects.")
    priority: OptionalPriority = Field(None, description="The thread's priority: the header's, and every message's "
                                                         "that has none of its own.")
    read_model: OptionalReadModel = Field(None, description="How read state (messages' read_by) is kept on the "
                                                            "server: simple (1:1 threads), header-extension or "
                                                            "tasks; default: not kept. --read-model overrides it.")

    _source: Document | None = PrivateAttr(default=None)
    _shared: Document | None = PrivateAttr(default=None)  # the participants file it took participants from
    _borrowed: frozenset[str] = PrivateAttr(default=frozenset())  # the aliases it took from there
    _files: Mapping[str, bytes] | None = PrivateAttr(default=None)  # its attachments' bytes, by hash

    @constructor
    def __init__(self, key: str, topic: str, participants: Mapping[str, Participant],
                 messages: Sequence[Message] = (), subject: str | None = None, sender: str | None = None,
                 sent: str | None = None, status: str = DEFAULT_STATUS, category: Sequence[Coding] = (),
                 priority: str | None = None, read_model: str | None = None) -> None:
        data = {"key": key, "topic": topic, "participants": participants, "messages": messages, "status": status,
                "category": category}
        if priority is not None:
            data["priority"] = priority
        if read_model is not None:
            data["read_model"] = read_model
        if subject is not None:
            data["subject"] = subject
        if sender is not None:
            data["sender"] = sender
        if sent is not None:
            data["sent"] = sent
        self._validate(data)

    @model_validator(mode="wrap")
    @classmethod
    def _checked(cls, data: Any, handler: ModelWrapValidatorHandler[ThreadSpec], info: ValidationInfo
                 ) -> ThreadSpec:
        """The fields (pydantic), then what they mean together; every problem of both at once. The validation
        context's `SHARED` is the participants file the thread may take participants from (`check_document`)."""
        if isinstance(data, ThreadSpec):
            return data  # checked when it was made
        shared: ParticipantsFile | None = info.context.get(SHARED) if isinstance(info.context, dict) else None
        defaults: frozenset[int] = frozenset()
        if isinstance(data, dict):
            data, defaults = default_ids(data)
        try:
            spec = handler(data)
        except ValidationError as exc:
            errors = exc.errors(include_url=False)
            if isinstance(data, dict):
                participants, messages, subject, sender = _Partial.read(data)
                own = data.get("participants", {})
                if shared is not None and isinstance(own, Mapping) and not own \
                        and names_someone(messages, subject, sender):
                    # none of its own, and none of the file's that it names: each name is one neither has
                    participants = {}
                    errors = [e for e in errors if tuple(e["loc"]) != ("participants",)]
                said = {(e["loc"], e["msg"]) for e in errors}
                errors += [e for e in thread_meaning(participants, messages, subject, sender, defaults, shared)
                           if (e["loc"], e["msg"]) not in said]
            raise reraise(errors) from None
        errors = thread_meaning(spec.participants._items, spec.messages, spec.subject, spec.sender, defaults, shared)
        errors += read_state_meaning(spec, shared)
        if errors:
            raise reraise(errors)
        return spec

    @property
    def has_files(self) -> bool:
        """Whether a message has a file attachment (the builder then adds Binary entries)."""
        return any(a.file is not None for m in self.messages for a in m.attachments)

    @property
    def files(self) -> Mapping[str, bytes]:
        """The bytes of its file attachments by hash (`Attachment.hash`), for a spec read from its file
        (`bundler.spec.load_specs`) read from their files when asked for (`attachments.FileBytes`); empty for a spec
        made otherwise."""
        return self._files or {}

    def with_files(self, files: Mapping[str, bytes]) -> ThreadSpec:
        """This spec holding `files` (hash → bytes) for its file attachments: what the builder reads (a `FileBytes`
        as it is: it reads each file when asked for it)."""
        self._files = files if isinstance(files, FileBytes) else dict(files)
        return self

    def with_source(self, source: Document) -> ThreadSpec:
        """This spec naming `source` as the document its values come from: what `origin` and `problem` cite."""
        self._source = source
        return self

    def origin(self, message_index: int | None = None, *fields: str | int) -> tuple[str, int | None]:
        """(file, line) of the thread, or of `messages[message_index]` and a field below it; ('<spec>', None) for
        a spec made in Python."""
        path: Path_ = ("messages", message_index, *fields) if message_index is not None else tuple(fields)
        source = self._document(path)
        if source is None:
            return ("<spec>", None)
        pos = source.position(path)
        return (source.file, pos[0] if pos else None)

    def problem(self, path: Path_, message: str) -> Problem:
        """A problem at `path` of this spec, at its file:line:col (the participants file's, for a participant taken
        from there); without position for a spec made in Python."""
        source = self._document(path)
        return source.problem(path, message) if source is not None else Problem("<spec>", None, None,
                                                                              format_path(path), message)

    def _document(self, path: Path_) -> Document | None:
        """The document the value at `path` was read from: the spec's, or the participants file's."""
        if self._shared is not None and path[:1] == ("participants",) and path[1:2] and path[1] in self._borrowed:
            return self._shared
        return self._source

    def to_data(self) -> dict[str, Any]:
        """This spec as plain spec data (what a YAML or JSON spec file holds), which `parse_spec` reads back
        equal: defaults are left out, a code is `system|code` when it has a system and no display."""
        out: dict[str, Any] = {"thread": self.key, "topic": self.topic}
        if self.subject is not None:
            out["subject"] = self.subject
        if self.status != DEFAULT_STATUS:
            out["status"] = self.status
        if self.category:
            out["category"] = [c.to_data() for c in self.category]
        if self.sender is not None:
            out["sender"] = self.sender
        if self.sent is not None:
            out["sent"] = self.sent
        if self.priority is not None:
            out["priority"] = self.priority
        if self.read_model is not None:
            out["read_model"] = self.read_model
        out["participants"] = {a: p.to_data() for a, p in self.participants.items()}
        if self.messages:
            out["messages"] = [m.to_data(i) for i, m in enumerate(self.messages, 1)]
        return out


# --- what the meaning rules can read of data that failed ----------------------------------------------


class _Partial:
    """What the meaning rules can still read from thread data that failed to validate."""

    @staticmethod
    def read(data: Mapping[str, Any]) -> tuple[Any, list[Any], str | None, str | None]:
        parts = data.get("participants")
        participants: dict[str, Any] | None = None
        if isinstance(parts, Mapping) and parts:
            participants = {}
            for key, entry in parts.items():
                alias = key if isinstance(key, str) else str(key)
                try:
                    participants[alias] = _participants({key: entry})[alias]
                except (ValidationError, PydanticCustomError):
                    participants[alias] = None  # a known alias, of an unknown type
        messages: list[Any] = []
        raw = data.get("messages")
        for m in raw if isinstance(raw, list | tuple) else ():
            messages.append(m if isinstance(m, Message) else MessageView(m) if isinstance(m, Mapping) else None)
        return participants, messages, as_alias_or_reference(data.get("subject")), as_alias(data.get("sender"))


def with_read_model(spec: ThreadSpec, read_model: str | None) -> ThreadSpec:
    """`spec` with the read model a command line gives (`--read-model`), which overrides the spec's own (the app
    that reads the project decides how read state is kept, for every thread alike); `spec` itself for None.
    SpecError when the model does not fit the thread (simple for a group)."""
    if read_model is None or read_model == spec.read_model:
        return spec
    if read_model not in READ_MODELS:
        raise SpecError([Problem(spec.origin()[0], spec.origin()[1], None, "read_model",
                                 f"{read_model!r} is not a read model (one of: {', '.join(READ_MODELS)})")])
    try:
        new = spec.model_copy(update={"read_model": read_model})
    except SpecError as exc:
        file, line = spec.origin()
        raise SpecError([Problem(file, line, None, f"{p.path} (--read-model {read_model})", p.message)
                         for p in exc.problems]) from None
    new._source, new._shared, new._borrowed, new._files = spec._source, spec._shared, spec._borrowed, spec._files
    return new


def read_model_problems(spec: ThreadSpec, read_model: str | None) -> tuple[ThreadSpec, list[Problem]]:
    """`with_read_model`, its refusal as problems: (the spec as it was, [problems]) when the model does not fit."""
    try:
        return with_read_model(spec, read_model), []
    except SpecError as exc:
        return spec, list(exc.problems)


# --- reading ---------------------------------------------------------------------------------------


SHARED: Final = "participants_file"
"""The key of the validation context (`ThreadSpec.model_validate(data, context=...)`) that holds the participants
file a thread may take participants from: its aliases are known, and a thread needs none of its own."""


def check_document(doc: Document, shared: ParticipantsFile | None = None) -> tuple[ThreadSpec | None, list[Problem]]:
    """A ThreadSpec from one parsed document, or every problem that stops it being one (with positions).
    `shared`: a participants file whose participants the thread may use (its own win)."""
    if not isinstance(doc.data, dict):
        why = f"expected a thread (a mapping with thread, topic, participants), got {describe(doc.data)}"
        return None, [doc.problem((), why)]
    data, borrowed = shared.merged(doc.data) if shared is not None else (doc.data, frozenset[str]())
    try:
        spec = ThreadSpec.model_validate(data, context={SHARED: shared} if shared is not None else None)
    except ValidationError as exc:
        return None, problems_of(exc, doc, ThreadSpec)
    spec._source = dataclasses.replace(doc, data=None)  # its positions: the data is the spec's now, not kept twice
    if borrowed:
        assert shared is not None
        spec._shared, spec._borrowed = shared.doc, borrowed
    return spec, []


class ParticipantsDocument(SpecModel):
    """A participants file: the spec's `participants` block under the same key (`bundler.spec.participants`)."""

    participants: Participants


def parse_spec(data: Mapping[str, Any], *, file: str = "<spec>") -> ThreadSpec:
    """One ThreadSpec from plain data (as loaded from YAML/JSON); raises SpecError listing every problem."""
    spec, problems = check_document(Document(file, data))
    if spec is None:
        raise SpecError(problems)
    return spec
