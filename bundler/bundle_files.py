"""Writing bundles: one pretty JSON file per thread (all of them or none), or NDJSON lines (one file, whole or
not at all)."""

from __future__ import annotations

import io
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from .build import DEFAULT_IDENTIFIER_SYSTEM, build_bundle, bundle_bytes, check_identifier_system, dumps
from .check.issues import Issue
from .check.limits import Limits
from .check.validate import spec_origin, validate
from .errors import Problem, SpecError
from .files import staged_folder, write_atomic
from .spec import ParticipantsFile, ThreadSpec, load_specs
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
    files: list[Path]
    warnings: list[Issue] = field(default_factory=list)


_SIZES = Limits("medplum", max_body_bytes=MAX_BODY_BYTES, max_request_bytes=MAX_REQUEST_BYTES)
"""The server limits a built bundle can go over: its size (a warning, as in `validate`: `load` cuts such a thread
into parts that fit), and the size of one entry (an error: no part can hold it)."""


def check_bundles(specs: Iterable[ThreadSpec], identifier_system: str) -> list[Issue]:
    """Raise SpecError if any spec builds a bundle with validation errors (an entry too large for any request among
    them); return the warnings (a bundle too large for one Medplum request: the loader cuts such a thread into
    parts)."""
    problems = []
    warnings = []
    for spec in specs:
        issues = validate(build_bundle(spec, identifier_system=identifier_system), limits=_SIZES,
                          origin=spec_origin(spec))
        problems += [Problem(i.file or "<spec>", i.line, None, i.path, f"[{i.code}] {i.message}")
                     for i in issues if i.severity == "error"]
        warnings += [i for i in issues if i.severity == "warning"]
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
    """
    check_identifier_system(identifier_system)
    specs = load_specs(paths, participants=participants, read_model=read_model,
                       allow_outside_files=allow_outside_files)
    warnings = check_bundles(specs, identifier_system)
    messages = sum(len(s.messages) for s in specs)
    if not ndjson:
        if out is None:
            raise ValueError("out is required unless ndjson")
        bundles = ((s.key, build_bundle(s, identifier_system=identifier_system)) for s in specs)
        return BuildSummary(len(specs), messages, write_bundle_files(bundles, out), warnings)
    lines = (bundle_bytes(s, identifier_system=identifier_system) for s in specs)
    if out is not None:
        buffer = io.BytesIO()
        write_ndjson(lines, buffer)
        write_atomic(out, buffer.getvalue())
        return BuildSummary(len(specs), messages, [out], warnings)
    assert stream is not None
    write_ndjson(lines, stream)
    stream.flush()
    return BuildSummary(len(specs), messages, [], warnings)
