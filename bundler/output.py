"""Writing bundles: one pretty JSON file per thread, or NDJSON lines. All-or-nothing per file."""

from __future__ import annotations

import io
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from .build import DEFAULT_IDENTIFIER_SYSTEM, build_bundle, bundle_bytes, check_identifier_system, dumps
from .check.validate import spec_origin, validate
from .errors import Problem, SpecError
from .files import write_atomic
from .spec import ThreadSpec, load_specs


def bundle_filename(key: str) -> str:
    """The file name of a thread's bundle: its key (letters, digits, '.', '_', '-', ':') + `.json`."""
    return f"{key}.json"


def write_bundle_files(items: Iterable[tuple[str, dict[str, Any]]], out_dir: Path) -> list[Path]:
    """Write each (thread key, bundle) as `out_dir/<key>.json`; returns the paths written."""
    written = []
    for key, bundle in items:
        path = out_dir / bundle_filename(key)
        write_atomic(path, dumps(bundle, pretty=True))
        written.append(path)
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
    threads: int
    messages: int
    files: list[Path]


def check_bundles(specs: Iterable[ThreadSpec], identifier_system: str) -> None:
    """Raise SpecError if any spec builds a bundle with validation errors (server limits aside: the
    loader cuts a thread too large for one request into parts)."""
    problems = []
    for spec in specs:
        issues = validate(build_bundle(spec, identifier_system=identifier_system), limits="none",
                          origin=spec_origin(spec))
        problems += [Problem(i.file or "<spec>", i.line, None, i.path, f"[{i.code}] {i.message}")
                     for i in issues if i.severity == "error"]
    if problems:
        raise SpecError(problems)


def build_files(paths: Iterable[str | Path], *, out: Path | None = None, ndjson: bool = False,
                identifier_system: str = DEFAULT_IDENTIFIER_SYSTEM, stream: IO[bytes] | None = None) -> BuildSummary:
    """Build every thread in `paths` and write them: `out/<key>.json` files, or NDJSON to `out` or `stream`.

    Every input is read and checked before anything is written (SpecError lists every problem;
    OptionError for an `identifier_system` unusable in identifier searches).
    """
    check_identifier_system(identifier_system)
    specs = load_specs(paths)
    check_bundles(specs, identifier_system)
    messages = sum(len(s.messages) for s in specs)
    if not ndjson:
        if out is None:
            raise ValueError("out is required unless ndjson")
        bundles = ((s.key, build_bundle(s, identifier_system=identifier_system)) for s in specs)
        return BuildSummary(len(specs), messages, write_bundle_files(bundles, out))
    lines = (bundle_bytes(s, identifier_system=identifier_system) for s in specs)
    if out is not None:
        buffer = io.BytesIO()
        write_ndjson(lines, buffer)
        write_atomic(out, buffer.getvalue())
        return BuildSummary(len(specs), messages, [out])
    assert stream is not None
    write_ndjson(lines, stream)
    stream.flush()
    return BuildSummary(len(specs), messages, [])
