"""The mapping file: which columns of a legacy export hold what, read and checked with file:line:col problems.

    mapping = load_mapping("fixtures/legacy/mapping.yaml")   # raises SpecError listing every problem

A value in the mapping is a column name (`body`), a template joining columns (`"{first} {last}"`, `{{`
for a literal brace), or `{column: ...}`, `{template: ...}`, `{value: <constant>}`. Values are compiled
against each input's columns (`Value.getter`), so the per-row work is a list index or a join.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import jsonschema

from .. import assets
from ..errors import Problem, SpecError
from ..spec.schema_errors import schema_problems as _schema_problems
from ..spec.source import Document, Path_, decode, parse_yaml
from ..vocabulary import COMMUNICATION_STATUSES, is_coding
from .participants import Participants, load_participants
from .times import SentParser

MAPPING_SCHEMA = "migrate-mapping.schema.json"

Row = Sequence[str]
Getter = Callable[[Row], str]

_FIELD = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")


@dataclass(frozen=True)
class Value:
    """One mapped value: from a column, a template over columns, or a constant. `path` is where it is in the mapping."""

    path: Path_
    column: str | None = None
    parts: tuple[tuple[str, str | None], ...] = ()  # template: (literal, column or None)
    constant: str | None = None

    @property
    def columns(self) -> list[str]:
        if self.column is not None:
            return [self.column]
        return [c for _, c in self.parts if c is not None]

    def getter(self, index: Mapping[str, int]) -> Getter:
        """A function row → value, for rows whose columns are at `index` (every column must be there)."""
        if self.constant is not None:
            constant = self.constant
            return lambda row: constant
        if self.column is not None:
            return operator.itemgetter(index[self.column])  # a C call: this runs for every value of every row
        parts = [(lit, index[c] if c is not None else None) for lit, c in self.parts]
        return lambda row: "".join(lit if i is None else row[i] for lit, i in parts)


@dataclass(frozen=True)
class StatusValue:
    """A status: a mapped value translated by `map` (values that are already statuses pass), or `default`."""

    value: Value | None
    map: Mapping[str, str]
    default: str | None


@dataclass(frozen=True)
class SentValue:
    value: Value
    parser: SentParser


@dataclass(frozen=True)
class Recipients:
    values: tuple[Value, ...]
    separator: str | None  # split the single value by this


@dataclass
class MigrationMapping:
    """A checked mapping file. Build with `load_mapping`."""

    file: str
    doc: Document
    format: str | None = None
    delimiter: str | None = None
    quotechar: str = '"'
    encoding: str = "utf-8-sig"
    thread_id: Value = field(default_factory=lambda: Value(()))
    topic: Value | None = None
    subject_type: str | None = None
    subject: Value | None = None
    category: Value | None = None
    thread_status: StatusValue | None = None
    message_id: Value = field(default_factory=lambda: Value(()))
    sender: Value = field(default_factory=lambda: Value(()))
    sender_display: Value | None = None
    sender_role: Value | None = None
    recipients: Recipients | None = None
    sent: SentValue | None = None
    text: Value | None = None
    attachment_url: Value | None = None
    attachment_type: Value | None = None
    attachment_title: Value | None = None
    reply_to: Value | None = None
    status: StatusValue | None = None
    participants: Participants = field(default_factory=Participants)

    def values(self) -> list[Value]:
        """Every column-reading value, for checking them against an input's columns."""
        out: list[Value | None] = [
            self.thread_id, self.topic, self.subject, self.category, self.message_id, self.sender,
            self.sender_display, self.sender_role, self.sent.value if self.sent else None, self.text,
            self.attachment_url, self.attachment_type, self.attachment_title, self.reply_to,
            self.thread_status.value if self.thread_status else None, self.status.value if self.status else None,
        ]
        if self.recipients:
            out.extend(self.recipients.values)
        return [v for v in out if v is not None]

    def columns(self) -> list[str]:
        """Every column the mapping reads, once each, in mapping order."""
        return list(dict.fromkeys(c for v in self.values() for c in v.columns))

    def problem(self, path: Path_, message: str) -> Problem:
        return self.doc.problem(path, message)


