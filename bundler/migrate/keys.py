"""Legacy ids → thread keys, message ids and participant aliases, changed only when they must be.

An id that already fits is kept as it is, so every resource can be traced back to its row and a
re-run finds the same keys. One that does not fit is sanitised deterministically:

1. Unicode NFKD, accents dropped (`José` → `Jose`);
2. every character outside the charset replaced by `_`;
3. cut to leave room for `.` + the first 10 hex digits of the SHA-1 of the original id (UTF-8).

    thread key, message id: [A-Za-z0-9._:-]{1,128}   e.g. "conv 17/a" → "conv_17_a.5c0a…"
    alias:                  [A-Za-z0-9._-]{1,64}

The hash makes two different legacy ids meet in one sanitised id only if one of them was already
that exact text; the migration checks for that and rejects the newcomer (`id-collision`).
"""

from __future__ import annotations

import hashlib
import re
import unicodedata

_KEY = re.compile(r"[A-Za-z0-9._:-]{1,128}")
KEY_FITS = _KEY.fullmatch
"""id → a match when the id is a thread key as it is (so `thread_key(id) == id`), else None."""
_ALIAS = re.compile(r"[A-Za-z0-9._-]{1,64}")
_NOT_KEY = re.compile(r"[^A-Za-z0-9._:-]")
_NOT_ALIAS = re.compile(r"[^A-Za-z0-9._-]")


def _sanitise(raw: str, bad: re.Pattern[str], length: int) -> str:
    ascii_ = unicodedata.normalize("NFKD", raw).encode("ascii", "ignore").decode("ascii")
    cleaned = bad.sub("_", ascii_)[: length - 11]
    digest = hashlib.sha1(raw.encode("utf-8", "surrogateescape")).hexdigest()[:10]
    return f"{cleaned}.{digest}" if cleaned else digest


def thread_key(raw: str) -> str:
    """A conversation or message id as a spec key: as it is when it fits, else sanitised (see module doc)."""
    return raw if _KEY.fullmatch(raw) else _sanitise(raw, _NOT_KEY, 128)


def alias(raw: str) -> str:
    """A legacy user id as a participant alias: as it is when it fits, else sanitised."""
    return raw if _ALIAS.fullmatch(raw) else _sanitise(raw, _NOT_ALIAS, 64)
