"""The mapping file: which columns of a legacy export hold what, read and checked with file:line:col problems.

    mapping = load_mapping("fixtures/legacy/mapping.yaml")   # raises SpecError listing every problem

A value in the mapping is a column name (`body`), a template joining columns (`"{first} {last}"`, `{{`
for a literal brace), or `{column: ...}`, `{template: ...}`, `{value: <constant>}`. In JSON Lines a column
name with dots reads a nested field (`thread.id`). Values are compiled against each input's columns
(`Value.getter`), so the per-row work is a list index or a join.

Besides the values: `sent.format` (iso, epoch, epoch_ms or strptime), `attachments` (a list of
{url, content_type, title}, or {each: <JSON array column>, url: <key>, ...}), `skip` rules, and the
input's limits (`max_row_chars`, `max_quoted_lines`). Every default is here (`SCHEMA_DEFAULTS`), and the schema
(`schemas/migrate-mapping.schema.json`) states each as its `default` keyword (a test holds the two together).
Problems come all at once: the schema's and the values' (`load_mapping_problems`; with the inputs' missing
columns: `readers.prepare`).
"""

from __future__ import annotations

import datetime as dt
import operator
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import jsonschema

from .. import assets
from ..errors import Problem, SpecError
from ..spec.schema_errors import schema_problems as _schema_problems
from ..spec.source import Document, Path_, decode, parse_yaml
from ..vocabulary import COMMUNICATION_STATUSES, DEFAULT_STATUS, is_coding
from .participants import Participants, load_participants
from .times import DEFAULT_AMBIGUOUS, DEFAULT_FORMAT, DEFAULT_NONEXISTENT, SentParser, TimeRejected

MAPPING_SCHEMA = "migrate-mapping.schema.json"
DEFAULT_MAX_ROW_CHARS = 16_000_000
"""input.max_row_chars: a row longer than this (in characters, as decoded) is rejected, read at bounded memory."""
DEFAULT_MAX_QUOTED_LINES = 10_000
"""input.max_quoted_lines: a CSV row whose quoted field runs over more lines is taken for an unterminated quote."""
DEFAULT_QUOTECHAR = '"'
DEFAULT_ENCODING = "utf-8-sig"
"""UTF-8, a byte order mark skipped when there is one (any spelling of utf-8 reads so)."""
DEFAULT_READS_DELIMITER = ","
TIME_FIELDS = (("message", "sent"), ("message", "read_at"), ("message", "received"), ("reads", "read_at"))
"""Where a mapping holds a time value (a column, format, timezone, ambiguous, nonexistent)."""
SCHEMA_DEFAULTS: Final[Mapping[tuple[str, ...], object]] = {
    ("input", "quotechar"): DEFAULT_QUOTECHAR,
    ("input", "encoding"): DEFAULT_ENCODING,
    ("input", "max_row_chars"): DEFAULT_MAX_ROW_CHARS,
    ("input", "max_quoted_lines"): DEFAULT_MAX_QUOTED_LINES,
    ("thread", "status"): DEFAULT_STATUS,
    ("reads", "delimiter"): DEFAULT_READS_DELIMITER,
    **{(*where, key): value for where in TIME_FIELDS
       for key, value in (("format", DEFAULT_FORMAT), ("ambiguous", DEFAULT_AMBIGUOUS),
                          ("nonexistent", DEFAULT_NONEXISTENT))},
}
"""Every default a mapping file leaves to us with a value of its own, by where it stands in the file: the schema's
`default` keywords say the same. (Input's format and delimiter go by the file's suffix: prose in the schema.)"""
SENT_FORMATS = ("iso", "epoch", "epoch_ms")
"""sent.format, besides a strptime format: ISO 8601, seconds or milliseconds since 1970-01-01T00:00:00Z."""

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
class AttachmentValues:
    """One attachment a row may carry: its url, content type and title (None: not mapped)."""

    url: Value
    content_type: Value | None = None
    title: Value | None = None


