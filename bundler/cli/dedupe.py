"""`thread-bundler dedupe`: keep one copy of each thread loads at the same time both made; a thin layer over
`bundler.load.dedupe.dedupe`."""

from __future__ import annotations

import sys

import click
import orjson

from ..load.dedupe import Decision, dedupe
from ..medplum.client import FhirClient
from .common import EXIT_ISSUES, EXIT_OK, format_option, report_errors
from .connect import connection_options, with_client
from .display import Bar, count, table


@click.command("dedupe")
@click.argument("reports", nargs=-1, required=True, type=click.Path(dir_okay=False))
@connection_options
@click.option("--dry-run", is_flag=True, help="Say what would be kept and deleted; delete nothing.")
@click.option("--concurrency", type=click.IntRange(1, 64), default=4, show_default=True,
              help="Deletes sent at once.")
@format_option("what is kept and deleted of each thread")
@click.option("--progress/--no-progress", default=None, help="A progress line on stderr.  [default: on a terminal]")
@report_errors(nothing="nothing deleted")
@with_client
def dedupe_command(reports: tuple[str, ...], client: FhirClient, dry_run: bool, concurrency: int, format_: str,
                   progress: bool | None) -> None:
    """Keep one copy of each thread that loads running at the same time (with other journals, or none) both
    made, and delete the others. REPORTS are those loads' --report files: give every one, since a load may
    find copies the other did not. Each thread keeps the copy of the load that found none (its journal does
    not know of the double), else that of the first report given; then run each load again with its journal
    (one whose copy was deleted finds the thread again: existing), and verify.

    \b
    Examples:
      thread-bundler dedupe a.json b.json --dry-run
      thread-bundler dedupe a.json b.json && thread-bundler load threads/ --journal a.sqlite
    """
    bars: list[Bar] = []

    def on_plan(decisions: list[Decision]) -> None:
        if format_ == "text":
            _print_plan(decisions, dry_run)
        if not dry_run and (total := sum(len(d.delete) for d in decisions)):
            bars.append(bar := Bar("deleting", total, None, live=progress, unit="resource"))
            bar.start()

    try:
        result = dedupe(list(reports), client, dry_run=dry_run, concurrency=concurrency, on_plan=on_plan,
                        on_deleted=lambda ref: bars[0].advance())
    finally:
        for bar in bars:
            bar.close()
    if format_ == "json":
        sys.stdout.write(orjson.dumps(result.as_json(), option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        threads = count(len(result.decisions), "thread")
        if not result.decisions:
            click.echo("no thread with copies in these reports: nothing to delete", err=True)
        elif dry_run:
            click.echo(f"dry run: would delete {count(sum(len(d.delete) for d in result.decisions), 'resource')} "
                       f"of {threads}", err=True)
        else:
            click.echo(f"deleted {count(result.deleted, 'resource')} of {threads} (one already gone counts): now run "
                       "each load again with its journal, then verify", err=True)
        for d in result.decisions:
            if d.unresolved:
                click.echo(f"{d.key}: left as it is: {count(len(d.unresolved), 'resource')} with copies no report "
                           f"given calls its own (e.g. {d.unresolved[0]}): give the report of every load that ran "
                           "then", err=True)
    sys.exit(EXIT_OK if result.ok else EXIT_ISSUES)


def _print_plan(decisions: list[Decision], dry_run: bool) -> None:
    if not decisions:
        return
    rows = [[d.key, _first(list(d.keep.values())), d.why, len(d.delete), _first(d.delete)] for d in decisions]
    click.echo(table(["thread", "copy kept", "whose", "to delete" if dry_run else "deleting", "copies deleted"], rows,
                     align="lllrl"), err=True)


def _first(refs: list[str]) -> str:
    return (refs[0] + (f", +{len(refs) - 1}" if len(refs) > 1 else "")) if refs else "-"
