"""What one legacy row becomes while it waits to be grouped: a MessageRecord, or a Tombstone.

A row judged good alone is a `MessageRecord` (every value the thread needs, plus where the row came from
and the raw row for the reject file). A row rejected alone still leaves a `Tombstone` in its
conversation, so that a reply to it is rejected as `reply-to-rejected` rather than `reply-to-unknown`.

Both are stored in the grouping database as compact JSON arrays (their fields in order), with the
row's sent instant in microseconds beside them; a tombstone's sent value is `TOMBSTONE_SENT`, which
sorts before every real instant, so a conversation's tombstones come first in its group.

    data = encode(record)                  # bytes for the store
    decode(sent, data)                     # → MessageRecord, or Tombstone when sent == TOMBSTONE_SENT
    decode_rows(rows)                      # → the same, for a group's [(sent, input order, data), ...]
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, NamedTuple

import orjson

TOMBSTONE_SENT = -(2**62)
"""The sent value a tombstone is stored with: before any instant, so tombstones open their group."""


class MessageRecord(NamedTuple):
    """A row that can be a message: its values as the mapping read them (stripped; None when absent).

    A named tuple: one is made per row, and it is stored as the JSON array of its fields."""

    file: int  # index of the input among the run's inputs
    row: int  # data row number in that input, 1-based
    line: int  # line where the row starts
    conversation: str  # the legacy conversation id (the thread key derives from it)
    message_id: str
    sender: str
    sender_display: str | None
    sender_role: str | None
    recipients: list[str]  # legacy user ids, in order, without repeats; [] for the default
    sent: str  # a FHIR instant, as written or as made from local time
    text: str | None
    attachments: list[list[str | None]]  # [url, content type or None, title or None] each, in order
    reply_to: str | None  # the legacy message id this one answers
    status: str | None
    topic: str | None
    category: str | None  # 'system|code'
    subject: str | None  # legacy user id
    thread_status: str | None
    raw: Any  # the row as read: a list of CSV fields or a JSON object
    read_at: str | None = None  # a FHIR instant: when its recipients read it
    received: str | None = None  # a FHIR instant
    priority: str | None = None  # a request priority
    thread_priority: str | None = None


class Tombstone(NamedTuple):
    """A row rejected on its own: what its conversation must know of it (its message id)."""

    conversation: str
    message_id: str


_dumps, _loads = orjson.dumps, orjson.loads
_new = tuple.__new__  # what `_make` calls, less its Python frame and length check (encode wrote every field)


def encode(item: MessageRecord | Tombstone) -> bytes:
    """The stored form: the JSON array of the fields (orjson writes tuples, not named tuples)."""
    return _dumps(tuple(item))


def decode(sent: int, data: bytes) -> MessageRecord | Tombstone:
    """Back from the stored form; `sent` (stored beside it) says which of the two it is."""
    return decode_rows(((sent, 0, data),))[0]


def decode_rows(rows: Iterable[tuple[int, int, bytes]]) -> list[MessageRecord | Tombstone]:
    """`decode` of each (sent, input order, data) of a group, in order (one call a group, not one a row)."""
    return [_new(Tombstone, _loads(data)) if sent == TOMBSTONE_SENT else _new(MessageRecord, _loads(data))
            for sent, _, data in rows]