@dataclass(frozen=True)
class AttachmentList:
    """Several attachments in one value holding a JSON array of objects (`each`), with the key (a dotted
    path) of each field in the objects."""

    each: Value
    url: str
    content_type: str | None = None
    title: str | None = None


@dataclass(frozen=True)
class SkipRule:
    """Rows whose value equals one of `values` (or matches `pattern`) are skipped, counted under `label`."""

    value: Value
    values: frozenset[str] | None
    pattern: re.Pattern[str] | None
    label: str

    def test(self, get: Getter) -> Callable[[Row], bool]:
        values, pattern = self.values, self.pattern
        if values is not None:
            return lambda row: get(row).strip() in values
        assert pattern is not None
        search = pattern.search
        return lambda row: search(get(row)) is not None


@dataclass(frozen=True)
class Recipients:
    values: tuple[Value, ...]
    separator: str | None  # split the single value by this


@dataclass(frozen=True)
class ReadTable:
    """A per-recipient read table (`reads:`): a CSV file of one row per message and reader."""

    file: Path
    message: str
    reader: str
    read_at: SentValue
    delimiter: str = DEFAULT_READS_DELIMITER


@dataclass
class MigrationMapping:
    """A checked mapping file. Build with `load_mapping`."""

    file: str
    doc: Document
    format: str | None = None
    delimiter: str | None = None
    quotechar: str = DEFAULT_QUOTECHAR
    encoding: str = DEFAULT_ENCODING
    max_row_chars: int = DEFAULT_MAX_ROW_CHARS
    max_quoted_lines: int = DEFAULT_MAX_QUOTED_LINES
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
    attachments: tuple[AttachmentValues, ...] | AttachmentList = ()
    skip: tuple[SkipRule, ...] = ()
    reply_to: Value | None = None
    status: StatusValue | None = None
    participants: Participants = field(default_factory=Participants)
    read_at: SentValue | None = None  # read state, priority
    received: SentValue | None = None
    priority: Value | None = None
    thread_priority: Value | None = None
    read_model: str | None = None
    reads: ReadTable | None = None

    def values(self) -> list[Value]:
        """Every column-reading value, for checking them against an input's columns."""
        out: list[Value | None] = [
            self.thread_id, self.topic, self.subject, self.category, self.message_id, self.sender,
            self.sender_display, self.sender_role, self.sent.value if self.sent else None, self.text,
            self.reply_to, self.thread_status.value if self.thread_status else None,
            self.status.value if self.status else None, self.read_at.value if self.read_at else None,
            self.received.value if self.received else None, self.priority, self.thread_priority,
        ]
        if self.recipients:
            out.extend(self.recipients.values)
        if isinstance(self.attachments, AttachmentList):
            out.append(self.attachments.each)
        else:
            for a in self.attachments:
                out += [a.url, a.content_type, a.title]
        out += [rule.value for rule in self.skip]
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


def _strptime_problem(fmt: str) -> str | None:
    """Why `fmt` cannot read back what it writes (so that it would reject every row), or None."""
    sample = dt.datetime(2024, 11, 28, 13, 45, 30)
    try:
        dt.datetime.strptime(sample.strftime(fmt), fmt)
    except (ValueError, TypeError) as exc:
        return str(exc)
    return None


