"""Read YAML and JSON input into plain data, keeping where every value came from.

Values are never silently changed: YAML is read with a YAML 1.2-like core schema in which only
`null`/`~`, `true`/`false` and canonical decimal integers are anything but strings, so timestamps keep
their precision and offset, `007` stays `"007"` and `yes` stays `"yes"`. Duplicate mapping keys are an
error, not a silent overwrite.

Hostile input is refused, each time with a problem at its line, in bounded time and memory: values
nested more than `MAX_DEPTH` levels deep, YAML aliases that repeat more than `MAX_ALIAS_VALUES` values
(an "alias bomb"), YAML tags other than the core schema's, what JSON does not allow though Python's
reader takes it (`NaN`, `Infinity`, a number too large for a float, half a surrogate pair), integers
too long for Python to read, and text that is not UTF-8 (UTF-16 is named as such).
"""

from __future__ import annotations

import codecs
import json
import math
import re
import sys
from array import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Final

import yaml

from ..errors import Problem

Path_ = tuple[str | int, ...]
Position = tuple[int, int]  # 1-based line and column

MAX_DEPTH: Final = 100
"""Values nested deeper than this are refused: no spec or Bundle needs as many levels, and code that walks
data (ours, pydantic's, orjson's) must not run out of stack on what a file holds."""
MAX_ALIAS_VALUES: Final = 10_000
"""How many values a YAML document may repeat through aliases (`*name`) before it is refused as an alias
bomb: nine anchors of nine aliases each would otherwise expand to 387 million values."""
TOO_DEEP: Final = f"nested more than {MAX_DEPTH} levels deep"


def format_path(path: Path_) -> str:
    """`("messages", 2, "sender")` → `messages[3].sender`: list positions count from 1, as a message's default
    id does, so `messages[1]` is the first message."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part + 1}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _pack(line: int, column: int) -> int:
    return line << 32 | column


def _unpack(packed: int) -> Position:
    return (packed >> 32, packed & 0xFFFFFFFF)


class Positions:
    """Where the values of one YAML collection start, and the keys of a mapping, and the same for each child
    that is a collection: about 300 bytes a message where a dict of paths took about 1.4 kB (a thread of 100,000
    messages: 30 MB, not 140). `marks` holds packed (line, column)s, for a mapping key and value of each key in
    `names` order, for a sequence the value of each item; `kids`, the child's index → its Positions."""

    __slots__ = ("at", "kids", "marks", "names")

    def __init__(self, at: int, names: tuple[str, ...] | None) -> None:
        self.at = at
        self.names = names
        self.marks = array("Q")
        self.kids: dict[int, Positions] | None = None

    def find(self, path: Path_, *, key: bool = False) -> Position:
        """The position of the value at `path` (of its key, with `key`, in a mapping), or of the nearest parent
        that has one."""
        node: Positions | None = self
        best = self.at
        for depth, part in enumerate(path):
            if node is None:
                break
            if node.names is not None:
                if not isinstance(part, str) or part not in node.names:
                    break
                i = node.names.index(part)
                if key and depth == len(path) - 1:
                    return _unpack(node.marks[2 * i])
                best = node.marks[2 * i + 1]
            else:
                if not isinstance(part, int) or not 0 <= part < len(node.marks):
                    break
                i = part
                best = node.marks[i]
            node = node.kids.get(i) if node.kids else None
        return _unpack(best)


@dataclass
class Document:
    """One thread's worth of input data and the positions of its values.

    `locate`, when set, fills `values` and `keys` on first use (JSON read without positions: only files
    with problems pay for them)."""

    file: str
    data: Any
    prefix: Path_ = ()
    values: dict[Path_, Position] = field(default_factory=dict)
    keys: dict[Path_, Position] = field(default_factory=dict)
    locate: Callable[[], object] | None = field(default=None, repr=False, compare=False)
    tree: Positions | None = field(default=None, repr=False, compare=False)  # YAML's, in place of values and keys

    def position(self, path: Path_, *, key: bool = False) -> Position | None:
        """Where the value (or, with key=True, the key) at `path` starts; falls back to its parents."""
        full = self.prefix + tuple(path)
        if self.locate is not None and (key or full not in self.values):
            self.locate()
            self.locate = None
        if self.tree is not None:
            return self.tree.find(full, key=key)
        if key and full in self.keys:
            return self.keys[full]
        while True:
            if full in self.values:
                return self.values[full]
            if not full:
                return None
            full = full[:-1]

    def problem(self, path: Path_, message: str, *, key: bool = False) -> Problem:
        pos = self.position(path, key=key)
        shown = format_path(self.prefix + tuple(path))
        return Problem(self.file, pos[0] if pos else None, pos[1] if pos else None, shown, message)


def _too_long(digits: str) -> bool:
    """Whether Python refuses to read this integer (`sys.get_int_max_str_digits()`, 4300 by default)."""
    limit = sys.get_int_max_str_digits()
    return bool(limit) and len(digits.lstrip("-")) > limit


