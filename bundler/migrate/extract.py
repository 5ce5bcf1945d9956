"""One row → one MessageRecord (stored as JSON while grouping), or the reason it is rejected.

Everything that can be judged from the row alone is judged here, as the row is read: ids present,
time readable, text or attachment there, status and category valid. What needs the whole
conversation (duplicates, replies, participants) is judged when the thread is assembled.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

from ..vocabulary import COMMUNICATION_STATUSES, REQUEST_PRIORITIES, is_coding, is_mime_type
from .mapping import AttachmentList, AttachmentValues, Getter, MigrationMapping, Row, StatusValue
from .readers import Source, as_text, lookup
from .records import MessageRecord
from .times import TimeRejected

_STATUSES = frozenset(COMMUNICATION_STATUSES)


class RowError(Exception):
    """A row that cannot be a message: `reason` is the reject code."""

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        super().__init__(message)


def _empty(row: Row) -> str:
    return ""


def _status(sv: StatusValue | None, index: dict[str, int], what: str) -> Callable[[Row], str | None]:
    if sv is None:
        return lambda row: None
    get = sv.value.getter(index) if sv.value is not None else _empty
    table, default = dict(sv.map), sv.default

    def status(row: Row) -> str | None:
        value = get(row).strip()
        if not value:
            return default
        found = table.get(value)
        if found is not None:
            return found
        if value in _STATUSES:
            return value
        known = f" (mapped: {', '.join(table)})" if table else ""
        raise RowError("bad-status", f"{what} {value!r} is not a Communication status and the mapping does not "
                                     f"translate it{known}")
    return status


class Extractor:
    """Compiled for one input: `conversation(values)` and `record(values, ...)` (raises RowError).

    `record` runs once per row, so it is a closure over exactly this input's getters (local names, no
    attribute lookups), with the values the mapping does not read left out rather than read as "".
    """

    def __init__(self, mapping: MigrationMapping, source: Source) -> None:
        index = {c: i for i, c in enumerate(source.columns)}
        m = mapping

        def get(v: Any) -> Getter:
            return v.getter(index) if v is not None else _empty

        self.conversation = get(m.thread_id)
        get_id = get(m.message_id)
        self.message_id: Getter = lambda row: get_id(row).strip()
        self.file_index = source.index
        self.record = _record_function(m, index, source.index)
        tests = [(rule.test(get(rule.value)), rule.label) for rule in m.skip]

        def skipped(row: Row) -> str | None:
            for test, label in tests:
                if test(row):
                    return label
            return None
        self.skipped: Callable[[Row], str | None] | None = skipped if tests else None
        """row → the label of the first skip rule it meets, or None; None when the mapping skips nothing."""


def _optional(value: Any, index: dict[str, int]) -> Getter | None:
    """The getter of a value the mapping may leave out (None: it does)."""
    return value.getter(index) if value is not None else None


def _record_function(m: MigrationMapping, index: dict[str, int], file_index: int
                     ) -> Callable[[Row, str, int, int, Any], tuple[int, MessageRecord]]:
    """record(values, conv, row, line, raw) → (sent µs, record) for a good row; RowError for a bad one.
    The checks run in a fixed order: a row with several problems is rejected for the first."""
    get_id, get_sender = m.message_id.getter(index), m.sender.getter(index)
    get_display, get_role = _optional(m.sender_display, index), _optional(m.sender_role, index)
    get_text, get_reply = _optional(m.text, index), _optional(m.reply_to, index)
    get_attachments = _attachments_function(m.attachments, index)
    get_topic, get_category, get_subject = (_optional(m.topic, index), _optional(m.category, index),
                                            _optional(m.subject, index))
    status, thread_status = _status(m.status, index, "status"), _status(m.thread_status, index, "thread status")
    assert m.sent is not None
    get_sent, parse_sent = m.sent.value.getter(index), m.sent.parser
    get_recipients = [v.getter(index) for v in m.recipients.values] if m.recipients else []
    separator = m.recipients.separator if m.recipients else None
    id_name, sender_name = _name(m.message_id), _name(m.sender)
    mime_match, coding_match = is_mime_type, is_coding
    strip = str.strip
    new_record = tuple.__new__
    read_state = _read_state_function(m, index)

    def record(values: Row, conv: str, row: int, line: int, raw: Any) -> tuple[int, MessageRecord]:
        mid = get_id(values).strip()
        if not mid:
            raise RowError("missing-message-id", f"no message id ({id_name} is empty)")
        sender = get_sender(values).strip()
        if not sender:
            raise RowError("missing-sender", f"no sender id ({sender_name} is empty)")
        try:
            sent, micros = parse_sent(get_sent(values).strip())
        except TimeRejected as exc:
            raise RowError(exc.reason, str(exc)) from None
        text: str | None = get_text(values) if get_text is not None else None
        if not text or text.isspace():
            text = None
        attachments = get_attachments(values) if get_attachments is not None else []
        if not attachments and text is None:
            raise RowError("empty-message", "no text and no attachment")
        for _, att_type, _ in attachments:
            if att_type is not None and not mime_match(att_type):
                raise RowError("bad-attachment", f"attachment type {att_type!r} is not a MIME type like image/png")
        category = (get_category(values).strip() or None) if get_category is not None else None
        if category is not None and not coding_match(category):
            raise RowError("bad-category", f"category {category!r} is not 'system|code'")
        message_status = status(values)
        thread_status_ = thread_status(values)
        # stripped, the empty ones left out, without repeats (map and filter: no comprehension's frame a row)
        if separator is not None:
            listed = get_recipients[0](values)
            if separator not in listed:  # one recipient, or none: the common case, without a list to clean
                one = listed.strip()
                recipients = [one] if one else []
            else:
                recipients = list(dict.fromkeys(filter(None, map(strip, listed.split(separator)))))
        else:
            recipients = list(dict.fromkeys(filter(None, [g(values).strip() for g in get_recipients])))
        # every field, in order, straight to the tuple (a keyword call costs a microsecond a row, and the named
        # tuple's own __new__ is a Python function with 23 parameters)
        return micros, new_record(MessageRecord, (
            file_index, row, line, conv, mid, sender,
            (get_display(values).strip() or None) if get_display is not None else None,
            (get_role(values).strip() or None) if get_role is not None else None,
            recipients, sent, text, attachments,
            (get_reply(values).strip() or None) if get_reply is not None else None,
            message_status,
            (get_topic(values).strip() or None) if get_topic is not None else None,
            category,
            (get_subject(values).strip() or None) if get_subject is not None else None,
            thread_status_, raw, *read_state(values)))

    return record


def _read_state_function(m: MigrationMapping, index: dict[str, int]
                         ) -> Callable[[Row], tuple[str | None, str | None, str | None, str | None]]:
    """read_state(row) → (read_at, received, priority, thread priority) of a row, each None when the mapping or the
    row has none; RowError for a time or a priority that cannot be read."""
    times = [(name, v.value.getter(index), v.parser) if v is not None else None
             for name, v in (("read time", m.read_at), ("received time", m.received))]
    priorities = [(name, _optional(v, index)) for name, v in (("priority", m.priority),
                                                               ("thread priority", m.thread_priority))]

    def when(row: Row, got: tuple[str, Getter, Any] | None) -> str | None:
        if got is None or not (text := got[1](row).strip()):
            return None
        try:
            return str(got[2](text)[0])
        except TimeRejected as exc:
            raise RowError(exc.reason, f"{got[0]}: {exc}") from None

    def priority(row: Row, name: str, get: Getter | None) -> str | None:
        value = get(row).strip() if get is not None else ""
        if value and value not in REQUEST_PRIORITIES:
            raise RowError("bad-priority", f"{name} {value!r} is not one of {', '.join(REQUEST_PRIORITIES)}")
        return value or None

    def read_state(row: Row) -> tuple[str | None, str | None, str | None, str | None]:
        return (when(row, times[0]), when(row, times[1]), priority(row, *priorities[0]),
                priority(row, *priorities[1]))

    if all(t is None for t in times) and all(get is None for _, get in priorities):
        return lambda row: _UNREAD  # (one call a row, not five, when the mapping reads none of them)
    return read_state


_UNREAD: tuple[None, None, None, None] = (None, None, None, None)


Attachments = list[list[str | None]]


def _attachments_function(spec: tuple[AttachmentValues, ...] | AttachmentList, index: dict[str, int]
                          ) -> Callable[[Row], Attachments] | None:
    """row → its attachments ([url, content type, title] each; those without a url left out); RowError for
    an `each` value that is not a JSON array of objects. None when the mapping has no attachments."""
    if isinstance(spec, AttachmentList):
        return _each_function(spec, index)
    if not spec:
        return None
    getters = [(a.url.getter(index), _optional(a.content_type, index), _optional(a.title, index)) for a in spec]

    def attachments(row: Row) -> Attachments:
        out: Attachments = []
        for get_url, get_type, get_title in getters:
            url = get_url(row).strip()
            if url:
                out.append([url, (get_type(row).strip() or None) if get_type is not None else None,
                            (get_title(row).strip() or None) if get_title is not None else None])
        return out
    return attachments


def _each_function(spec: AttachmentList, index: dict[str, int]) -> Callable[[Row], Attachments]:
    get = spec.each.getter(index)
    keys = (spec.url, spec.content_type, spec.title)
    name = spec.each.column

    def field(item: dict[str, Any], key: str | None) -> str | None:
        return (as_text(lookup(item, key)).strip() or None) if key is not None else None

    def attachments(row: Row) -> Attachments:
        text = get(row).strip()
        if not text:
            return []
        try:
            items = orjson.loads(text)
        except orjson.JSONDecodeError:
            items = None
        if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
            raise RowError("bad-attachment", f"{name} is not a JSON array of objects: {text[:80]!r}")
        out: Attachments = []
        for item in items:
            url = field(item, keys[0])
            if url is not None:
                out.append([url, field(item, keys[1]), field(item, keys[2])])
        return out
    return attachments


def _name(value: Any) -> str:
    if value is None:
        return "the value"
    if value.column is not None:
        return f"column {value.column!r}"
    return "the template"
