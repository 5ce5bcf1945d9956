"""Legacy ids → thread keys, message ids and participant aliases, changed only when they must be.

An id that already fits is kept as it is, so every resource can be traced back to its row and a
re-run finds the same keys. A phone number in international form (`+15551230001`, `+1 555-123-0001`)
becomes `tel-` and its digits (`tel-15551230001`): readable, and the same on every run. Any other id
that does not fit is sanitised deterministically:

1. Unicode NFKD, accents dropped (`José` → `Jose`);
2. every character outside the charset replaced by `_`;
3. cut to leave room for `.` + the first 10 hex digits of the SHA-1 of the original id (UTF-8).

    thread key: [A-Za-z0-9_:-][A-Za-z0-9._:-]{0,127} (not starting with '.': its file would be hidden)
                e.g. "conv 17/a" → "conv_17_a.5c0a…", ".hidden" → "_hidden.<hash>"
    message id: [A-Za-z0-9._:-]{1,128}
    alias:      [A-Za-z0-9._-]{1,64}     e.g. "+15551230001" → "tel-15551230001"

The hash makes two different legacy ids meet in one sanitised id only if one of them was already
that exact text; the migration checks for that and rejects the newcomer (`id-collision`). Two phone
numbers written differently (`+15551230001`, `+1 555 123 0001`) meet in one `tel-` form: as aliases
the second in a thread gets `-2` (see assemble), as keys the newcomer is an `id-collision`.

Thread keys that differ only in case (`CASE-X`, `case-x`) would be one file on a case-insensitive file
system: rows are grouped and sharded by `fold(key)`, and in such a group the first key (in code point
order) stays, every other one is sanitised (`case-x` → `case-x.<hash>`, see `distinct_in_case`).
"""

from __future__ import annotations

import hashlib
import re
import unicodedata

from ..vocabulary import ALIAS_PATTERN, KEY_PATTERN, THREAD_KEY_PATTERN

_MESSAGE_ID = re.compile(KEY_PATTERN)
_THREAD_KEY = re.compile(THREAD_KEY_PATTERN)
KEY_FITS = _THREAD_KEY.fullmatch
"""id → a match when the id is a thread key as it is (so `thread_key(id) == id`), else None."""
MESSAGE_ID_FITS = _MESSAGE_ID.fullmatch
"""id → a match when the id is a message id as it is (so `message_id(id) == id`), else None."""
_ALIAS = re.compile(ALIAS_PATTERN)
_NOT_KEY = re.compile(r"[^A-Za-z0-9._:-]")
_NOT_ALIAS = re.compile(r"[^A-Za-z0-9._-]")
_PHONE = re.compile(r"\+[0-9][0-9 ().-]{0,30}")
_DIGITS = re.compile(r"[0-9]")
TEL_PREFIX = "tel-"


def _sanitise(raw: str, bad: re.Pattern[str], length: int) -> str:
    ascii_ = unicodedata.normalize("NFKD", raw).encode("ascii", "ignore").decode("ascii")
    cleaned = bad.sub("_", ascii_)[: length - 11]
    if cleaned.startswith("."):
        cleaned = "_" + cleaned[1:]
    digest = hashlib.sha1(raw.encode("utf-8", "surrogateescape")).hexdigest()[:10]
    return f"{cleaned}.{digest}" if cleaned else digest


def _phone(raw: str) -> str | None:
    """'+15551230001' (spaces, dashes, dots, brackets allowed) → 'tel-15551230001'; None if not a phone number."""
    if _PHONE.fullmatch(raw) is None:
        return None
    digits = "".join(_DIGITS.findall(raw))
    return TEL_PREFIX + digits if 4 <= len(digits) <= 15 else None


def _fitted(raw: str, fits: re.Pattern[str], bad: re.Pattern[str], length: int) -> str:
    return raw if fits.fullmatch(raw) else _phone(raw) or _sanitise(raw, bad, length)


def thread_key(raw: str) -> str:
    """A conversation id as a thread key: as it is when it fits, else readable or sanitised (module doc)."""
    return _fitted(raw, _THREAD_KEY, _NOT_KEY, 128)


def message_id(raw: str) -> str:
    """A legacy message id as a spec message id: as it is when it fits, else readable or sanitised."""
    return _fitted(raw, _MESSAGE_ID, _NOT_KEY, 128)


def fold(key: str) -> str:
    """What thread keys are grouped and sharded by: keys equal but for case are one file on some systems."""
    return key.lower()


def distinct_in_case(conversation: str) -> str:
    """The thread key of a conversation whose key differs only in case from one that came first: sanitised,
    so that it differs by more than case (the hash is of the legacy id)."""
    return _sanitise(conversation, _NOT_KEY, 128)


def alias(raw: str) -> str:
    """A legacy user id as a participant alias: as it is when it fits, else readable or sanitised."""
    return _fitted(raw, _ALIAS, _NOT_ALIAS, 64)