def _too_long_message(digits: str) -> str:
    return f"a number with {len(digits.lstrip('-'))} digits is too long to read (quote it if it is text)"


def shown(text: str, limit: int = 60) -> str:
    """`text` quoted for a message, cut short when long (the message's position says where all of it is)."""
    return repr(text) if len(text) <= limit else f"{text[:limit]!r}... ({len(text):,} characters)"


# --- text ------------------------------------------------------------------------------------------------

_BOMS: Final = ((codecs.BOM_UTF32_LE, "UTF-32 (little-endian)"), (codecs.BOM_UTF32_BE, "UTF-32 (big-endian)"),
                (codecs.BOM_UTF16_LE, "UTF-16 (little-endian)"), (codecs.BOM_UTF16_BE, "UTF-16 (big-endian)"))
SAVE_AS_UTF8: Final = "save it as UTF-8"


def _wide_encoding(head: bytes) -> str | None:
    """The name of the UTF-16 or UTF-32 encoding `head` (a file's first bytes) is in, if it is one."""
    for bom, name in _BOMS:
        if head.startswith(bom):
            return name
    sample = head[:512]
    if len(sample) < 4 or sample.count(0) < len(sample) // 4:
        return None
    even, odd = sample[0::2], sample[1::2]
    if sample[0::4].count(0) == 0 and sample[1::4] == sample[2::4] == sample[3::4] == bytes(len(sample[1::4])):
        return "UTF-32 (little-endian)"
    if odd.count(0) > len(odd) * 0.9 and even.count(0) < len(even) * 0.1:
        return "UTF-16 (little-endian)"
    if even.count(0) > len(even) * 0.9 and odd.count(0) < len(odd) * 0.1:
        return "UTF-16 (big-endian)"
    return None


def decode(raw: bytes, file: str) -> tuple[str | None, list[Problem]]:
    """Bytes → text, refusing binary data, UTF-16/UTF-32 and invalid UTF-8 with a clear message."""
    wide = _wide_encoding(raw[:8192])
    if wide is not None:
        return None, [Problem(file, None, None, "", f"this is {wide} text: {SAVE_AS_UTF8} (YAML and JSON are read "
                                                    "as UTF-8)")]
    if b"\x00" in raw[:8192]:
        return None, [Problem(file, None, None, "", "not a text file (it contains NUL bytes): expected YAML or JSON")]
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        why = f"not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start:,}): {SAVE_AS_UTF8}"
        return None, [Problem(file, line, column, "", why)]
    return text, []


class _Lines:
    """Offset → 1-based (line, column) in a text, in constant memory: it counts the line breaks from the offset
    asked before (or from the start, for an offset before it), so offsets asked in text order, as a scan does,
    cost one pass over the text in all. (A table of where each line starts would take 40 bytes a line: 2 GB for
    a file of 50 million line breaks.)"""

    def __init__(self, text: str) -> None:
        self.text = text
        self.offset = 0
        self.line = 1
        self.start = 0  # where that line starts

    def at(self, offset: int) -> Position:
        if offset < self.offset:
            self.offset, self.line, self.start = 0, 1, 0
        breaks = self.text.count("\n", self.offset, offset)
        if breaks:
            self.line += breaks
            self.start = self.text.rfind("\n", self.offset, offset) + 1
        self.offset = offset
        return (self.line, offset - self.start + 1)


# --- YAML ------------------------------------------------------------------------------------------------

_STR = "tag:yaml.org,2002:str"
_NULL = "tag:yaml.org,2002:null"
_BOOL = "tag:yaml.org,2002:bool"
_INT = "tag:yaml.org,2002:int"
_MAP = "tag:yaml.org,2002:map"
_SEQ = "tag:yaml.org,2002:seq"
_CORE: Final = {  # tag → (the values it takes, what they are)
    _NULL: (re.compile(r"~|null|Null|NULL|"), "null"),
    _BOOL: (re.compile(r"true|True|TRUE|false|False|FALSE"), "a boolean (true or false)"),
    _INT: (re.compile(r"0|-?[1-9][0-9]*"), "a decimal integer"),
}


class _Resolver(yaml.resolver.BaseResolver):
    """YAML 1.2 core-like implicit typing: everything not null, bool or a plain int is a string."""


_Resolver.add_implicit_resolver(_NULL, re.compile(rf"^(?:{_CORE[_NULL][0].pattern})$"), list("~nN") + [""])
_Resolver.add_implicit_resolver(_BOOL, re.compile(rf"^(?:{_CORE[_BOOL][0].pattern})$"), list("tTfF"))
_Resolver.add_implicit_resolver(_INT, re.compile(rf"^(?:{_CORE[_INT][0].pattern})$"), list("-0123456789"))

