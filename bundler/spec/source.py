"""Read YAML and JSON input into plain data, keeping where every value came from.

Values are never silently changed: YAML is read with a YAML 1.2-like core schema in which only
`null`/`~`, `true`/`false` and canonical decimal integers are anything but strings, so timestamps keep
their precision and offset, `007` stays `"007"` and `yes` stays `"yes"`. Duplicate mapping keys are an
error, not a silent overwrite.
"""

from __future__ import annotations

import bisect
import json
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import yaml

from ..errors import Problem

Path_ = tuple[str | int, ...]
Position = tuple[int, int]  # 1-based line and column


def format_path(path: Path_) -> str:
    """`("messages", 2, "sender")` → `messages[2].sender`."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


@dataclass
class Document:
    """One thread's worth of input data and the positions of its values."""

    file: str
    data: Any
    prefix: Path_ = ()
    values: dict[Path_, Position] = field(default_factory=dict)
    keys: dict[Path_, Position] = field(default_factory=dict)

    def position(self, path: Path_, *, key: bool = False) -> Position | None:
        """Where the value (or, with key=True, the key) at `path` starts; falls back to its parents."""
        full = self.prefix + tuple(path)
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


class _Resolver(yaml.resolver.BaseResolver):
    """YAML 1.2 core-like implicit typing: everything not null, bool or a plain int is a string."""


_Resolver.add_implicit_resolver("tag:yaml.org,2002:null", re.compile(r"^(?:~|null|Null|NULL|)$"), list("~nN") + [""])
_Resolver.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                                list("tTfF"))
_Resolver.add_implicit_resolver("tag:yaml.org,2002:int", re.compile(r"^(?:0|-?[1-9][0-9]*)$"), list("-0123456789"))

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


def _pos(node: yaml.Node) -> Position:
    return (node.start_mark.line + 1, node.start_mark.column + 1)


class _YamlBuilder:
    def __init__(self, doc: Document, problems: list[Problem]) -> None:
        self.doc = doc
        self.problems = problems

    def value(self, node: yaml.Node, path: Path_, depth: int = 0) -> Any:
        self.doc.values[path] = _pos(node)
        if depth > 100:
            self.problems.append(self.doc.problem(path, "nested too deeply"))
            return None
        if isinstance(node, yaml.MappingNode):
            out: dict[str, Any] = {}
            for key_node, value_node in node.value:
                if not isinstance(key_node, yaml.ScalarNode):
                    self.doc.values[path + ("?",)] = _pos(key_node)
                    self.problems.append(self.doc.problem(path + ("?",), "a mapping key must be a plain value"))
                    continue
                key = key_node.value
                child = path + (key,)
                if key in out:
                    self.doc.keys[child] = _pos(key_node)
                    first = self.doc.values[child]
                    self.problems.append(
                        self.doc.problem(child, f"duplicate key '{key}' (first at line {first[0]})", key=True)
                    )
                    continue
                self.doc.keys[child] = _pos(key_node)
                out[key] = self.value(value_node, child, depth + 1)
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self.value(item, path + (i,), depth + 1) for i, item in enumerate(node.value)]
        tag = node.tag
        if isinstance(node, yaml.ScalarNode) and not node.style:  # plain (libyaml says '', PyYAML None): core schema
            if tag == "tag:yaml.org,2002:null":
                return None
            if tag == "tag:yaml.org,2002:bool":
                return node.value.lower() == "true"
            if tag == "tag:yaml.org,2002:int":
                if _too_long(node.value):
                    self.problems.append(self.doc.problem(path, _too_long_message(node.value)))
                    return node.value
                return int(node.value)
        return node.value


def _too_long(digits: str) -> bool:
    """Whether Python refuses to read this integer (`sys.get_int_max_str_digits()`, 4300 by default)."""
    limit = sys.get_int_max_str_digits()
    return bool(limit) and len(digits.lstrip("-")) > limit


def _too_long_message(digits: str) -> str:
    return f"a number with {len(digits.lstrip('-'))} digits is too long to read (quote it if it is text)"


_MARK_RE = re.compile(r"line (\d+), column (\d+)")


def parse_yaml(text: str, file: str) -> tuple[list[Document], list[Problem]]:
    """Every YAML document in `text`, with positions; problems for syntax errors and duplicate keys."""
    docs: list[Document] = []
    problems: list[Problem] = []
    loader = _Loader(text)
    try:
        while loader.check_node():
            node = loader.get_node()
            if node is None:  # pragma: no cover - check_node() said there is one
                break
            doc = Document(file, None)
            doc.data = _YamlBuilder(doc, problems).value(node, ())
            if not (doc.data is None and isinstance(node, yaml.ScalarNode) and node.value == ""):
                docs.append(doc)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (None, None)
        what = exc.problem or exc.context or "invalid YAML"
        if exc.context and exc.problem:
            started = f" started on line {exc.context_mark.line + 1}" if exc.context_mark else ""
            what = f"{exc.problem} ({exc.context.removeprefix('while ')}{started})"
        problems.append(Problem(file, line, col, "", f"YAML syntax error: {what}"))
    except yaml.YAMLError as exc:  # reader errors (e.g. control characters)
        problems.append(Problem(file, None, None, "", f"YAML error: {exc}"))
    finally:
        loader.dispose()
    return docs, problems


