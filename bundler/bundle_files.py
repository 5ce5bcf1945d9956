"""Writing bundles: one pretty JSON file per thread (all of them or none), or NDJSON lines (one file, whole or
not at all)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Final, overload

import orjson

from .build import BUNDLE_START, DEFAULT_IDENTIFIER_SYSTEM, BuiltEntries, build_bundle, check_identifier_system, dumps
from .check.issues import Issue
from .check.limits import Limits
from .check.validate import WINDOW, spec_origin, validate, validate_built
from .errors import Problem, SpecError
from .files import atomic_file, staged_folder
from .spec import ParticipantsFile, ThreadSpec
from .spec.files import SpecStream
from .vocabulary import MAX_BODY_BYTES, MAX_REQUEST_BYTES


def bundle_filename(key: str) -> str:
    """The file name of a thread's bundle: its key (letters, digits, '.', '_', '-', ':') + `.json`."""
    return f"{key}.json"


def write_bundle_files(items: Iterable[tuple[str, dict[str, Any]]], out_dir: Path) -> list[Path]:
    """Write each (thread key, bundle) as `out_dir/<key>.json`, all of them or none; returns the paths written."""
    written = []
    with staged_folder(out_dir) as staging:
        for key, bundle in items:
            name = bundle_filename(key)
            (staging / name).write_bytes(dumps(bundle, pretty=True))
            written.append(out_dir / name)
    return written


def write_ndjson(lines: Iterable[bytes], stream: IO[bytes]) -> int:
    """Write compact bundles (`bundle_bytes`) as NDJSON lines; returns how many."""
    n = 0
    for line in lines:
        stream.write(line + b"\n")
        n += 1
    return n


@dataclass(frozen=True)
class BuildSummary:
    """What `build_files` wrote, and its warnings (a bundle over Medplum's request body limit)."""

    threads: int
    messages: int
    files: Sequence[Path]
    warnings: list[Issue] = field(default_factory=list)


class Written(Sequence[Path]):
    """The bundle files written into a folder, by thread key: `out/<key>.json` each, made when asked for (the keys
    are kept as one string, not as a Path each: a build of a million threads keeps the memory of a small one)."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self._names = bytearray()  # (a byte a character: a StringIO would take four)
        self._count = 0

    def add(self, key: str) -> None:
        self._names += bundle_filename(key).encode() + b"\n"
        self._count += 1

    def __len__(self) -> int:
        return self._count

    @overload
    def __getitem__(self, index: int) -> Path: ...

    @overload
    def __getitem__(self, index: slice) -> list[Path]: ...

    def __getitem__(self, index: int | slice) -> Path | list[Path]:
        return list(self)[index]

    def __iter__(self) -> Iterator[Path]:
        for name in self._names.decode().splitlines():
            yield self.out / name

    def __eq__(self, other: object) -> bool:
        return list(self) == list(other) if isinstance(other, Sequence) else NotImplemented

    def __hash__(self) -> int:
        return id(self)

    def __repr__(self) -> str:
        return f"Written({self.out}, {self._count} files)"


_SIZES = Limits("medplum", max_body_bytes=MAX_BODY_BYTES, max_request_bytes=MAX_REQUEST_BYTES)
"""The server limits a built bundle can go over: its size (a warning, as in `validate`: `load` cuts such a thread
into parts that fit), and the size of one entry (an error: no part can hold it)."""


def _size_issues(spec: ThreadSpec, bundle: dict[str, Any]) -> tuple[list[Problem], list[Issue]]:
    """The problems (an entry too large for any request) and warnings (a bundle too large for one Medplum request:
    the loader cuts such a thread into parts) of `spec`'s bundle."""
    return _sorted(validate(bundle, limits=_SIZES, origin=spec_origin(spec)))


def _sorted(issues: list[Issue]) -> tuple[list[Problem], list[Issue]]:
    """A bundle's issues (with their spec lines) as problems (the errors) and warnings."""
    problems = [Problem(i.file or "<spec>", i.line, None, i.path, f"[{i.code}] {i.message}")
                for i in issues if i.severity == "error"]
    return problems, [i for i in issues if i.severity == "warning"]


def check_bundles(specs: Iterable[ThreadSpec], identifier_system: str) -> list[Issue]:
    """Raise SpecError if any spec builds a bundle with validation errors (an entry too large for any request among
    them); return the warnings (a bundle too large for one Medplum request: the loader cuts such a thread into
    parts)."""
    problems = []
    warnings = []
    for spec in specs:
        spec_problems, spec_warnings = _size_issues(spec, build_bundle(spec, identifier_system=identifier_system))
        problems += spec_problems
        warnings += spec_warnings
    if problems:
        raise SpecError(problems)
    return warnings