try:  # libyaml's parser and composer when PyYAML has them (much faster), else the pure-Python ones
    from yaml._yaml import CParser

    class _Loader(CParser, _Resolver):
        def __init__(self, stream: str) -> None:
            CParser.__init__(self, stream)
            _Resolver.__init__(self)

except ImportError:  # pragma: no cover

    class _Loader(  # type: ignore[no-redef]
        yaml.reader.Reader, yaml.scanner.Scanner, yaml.parser.Parser, yaml.composer.Composer, _Resolver
    ):
        def __init__(self, stream: str) -> None:
            yaml.reader.Reader.__init__(self, stream)
            yaml.scanner.Scanner.__init__(self)
            yaml.parser.Parser.__init__(self)
            yaml.composer.Composer.__init__(self)
            _Resolver.__init__(self)


def _at(event: yaml.Event) -> int:
    mark: Any = event.start_mark  # (libyaml's events always have one)
    return _pack(mark.line + 1, mark.column + 1)


def _tag_name(tag: str) -> str:
    return "!!" + tag.removeprefix("tag:yaml.org,2002:") if tag.startswith("tag:yaml.org,2002:") else tag


def _mark(event: yaml.Event) -> Any:
    return event.start_mark


class _AliasBomb(Exception):
    def __init__(self, path: Path_) -> None:
        self.path = path  # (cited at the key of its last name: where the repeating starts)
        self.key_path = path[: max((i + 1 for i, part in enumerate(path) if isinstance(part, str)), default=0)]
        self.at: int | None = None


_START = (yaml.MappingStartEvent, yaml.SequenceStartEvent)
_END = (yaml.MappingEndEvent, yaml.SequenceEndEvent)


class _Recorder:
    """The events pulled through it, kept: an anchored value's, for its aliases to build again."""

    def __init__(self, events: Iterator[yaml.Event], first: yaml.Event) -> None:
        self.events = events
        self.kept = [first]

    def __iter__(self) -> Iterator[yaml.Event]:
        return self

    def __next__(self) -> yaml.Event:
        event = next(self.events)
        self.kept.append(event)
        return event


