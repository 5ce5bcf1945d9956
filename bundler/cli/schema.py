"""`thread-bundler schema`: the JSON Schema of the spec format (a thin layer over `bundler.spec.schema`)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ..spec.schema import SCHEMA_FILES, schema_status, schema_text, write_schema
from .common import EXIT_ISSUES, EXIT_OK, report_errors


@click.command("schema")
@click.option("-o", "--out", type=click.Path(path_type=Path, dir_okay=False),
              help="Write it to this file (atomically) instead of stdout.")
@click.option("--check", is_flag=True, help="Only compare with the --out file; exit 1 if it differs.")
@click.option("--kind", type=click.Choice(list(SCHEMA_FILES)), default="spec", show_default=True,
              help="Which file's schema: a thread spec, a participants file or a migration mapping.")
@report_errors
def schema_command(out: Path | None, check: bool, kind: str) -> None:
    """Print the JSON Schema (2020-12) of a thread spec (or of a participants file, or a mapping), every field
    described with examples: for an editor's YAML language server (`# yaml-language-server: $schema=FILE` at the
    top of a spec), or another tool. It cannot say everything `validate` checks (that an alias is a participant,
    that a reply follows what it answers).

    \b
    Examples:
      thread-bundler schema > thread-spec.schema.json
      thread-bundler schema --kind participants -o schemas/participants.schema.json
      thread-bundler schema -o schemas/thread-spec.schema.json --check
    """
    if out is None:
        if check:
            raise click.UsageError("--check compares with a file: give --out FILE")
        click.echo(schema_text(kind), nl=False)
        return
    ok = write_schema(out, check=check, kind=kind)
    click.echo(f"{out}: {schema_status(ok, check)}", err=True)
    sys.exit(EXIT_OK if ok else EXIT_ISSUES)
