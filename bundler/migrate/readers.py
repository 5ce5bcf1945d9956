"""Reading legacy exports row by row: CSV (with a header row) and JSON Lines, either one gzip-compressed.

    sources = open_sources(["export.csv.gz"], mapping)     # SpecError if a file or column is missing
    for record in read_records(sources[0], mapping): ...

Rows are lists of strings in `Source.columns` order, so the mapping's getters index them directly.
Blank lines are not rows. Bytes that are not valid in the input's encoding make that row a reject
(`bad-encoding`), not the whole file.
"""

from __future__ import annotations

import csv
import gzip
import io
import sys
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, NamedTuple

import orjson

from ..errors import Problem, SpecError
from .mapping import MigrationMapping

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
    sources: list[Source] = []
    problems: list[Problem] = []
    needed = mapping.columns()
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
        if fmt == "jsonl":
            sources.append(Source(name, i, fmt, tuple(needed)))
            continue
        delimiter = mapping.delimiter or ("\t" if path.name.lower().removesuffix(".gz").endswith(".tsv") else ",")
        try:
            with _open(path, mapping.encoding) as f:
                header = next(csv.reader(f, delimiter=delimiter, quotechar=mapping.quotechar), None)
        except (OSError, EOFError, zlib.error, csv.Error) as exc:
            problems.append(Problem(name, 1, None, "", f"cannot read the header: {exc}"))
            continue
        if not header:
            problems.append(Problem(name, 1, None, "", "no header row (the first row must name the columns)"))
            continue
        header = [h.strip() for h in header]
        dupes = sorted({h for h in header if header.count(h) > 1})
        if dupes:
            problems.append(Problem(name, 1, None, "", f"the header names {', '.join(map(repr, dupes))} twice"))
        known = set(header)
        for value in mapping.values():
            for column in value.columns:
                if column not in known:
                    problems.append(mapping.problem(value.path, f"column {column!r} is not in the header of {name} "
                                                                f"(columns: {', '.join(header)})"))
        sources.append(Source(name, i, fmt, tuple(header), delimiter))
    if problems:
        raise SpecError(problems)
    return sources


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
                yield from _jsonl_records(f, source, share)
    except (OSError, EOFError, zlib.error) as exc:
        raise SpecError([Problem(source.file, None, None, "", f"cannot read on: {exc}")]) from None


def _csv_records(f: IO[str], source: Source, mapping: MigrationMapping, share: tuple[int, int]
                 ) -> Iterator[Record]:
    reader = csv.reader(f, delimiter=source.delimiter, quotechar=mapping.quotechar)
    mine, every = share
    width = len(source.columns)
    next(reader, None)  # the header
    line = reader.line_num
    row = 0
    while True:
        start = line + 1
        try:
            values = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            row += 1
            line = reader.line_num
            if row % every != mine:
                continue
            yield Record(row, start, None, None, ("bad-row", f"not a CSV row: {exc}"))
            continue
        line = reader.line_num
        if not values or (len(values) == 1 and not values[0]):
            continue
        row += 1
        if row % every != mine:
            continue
        if len(values) != width:
            yield Record(row, start, None, _clean(values),
                         ("bad-row", f"{len(values)} fields, the header has {width}"))
        elif _bad_encoding(values):
            yield Record(row, start, None, _clean(values), ("bad-encoding", f"bytes that are not {mapping.encoding}"))
        else:
            yield Record(row, start, values, values)


def _as_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return orjson.dumps(value).decode()


def _jsonl_records(f: IO[str], source: Source, share: tuple[int, int]) -> Iterator[Record]:
    columns = source.columns
    mine, every = share
    row = 0
    for line, text in enumerate(f, 1):
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
        yield Record(row, line, [_as_text(data.get(c)) for c in columns], data)