def build_files(paths: Iterable[str | Path], *, out: Path | None = None, ndjson: bool = False,
                identifier_system: str = DEFAULT_IDENTIFIER_SYSTEM, stream: IO[bytes] | None = None,
                participants: str | Path | ParticipantsFile | None = None, read_model: str | None = None,
                allow_outside_files: bool = False) -> BuildSummary:
    """Build every thread in `paths` and write them: `out/<key>.json` files, or NDJSON to `out` or `stream`.
    `read_model` overrides every thread's own (`spec.model.with_read_model`); `allow_outside_files`: specs may
    attach files outside their own folder (`bundler.spec.load_specs`).

    Every input is read and checked before anything is written (SpecError lists every problem;
    OptionError for an `identifier_system` unusable in identifier searches). `participants`: a participants file
    the specs may use (`bundler.spec.participants`).

    The specs are read as `load` reads them (`spec.files.SpecStream`: every file checked, then read again a file at
    a time), each thread built once and written where nothing is seen until every one is (a staging folder, a
    temporary file), so that a build of any size holds one file's threads at a time.
    """
    check_identifier_system(identifier_system)
    specs = SpecStream(paths, participants=participants, read_model=read_model,
                       allow_outside_files=allow_outside_files)
    if not ndjson:
        if out is None:
            raise ValueError("out is required unless ndjson")
        written = Written(out)
        with staged_folder(out) as staging:
            warnings = _built(specs, identifier_system,
                              lambda key, bundle: _write_one(staging, key, bundle, written))
        return BuildSummary(specs.threads, specs.messages, written, warnings)
    if out is not None:
        with atomic_file(out) as f:
            warnings = _built(specs, identifier_system, lambda key, bundle: _line(f, bundle))
        return BuildSummary(specs.threads, specs.messages, [out], warnings)
    assert stream is not None
    with tempfile.TemporaryFile(prefix="thread-bundler-build-") as spool:  # (stdout cannot be taken back)
        warnings = _built(specs, identifier_system, lambda key, bundle: _line(spool, bundle))
        spool.seek(0)
        shutil.copyfileobj(spool, stream)
    stream.flush()
    return BuildSummary(specs.threads, specs.messages, [], warnings)


Built = dict[str, Any] | BuiltEntries
"""A thread's bundle as data, or (a long thread) its entries built as they are written (`build.BuiltEntries`)."""

_PRETTY_START: Final = b'{\n  "resourceType": "Bundle",\n  "type": "transaction",\n  "entry": [\n    '



def _write_one(staging: Path, key: str, bundle: Built, written: Written) -> None:
    path = staging / bundle_filename(key)
    if isinstance(bundle, dict):
        path.write_bytes(dumps(bundle, pretty=True))
    else:  # an entry at a time, indented as `dumps(pretty=True)` indents it inside the whole: the same bytes
        with path.open("wb") as f:
            f.write(_PRETTY_START)
            for n, entry in enumerate(bundle):
                f.write((b",\n    " if n else b"") + orjson.dumps(entry, option=orjson.OPT_INDENT_2).replace(
                    b"\n", b"\n    "))  # (JSON text holds no line break but between values)
            f.write(b"\n  ]\n}\n")
    written.add(key)


def _line(f: IO[bytes], bundle: Built) -> None:
    if isinstance(bundle, dict):
        f.write(orjson.dumps(bundle) + b"\n")  # (what `bundle_bytes` gives: byte for byte)
        return
    f.write(BUNDLE_START)  # an entry at a time: the same bytes
    for n, entry in enumerate(bundle):
        f.write(b"," + orjson.dumps(entry) if n else orjson.dumps(entry))
    f.write(b"]}\n")


def _built(specs: Iterable[ThreadSpec], identifier_system: str, write: Callable[[str, Built], None]
           ) -> list[Issue]:
    """Build each spec once and `write(key, bundle)` it; SpecError at the end with every bundle's size problems
    (the caller's writing then undone); the warnings. A thread of more than two windows of messages is checked a
    window at a time and written an entry at a time (`check.validate.validate_built`), never held whole as data."""
    problems: list[Problem] = []
    warnings: list[Issue] = []
    for spec in specs:
        bundle: Built
        if len(spec.messages) > 2 * WINDOW:
            bundle = BuiltEntries(spec, identifier_system)
            spec_problems, spec_warnings = _sorted(validate_built(bundle, limits=_SIZES))
        else:
            bundle = build_bundle(spec, identifier_system=identifier_system)
            spec_problems, spec_warnings = _size_issues(spec, bundle)
        problems += spec_problems
        warnings += spec_warnings
        if not problems:
            write(spec.key, bundle)
    if problems:
        raise SpecError(problems)
    return warnings
