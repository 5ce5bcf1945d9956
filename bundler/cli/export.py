"""`thread-bundler export`: threads out of a Medplum project as specs (a thin layer over `bundler.export`)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import click
import orjson

from ..errors import OptionError
from ..export import ExportReport, ThreadExport, export
from ..export.participants import check_participants_file
from ..export.run import Attachments
from ..export.search import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, check_since, check_subject
from ..medplum.client import FhirClient
from . import display
from .common import EXIT_ISSUES, EXIT_OK, SECRETS, deprecated_alias, format_option, report_errors
from .connect import connection_options, with_client
from .display import Bar, count, duration, table
from .identifier import identifier_system_option


def _checked(check: Callable[[Any], Any]) -> Callable[[click.Context, click.Parameter, Any], Any]:
    """A click callback: `check(value)`, its OptionError a usage error (exit 2) before anything is sent."""
    def callback(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        try:
            return check(value)
        except OptionError as exc:
            raise click.BadParameter(str(exc).split(": ", 1)[-1]) from None
    return callback


def print_export_report(report: ExportReport, *, show: int = 10) -> None:
    rows = [["threads found", report.threads], ["spec files written", report.written],
            ["messages in them", report.messages], ["not in our shape (written, with problems)", report.not_in_shape],
            ["not written (no spec could be made)", report.failed]]
    if report.orphans:
        rows.append(["of them: messages part of no header", report.orphans])
    if report.participants or report.participant_problems:
        rows += [["participants in the participants file", report.participants],
                 ["participants that cannot be created there", len(report.participant_problems)]]
    click.echo(table(["", "count"], rows), err=True)
    click.echo(f"\n{count(report.requests, 'request')} in {duration(report.seconds)}"
               + (f"; waited {report.waited:.1f}s for the quota" if report.waited >= 0.1 else ""), err=True)
    for t in report.problems[:show]:
        where = t.file or f"Communication/{t.header_id}"
        click.echo(SECRETS.scrub(f"{where}: {count(len(t.problems), 'problem')}"), err=True)
        for line in t.problems[:5]:
            click.echo(SECRETS.scrub(f"  {line}"), err=True)
        if len(t.problems) > 5:
            click.echo(f"  ... and {len(t.problems) - 5} more", err=True)
    more = report.not_in_shape + report.failed - min(show, len(report.problems))
    if more > 0:
        click.echo(f"... and {count(more, 'more thread')} (see the report)", err=True)
    for why in report.participant_problems[:show]:
        click.echo(SECRETS.scrub(f"participant: {why}"), err=True)
    if len(report.participant_problems) > show:
        click.echo(f"... and {count(len(report.participant_problems) - show, 'more participant')}", err=True)
    click.echo(f"specs in {display.path(report.out)}; report: {display.path(report.report_file)}", err=True)


@click.command("export")
@click.option("-o", "--out", type=click.Path(path_type=Path, file_okay=False), required=True,
              help="Folder to write one <thread>.yaml per thread into (and export-report.jsonl).")
@connection_options
@click.option("--topic", metavar="TEXT", help="Only threads whose topic contains TEXT (case ignored).")
@click.option("--subject", metavar="REF", callback=_checked(check_subject),
              help="Only threads about this Patient or Group, e.g. Patient/123.")
@click.option("--since", metavar="INSTANT", callback=_checked(check_since),
              help="Only threads whose header was created or changed at or after this FHIR instant.")
@identifier_system_option
@click.option("--participants-out", type=click.Path(path_type=Path, dir_okay=False), metavar="FILE",
              help="Also read every participant and write them to FILE with how to create them (for load "
                   "--participants); the specs then name them by alias.")
@deprecated_alias("--participants-file", "participants_out", "--participants-out",
                  type=click.Path(path_type=Path, dir_okay=False))
@click.option("--attachments", type=click.Choice(["keep", "download"]), default="keep", show_default=True,
              help="Keep: attachments keep their URLs; download: each Binary's bytes are downloaded next to the "
                   "spec, which attaches the file.")
@click.option("--orphans", is_flag=True,
              help="Also scan every message for those part of no header (one search per page of messages), and "
                   "write each group of them as a thread.")
@click.option("--concurrency", type=click.IntRange(1, 64), default=4, show_default=True,
              help="Threads read at once.")
@click.option("--page-size", type=click.IntRange(1, MAX_PAGE_SIZE), default=DEFAULT_PAGE_SIZE, show_default=True,
              help="Headers and messages asked for per search page.")
@click.option("--progress/--no-progress", default=None, help="A progress line.  [default: on a terminal]")
@format_option("the report's summary, as the last line of DIR/export-report.jsonl")
@report_errors(nothing="nothing written")
@with_client
def export_command(out: Path, client: FhirClient, topic: str | None, subject: str | None, since: str | None,
                   identifier_system: str, participants_out: Path | None, attachments: str, orphans: bool,
                   concurrency: int, page_size: int, progress: bool | None, format_: str) -> None:
    """Export the threads of a Medplum project as specs, one file per thread: the way back from `load`.

    Thread keys and message ids come from our identifiers, else from the server ids; `sent` is kept as
    stored. Threads that are not in our shape are written as far as they go and listed with what is
    wrong, here and in DIR/export-report.jsonl. All or nothing: the files appear in DIR only when the
    export is complete. Exit 0 when every thread is in our shape, 1 when some are not.

    \b
    Examples:
      thread-bundler export -o threads/
      thread-bundler export -o homer/ --subject Patient/123 --since 2024-01-01T00:00:00Z
      thread-bundler export -o all/ --orphans     # and messages whose header is gone
      thread-bundler export -o copy/ --participants-out people.yaml    # to load into an empty project
    """
    check_participants_file(participants_out, out)  # (export checks it too: said here before the progress line)
    bar = Bar("exporting", 0, 0, live=progress)
    bar.start("reading the thread headers")

    def on_thread(result: ThreadExport) -> None:
        bar.advance(result.exported, failed=result.file is None)

    try:
        report = export(client, out, topic=topic, subject=subject, since=since, identifier_system=identifier_system,
                        participants_out=participants_out, attachments=cast(Attachments, attachments),
                        orphans=orphans, concurrency=concurrency, page_size=page_size, on_thread=on_thread)
    finally:
        bar.close()
    if format_ == "json":
        click.echo(orjson.dumps(report.as_json(), option=orjson.OPT_INDENT_2).decode())
    else:
        print_export_report(report)
    sys.exit(EXIT_OK if report.ok else EXIT_ISSUES)