# --- reading ---------------------------------------------------------------------------------------


def _validator() -> jsonschema.protocols.Validator:
    schema = assets.schema(MAPPING_SCHEMA)
    return jsonschema.validators.validator_for(schema)(schema)


def parse_template(text: str) -> tuple[tuple[tuple[str, str | None], ...], str | None]:
    """A template's (literal, column) parts, or the reason it is not a valid template."""
    parts: list[tuple[str, str | None]] = []
    literal = ""
    pos = 0
    for m in _FIELD.finditer(text):
        literal += text[pos:m.start()]
        pos = m.end()
        token = m.group(0)
        if token in ("{{", "}}"):
            literal += token[0]
        elif token in ("{", "}"):
            return (), f"unmatched {token!r} in template {text!r} (write {token * 2} for a literal brace)"
        else:
            name = m.group(1).strip()
            if not name:
                return (), f"empty field '{{}}' in template {text!r}"
            if literal:
                parts.append((literal, None))
            parts.append(("", name))
            literal = ""
    literal += text[pos:]
    if literal:
        parts.append((literal, None))
    return tuple(parts), None


def _value(raw: Any, path: Path_, problems: list[Problem], doc: Document) -> Value:
    if isinstance(raw, dict):
        if "value" in raw:
            return Value(path, constant=str(raw["value"]))
        if "column" in raw:
            return Value(path, column=str(raw["column"]))
        raw, path = str(raw.get("template", "")), (*path, "template")
        forced = True
    else:
        raw, forced = str(raw), False
    if not forced and "{" not in raw and "}" not in raw:
        return Value(path, column=raw)
    parts, why = parse_template(raw)
    if why:
        problems.append(doc.problem(path, why))
    if parts and all(c is None for _, c in parts):
        return Value(path, constant="".join(lit for lit, _ in parts))
    return Value(path, parts=parts)


def _status(raw: Any, path: Path_, problems: list[Problem], doc: Document) -> StatusValue:
    if isinstance(raw, str):
        if raw in COMMUNICATION_STATUSES:  # a bare status is a constant; anything else a column or template
            return StatusValue(Value(path, constant=raw), {}, None)
        return StatusValue(_value(raw, path, problems, doc), {}, None)
    value = None
    if "value" in raw:
        value = Value((*path, "value"), constant=raw["value"])
    elif "column" in raw:
        value = Value((*path, "column"), column=raw["column"])
    elif "template" in raw:
        value = _value({"template": raw["template"]}, path, problems, doc)
    if value is None and "default" not in raw:
        problems.append(doc.problem(path, "needs column, template, value or default"))
    return StatusValue(value, {str(k): v for k, v in (raw.get("map") or {}).items()}, raw.get("default"))


def _sent(raw: Any, path: Path_, problems: list[Problem], doc: Document) -> SentValue | None:
    if isinstance(raw, str):
        raw = {"column": raw}
    value = _value({k: raw[k] for k in ("column", "template") if k in raw}, path, problems, doc)
    fmt = raw.get("format", "iso")
    if fmt != "iso" and "%" not in fmt:
        problems.append(doc.problem((*path, "format"), f"{fmt!r} is not 'iso' or a strptime format like "
                                                         "'%m/%d/%Y %H:%M'"))
    tz = raw.get("timezone")
    if tz is not None:
        try:
            ZoneInfo(tz)
        except (ZoneInfoNotFoundError, ValueError):
            problems.append(doc.problem((*path, "timezone"), f"{tz!r} is not an IANA time zone "
                                                               "(like America/New_York or UTC)"))
            return None
    return SentValue(value, SentParser(fmt, tz, ambiguous=raw.get("ambiguous", "earlier"),
                                       nonexistent=raw.get("nonexistent", "reject")))


