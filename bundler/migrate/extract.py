"""One row → one message record (a list, stored as JSON while grouping), or the reason it is rejected.

Everything that can be judged from the row alone is judged here, as the row is read: ids present,
time readable, text or attachment there, status and category valid. What needs the whole
conversation (duplicates, replies, participants) is judged when the thread is assembled.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from .mapping import STATUSES, Getter, MigrationMapping, Row, StatusValue
from .readers import Source
from .times import TimeRejected

# positions in a message record
(F_FILE, F_ROW, F_LINE, F_CONV, F_ID, F_SENDER, F_SENDER_DISPLAY, F_SENDER_ROLE, F_RECIPIENTS, F_SENT, F_TEXT,
 F_ATT_URL, F_ATT_TYPE, F_ATT_TITLE, F_REPLY, F_STATUS, F_TOPIC, F_CATEGORY, F_SUBJECT, F_THREAD_STATUS,
 F_RAW) = range(21)

_MIME = re.compile(r"^[^\s/]+/[^\s]+$")
_CODING = re.compile(r"^[^|\s]+\|[^|\s]+$")
_STATUSES = frozenset(STATUSES)


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
    """Compiled for one input: `conversation(values)` and `record(values, ...)` (raises RowError)."""

    def __init__(self, mapping: MigrationMapping, source: Source) -> None:
        index = {c: i for i, c in enumerate(source.columns)}
        m = mapping

        def get(v: Any) -> Getter:
            return v.getter(index) if v is not None else _empty

        self.conversation = get(m.thread_id)
        self._id, self._sender = get(m.message_id), get(m.sender)
        self.message_id: Getter = lambda row: self._id(row).strip()
        self._sender_display, self._sender_role = get(m.sender_display), get(m.sender_role)
        self._text, self._reply = get(m.text), get(m.reply_to)
        self._att_url, self._att_type, self._att_title = get(m.attachment_url), get(m.attachment_type), \
            get(m.attachment_title)
        self._topic, self._category, self._subject = get(m.topic), get(m.category), get(m.subject)
        self._status = _status(m.status, index, "status")
        self._thread_status = _status(m.thread_status, index, "thread status")
        assert m.sent is not None
        self._sent_value, self._parse_sent = get(m.sent.value), m.sent.parser
        self._recipients: list[Getter] = [get(v) for v in m.recipients.values] if m.recipients else []
        self._separator = m.recipients.separator if m.recipients else None
        self._names = {"id": _name(m.message_id), "sender": _name(m.sender)}
        self.file_index = source.index

    def record(self, values: Row, conv: str, row: int, line: int, raw: Any) -> tuple[int, list[Any]]:
        """(sent µs, record) for a good row; RowError for a bad one."""
        mid = self._id(values).strip()
        if not mid:
            raise RowError("missing-message-id", f"no message id ({self._names['id']} is empty)")
        sender = self._sender(values).strip()
        if not sender:
            raise RowError("missing-sender", f"no sender id ({self._names['sender']} is empty)")
        try:
            sent, micros = self._parse_sent(self._sent_value(values).strip())
        except TimeRejected as exc:
            raise RowError(exc.reason, str(exc)) from None
        text: str | None = self._text(values)
        if not text or text.isspace():
            text = None
        url: str | None = self._att_url(values).strip() or None
        att_type = self._att_type(values).strip() or None if url else None
        if text is None and url is None:
            raise RowError("empty-message", "no text and no attachment")
        if att_type is not None and not _MIME.match(att_type):
            raise RowError("bad-attachment", f"attachment type {att_type!r} is not a MIME type like image/png")
        category = self._category(values).strip() or None
        if category is not None and not _CODING.match(category):
            raise RowError("bad-category", f"category {category!r} is not 'system|code'")
        status = self._status(values)
        thread_status = self._thread_status(values)
        recipients: list[str] = []
        if self._separator is not None:
            recipients = [r.strip() for r in self._recipients[0](values).split(self._separator)]
        else:
            recipients = [g(values).strip() for g in self._recipients]
        recipients = list(dict.fromkeys(r for r in recipients if r))
        record = [self.file_index, row, line, conv, mid, sender, self._sender_display(values).strip() or None,
                  self._sender_role(values).strip() or None, recipients, sent, text, url, att_type,
                  self._att_title(values).strip() or None if url else None, self._reply(values).strip() or None,
                  status, self._topic(values).strip() or None, category, self._subject(values).strip() or None,
                  thread_status, raw]
        return micros, record


def _name(value: Any) -> str:
    if value is None:
        return "the value"
    if value.column is not None:
        return f"column {value.column!r}"
    return "the template"