def parse_json(text: str, file: str) -> tuple[list[Document], list[Problem]]:
    """The JSON value in `text` as one document; positions are computed by a second, exact scan."""

    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in pairs:
            if key in out:
                raise _DuplicateKey(key)
            out[key] = value
        return out

    too_long: list[str] = []

    def integer(digits: str) -> int | str:
        if _too_long(digits):
            too_long.append(digits)
            return digits
        return int(digits)

    try:
        data = json.loads(text, object_pairs_hook=no_duplicates, parse_int=integer)
    except json.JSONDecodeError as exc:
        return [], [Problem(file, exc.lineno, exc.colno, "", f"JSON syntax error: {exc.msg}")]
    except _DuplicateKey:
        doc = Document(file, None)
        scanner = _JsonScanner(text, doc)
        scanner.scan()
        return [], [doc.problem(p, f"duplicate key '{p[-1]}'", key=True) for p in sorted(scanner.duplicates, key=str)]
    doc = Document(file, data)
    scanner = _JsonScanner(text, doc)
    scanner.scan()
    if too_long:
        return [], [Problem(file, *scanner.at(m.start()), "", _too_long_message(m.group()))
                    for m in re.finditer(r"-?[0-9]+", text) if m.group() in too_long]
    return [doc], []


class _DuplicateKey(Exception):
    pass


class _JsonScanner:
    """Walks JSON text that is known to be valid and records the position of every key and value."""

    _ws = re.compile(r"[ \t\r\n]*")
    _string = re.compile(r'"(?:[^"\\]|\\.)*"', re.S)
    _scalar = re.compile(r"-?[0-9][0-9eE.+\-]*|true|false|null")

    def __init__(self, text: str, doc: Document) -> None:
        self.text = text
        self.doc = doc
        self.i = 0
        self.line_starts = [0] + [m.end() for m in re.finditer("\n", text)]
        self.duplicates: set[Path_] = set()

    def at(self, offset: int) -> Position:
        line = bisect.bisect_right(self.line_starts, offset)
        return (line, offset - self.line_starts[line - 1] + 1)

    def skip(self) -> None:
        self.i = self._ws.match(self.text, self.i).end()  # type: ignore[union-attr]

    def scan(self) -> None:
        self.skip()
        self.value(())

    def value(self, path: Path_) -> None:
        self.doc.values[path] = self.at(self.i)
        ch = self.text[self.i] if self.i < len(self.text) else ""
        if ch == "{":
            self.i += 1
            self.skip()
            seen: set[str] = set()
            while self.text[self.i] != "}":
                m = self._string.match(self.text, self.i)
                assert m is not None
                key = json.loads(m.group(0))
                child = path + (key,)
                if key in seen:
                    self.duplicates.add(child)
                seen.add(key)
                self.doc.keys[child] = self.at(self.i)
                self.i = m.end()
                self.skip()
                self.i += 1  # ':'
                self.skip()
                self.value(child)
                self.skip()
                if self.text[self.i] == ",":
                    self.i += 1
                    self.skip()
            self.i += 1
        elif ch == "[":
            self.i += 1
            self.skip()
            n = 0
            while self.text[self.i] != "]":
                self.value(path + (n,))
                n += 1
                self.skip()
                if self.text[self.i] == ",":
                    self.i += 1
                    self.skip()
            self.i += 1
        elif ch == '"':
            m = self._string.match(self.text, self.i)
            assert m is not None
            self.i = m.end()
        else:
            m = self._scalar.match(self.text, self.i)
            assert m is not None
            self.i = m.end()


def decode(raw: bytes, file: str) -> tuple[str | None, list[Problem]]:
    """Bytes → text, refusing binary data and invalid UTF-8 with a clear message."""
    if b"\x00" in raw[:8192]:
        return None, [Problem(file, None, None, "", "not a text file (it contains NUL bytes): expected YAML or JSON")]
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        why = f"not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start})"
        return None, [Problem(file, line, None, "", why)]
    return text, []


def parse_text(text: str, file: str, *, kind: str | None = None) -> tuple[list[Document], list[Problem]]:
    """Parse `text` as JSON or YAML (`kind` 'json'/'yaml', or sniffed from the first character)."""
    if kind is None:
        kind = "json" if text.lstrip()[:1] in ("{", "[") else "yaml"
    if not text.strip():
        return [], [Problem(file, None, None, "", "empty file: expected at least one thread")]
    return parse_json(text, file) if kind == "json" else parse_yaml(text, file)


def split_threads(docs: list[Document]) -> Iterator[Document]:
    """A JSON array (or a YAML document that is a list) holds several threads: one Document each."""
    for doc in docs:
        if isinstance(doc.data, list):
            for i, item in enumerate(doc.data):
                yield Document(doc.file, item, doc.prefix + (i,), doc.values, doc.keys)
        else:
            yield doc