def _sent(raw: Any, path: Path_, problems: list[Problem], doc: Document) -> SentValue | None:
    if isinstance(raw, str):
        raw = {"column": raw}
    value = _value({k: raw[k] for k in ("column", "template") if k in raw}, path, problems, doc)
    fmt = raw.get("format", DEFAULT_FORMAT)
    if fmt not in SENT_FORMATS:
        why = _strptime_problem(fmt) if "%" in fmt else "not a format"
        if why is not None:
            problems.append(doc.problem((*path, "format"), f"{fmt!r} is not 'iso', 'epoch' (seconds since 1970), "
                                                             f"'epoch_ms' (milliseconds) or a strptime format like "
                                                             f"'%m/%d/%Y %H:%M' ({why})"))
            return None
    tz = raw.get("timezone")
    if tz is not None:
        try:
            ZoneInfo(tz)
        except (ZoneInfoNotFoundError, ValueError):
            problems.append(doc.problem((*path, "timezone"), f"{tz!r} is not an IANA time zone "
                                                               "(like America/New_York or UTC)"))
            return None
    return SentValue(value, SentParser(fmt, tz, ambiguous=raw.get("ambiguous", DEFAULT_AMBIGUOUS),
                                       nonexistent=raw.get("nonexistent", DEFAULT_NONEXISTENT)))


def _attachments(message: Mapping[str, Any], problems: list[Problem], doc: Document
                 ) -> tuple[AttachmentValues, ...] | AttachmentList:
    def one(raw: Mapping[str, Any], path: Path_) -> AttachmentValues:
        def opt(key: str) -> Value | None:
            return _value(raw[key], (*path, key), problems, doc) if key in raw else None
        return AttachmentValues(_value(raw["url"], (*path, "url"), problems, doc), opt("content_type"), opt("title"))

    if "attachment" in message and "attachments" in message:
        problems.append(doc.problem(("message", "attachments"), "give attachment (one) or attachments (several), "
                                                                "not both"))
    if "attachment" in message:
        return (one(message["attachment"], ("message", "attachment")),)
    raw = message.get("attachments")
    if raw is None:
        return ()
    if isinstance(raw, list):
        return tuple(one(a, ("message", "attachments", i)) for i, a in enumerate(raw))
    each = Value(("message", "attachments", "each"), column=str(raw["each"]))
    return AttachmentList(each, str(raw["url"]), raw.get("content_type"), raw.get("title"))


def _text(value: Any) -> str:
    """A constant of the mapping as a row's value reads (JSON true is 'true', as readers.as_text makes it)."""
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def _skip(raw: list[Any], problems: list[Problem], doc: Document) -> tuple[SkipRule, ...]:
    rules = []
    for i, rule in enumerate(raw):
        path: Path_ = ("skip", i)
        value = Value((*path, "column"), column=str(rule["column"]))
        if "matches" in rule:
            try:
                pattern = re.compile(rule["matches"])
            except re.error as exc:
                problems.append(doc.problem((*path, "matches"), f"not a regular expression: {exc}"))
                continue
            rules.append(SkipRule(value, None, pattern, f"{rule['column']} matches {rule['matches']!r}"))
        else:
            values = [_text(v) for v in ([rule["equals"]] if "equals" in rule else rule["in"])]
            shown = " or ".join(repr(v) for v in values)
            rules.append(SkipRule(value, frozenset(values), None, f"{rule['column']} = {shown}"))
    return tuple(rules)


def _schema_check(doc: Document) -> tuple[list[Problem], Callable[[Path_], bool]]:
    """The schema's problems, and a test: is the value at this path fit to be read (no schema error in it,
    nor in a value that holds it; an unknown field leaves the rest of its mapping readable, and so does a
    missing section)?"""
    problems: list[Problem] = []
    bad: list[Path_] = []
    for error in _validator().iter_errors(doc.data):
        problems.extend(_schema_problems(doc, error))
        path = tuple(error.absolute_path)
        if error.validator != "additionalProperties" and (error.validator != "required" or path):
            bad.append(path)

    def fit(path: Path_) -> bool:
        return not any(path[:len(b)] == b or b[:len(path)] == path for b in bad)
    return problems, fit