class _YamlBuilder:
    """A YAML document's events → plain data, and where each value (and key) starts (`Positions`), without
    composing the document's nodes first (a node and its two marks for every value: 450 MB for a thread of
    100,000 messages). Aliases are built again from their anchor's events, within a budget; the errors
    libyaml's composer would raise (an undefined alias, an anchor defined twice) are raised in its words."""

    def __init__(self, loader: Any, doc: Document, problems: list[Problem]) -> None:
        self.loader = loader
        self.doc = doc
        self.problems = problems
        self.anchors: dict[str, list[yaml.Event]] = {}
        self.repeated = 0  # values built again through aliases
        self.names: dict[tuple[str, ...], tuple[str, ...]] = {}  # one tuple of keys for all mappings alike

    def problem(self, at: int, path: Path_, message: str) -> Problem:
        line, column = _unpack(at)
        return Problem(self.doc.file, line, column, format_path(path), message)

    def value(self, event: yaml.Event, events: Iterator[yaml.Event], path: Path_, depth: int = 0, *,
              again: bool = False) -> tuple[Any, int, Positions | None]:
        """The value that starts with `event` (the rest from `events`), its position, and its children's."""
        if again:
            self.repeated += 1
            if self.repeated > MAX_ALIAS_VALUES:
                raise _AliasBomb(path)
        if isinstance(event, yaml.AliasEvent):
            kept = self.anchors.get(event.anchor) if event.anchor is not None else None
            if kept is None:
                raise yaml.composer.ComposerError(None, None, "found undefined alias", _mark(event))
            replay = iter(kept)
            return self.value(next(replay), replay, path, depth, again=True)
        anchor = getattr(event, "anchor", None)
        if anchor is not None and not again:
            if anchor in self.anchors:
                raise yaml.composer.ComposerError("found duplicate anchor; first occurrence",
                                                  _mark(self.anchors[anchor][0]), "second occurrence", _mark(event))
            recorder = _Recorder(events, event)
            built = self._value(event, recorder, path, depth, again)
            self.anchors[anchor] = recorder.kept
            return built
        return self._value(event, events, path, depth, again)

    def _value(self, event: yaml.Event, events: Iterator[yaml.Event], path: Path_, depth: int, again: bool
               ) -> tuple[Any, int, Positions | None]:
        at = _at(event)
        if isinstance(event, _START):
            if depth >= MAX_DEPTH:
                self.problems.append(self.problem(at, (), TOO_DEEP))  # (its path is as long)
                _skip(events)
                return None, at, None
            if isinstance(event, yaml.MappingStartEvent):
                self._collection_tag(event, yaml.MappingNode, _MAP, at, path)
                mapping, where = self.mapping(at, events, path, depth, again)
                return mapping, at, where
            self._collection_tag(event, yaml.SequenceNode, _SEQ, at, path)
            sequence, where = self.sequence(at, events, path, depth, again)
            return sequence, at, where
        assert isinstance(event, yaml.ScalarEvent)
        return self.scalar(event, at, path), at, None

    def mapping(self, at: int, events: Iterator[yaml.Event], path: Path_, depth: int, again: bool
                ) -> tuple[dict[str, Any], Positions]:
        out: dict[str, Any] = {}
        marks = array("Q")
        kids: dict[int, Positions] = {}
        while not isinstance(key_event := next(events), yaml.MappingEndEvent):
            if isinstance(key_event, yaml.AliasEvent) and key_event.anchor in self.anchors:
                key_event = self.anchors[key_event.anchor][0]  # (an alias of a plain value is that key)
            if not isinstance(key_event, yaml.ScalarEvent):
                if isinstance(key_event, _START):
                    _skip(events)
                self.problems.append(self.problem(_at(key_event), path + ("?",), "a mapping key must be a plain "
                                                                                  "value"))
                _skip_value(next(events), events)
                continue
            key = key_event.value
            child = path + (key,)
            if key in out:
                first = _unpack(marks[2 * list(out).index(key) + 1])[0]
                self.problems.append(self.problem(_at(key_event), child,
                                                  f"duplicate key '{key}' (first at line {first})"))
                _skip_value(next(events), events)
                continue
            try:
                value, value_at, where = self.value(next(events), events, child, depth + 1, again=again)
            except _AliasBomb as bomb:
                if bomb.at is None and child == bomb.key_path:
                    bomb.at = _at(key_event)
                raise
            if where is not None:
                kids[len(out)] = where
            out[key] = value
            marks.append(_at(key_event))
            marks.append(value_at)
        names = tuple(out)
        positions = Positions(at, self.names.setdefault(names, names))
        positions.marks, positions.kids = marks, kids or None
        return out, positions

    def sequence(self, at: int, events: Iterator[yaml.Event], path: Path_, depth: int, again: bool
                 ) -> tuple[list[Any], Positions]:
        out: list[Any] = []
        positions = Positions(at, None)
        kids: dict[int, Positions] = {}
        while not isinstance(event := next(events), yaml.SequenceEndEvent):
            value, value_at, where = self.value(event, events, path + (len(out),), depth + 1, again=again)
            if where is not None:
                kids[len(out)] = where
            out.append(value)
            positions.marks.append(value_at)
        positions.kids = kids or None
        return out, positions

    def _collection_tag(self, event: yaml.CollectionStartEvent, kind: type[yaml.Node], tag: str, at: int,
                        path: Path_) -> None:
        given = event.tag if event.tag not in (None, "!") else self.loader.resolve(kind, None, event.implicit)
        if given != tag:
            self.problems.append(self.problem(at, path, f"the YAML tag {_tag_name(given)} is not used in these "
                                                        "files: write the value without it"))

    def scalar(self, event: yaml.ScalarEvent, at: int, path: Path_) -> Any:
        text = event.value
        tag = event.tag if event.tag not in (None, "!") else self.loader.resolve(yaml.ScalarNode, text,
                                                                                  event.implicit)
        if tag == _STR:
            return text
        if tag not in _CORE:
            self.problems.append(self.problem(at, path, f"the YAML tag {_tag_name(tag)} is not used in these "
                                                        "files: write the value without it (quoted, if it is text)"))
            return text
        pattern, what = _CORE[tag]
        if pattern.fullmatch(text) is None:  # an explicit tag (`!!int abc`) that the value does not fit
            self.problems.append(self.problem(at, path, f"{shown(text)} is not {what}, as its tag "
                                                        f"{_tag_name(tag)} says"))
            return text
        if tag == _NULL:
            return None
        if tag == _BOOL:
            return text.lower() == "true"
        if _too_long(text):
            self.problems.append(self.problem(at, path, _too_long_message(text)))
            return text
        return int(text)


def _skip(events: Iterator[yaml.Event]) -> None:
    """The rest of a collection whose start event was read: skipped."""
    level = 1
    while level:
        event = next(events)
        level += isinstance(event, _START) - isinstance(event, _END)


def _skip_value(event: yaml.Event, events: Iterator[yaml.Event]) -> None:
    if isinstance(event, _START):
        _skip(events)


