"""The common case of `dump.dump_yaml`, written directly: the bytes libyaml's emitter would write, about three
times faster (PyYAML builds a node for every value first, in Python).

It writes only what it is sure of and answers None for anything else, which `dump_yaml` then hands to PyYAML:
block mappings (string keys) and sequences of scalars or mappings, no empty or nested-list containers; strings
on one line, of printable characters (folded at the emitter's width as it folds them); `None`, booleans and
integers. A string is written plain when the emitter would (nothing in it reads as an indicator, and PyYAML's
resolver takes it for a string), in double quotes when it holds characters past the Basic Multilingual Plane
(which the emitter escapes), else single-quoted. A property test holds it to PyYAML's output
(tests/test_fastyaml.py).
"""

from __future__ import annotations

import re
from typing import Any

from yaml import ScalarNode
from yaml.resolver import Resolver

WIDTH = 120
"""The emitter's line width: past it, a scalar is folded at its next single space (`_folded`)."""
KEY_BYTES = 100
"""The longest key written here (a key of more than 128 bytes is no simple key to the emitter)."""
_STR_TAG = "tag:yaml.org,2002:str"
_SAFE = re.compile(r"[\x20-\x7e\xa0-\u2027\u202a-\ud7ff\ue000-\ufefe\uff00-\ufffd\U00010000-\U0010ffff]+")
"""Strings of characters the emitter writes without escaping them, or (past the Basic Multilingual Plane) escapes
in double quotes: printable, no line break (no NEL, U+2028/2029), no BOM."""
_INDICATOR_FIRST = frozenset("#,[]{}&*!|>'\"%@`")
_ESCAPED = re.compile(r'["\\]|[\U00010000-\U0010ffff]')
_resolver = Resolver()
_RESOLVED_FIRST = frozenset(k for k in _resolver.yaml_implicit_resolvers if k is not None)
"""First characters of the values PyYAML's resolver may take for something else than a string (it looks no
further for any other)."""


def _plain(text: str) -> bool:
    """Whether the emitter writes `text` (a _SAFE string of the BMP) plain in a block: nothing in it is an
    indicator, no space at either end, and the resolver reads it back as a string."""
    first = text[0]
    if first in _INDICATOR_FIRST or first == " " or text[-1] == " ":
        return False
    if first in "?:-" and (len(text) == 1 or text[1] == " "):
        return False
    if text.startswith(("---", "...")) or ": " in text or " #" in text or text[-1] == ":":
        return False
    return first not in _RESOLVED_FIRST or _resolver.resolve(ScalarNode, text, (True, False)) == _STR_TAG  # type: ignore[no-untyped-call]


def _double(match: re.Match[str]) -> str:
    """A character a double-quoted scalar escapes, as the emitter writes it."""
    ch = match.group()
    return f"\\U{ord(ch):08X}" if ord(ch) > 0xFFFF else "\\" + ch


def _folded(text: str, column: int, indent: int) -> str:
    """`text` (a _SAFE string) as the emitter writes a block value starting at `column`: plain, single-quoted or
    (holding characters past the BMP) double-quoted; a single space met past the width becomes a line break and
    `indent` spaces (libyaml's write_plain, write_single_quoted, write_double_quoted)."""
    if max(text) > "\uffff":
        quote, body = '"', _ESCAPED.sub(_double, text)
    elif _plain(text):
        quote, body = "", text
    else:
        quote, body = "'", text.replace("'", "''")
    if column + len(body) + len(quote) <= WIDTH or " " not in body:  # the common case: no fold
        return quote + body + quote
    words = body.split(" ")
    out = [quote, words[0]]
    col = column + len(quote) + len(words[0])
    spaces = False
    last = len(body) - 1  # (the body's first and last characters are the text's: no escape holds a space)
    i = len(words[0])  # where in the body the space before each next word is
    for word in words[1:]:
        after = body[i + 1] if i < last else ""
        if not spaces and col > WIDTH and (not quote or 0 < i < last) and (quote == '"' or after != " "):
            out.append("\n" + " " * indent)
            col = indent
            if after == " ":  # (double quotes only) a space that begins a line is escaped
                out.append("\\")
                col += 1
        else:
            out.append(" ")
            col += 1
        spaces = not word
        out.append(word)
        col += len(word)
        i += 1 + len(word)
    out.append(quote)
    return "".join(out)


def _scalar(value: Any, column: int, indent: int) -> str | None:
    """`value` written as a block value at `column` (continued at `indent`), or None: unsure."""
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if type(value) is int:
        return str(value)
    if type(value) is not str or not value or _SAFE.fullmatch(value) is None:
        return None
    return _folded(value, column, indent)


class _Unsure(Exception):
    """Something `fast_yaml` leaves to PyYAML."""


def _key(key: Any) -> str:
    known = _KEYS.get(key)
    if known is not None:
        return known
    if type(key) is not str or not key or len(key.encode()) > KEY_BYTES or max(key) > "\uffff" \
            or _SAFE.fullmatch(key) is None:
        raise _Unsure
    written = key if _plain(key) else "'" + key.replace("'", "''") + "'"
    if len(_KEYS) < 4096:
        _KEYS[key] = written
    return written


_KEYS: dict[str, str] = {}
"""Keys as written (field names and aliases come again and again)."""


def _value(out: list[str], lead: str, value: Any, indent: str) -> None:
    """`lead` (`key:` or `- key:` at its indent) and `value`, a mapping's value at `indent`."""
    if type(value) is dict:
        if not value:
            raise _Unsure
        out.append(lead)
        _mapping(out, value, indent + "  ")
    elif type(value) is list:
        if not value:
            raise _Unsure
        out.append(lead)
        _sequence(out, value, indent)
    else:
        text = _scalar(value, len(lead) + 1, len(indent) + 2)
        if text is None:
            raise _Unsure
        out.append(f"{lead} {text}")


def _mapping(out: list[str], data: dict[Any, Any], indent: str, first: str | None = None) -> None:
    """Each key of `data` at `indent`; the first after `first` (a sequence's `- `) when given."""
    for n, (key, value) in enumerate(data.items()):
        lead = (first if n == 0 and first is not None else indent) + _key(key) + ":"
        _value(out, lead, value, indent)


def _sequence(out: list[str], items: list[Any], indent: str) -> None:
    """Items at `indent` (a mapping's sequence is not indented further)."""
    for item in items:
        if type(item) is dict:
            if not item:
                raise _Unsure
            _mapping(out, item, indent + "  ", first=indent + "- ")
        elif type(item) is list:
            raise _Unsure
        else:
            text = _scalar(item, len(indent) + 2, len(indent) + 2)
            if text is None:
                raise _Unsure
            out.append(f"{indent}- {text}")


def fast_yaml(data: Any) -> str | None:
    """`data` as `yaml.dump(data, Dumper=dump._Dumper, sort_keys=False, allow_unicode=True, width=120)` writes it,
    when it is of the common kind described above; None otherwise."""
    if type(data) is not dict or not data:
        return None
    out: list[str] = []
    try:
        _mapping(out, data, "")
    except _Unsure:
        return None
    out.append("")
    return "\n".join(out)
