"""Reading legacy exports row by row: CSV (with a header row) and JSON Lines, either one gzip-compressed.

    sources = open_sources(["export.csv.gz"], mapping)     # SpecError if a file or column is missing
    for record in read_records(sources[0], mapping): ...

Rows are lists of strings in `Source.columns` order, so the mapping's getters index them directly.
Blank lines are not rows. Bytes that are not valid in the input's encoding make that row a reject
(`bad-encoding`), not the whole file.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import io
import sys
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, NamedTuple

import orjson

from ..errors import Problem, SpecError
from .mapping import MigrationMapping, load_mapping_problems

_FORMATS = {".csv": "csv", ".tsv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl"}

csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # long messages are legitimate


@dataclass(frozen=True)
class Source:
    """One input file: how to read it and the columns its rows are laid out by."""

    file: str
    index: int
    format: str
    columns: tuple[str, ...]  # CSV: the header; JSONL: the mapping's columns
    delimiter: str = ","


class Record(NamedTuple):
    """One row: its 1-based row number (data rows) and line, values by `Source.columns`, the raw row.
    (A named tuple: one is made per row, and a tuple is made several times faster than a dataclass.)"""

    row: int
    line: int
    values: list[str] | None  # None: the row could not be read (see error)
    raw: Any
    error: tuple[str, str] | None = None  # (reason, message)


def _open(path: Path, encoding: str) -> IO[str]:
    binary: IO[bytes] = gzip.open(path, "rb") if path.suffix.lower() == ".gz" else path.open("rb")  # type: ignore[assignment]  # noqa: SIM115
    return io.TextIOWrapper(binary, encoding=encoding, errors="surrogateescape", newline="")


def input_format(path: Path, mapping: MigrationMapping) -> str | None:
    if mapping.format:
        return mapping.format
    name = path.name.lower().removesuffix(".gz")
    return _FORMATS.get(Path(name).suffix)


def open_sources(paths: list[str], mapping: MigrationMapping) -> list[Source]:
    """Check every input exists and has what the mapping reads; SpecError listing every problem."""
    sources, problems = _sources(paths, mapping)
    if problems:
        raise SpecError(problems)
    return sources


def prepare(paths: Sequence[str | Path], mapping: str | Path | MigrationMapping
            ) -> tuple[MigrationMapping, list[Source]]:
    """The mapping and the inputs, checked together: SpecError with every problem of both at once (the
    mapping's schema and values, then each input's missing columns), before any row is read."""
    if isinstance(mapping, MigrationMapping):
        return mapping, open_sources([str(p) for p in paths], mapping)
    loaded, problems = load_mapping_problems(mapping)
    if loaded is not None:
        sources, more = _sources([str(p) for p in paths], loaded)
        problems += more
    if problems or loaded is None:
        raise SpecError(problems)
    return loaded, sources


_LIKELY_DELIMITERS = (";", "\t", "|")


def _delimiter_hint(header: list[str], delimiter: str) -> str:
    """' (set input.delimiter: ";")' when the header is one column that holds a likely delimiter, else ''."""
    if len(header) != 1:
        return ""
    for d in _LIKELY_DELIMITERS:
        if d != delimiter and d in header[0]:
            shown = "\\t" if d == "\t" else d
            return f"; the header is one column holding {shown!r}: set input.delimiter: {shown!r}"
    return ""


def _sources(paths: list[str], mapping: MigrationMapping) -> tuple[list[Source], list[Problem]]:
    sources: list[Source] = []
    problems: list[Problem] = []
    for i, name in enumerate(paths):
        path = Path(name)
        if not path.is_file():
            problems.append(Problem(name, None, None, "", "no such file" if not path.exists() else "not a file"))
            continue
        fmt = input_format(path, mapping)
        if fmt is None:
            problems.append(Problem(name, None, None, "", "cannot tell the format: name it .csv, .tsv, .jsonl or "
                                                          ".ndjson (optionally .gz), or set input.format"))
            continue
        source = _jsonl_source(name, i, mapping, problems) if fmt == "jsonl" else \
            _csv_source(name, i, mapping, problems)
        if source is not None:
            sources.append(source)
    return sources, problems


def _csv_source(name: str, i: int, mapping: MigrationMapping, problems: list[Problem]) -> Source | None:
    path = Path(name)
    delimiter = mapping.delimiter or ("\t" if path.name.lower().removesuffix(".gz").endswith(".tsv") else ",")
    try:
        with _open(path, mapping.encoding) as f:
            first = f.readline(mapping.max_row_chars)
            header = next(csv.reader([first], delimiter=delimiter, quotechar=mapping.quotechar), None)
    except (OSError, EOFError, zlib.error, csv.Error, UnicodeError) as exc:
        problems.append(Problem(name, 1, None, "", f"cannot read the header: {exc}"))
        return None
    if not header:
        problems.append(Problem(name, 1, None, "", "no header row (the first row must name the columns)"))
        return None
    header = [h.strip() for h in header]
    dupes = sorted({h for h in header if header.count(h) > 1})
    if dupes:
        problems.append(Problem(name, 1, None, "", f"the header names {', '.join(map(repr, dupes))} twice"))
    known = set(header)
    hint = _delimiter_hint(header, delimiter)
    for value in mapping.values():
        for column in value.columns:
            if column not in known:
                problems.append(mapping.problem(value.path, f"column {column!r} is not in the header of {name} "
                                                            f"(columns: {', '.join(header)}){hint}"))
    return Source(name, i, "csv", tuple(header), delimiter)


SAMPLE_ROWS = 1000
"""How many JSON Lines rows are read up front to check that every path the mapping names is in one of them."""


def _paths_seen(path: Path, mapping: MigrationMapping, wanted: list[str]) -> tuple[int, set[str]]:
    """(rows looked at, which of `wanted` one of them has) over the first SAMPLE_ROWS JSON objects."""
    seen: set[str] = set()
    rows = 0
    with _open(path, mapping.encoding) as f:
        for text in _bounded_lines(f, mapping.max_row_chars):
            if rows >= SAMPLE_ROWS or len(seen) == len(wanted):
                break
            if isinstance(text, _Long):
                continue
            try:
                data = orjson.loads(text.encode("utf-8", "surrogateescape"))
            except orjson.JSONDecodeError:
                continue
            if isinstance(data, dict):
                rows += 1
                seen.update(c for c in wanted if lookup(data, c) is not _MISSING)
    return rows, seen


def _jsonl_source(name: str, i: int, mapping: MigrationMapping, problems: list[Problem]) -> Source:
    """A JSON Lines input; the values every message needs (conversation, message id, sender, sent) must be in
    one of its first SAMPLE_ROWS rows (a misspelt path would reject every row); optional ones may be absent."""
    needed = mapping.columns()
    required = [v for v in (mapping.thread_id, mapping.message_id, mapping.sender,
                            mapping.sent.value if mapping.sent else None) if v is not None]
    wanted = list(dict.fromkeys(c for v in required for c in v.columns))
    try:
        rows, seen = _paths_seen(Path(name), mapping, wanted)
    except (OSError, EOFError, zlib.error) as exc:
        problems.append(Problem(name, None, None, "", f"cannot read: {exc}"))
        rows, seen = 0, set()
    if rows:
        for value in required:
            for column in value.columns:
                if column not in seen:
                    problems.append(mapping.problem(value.path, f"{column!r} is in none of the first {rows:,} "
                                                                f"rows of {name} (a dotted name reads a nested "
                                                                f"field: thread.id)"))
    return Source(name, i, "jsonl", tuple(needed))


def _bad_encoding(values: list[str]) -> bool:
    try:
        "".join(values).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _clean(values: Any) -> Any:
    """A raw row with undecodable bytes shown as U+FFFD (for the reject file)."""
    if isinstance(values, str):
        return values.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    if isinstance(values, list):
        return [_clean(v) for v in values]
    return values


def read_records(source: Source, mapping: MigrationMapping, share: tuple[int, int] = (0, 1)) -> Iterator[Record]:
    """Every row of `source`, in file order. Raises SpecError if the file itself cannot be read on.

    `share` (k, n): only rows whose number is k modulo n, for one of n processes that read the same file
    (the others are still parsed, to know where rows begin, but not checked nor decoded further).
    """
    try:
        with _open(Path(source.file), mapping.encoding) as f:
            if source.format == "csv":
                yield from _csv_records(f, source, mapping, share)
            else:
                yield from _jsonl_records(f, source, mapping, share)
    except (OSError, EOFError, zlib.error) as exc:
        raise SpecError([Problem(source.file, None, None, "", f"cannot read on: {exc}")]) from None


# --- reading lines at bounded memory ---------------------------------------------------------------

_SHOWN = 200  # characters of an over-long row kept for the reject file


class _Overrun(Exception):
    """The row being read is over a limit (`why`); the lines after its first are in `rest` to read again."""

    def __init__(self, why: str, first: str, rest: Sequence[str | _Long]) -> None:
        self.why, self.first, self.rest = why, first, rest
        super().__init__(why)


@dataclass(frozen=True)
class _Long:
    """A line over the size cap, skipped (only its start kept): read again, it is a reject of its own."""

    start: str
    chars: int


def _skip_rest(readline: Callable[[int], str], line: str, limit: int) -> _Long:
    """The rest of an over-long line read and dropped, `limit` characters at a time."""
    start, chars = line[:_SHOWN], len(line)
    while line and not line.endswith(("\n", "\r")):
        line = readline(limit)
        chars += len(line)
    return _Long(start, chars)


def _bounded_lines(f: IO[str], limit: int) -> Iterator[str | _Long]:
    """The lines of `f` (JSON Lines); an over-long one as a _Long, read past at bounded memory."""
    readline = f.readline
    while line := readline(limit):
        if len(line) >= limit and not line.endswith(("\n", "\r")):
            yield _skip_rest(readline, line, limit)
            continue
        yield line


class _Lines:
    """The physical lines of a CSV input, for `csv.reader`, at bounded memory: a line over `max_chars`
    is skipped and raises _Overrun; so does a row (from `mark`, where it starts) that runs over
    `max_lines` lines or `max_chars` characters (an unterminated quote), keeping its lines to read again."""

    def __init__(self, f: IO[str], max_chars: int, max_lines: int) -> None:
        self.readline = f.readline
        self.max_chars, self.max_lines = max_chars, max_lines
        self.again: list[str | _Long] = []  # lines to read again, last first
        self.taken = 0  # lines given out
        self.mark = 0  # lines given out before the current row
        self.first = ""  # the current row's first line
        self.more: list[str] = []  # the current row's lines after its first
        self.chars = 0
        self.ended = False  # the input ended inside a row

    def __iter__(self) -> _Lines:
        return self

    def __next__(self) -> str:
        line: str | _Long
        if self.again:  # (lines read before: never empty, and over the cap already made _Long)
            line = self.again.pop()
        else:
            line = self.readline(self.max_chars)
            if not line:
                self.ended = self.taken > self.mark
                raise StopIteration
            if len(line) >= self.max_chars and not line.endswith(("\n", "\r")):
                line = _skip_rest(self.readline, line, self.max_chars)
        self.taken += 1
        if self.taken - self.mark == 1:  # the first line of a row: the common case, kept short
            if isinstance(line, _Long):
                raise _Overrun(f"a row over {self.max_chars:,} characters ({line.chars:,}; input.max_row_chars)",
                               line.start, [])
            self.first, self.chars = line, len(line)
            if self.more:
                self.more = []
            return line
        return self._continued(line)

    def _continued(self, line: str | _Long) -> str:
        if isinstance(line, _Long):
            self.chars += line.chars
        else:
            self.chars += len(line)
            self.more.append(line)
        lines = self.taken - self.mark
        if isinstance(line, _Long) or lines > self.max_lines or self.chars > self.max_chars:
            rest: list[str | _Long] = [*self.more]
            if isinstance(line, _Long):
                rest.append(line)
            self.more = []
            raise _Overrun(f"a quoted field opened on this line runs over {lines - 1:,} more lines and "
                           f"{self.chars:,} characters (input.max_quoted_lines: {self.max_lines:,}, "
                           "max_row_chars): an unterminated quote?", self.first, rest)
        return line

    def retry(self, lines: Sequence[str | _Long]) -> None:
        """Read these lines again (after a row that was cut off): the next rows start with them."""
        self.again.extend(reversed(lines))
        self.taken -= len(lines)
        self.mark = self.taken

    def unterminated(self, quotechar: str) -> bool:
        """Whether the row just read is a quoted field that the input ended inside: several lines, the
        last of which does not close a quote (what csv.reader, lenient, gives without a word)."""
        return self.ended and bool(self.more) and not self.more[-1].rstrip("\r\n").endswith(quotechar)


def _next_values(rows: Iterator[list[str]], lines: _Lines, width: int, quotechar: str) -> list[str]:
    """The next row's fields; _Overrun also for a row over several lines that does not fit (a quote opened
    and not closed where it should be), so that its lines after the first are read again."""
    values = next(rows)
    if lines.more and (len(values) != width or lines.unterminated(quotechar)):
        why = _unterminated(lines, len(values), width, quotechar)
        lines.ended = False
        raise _Overrun(why, lines.first, lines.more)
    lines.mark = lines.taken
    return values


def _csv_records(f: IO[str], source: Source, mapping: MigrationMapping, share: tuple[int, int]
                 ) -> Iterator[Record]:
    lines = _Lines(f, mapping.max_row_chars, mapping.max_quoted_lines)

    def reader() -> Iterator[list[str]]:
        return csv.reader(lines, delimiter=source.delimiter, quotechar=mapping.quotechar)
    rows = reader()
    mine, every = share
    width, quotechar = len(source.columns), mapping.quotechar
    with contextlib.suppress(_Overrun):  # (open_sources read the header already: it is not over the cap)
        next(rows, None)
    lines.mark = lines.taken
    row = 0
    while True:
        start = lines.mark + 1
        try:
            values = _next_values(rows, lines, width, quotechar)
        except StopIteration:
            return
        except _Overrun as exc:
            row += 1
            lines.retry(exc.rest)
            rows = reader()
            if row % every == mine:
                yield Record(row, start, None, _clean(_shown(exc.first)), ("bad-row", exc.why))
            continue
        except csv.Error as exc:
            row += 1
            lines.mark = lines.taken
            if row % every == mine:
                yield Record(row, start, None, None, ("bad-row", f"not a CSV row: {exc}"))
            continue
        if not values or (len(values) == 1 and not values[0]):
            continue
        row += 1
        if row % every == mine:
            yield _judged(values, row, start, width, mapping.encoding)


def _judged(values: list[str], row: int, start: int, width: int, encoding: str) -> Record:
    if len(values) != width:
        return Record(row, start, None, _clean(values), ("bad-row", f"{len(values)} fields, the header has {width}"))
    if _bad_encoding(values):
        return Record(row, start, None, _clean(values), ("bad-encoding", f"bytes that are not {encoding} (another "
                                                                         "encoding? set input.encoding)"))
    return _new(Record, (row, start, values, values, None))  # (the named tuple's __new__ is a Python function)


_new = tuple.__new__


def _unterminated(lines: _Lines, fields: int, width: int, quotechar: str) -> str:
    where = "the end of the input" if lines.unterminated(quotechar) else f"line {lines.taken}"
    return (f"a quoted field opened on this line runs to {where} ({fields} fields where the header has "
            f"{width}): an unterminated quote? This line is rejected, the {len(lines.more):,} after it read "
            "again as rows")


def _shown(line: str) -> str:
    line = line.rstrip("\r\n")
    return line if len(line) <= _SHOWN else line[:_SHOWN] + "…"


_MISSING: Any = object()


def lookup(data: dict[str, Any], column: str) -> Any:
    """A JSON row's value for a column: the key itself if the row has it, else a dotted path into nested
    objects (`thread.id`, `author.name`); _MISSING when there is neither."""
    found = data.get(column, _MISSING)
    if found is not _MISSING or "." not in column:
        return found
    value: Any = data
    for part in column.split("."):
        if not isinstance(value, dict):
            return _MISSING
        value = value.get(part, _MISSING)
        if value is _MISSING:
            return _MISSING
    return value


def as_text(value: Any) -> str:
    """A JSON value as the text a mapping reads: '' for null or missing, numbers as written, arrays and
    objects as JSON."""
    if value is None or value is _MISSING:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return orjson.dumps(value).decode()


def _jsonl_records(f: IO[str], source: Source, mapping: MigrationMapping, share: tuple[int, int]
                   ) -> Iterator[Record]:
    columns = source.columns
    nested = any("." in c for c in columns)
    mine, every = share
    row = 0
    for line, text in enumerate(_bounded_lines(f, mapping.max_row_chars), 1):
        if isinstance(text, _Long):
            row += 1
            if row % every == mine:
                yield Record(row, line, None, _clean(text.start + "…"), (
                    "bad-row", f"a row over {mapping.max_row_chars:,} characters ({text.chars:,}; "
                               "input.max_row_chars)"))
            continue
        if not text.strip():
            continue
        row += 1
        if row % every != mine:
            continue
        try:
            data = orjson.loads(text.encode("utf-8", "surrogateescape"))
        except orjson.JSONDecodeError as exc:
            yield Record(row, line, None, _clean(text.rstrip("\r\n")), ("bad-row", f"not a JSON object: {exc}"))
            continue
        if not isinstance(data, dict):
            yield Record(row, line, None, data, ("bad-row", "not a JSON object"))
            continue
        if nested:
            yield Record(row, line, [as_text(lookup(data, c)) for c in columns], data)
        else:
            yield Record(row, line, [as_text(data.get(c)) for c in columns], data)