_YAML_WORDS: Final = {  # libyaml's problem → our words ({line}: where what it was reading started; {column})
    "did not find expected '-' indicator": "this line is not indented like the items of the list that starts on line "
                                           "{line} (each item starts with '- ' at column {column}, and the lines of "
                                           "an item line up under its first key)",
    "did not find expected key": "this line is not indented like the keys of the mapping that starts on line {line} "
                                 "(its keys start at column {column}; a list item needs '- ')",
    "could not find expected ':'": "line {line} is neither 'key: value' nor a list item '- ...' (a ':' is missing, "
                                   "or the indentation is wrong)",
    "mapping values are not allowed in this context": "a ': ' where no key can start: quote text that holds ': ', "
                                                      "or check the indentation",
    "found unexpected ':'": "a ': ' where no key can start: quote text that holds ': '",
    "block sequence entries are not allowed in this context": "a '- ' where no list item can start: check the "
                                                              "indentation, or quote text that starts with '- '",
    "mapping keys are not allowed in this context": "a '? ' where no key can start: quote text that starts with '?'",
    "did not find expected ',' or '}'": "the {{...}} that starts on line {line} is not closed (or a ',' is missing)",
    "did not find expected ',' or ']'": "the [...] that starts on line {line} is not closed (or a ',' is missing)",
    "found undefined alias": "an alias (*name) that no anchor (&name) before it defines",
    "second occurrence": "an anchor (&name) that is already defined on line {line}",
    "found unknown escape character": "an unknown escape in double-quoted text (write a backslash as \\\\, or use "
                                      "single quotes)",
    "did not find expected hexdecimal number": "an escape \\x, \\u or \\U without its hex digits",
    "found invalid Unicode character escape code": "an escape that is not a Unicode character (\\ud800-\\udfff are "
                                                   "halves of a surrogate pair)",
    "found unexpected document indicator": "a line '---' or '...' inside quoted text ends the document: indent it",
    "exceeded maximum nesting depth": "nested too deeply",
    "did not find expected node content": "a value is missing here",
    "did not find expected alphabetic or numeric character": "an anchor (&) or alias (*) needs a name of letters and "
                                                             "digits: quote text that starts with '&' or '*'",
    "did not find expected tag URI": "a tag (!name) without a name: quote text that starts with '!'",
    "did not find expected whitespace or line break": "a tag (!name) or directive (%...) must be followed by a space: "
                                                      "quote text that starts with '!' or '%'",
    "did not find the expected '>'": "a tag !<...> that is not closed: quote text that starts with '!'",
    "did not find expected '!'": "a tag (!name!...) that is not closed: quote text that starts with '!'",
    "did not find URI escaped octet": "a tag with a bad %-escape: quote text that starts with '!'",
    "found an incorrect leading UTF-8 octet": "a tag with a bad %-escape: quote text that starts with '!'",
    "found an incorrect trailing UTF-8 octet": "a tag with a bad %-escape: quote text that starts with '!'",
    "found undefined tag handle": "a tag handle (!name!) that no %TAG directive defines: quote text that starts "
                                  "with '!'",
    "found unexpected non-alphabetical character": "a line that starts with '%' is a directive: quote it",
    "could not find expected directive name": "a line that starts with '%' is a directive: quote it",
    "found unknown directive name": "a line that starts with '%' is a directive: quote it",
    "did not find expected digit or '.' character": "a %YAML directive needs a version like 1.2: quote text that "
                                                    "starts with '%'",
    "found extremely long version number": "a %YAML directive needs a version like 1.2",
    "found incompatible YAML document": "a %YAML version that is not 1.x",
    "found duplicate %YAML directive": "a %YAML directive given twice",
    "found duplicate %TAG directive": "a %TAG directive given twice",
    "did not find expected whitespace": "a %TAG directive needs a space between its parts",
    "found an indentation indicator equal to 0": "the indentation of a block of text ('|' or '>') must be 1-9",
}
"""What libyaml says (`problem`) → what we say, for every problem it has (scanner.c, parser.c, the composer)."""

_CONTEXT = re.compile(r"^(?:while )?(?:scanning|parsing) (?:a |an |the )?(.*)$")
_CONTEXT_WORDS: Final = {"quoted scalar": "quoted text", "block scalar": "block of text ('|' or '>')",
                         "plain scalar": "text", "simple key": "key", "flow mapping": "{...}", "flow sequence": "[...]",
                         "flow node": "value", "block node": "value", "block mapping": "mapping",
                         "block collection": "list", "node": "value"}


def _context(context: str) -> str | None:
    """`while scanning a quoted scalar` → 'quoted text'."""
    what = _CONTEXT.match(context)
    return _CONTEXT_WORDS.get(what.group(1), what.group(1)) if what else None


def _yaml_words(exc: yaml.MarkedYAMLError, text: str) -> str:
    """PyYAML's (libyaml's) description of a syntax error, in our words: what is wrong and what to do."""
    problem = exc.problem or ""
    context = exc.context or ""
    line = exc.context_mark.line + 1 if exc.context_mark else None
    column = exc.context_mark.column + 1 if exc.context_mark else None
    mark = exc.problem_mark
    here = text[mark.index] if mark is not None and 0 <= mark.index < len(text) else ""
    if "tab" in problem or (here == "\t" and "cannot start any token" in problem):
        return "a tab character: YAML indents with spaces only"
    if problem == "found character that cannot start any token":
        return f"{here!r} cannot start a value: quote the text" if here else "a value cannot start here"
    if problem == "did not find expected comment or line break":
        if "block scalar" in context:
            return "after '|' or '>' (a block of text) the line must end: quote text that starts with '|' or '>'"
        return "a line that starts with '%' is a directive and must end here: quote it"
    if problem == "found unexpected end of stream":
        return f"the file ends inside the {_context(context) or 'value'} that starts on line {line}"
    if "expected <document start>" in problem:
        return "more after the end of the document (several threads are separated by a line '---')"
    if problem in _YAML_WORDS:
        return _YAML_WORDS[problem].format(line=line, column=column)
    what = _context(context)  # (none is known to reach here)
    return f"{problem or context or 'invalid YAML'}" + (f" (in the {what} that starts on line {line})"
                                                         if what and line else "")


