"""`thread-bundler validate`: check Bundles (JSON, NDJSON) or specs before sending them to a server."""

from __future__ import annotations

import sys
from itertools import groupby
from pathlib import Path

import click
import orjson

from ..check.files import Report, validate_files
from ..check.issues import SPEC_RULES
from ..check.limits import PROFILES
from .common import (
    EXIT_ISSUES,
    EXIT_OK,
    allow_outside_files_option,
    format_option,
    participants_option,
    read_model_option,
    report_errors,
)
from .display import FileBar, count
from .identifier import identifier_system_option


def format_text(report: Report) -> str:
    """Issues grouped by file, then by entry, then a one-line summary."""
    lines: list[str] = []
    for file, by_file in groupby(report.issues, key=lambda i: i.file or "<bundle>"):
        lines.append(file)
        for entry, by_entry in groupby(by_file, key=lambda i: (i.line, i.entry)):
            items = list(by_entry)
            line, index = entry
            where = "spec" if all(i.code in SPEC_RULES for i in items) else "bundle" if index is None else \
                f"entry {index}"
            lines.append(f"  {where}" + (f" (line {line})" if line is not None else "") + ":")
            lines.extend(f"    {i.text}" for i in items)
    made = report.participant_bundles
    where = (f"{count(report.bundles, 'bundle')}: {count(report.bundles - made, 'thread')} in "
             f"{count(report.files, 'file')}, and {count(made, 'bundle')} of participants to create when missing"
             if made else f"{count(report.bundles, 'bundle')} ({count(report.files, 'file')})")
    lines.append(f"{count(report.errors, 'error')}, {count(report.warnings, 'warning')} in {where}")
    return "\n".join(lines)


@click.command("validate")
@click.argument("paths", nargs=-1, required=True)
@click.option("--limits", type=click.Choice(sorted(PROFILES)), default="medplum", show_default=True,
              help="Server limits to check against (body size, conditional and PUT entries, ids).")
@format_option("one object with every issue")
@click.option("--structure/--no-structure", default=True, show_default=True,
              help="Check FHIR R4 structure (fhir.resources; the slow part): --no-structure skips it.")
@click.option("--workers", type=click.IntRange(1), default=None,
              help="Processes for large inputs.  [default: the number of cores]")
@identifier_system_option
@participants_option
@read_model_option
@allow_outside_files_option
@click.option("--progress/--no-progress", default=None, help="A progress line on stderr.  [default: on a terminal]")
@report_errors
def validate_command(paths: tuple[str, ...], limits: str, format_: str, structure: bool,
                     workers: int | None, identifier_system: str, participants: Path | None,
                     read_model: str | None, allow_outside_files: bool, progress: bool | None) -> None:
    """Check Bundles in PATHS for everything a Medplum server would reject or store broken.

    PATHS are Bundle JSON files, NDJSON files of Bundles (.ndjson), thread specs (.yaml, .yml, .json
    that are not Bundles: built first, issues name the spec's lines), or folders (recursively).
    Exit status: 0 clean (warnings allowed), 1 errors found, 2 unreadable input.

    \b
    Examples:
      thread-bundler validate out/
      thread-bundler validate bundles.ndjson --format json --limits none
      thread-bundler validate threads/ --participants people.yaml
      thread-bundler validate threads/ --identifier-system https://example.org/threads
    """
    bar = FileBar("validating", live=progress)
    try:
        report = validate_files(paths, limits=limits, structure=structure, workers=workers,
                                identifier_system=identifier_system, participants=participants, read_model=read_model,
                                allow_outside_files=allow_outside_files, on_file=bar)
    finally:
        bar.close()
    if format_ == "json":
        click.echo(orjson.dumps(report.to_dict(), option=orjson.OPT_INDENT_2).decode())
    else:
        click.echo(format_text(report))
    sys.exit(EXIT_ISSUES if report.errors else EXIT_OK)
