"""`thread-bundler load`, `doctor` and `verify`: the commands that talk to a server."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import click
import orjson

from ..build import DEFAULT_IDENTIFIER_SYSTEM
from ..files import write_atomic
from ..load.loader import LoadReport, LoadWatcher, ThreadResult, default_journal, load
from ..load.verify import VerifyResult, verify
from ..medplum.client import FhirClient
from ..medplum.doctor import doctor
from ..spec import ThreadSpec, load_specs
from .common import EXIT_ISSUES, EXIT_OK, SECRETS, report_errors
from .connect import connection_options, with_client
from .display import Bar, duration, table
from .identifier import check_identifier_system as _check_system

F = TypeVar("F", bound=Callable[..., Any])

identifier_option = click.option("--identifier-system", default=DEFAULT_IDENTIFIER_SYSTEM, show_default=True,
                                 callback=_check_system, help="Identifier system the threads were built with.")


def print_load_report(report: LoadReport, *, show: int = 20) -> None:
    counts = report.counts()
    messages: dict[str, int] = {}
    for t in report.threads:
        messages[t.outcome] = messages.get(t.outcome, 0) + len(t.message_ids)
    rows = [[outcome, n, messages.get(outcome, 0)] for outcome, n in sorted(counts.items())]
    click.echo(table(["outcome", "threads", "messages on server"], rows), err=True)
    if report.dry_run:
        click.echo(f"\nplan: {report.planned_requests:,} transaction requests, {report.planned_points:,} quota points, "
                   f"about {duration(report.estimated_seconds)} at the server's quota", err=True)
    else:
        atomic = {True: "atomic", False: "NOT atomic (conditional creates)", None: "not probed"}[report.atomic]
        click.echo(f"\n{report.requests:,} requests in {duration(report.seconds)}; transactions {atomic}"
                   + (f"; waited {report.waited:.1f}s for the quota" if report.waited >= 0.1 else ""), err=True)
    bad = [t for t in report.threads if t.outcome.problem]
    for t in bad[:show]:
        click.echo(SECRETS.scrub(f"{t.outcome}: {t.key}: {t.error}"), err=True)
    if len(bad) > show:
        click.echo(f"... and {len(bad) - show} more (see --report)", err=True)


def load_options(func: F) -> F:
    """The options of `load` (also on `migrate --load`), named as `bundler.load.load`'s arguments."""
    options = [
        click.option("--journal", type=click.Path(path_type=Path),
                     help="Journal file [default: <first input>.journal.sqlite]"),
        click.option("--atomic", type=click.Choice(["require", "auto", "off"]), default="auto", show_default=True,
                     help="require: refuse a non-atomic project; auto: conditional creates there; off: plain "
                          "transactions"),
        click.option("--concurrency", type=click.IntRange(1, 64), default=4, show_default=True,
                     help="threads in flight"),
        click.option("--max-entries", type=click.IntRange(1), help="cut threads into transactions of at most N "
                                                                   "entries"),
        click.option("--dry-run", is_flag=True, help="plan only: what would be sent, what exists, requests, quota, "
                                                     "time"),
        click.option("--report", "report_path", type=click.Path(path_type=Path),
                     help="write every thread's outcome as JSON"),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def run_load(threads: Iterable[ThreadSpec], client: FhirClient, *, journal: Path, identifier_system: str, atomic: str,
             concurrency: int, max_entries: int | None, dry_run: bool, report_path: Path | None,
             progress: bool | None) -> LoadReport:
    """`load` with a progress bar, the summary table and the --report file: shared by `load` and `migrate`."""
    bar = Bar("loading", 0, 0, live=progress) if not dry_run else None

    def on_thread(result: ThreadResult, messages: int) -> None:
        if bar is not None:
            if bar.total == 0:
                bar.total, bar.messages_total = watcher.threads, watcher.messages
            bar.advance(messages, failed=not result.outcome.ok)

    watcher = LoadWatcher(on_thread=on_thread)
    try:
        report = load(threads, client, journal=journal, identifier_system=identifier_system,
                      atomic=atomic,  # type: ignore[arg-type]
                      concurrency=concurrency, max_entries=max_entries, dry_run=dry_run, watcher=watcher)
    finally:
        if bar is not None:
            bar.close()
    print_load_report(report)
    click.echo(f"journal: {journal}", err=True)
    if report_path:
        write_atomic(report_path, orjson.dumps(report.as_json(), option=orjson.OPT_INDENT_2) + b"\n")
    return report


@click.command("load")
@click.argument("paths", nargs=-1, required=True)
@connection_options
@identifier_option
@load_options
@click.option("--progress/--no-progress", default=None, help="progress bar [default: on a terminal]")
@report_errors
@with_client
def load_command(paths: tuple[str, ...], client: FhirClient, identifier_system: str, journal: Path | None,
                 atomic: str, concurrency: int, max_entries: int | None, dry_run: bool, report_path: Path | None,
                 progress: bool | None) -> None:
    """Load the threads in PATHS into a Medplum project, atomically and exactly once.

    Re-running the same command skips what is loaded and resumes what is not: after a crash, a Ctrl-C
    or a lost response nothing is sent twice. Connection: --base-url, --client-id, --client-secret or
    the MEDPLUM_BASE_URL, MEDPLUM_CLIENT_ID, MEDPLUM_CLIENT_SECRET variables.

    \b
    Examples:
      thread-bundler load threads/ --base-url https://api.medplum.com/
      thread-bundler load threads/ --dry-run
      thread-bundler load threads/ --atomic require --report loaded.json
    """
    report = run_load(load_specs(paths), client, journal=journal or default_journal(paths),
                      identifier_system=identifier_system, atomic=atomic, concurrency=concurrency,
                      max_entries=max_entries, dry_run=dry_run, report_path=report_path, progress=progress)
    sys.exit(EXIT_OK if report.ok else EXIT_ISSUES)


@click.command("doctor")
@connection_options
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@report_errors
@with_client
def doctor_command(client: FhirClient, fmt: str) -> None:
    """Probe a project once: login, permission to search and create Communication, whether transactions
    are atomic, and the quota. Whatever the probe creates, it removes.

    \b
    Example:
      MEDPLUM_BASE_URL=https://api.medplum.com/ thread-bundler doctor
    """
    report = doctor(client)
    if fmt == "json":
        click.echo(orjson.dumps(report.as_json(), option=orjson.OPT_INDENT_2).decode())
    else:
        mark = {True: "ok", False: "FAIL", None: "?"}
        click.echo(f"server: {report.base_url}")
        click.echo(table(["check", "", "detail"], [[c.name, mark[c.ok], c.detail] for c in report.checks],
                         align="lll"))
    sys.exit(EXIT_OK if report.ok else EXIT_ISSUES)


def print_verify(results: list[VerifyResult], *, show: int = 20) -> None:
    good = sum(r.ok for r in results)
    click.echo(f"{good:,} of {len(results):,} threads match their specs", err=True)
    bad = [r for r in results if not r.ok]
    for r in bad[:show]:
        where = f"{r.file}:{r.line}" if r.line else r.file
        click.echo(f"{where}: {r.key}:", err=True)
        for d in r.differences[:10]:
            click.echo(f"  {d}", err=True)
        if len(r.differences) > 10:
            click.echo(f"  ... and {len(r.differences) - 10} more", err=True)


@click.command("verify")
@click.argument("paths", nargs=-1, required=True)
@connection_options
@identifier_option
@click.option("--concurrency", type=click.IntRange(1, 64), default=4, show_default=True)
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@report_errors
@with_client
def verify_command(paths: tuple[str, ...], client: FhirClient, identifier_system: str, concurrency: int,
                   fmt: str) -> None:
    """Read each thread in PATHS back from the server (part-of, _sort=sent, every page) and compare it
    with its spec field by field.

    \b
    Example:
      thread-bundler verify threads/
    """
    results = verify(load_specs(paths), client, identifier_system=identifier_system, concurrency=concurrency)
    if fmt == "json":
        click.echo(orjson.dumps([r.as_json() for r in results], option=orjson.OPT_INDENT_2).decode())
    else:
        print_verify(results)
    sys.exit(EXIT_OK if all(r.ok for r in results) else EXIT_ISSUES)