def _input(m: MigrationMapping, inp: Mapping[str, Any], problems: list[Problem], doc: Document) -> None:
    m.format = inp.get("format")
    m.delimiter = inp.get("delimiter")
    m.quotechar = inp.get("quotechar", DEFAULT_QUOTECHAR)
    m.encoding = inp.get("encoding", DEFAULT_ENCODING)
    m.max_row_chars = inp.get("max_row_chars", DEFAULT_MAX_ROW_CHARS)
    m.max_quoted_lines = inp.get("max_quoted_lines", DEFAULT_MAX_QUOTED_LINES)
    try:
        "".encode(m.encoding)
    except LookupError:
        problems.append(doc.problem(("input", "encoding"), f"{m.encoding!r} is not a known text encoding"))
    if m.encoding.replace("-", "").replace("_", "").lower() == "utf8":
        m.encoding = DEFAULT_ENCODING  # skip a BOM if there is one


def _thread(m: MigrationMapping, thread: Mapping[str, Any], value: Callable[[str, str], Value | None],
            problems: list[Problem], doc: Document) -> None:
    m.thread_id = value("thread", "id") or m.thread_id
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


def _message(m: MigrationMapping, message: Mapping[str, Any], value: Callable[[str, str], Value | None],
             fit: Callable[[Path_], bool], problems: list[Problem], doc: Document) -> None:
    m.message_id = value("message", "id") or m.message_id
    m.sender = value("message", "sender") or m.sender
    m.sender_display = value("message", "sender_display")
    m.sender_role = value("message", "sender_role")
    rec = message.get("recipients")
    if isinstance(rec, str):
        rec = {"column": rec}
    if rec is not None and fit(("message", "recipients")):
        if "columns" in rec:
            cols = tuple(Value(("message", "recipients", "columns", i), column=c) for i, c in enumerate(rec["columns"]))
            m.recipients = Recipients(cols, None)
        else:
            m.recipients = Recipients((Value(("message", "recipients", "column"), column=rec["column"]),),
                                      rec.get("separator", ";"))
    if "sent" in message and fit(("message", "sent")):
        m.sent = _sent(message["sent"], ("message", "sent"), problems, doc)
    m.text = value("message", "text")
    if fit(("message", "attachment")) and fit(("message", "attachments")):
        m.attachments = _attachments(message, problems, doc)
    if m.text is None and not m.attachments and not {"text", "attachment", "attachments"} & set(message):
        problems.append(doc.problem(("message",), "needs text or attachments (a message must carry one)"))
    m.reply_to = value("message", "reply_to")
    if "status" in message and fit(("message", "status")):
        m.status = _status(message["status"], ("message", "status"), problems, doc)


def _read_state(m: MigrationMapping, message: Mapping[str, Any], thread: Mapping[str, Any], reads: Mapping[str, Any],
                value: Callable[[str, str], Value | None], base: Path, problems: list[Problem], doc: Document) -> None:
    """Read state and priority: `message.read_at`, `.received`, `.priority`, `thread.priority`, `.read_model`,
    and the per-recipient read table `reads:`."""
    for key in ("read_at", "received"):
        if key in message:
            setattr(m, key, _sent(message[key], ("message", key), problems, doc))
    m.priority = value("message", "priority")
    m.thread_priority = value("thread", "priority")
    m.read_model = thread.get("read_model")
    if reads:
        read_at = _sent(reads["read_at"], ("reads", "read_at"), problems, doc)
        if read_at is not None:
            m.reads = ReadTable(base / reads["file"], reads["message"], reads["reader"], read_at,
                                reads.get("delimiter", DEFAULT_READS_DELIMITER))