def read_mapping(doc: Document, base: Path) -> MigrationMapping:
    """A MigrationMapping from a parsed mapping document; SpecError with every problem found."""
    problems = [p for e in _validator().iter_errors(doc.data) for p in _schema_problems(doc, e)]
    if problems:
        raise SpecError(problems)
    data = doc.data
    m = MigrationMapping(file=doc.file, doc=doc)
    inp = data.get("input", {})
    m.format = inp.get("format")
    m.delimiter = inp.get("delimiter")
    m.quotechar = inp.get("quotechar", '"')
    m.encoding = inp.get("encoding", "utf-8-sig")
    try:
        "".encode(m.encoding)
    except LookupError:
        problems.append(doc.problem(("input", "encoding"), f"{m.encoding!r} is not a known text encoding"))
    if m.encoding.replace("-", "").replace("_", "").lower() == "utf8":
        m.encoding = "utf-8-sig"  # skip a BOM if there is one

    def value(section: str, key: str) -> Value | None:
        raw = data[section].get(key)
        return None if raw is None else _value(raw, (section, key), problems, doc)

    thread, message = data["thread"], data["message"]
    m.thread_id = value("thread", "id")  # type: ignore[assignment]
    m.topic = value("thread", "topic")
    subject = thread.get("subject")
    if isinstance(subject, dict) and "participant_type" in subject:
        m.subject_type = subject["participant_type"]
    elif subject is not None:
        m.subject = value("thread", "subject")
    m.category = value("thread", "category")
    if m.category is not None and m.category.constant is not None and not is_coding(m.category.constant):
        problems.append(doc.problem(("thread", "category"), f"{m.category.constant!r} must be 'system|code'"))
    if "status" in thread:
        m.thread_status = _status(thread["status"], ("thread", "status"), problems, doc)
    m.message_id = value("message", "id")  # type: ignore[assignment]
    m.sender = value("message", "sender")  # type: ignore[assignment]
    m.sender_display = value("message", "sender_display")
    m.sender_role = value("message", "sender_role")
    rec = message.get("recipients")
    if isinstance(rec, str):
        rec = {"column": rec}
    if rec is not None:
        if "columns" in rec:
            cols = tuple(Value(("message", "recipients", "columns", i), column=c) for i, c in enumerate(rec["columns"]))
            m.recipients = Recipients(cols, None)
        else:
            m.recipients = Recipients((Value(("message", "recipients", "column"), column=rec["column"]),),
                                      rec.get("separator", ";"))
    m.sent = _sent(message["sent"], ("message", "sent"), problems, doc)
    m.text = value("message", "text")
    att = message.get("attachment")
    if att is not None:
        m.attachment_url = _value(att["url"], ("message", "attachment", "url"), problems, doc)
        if "content_type" in att:
            m.attachment_type = _value(att["content_type"], ("message", "attachment", "content_type"), problems, doc)
        if "title" in att:
            m.attachment_title = _value(att["title"], ("message", "attachment", "title"), problems, doc)
    if m.text is None and m.attachment_url is None:
        problems.append(doc.problem(("message",), "needs text or attachment (a message must carry one)"))
    m.reply_to = value("message", "reply_to")
    if "status" in message:
        m.status = _status(message["status"], ("message", "status"), problems, doc)
    participants, more = load_participants(data["participants"], doc, base, has_roles=m.sender_role is not None)
    m.participants = participants
    problems.extend(more)
    if problems:
        raise SpecError(problems)
    return m


def load_mapping(path: str | Path) -> MigrationMapping:
    """Read and check a mapping file (YAML or JSON); SpecError with file:line:col for every problem."""
    name = str(path)
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise SpecError([Problem(name, None, None, "", f"cannot read the mapping: {exc.strerror}")]) from None
    text, problems = decode(raw, name)
    if text is None:
        raise SpecError(problems)
    docs, problems = parse_yaml(text, name)  # JSON is YAML too, and keeps positions this way
    if problems:
        raise SpecError(problems)
    if len(docs) != 1 or not isinstance(docs[0].data, dict):
        raise SpecError([Problem(name, None, None, "", "expected one mapping (thread:, message:, participants:)")])
    return read_mapping(docs[0], Path(path).parent)
