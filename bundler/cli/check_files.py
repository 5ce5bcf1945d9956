"""`thread-bundler validate-participants` and `validate-mapping`: a participants file or a migration mapping checked
on its own, offline (no server, no Node), as `load --participants` and `migrate --mapping` read it. Each is a thin
layer over the reader those commands use (`spec.participants.read_participants`, `migrate.mapping.load_mapping`),
called once a file; every problem of every file is told (file:line:col) before the exit status 2.

What a pre-commit hook runs (`.pre-commit-hooks.yaml`), with the files a commit touches as FILES.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from ..errors import Problem, SpecError
from ..migrate.mapping import load_mapping
from ..spec.participants import read_participants
from .common import report_errors
from .display import count


def _check_each(files: tuple[Path, ...], read: Callable[[Path], Any], kind: str) -> None:
    """`read` every file; SpecError with the problems of all of them, else one line on stderr."""
    problems: list[Problem] = []
    for file in files:
        try:
            read(file)
        except SpecError as exc:
            problems.extend(exc.problems)
    if problems:
        raise SpecError(problems)
    click.echo(f"{count(len(files), kind)}: no problems", err=True)


_FILES = click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path, dir_okay=False))


@click.command("validate-participants")
@_FILES
@report_errors(nothing="fix them before use")
def validate_participants_command(files: tuple[Path, ...]) -> None:
    """Check participants files (`participants: {alias: {reference, display, create}}`) as `--participants` reads
    them, offline. Exit status: 0 when every file is good, 2 with every problem (file:line:col) otherwise.

    \b
    Examples:
      thread-bundler validate-participants people.yaml
      thread-bundler validate-participants seed/*.participants.yaml
    """
    _check_each(files, read_participants, "participants file")


@click.command("validate-mapping")
@_FILES
@report_errors(nothing="fix them before use")
def validate_mapping_command(files: tuple[Path, ...]) -> None:
    """Check migration mappings as `migrate --mapping` reads them (the schema, the values, the tables they name:
    a participants table, a read table), offline, without reading an export. Exit status: 0 when every file is
    good, 2 with every problem (file:line:col) otherwise.

    \b
    Examples:
      thread-bundler validate-mapping mapping.yaml
    """
    _check_each(files, load_mapping, "mapping")