def read_table(table: ReadTable) -> dict[str, list[tuple[str, str]]]:
    """A per-recipient read table: legacy message id → [(reader's legacy user id, FHIR instant)], in file order.
    SpecError naming the file and line of every row that cannot be read (a missing column, a bad time)."""
    import csv  # (only a mapping with a read table needs it)

    out: dict[str, list[tuple[str, str]]] = {}
    problems: list[Problem] = []
    name = str(table.file)
    try:
        with open(table.file, encoding="utf-8-sig", newline="") as f:
            rows = csv.DictReader(f, delimiter=table.delimiter)
            missing = [c for c in (table.message, table.reader) if c not in (rows.fieldnames or ())]
            if missing:
                raise SpecError([Problem(name, 1, None, "", f"no column {', '.join(map(repr, missing))} (columns: "
                                                          f"{', '.join(rows.fieldnames or ())})")])
            get_time = table.read_at.value.getter({c: i for i, c in enumerate(rows.fieldnames or ())})
            for row in rows:
                values = [row.get(c) or "" for c in rows.fieldnames or ()]
                try:
                    when = table.read_at.parser(get_time(values).strip())[0]
                except TimeRejected as exc:
                    problems.append(Problem(name, rows.line_num, None, "read_at", str(exc)))
                    continue
                out.setdefault(row[table.message].strip(), []).append((row[table.reader].strip(), when))
    except OSError as exc:
        raise SpecError([Problem(name, None, None, "", f"cannot read the read table: {exc.strerror}")]) from None
    except (csv.Error, UnicodeDecodeError) as exc:
        raise SpecError([Problem(name, None, None, "", f"not a readable CSV file: {exc}")]) from None
    if problems:
        raise SpecError(problems)
    return out


def read_mapping(doc: Document, base: Path) -> MigrationMapping:
    """A MigrationMapping from a parsed mapping document; SpecError with every problem found (the schema's and
    the values', at once)."""
    m, problems = read_mapping_problems(doc, base)
    if problems:
        raise SpecError(problems)
    return m


def read_mapping_problems(doc: Document, base: Path) -> tuple[MigrationMapping, list[Problem]]:
    """A MigrationMapping and every problem of it (the parts with problems left out of the mapping)."""
    problems, fit = _schema_check(doc)
    data = doc.data if isinstance(doc.data, dict) else {}
    m = MigrationMapping(file=doc.file, doc=doc)

    def section(name: str) -> Mapping[str, Any]:
        got = data.get(name)
        return got if isinstance(got, dict) and fit((name,)) else {}

    def value(name: str, key: str) -> Value | None:
        raw = section(name).get(key)
        return None if raw is None or not fit((name, key)) else _value(raw, (name, key), problems, doc)

    _input(m, section("input"), problems, doc)
    _thread(m, section("thread"), value, problems, doc)
    _message(m, section("message"), value, fit, problems, doc)
    _read_state(m, section("message"), section("thread"), section("reads"), value, base, problems, doc)
    if isinstance(data.get("skip"), list) and fit(("skip",)):
        m.skip = _skip(data["skip"], problems, doc)
    if section("participants"):
        participants, more = load_participants(section("participants"), doc, base,
                                               has_roles=m.sender_role is not None,
                                               has_names=m.sender_display is not None)
        m.participants = participants
        problems.extend(more)
    return m, problems


def load_mapping(path: str | Path) -> MigrationMapping:
    """Read and check a mapping file (YAML or JSON); SpecError with file:line:col for every problem."""
    mapping, problems = load_mapping_problems(path)
    if problems:
        raise SpecError(problems)
    assert mapping is not None
    return mapping


def load_mapping_problems(path: str | Path) -> tuple[MigrationMapping | None, list[Problem]]:
    """Like load_mapping, but the problems are returned with what could be read (None: nothing could), so
    that a caller can add the inputs' problems and tell them all at once."""
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        return None, [Problem(str(path), None, None, "", f"cannot read the mapping: {exc.strerror}")]
    text, problems = decode(raw, str(path))
    if text is None:
        return None, problems
    docs, problems = parse_yaml(text, str(path))  # JSON is YAML too, and keeps positions this way
    if problems:
        return None, problems
    if len(docs) != 1 or not isinstance(docs[0].data, dict):
        return None, [Problem(str(path), None, None, "", "expected one mapping (thread:, message:, participants:)")]
    return read_mapping_problems(docs[0], Path(path).parent)
