"""`thread-bundler build`: specs in, one Bundle JSON per thread (or NDJSON) out."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ..bundle_files import build_files
from .common import allow_outside_files_option, participants_option, read_model_option, report_errors
from .display import count
from .identifier import identifier_system_option


@click.command("build")
@click.argument("paths", nargs=-1, required=True)
@click.option("-o", "--out", type=click.Path(path_type=Path),
              help="Folder for one <thread>.json per thread (with --ndjson: the NDJSON file).")
@click.option("--ndjson", is_flag=True, help="Write NDJSON, one Bundle per line (to stdout unless -o).")
@identifier_system_option("Identifier system of every Communication (value: thread key, or key/message id).")
@participants_option
@read_model_option
@allow_outside_files_option
@report_errors
def build_command(paths: tuple[str, ...], out: Path | None, ndjson: bool, identifier_system: str,
                  participants: Path | None, read_model: str | None, allow_outside_files: bool) -> None:
    """Build a FHIR transaction Bundle for every thread in PATHS.

    PATHS are spec files (.yaml, .yml, .json), folders (searched recursively) or - for stdin.
    Nothing is written unless every input is valid.

    \b
    Examples:
      thread-bundler build fixtures/threads -o out/
      thread-bundler build thread.yaml --ndjson > bundles.ndjson
      thread-bundler build threads/ --participants people.yaml -o out/
      thread-bundler build threads/ -o out/ --read-model tasks
    """
    if out is None and not ndjson:
        ndjson = True
    summary = build_files(paths, out=out, ndjson=ndjson, identifier_system=identifier_system,
                          stream=sys.stdout.buffer, participants=participants,
                          read_model=read_model, allow_outside_files=allow_outside_files)
    for warning in summary.warnings:
        click.echo(str(warning), err=True)
    where = f" → {out}" if out else ""
    warned = f"; {count(len(summary.warnings), 'warning')}" if summary.warnings else ""
    click.echo(f"built {count(summary.threads, 'thread')} ({count(summary.messages, 'message')}){where}{warned}",
               err=True)