_READER = re.compile(r"unacceptable character #x([0-9a-fA-F]+): (.*)")


def parse_yaml(text: str, file: str) -> tuple[list[Document], list[Problem]]:
    """Every YAML document in `text`, with positions; problems for syntax errors and duplicate keys."""
    docs: list[Document] = []
    problems: list[Problem] = []
    loader = _Loader(text)

    def pulled() -> Iterator[yaml.Event]:
        while (event := loader.get_event()) is not None:
            yield event

    events = pulled()
    try:
        next(events)  # StreamStartEvent
        while not loader.check_event(yaml.StreamEndEvent):
            next(events)  # DocumentStartEvent
            doc = Document(file, None)
            builder = _YamlBuilder(loader, doc, problems)
            first = next(events)
            try:
                doc.data, at, doc.tree = builder.value(first, events, ())
            except _AliasBomb as bomb:
                problems.append(Problem(file, *_unpack(bomb.at if bomb.at is not None else _at(first)),
                                        format_path(bomb.key_path),
                                        f"the aliases (*name) of this document repeat more than "
                                        f"{MAX_ALIAS_VALUES:,} values, as an alias bomb does: write the values "
                                        f"out, or use fewer aliases"))
                break
            if doc.tree is None:
                doc.values[()] = _unpack(at)
            next(events)  # DocumentEndEvent
            if not (doc.data is None and isinstance(first, yaml.ScalarEvent) and first.value == ""):
                docs.append(doc)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (None, None)
        problems.append(Problem(file, line, col, "", f"YAML syntax error: {_yaml_words(exc, text)}"))
    except yaml.reader.ReaderError as exc:  # a character YAML does not allow (control characters)
        line, col = _Lines(text).at(exc.position)
        bad = _READER.match(str(exc).splitlines()[0])
        what = f"U+{int(bad.group(1), 16):04X}" if bad else repr(exc.character)
        problems.append(Problem(file, line, col, "", f"the character {what} is not allowed in YAML (a control "
                                                     f"character): remove it, or write it as an escape in "
                                                     f"double-quoted text"))
    except yaml.YAMLError as exc:  # pragma: no cover - PyYAML raises the two above
        problems.append(Problem(file, None, None, "", f"YAML error: {exc}"))
    finally:
        loader.dispose()
    return docs, problems


# --- JSON ------------------------------------------------------------------------------------------------

_JSON_WORDS: Final = (  # the start of Python's JSON error → our words
    ("Expecting property name enclosed in double quotes",
     "expected a key in double quotes (JSON has no trailing commas, no single quotes, no comments)"),
    ("Expecting value", "expected a value (JSON has no trailing commas; text goes in double quotes)"),
    ("Expecting ',' delimiter", "expected ',' between two values"),
    ("Expecting ':' delimiter", "expected ':' after a key"),
    ("Extra data", "more after the end of the JSON value (several threads go in one list: [{...}, {...}])"),
    ("Unterminated string", "a string that is never closed with '\"'"),
    ("Invalid control character", "a control character inside a string (write a line break as \\n, a tab as \\t)"),
    ("Invalid \\uXXXX escape", "an invalid \\u escape (it takes 4 hex digits)"),
    ("Invalid \\escape", "an invalid escape in a string (write a backslash as \\\\)"),
    ("Illegal trailing comma", "a trailing comma (JSON has none)"),
)


def _json_words(msg: str) -> str:
    return next((words for start, words in _JSON_WORDS if msg.startswith(start)), msg)


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


class _Suspect:
    """What the fast read saw that only the position scan can word: duplicates, non-JSON numbers."""

    def __init__(self) -> None:
        self.found = False

    def reader(self) -> json.JSONDecoder:
        """Python's JSON reader, telling this what it saw."""
        return json.JSONDecoder(object_pairs_hook=self.object, parse_constant=self.constant, parse_int=self.integer,
                                parse_float=self.number)

    def object(self, pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out = dict(pairs)
        if len(out) != len(pairs):
            self.found = True
        return out

    def constant(self, name: str) -> None:
        self.found = True

    def integer(self, digits: str) -> int | str:
        if _too_long(digits):
            self.found = True
            return digits
        return int(digits)

    def number(self, text: str) -> float:
        value = float(text)
        if math.isinf(value):
            self.found = True
        return value


def _too_deep(data: Any) -> bool:
    """Whether `data` nests lists and mappings more than MAX_DEPTH levels deep (the outermost is level 1)."""
    stack = [(data, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            return True
        for child in node.values() if type(node) is dict else node if type(node) is list else ():
            if type(child) is dict or type(child) is list:
                stack.append((child, depth + 1))
    return False


_STRING: Final = r'"[^"\\]*+(?:\\.[^"\\]*+)*+"'
"""A JSON string token, its escapes taken as they come: possessive, so matching it takes constant memory however
long the string. (`"(?:[^"\\]|\\.)*"`, the textbook form, makes Python's regex engine keep a backtracking
point for every character: 6 GB for a spec with a 50 MB text.)"""
_TOKEN = re.compile(rf'{_STRING}|[\[\]{{}}]', re.S)


def _deep_offset(text: str) -> int:
    """The offset where `text` (JSON, maybe broken) opens its (MAX_DEPTH + 1)th level, or 0."""
    depth = 0
    for m in _TOKEN.finditer(text):
        c = m.group()
        if c in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                return m.start()
        elif c in "]}":
            depth -= 1
    return 0


def read_json(text: str) -> tuple[Any, bool, list[int]]:
    """`text` as data by Python's reader, whether it needs `parse_json`'s scan to be judged (a duplicate key,
    NaN or Infinity, a number too large, half a surrogate pair, or deep nesting), and where its value starts and,
    for an array, each of its items (offsets: a file's threads, placed without a scan). JSONDecodeError,
    RecursionError as Python's reader raises them."""
    suspect = _Suspect()
    starts: list[int] = []
    try:
        data = _items(text, suspect.reader(), starts)
    except (ValueError, RecursionError):
        data = None
    if data is None:  # not an array read item by item: read whole, as Python's reader words what is wrong
        suspect = _Suspect()
        data = suspect.reader().decode(text)
        starts = [_WS.match(text).end()]  # type: ignore[union-attr]
    return data, suspect.found or _SURROGATE_ESCAPE.search(text) is not None or _too_deep(data), starts


_WS: Final = re.compile(r"[ \t\r\n]*")


def _items(text: str, decoder: json.JSONDecoder, starts: list[int]) -> list[Any] | None:
    """A JSON array read an item at a time, the offset of it and of each item appended to `starts`; None when
    `text` is something else, or not JSON as it stands (then read whole)."""
    skip = _WS.match
    i = skip(text).end()  # type: ignore[union-attr]
    if not text.startswith("[", i):
        return None
    starts.append(i)
    out: list[Any] = []
    i = skip(text, i + 1).end()  # type: ignore[union-attr]
    if not text.startswith("]", i):
        while True:
            starts.append(i)
            value, i = decoder.raw_decode(text, i)
            out.append(value)
            i = skip(text, i).end()  # type: ignore[union-attr]
            if text.startswith("]", i):
                break
            if not text.startswith(",", i):
                return None
            i = skip(text, i + 1).end()  # type: ignore[union-attr]
    return out if skip(text, i + 1).end() == len(text) else None  # type: ignore[union-attr]


def parse_json(text: str, file: str, *, positions: bool = True) -> tuple[list[Document], list[Problem]]:
    """The JSON value in `text` as one document, or every problem in it; positions come from a second, exact
    scan, made at once or (`positions=False`) on first use, but for the value's own and, in an array, its items'
    (a file's threads), known from the read."""
    try:
        data, suspect, starts = read_json(text)
    except json.JSONDecodeError as exc:
        return [], [Problem(file, exc.lineno, exc.colno, "", f"JSON syntax error: {_json_words(exc.msg)}")]
    except RecursionError:
        return [], [Problem(file, *_Lines(text).at(_deep_offset(text)), "", TOO_DEEP)]
    doc = Document(file, data)
    if positions or suspect:
        problems = _JsonScanner(text, doc).scan()
        return ([], problems) if problems else ([doc], [])
    lines = _Lines(text)
    doc.values[()] = lines.at(starts[0])
    for n, at in enumerate(starts[1:]):
        doc.values[(n,)] = lines.at(at)
    # (the scan fills the positions every thread of the file shares; it holds the text, not the file's data, which
    # a thread's spec would otherwise keep whole while it lives)
    doc.locate = _JsonScanner(text, Document(file, None, values=doc.values, keys=doc.keys)).scan
    return [doc], []


_NOT_JSON = {"NaN": "NaN", "Infinity": "Infinity", "-Infinity": "-Infinity"}


@dataclass
class _Frame:
    path: Path_
    is_object: bool
    count: int = 0
    seen: set[str] = field(default_factory=set)


class _JsonScanner:
    """Walks JSON text that Python's reader has read and records the position of every key and value, and every
    problem that reader let through. Iterative: its own stack, never Python's."""

    _ws = _WS
    _string = re.compile(_STRING, re.S)
    _scalar = re.compile(r"-?[0-9][0-9eE.+\-]*|true|false|null|NaN|-?Infinity")

    def __init__(self, text: str, doc: Document) -> None:
        self.text = text
        self.doc = doc
        self.lines = _Lines(text)
        self.problems: list[Problem] = []
        self.scanned = False

    def skip(self, i: int) -> int:
        return self._ws.match(self.text, i).end()  # type: ignore[union-attr]

    def scan(self) -> list[Problem]:
        """Every problem, in text order (run once: later calls return the first's answer)."""
        if not self.scanned:
            self.scanned = True
            self._scan()
        return self.problems

    def _scan(self) -> None:
        text, doc, at = self.text, self.doc, self.lines.at
        stack: list[_Frame] = []
        too_deep = False
        i = self.skip(0)
        path: Path_ = ()
        while True:
            # a value starts at i
            ch = text[i]
            if len(stack) <= MAX_DEPTH:
                doc.values[path] = at(i)
            if ch in "{[" and len(stack) == MAX_DEPTH and not too_deep:  # the first too deep, once
                too_deep = True
                self.problems.append(Problem(doc.file, *at(i), "", TOO_DEEP))
            if ch in "{[":
                stack.append(_Frame(path, ch == "{"))
                i = self.skip(i + 1)
            elif ch == '"':
                i = self._string_at(i, path)
            else:
                m = self._scalar.match(text, i)
                if m is None:  # pragma: no cover - Python's reader took it, so it is one of the above
                    raise AssertionError(f"unexpected JSON at offset {i}")
                self._number(m.group(), path)
                i = m.end()
            # after a value (or an opening bracket): close what ends here, then find the next value
            while True:
                i = self.skip(i)
                if not stack:
                    return
                frame = stack[-1]
                if text[i] in "}]":
                    stack.pop()
                    i += 1
                    continue
                if text[i] == ",":
                    i = self.skip(i + 1)
                if frame.is_object:
                    start = i
                    i = self._string_at(i, None)
                    key = json.loads(text[start:i])
                    path = frame.path + (key,)
                    if len(stack) <= MAX_DEPTH:
                        doc.keys[path] = at(start)
                    if key in frame.seen:
                        self.problems.append(doc.problem(path, f"duplicate key '{key}'", key=True))
                    frame.seen.add(key)
                    i = self.skip(self.skip(i) + 1)  # ':'
                else:
                    path = frame.path + (frame.count,)
                    frame.count += 1
                break

    def _string_at(self, i: int, path: Path_ | None) -> int:
        m = self._string.match(self.text, i)
        if m is None:  # pragma: no cover - Python's reader took it
            raise AssertionError(f"unexpected JSON at offset {i}")
        if path is not None and _SURROGATE_ESCAPE.search(self.text, i, m.end()):  # (no copy of a long string)
            try:
                json.loads(m.group()).encode("utf-8")
            except UnicodeEncodeError:
                self.problems.append(self.doc.problem(
                    path, "an escape \\uD800-\\uDFFF that is half of a UTF-16 surrogate pair, not a character"))
        return m.end()

    def _number(self, token: str, path: Path_) -> None:
        problems = self.problems
        if token in _NOT_JSON:
            problems.append(self.doc.problem(path, f"{token} is not JSON: JSON numbers are finite (quote it if it "
                                                   f"is text)"))
        elif token[:1] in "-0123456789":
            if any(c in token for c in ".eE"):
                if math.isinf(float(token)):
                    problems.append(self.doc.problem(path, f"{shown(token)} is too large for a number (it would "
                                                           f"be read as infinity)"))
            elif _too_long(token):
                problems.append(self.doc.problem(path, _too_long_message(token)))


# --- either ----------------------------------------------------------------------------------------------


def parse_text(text: str, file: str, *, kind: str | None = None) -> tuple[list[Document], list[Problem]]:
    """Parse `text` as JSON or YAML (`kind` 'json'/'yaml', or sniffed from the first character). JSON's positions
    are found when first asked for (a problem to place): a file without one is never scanned for them."""
    if kind is None:
        kind = "json" if text.lstrip()[:1] in ("{", "[") else "yaml"
    if not text.strip():
        return [], [Problem(file, None, None, "", "empty file: expected at least one thread")]
    return parse_json(text, file, positions=False) if kind == "json" else parse_yaml(text, file)


def split_threads(docs: list[Document]) -> Iterator[Document]:
    """A JSON array (or a YAML document that is a list) holds several threads: one Document each."""
    for doc in docs:
        if isinstance(doc.data, list):
            for i, item in enumerate(doc.data):
                yield Document(doc.file, item, doc.prefix + (i,), doc.values, doc.keys, doc.locate, doc.tree)
        else:
            yield doc
