"""`thread-bundler load`, `doctor` and `verify`: the commands that talk to a server."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click
import orjson

from ..load.concurrency import AUTO, Concurrency
from ..load.inputs import journal_for
from ..load.loader import DEFAULT_LATE_MARGIN, EXACTLY_ONCE_MODES, LoadInterrupted, load
from ..load.report import LoadReport, LoadWatcher, ThreadResult
from ..load.verify import VerifyResult, verify_each
from ..medplum.client import FhirClient
from ..medplum.doctor import doctor
from . import display
from .common import (
    EXIT_ISSUES,
    EXIT_OK,
    SECRETS,
    allow_outside_files_option,
    format_option,
    participants_option,
    read_model_option,
    report_errors,
)
from .connect import connection_options, with_client
from .display import Bar, count, duration, table
from .identifier import identifier_system_option

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")
EXIT_INTERRUPTED = 130


def print_load_report(report: LoadReport, *, show: int = 20) -> None:
    rows = [[outcome, n, report.messages.get(outcome, 0)] for outcome, n in sorted(report.counts().items())]
    click.echo(table(["outcome", "threads", "messages on server"], rows), err=True)
    if report.participants:
        click.echo(report.participants.text(), err=True)
    if report.plan is not None:
        click.echo("\n" + _plan_text(report), err=True)
    else:
        atomic = {True: "atomic", False: "NOT atomic (conditional creates)", None: "not probed"}[report.atomic]
        click.echo(f"\n{count(report.requests, 'request')} in {duration(report.seconds)}; transactions {atomic}"
                   + (f"; concurrency {report.concurrency}" if report.concurrency else "")
                   + (f"; waited {report.waited:.1f}s for the quota" if report.waited >= 0.1 else ""), err=True)
    for t in report.problems[:show]:
        click.echo(SECRETS.scrub(f"{t.outcome}: {t.key}: {t.error}"), err=True)
        _lines(t.changes, show=10)
        _lines([d.text() for d in t.duplicates], show=3)
    if report.problem_count > show:
        click.echo(f"... and {report.problem_count - show} more (see --report)", err=True)
    if report.unchecked:
        click.echo(SECRETS.scrub(f"not checked for copies made by another load at the same time: "
                                 f"{count(report.unchecked, 'thread')} ({report.unchecked_why}); the next run "
                                 "with this journal checks them"), err=True)
    for t in report.noted[:show]:
        click.echo(f"note: {t.key}: {count(len(t.removed), 'message')} on the server no longer "
                   f"in the spec (not deleted): {', '.join(t.removed[:10])}", err=True)
    if report.noted_count > show:
        click.echo(f"... and {report.noted_count - show} more threads with messages removed from their specs", err=True)


def _lines(lines: list[str], *, show: int) -> None:
    for line in lines[:show]:
        click.echo(SECRETS.scrub(f"  {line}"), err=True)
    if len(lines) > show:
        click.echo(f"  ... and {len(lines) - show} more", err=True)


def _plan_text(report: LoadReport) -> str:
    """What a dry run predicts, in words; the time only when the server told its quota."""
    plan = report.plan
    assert plan is not None

    def one(requests: int, points: int, seconds: float | None) -> str:
        when = (f"about {duration(seconds)} at the server's quota" if seconds is not None else
                "time unknown: the server sends no RateLimit header, so nothing paces the load")
        return f"{count(requests, 'transaction request')}, {count(points, 'quota point')}; {when}"

    text = f"plan: {one(plan.requests, plan.points, plan.seconds)}"
    if plan.requests_not_atomic is not None and plan.points_not_atomic is not None:
        text += (f"\n  if the project's transactions are atomic; if they are not (conditional creates): "
                 f"{one(plan.requests_not_atomic, plan.points_not_atomic, plan.seconds_not_atomic)}\n"
                 "  (a real load finds out with a probe; `thread-bundler doctor` tells now)")
    return text + (f"\nincluding {count(plan.searches, 'search', 'searches')} made to plan; nothing was sent, no "
                   "journal written")


class _Concurrency(click.ParamType[Concurrency]):
    """`--concurrency`: auto, or a number of transactions in flight."""

    name = "auto|N"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Concurrency:
        if value == AUTO:
            return AUTO
        try:
            n = int(value)
        except (TypeError, ValueError):
            n = 0
        if not 1 <= n <= MOST_CONCURRENCY:
            self.fail(f"{value!r} is neither auto nor a number of 1-{MOST_CONCURRENCY}", param, ctx)
        return n


CONCURRENCY = _Concurrency()
MOST_CONCURRENCY = 64


def load_options(func: F) -> F:
    """The options of `load` (also on `migrate --load`), named as `bundler.load.load`'s arguments."""
    options = [
        click.option("--journal", type=click.Path(path_type=Path),
                     help="Journal file.  [default: <first input>.journal.sqlite]"),
        click.option("--atomic", type=click.Choice(["require", "auto", "off"]), default="auto", show_default=True,
                     help="Require: refuse a non-atomic project; auto: conditional creates there; off: plain "
                          "transactions."),
        click.option("--concurrency", type=CONCURRENCY, default=AUTO, show_default=True,
                     help="Transactions in flight: auto finds the most the server answers fastest at as the load "
                          "goes (backing off when it refuses or slows down; within its quota), or a number "
                          f"(1-{MOST_CONCURRENCY})."),
        click.option("--max-entries", type=click.IntRange(1), help="Cut threads into transactions of at most N "
                                                                   "entries."),
        click.option("--dry-run", is_flag=True, help="Plan only: what would be sent, what exists, requests, quota "
                                                     "points, time; sends nothing, writes no journal."),
        click.option("--report", type=click.Path(path_type=Path),
                     help="Write every thread's outcome as JSON to this file, as threads finish."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def sync_options(func: F) -> F:
    """The options of `load` about lost answers and threads that changed, named as `bundler.load.load`'s."""
    options = [
        click.option("--exactly-once", type=click.Choice(EXACTLY_ONCE_MODES), default="quarantine",
                     show_default=True,
                     help="Quarantine: a request whose answer was lost is searched for once it can no longer "
                          "land (--timeout + --late-margin); strict: every entry a conditional create, 8 to a "
                          "request, safe against a request of any lateness (more requests and quota points)."),
        click.option("--late-margin", type=click.FloatRange(0), default=DEFAULT_LATE_MARGIN, show_default=True,
                     metavar="SECONDS", help="How long after the client gave up a request may still land."),
        click.option("--update", is_flag=True, help="Send changed fields of loaded threads as updates "
                                                    "(version-checked); without it they are only reported."),
        click.option("--wait", is_flag=True, help="Wait for another load using the same journal to finish, "
                                                  "instead of refusing."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def shown_load(call: Callable[[LoadWatcher], T], *, progress: bool | None, dry_run: bool) -> T:
    """`call(watcher)` (`bundler.load.load`, or `migrate` loading) with a progress line, shown before the first
    search; Ctrl-C prints the summary so far and how to go on, and exits 130 (the library has finished the
    --report file)."""
    bars: list[Bar] = []

    def on_start(threads: int | None, messages: int | None) -> None:
        bars.append(bar := Bar("planning" if dry_run else "loading", threads or 0, messages or 0, live=progress))
        bar.start("reading the journal and looking for the threads on the server")

    def on_wait(why: str) -> None:
        click.echo(why, err=True)

    def on_thread(result: ThreadResult, messages: int) -> None:
        bars[0].advance(messages, failed=not result.outcome.ok)

    try:
        return call(LoadWatcher(on_start=on_start, on_thread=on_thread, on_wait=on_wait))
    except LoadInterrupted as exc:
        _close(bars)
        _interrupted(exc)
    finally:
        _close(bars)


def print_loaded(report: LoadReport, journal: Path, *, format_: str = "text") -> None:
    """The summary of a load (with `format_="json"` also as JSON on stdout), and where its journal is (none for a
    dry run)."""
    if format_ == "json":
        click.echo(SECRETS.scrub(orjson.dumps(report.as_json(), option=orjson.OPT_INDENT_2).decode()))
    print_load_report(report)
    if not report.dry_run:
        click.echo(f"journal: {display.path(journal)}", err=True)


def _close(bars: list[Bar]) -> None:
    for bar in bars:
        bar.close()
    bars.clear()


def _interrupted(exc: LoadInterrupted) -> NoReturn:
    """Ctrl-C: the summary so far, and how to go on; exit 130."""
    click.echo("", err=True)
    print_load_report(exc.report)
    where = f" (journal: {display.path(exc.journal)})" if exc.journal is not None else ""
    click.echo(f"\n{exc}; run the same command again to resume{where}", err=True)
    sys.exit(EXIT_INTERRUPTED)


@click.command("load")
@click.argument("paths", nargs=-1, required=True)
@connection_options
@identifier_system_option
@load_options
@sync_options
@click.option("--progress/--no-progress", default=None, help="A progress bar.  [default: on a terminal]")
@format_option("the --report summary (counts, ok, requests, ...) without the threads")
@participants_option
@read_model_option
@allow_outside_files_option
@report_errors(nothing="nothing sent")
@with_client
def load_command(paths: tuple[str, ...], client: FhirClient, identifier_system: str, journal: Path | None,
                 atomic: str, concurrency: Concurrency, max_entries: int | None, dry_run: bool, report: Path | None,
                 exactly_once: str, late_margin: float, update: bool, wait: bool, progress: bool | None,
                 format_: str, participants: Path | None, read_model: str | None, allow_outside_files: bool) -> None:
    """Load the threads in PATHS into a Medplum project, atomically and exactly once; run again on specs
    that grew or changed, send what is new (and, with --update, what changed).

    Re-running the same command skips what is loaded and resumes what is not: after a crash, a Ctrl-C
    or a lost response nothing is sent twice. Connection: --base-url, --client-id, --client-secret or
    the MEDPLUM_BASE_URL, MEDPLUM_CLIENT_ID, MEDPLUM_CLIENT_SECRET variables.

    \b
    Examples:
      thread-bundler load threads/ --base-url https://api.medplum.com/
      thread-bundler load threads/ --dry-run
      thread-bundler load threads/ --atomic require --report loaded.json
      thread-bundler load threads/ --update          # a delta load: new messages and changed fields
      thread-bundler load threads/ --participants people.yaml   # participants created when missing
    """
    loaded = shown_load(lambda watcher: load(
        list(paths), client, journal=journal, participants=participants, read_model=read_model,
        allow_outside_files=allow_outside_files, identifier_system=identifier_system,
        atomic=atomic,  # type: ignore[arg-type]
        exactly_once=exactly_once,  # type: ignore[arg-type]
        late_margin=late_margin, update=update, concurrency=concurrency, max_entries=max_entries, dry_run=dry_run,
        report=report, wait=wait, watcher=watcher), progress=progress, dry_run=dry_run)
    print_loaded(loaded, journal_for(list(paths), journal), format_=format_)
    sys.exit(EXIT_OK if loaded.ok else EXIT_ISSUES)


@click.command("doctor")
@connection_options
@format_option("every check")
@report_errors(nothing="nothing sent")
@with_client
def doctor_command(client: FhirClient, format_: str) -> None:
    """Probe a project once: login, permission to search and create Communication, whether transactions
    are atomic, whether references must exist, and the quota. Whatever the probe creates, it removes.
    Exit 0 unless a check says FAIL (a project without atomic transactions is a warning: `load` handles it).

    \b
    Example:
      MEDPLUM_BASE_URL=https://api.medplum.com/ thread-bundler doctor
    """
    report = doctor(client)
    if format_ == "json":
        click.echo(SECRETS.scrub(orjson.dumps(report.as_json(), option=orjson.OPT_INDENT_2).decode()))
    else:
        mark = {"ok": "ok", "warn": "WARN", "fail": "FAIL", "unknown": "?"}
        click.echo(f"server: {report.base_url}")
        click.echo(SECRETS.scrub(table(["check", "", "detail"], [[c.name, mark[c.status], c.detail]
                                                                  for c in report.checks], align="lll")))
    sys.exit(EXIT_OK if report.ok else EXIT_ISSUES)


def print_verify(results: Iterable[VerifyResult], *, show: int = 20, before: Callable[[], None] | None = None
                 ) -> bool:
    """The summary of `results` as they come (the first `show` that differ kept for it); whether all match.
    `before`: called when every result is in, before the summary (the progress line ended)."""
    good = total = 0
    bad: list[VerifyResult] = []
    for r in results:
        total += 1
        good += r.ok
        if not r.ok and len(bad) < show:
            bad.append(r)
    if before is not None:
        before()
    matches = "matches its spec" if total == 1 else "match their specs"
    click.echo(f"{count(good)} of {count(total, 'thread')} {matches}", err=True)
    for r in bad:
        where = f"{r.file}:{r.line}" if r.line else r.file
        click.echo(f"{where}: {r.key}:", err=True)
        _lines(r.differences + ([f"could not be read back: {r.error}"] if r.error is not None else []), show=10)
    return good == total


def _json_verified(results: Iterable[VerifyResult]) -> bool:
    """`results` as one indented JSON array on stdout, written as they come; whether all match."""
    ok = True
    out = sys.stdout
    out.write("[")
    first = True
    for r in results:
        ok &= r.ok
        item = orjson.dumps(r.as_json(), option=orjson.OPT_INDENT_2).decode().replace("\n", "\n  ")
        out.write(("\n  " if first else ",\n  ") + item)
        first = False
    out.write("]\n" if first else "\n]\n")
    out.flush()
    return ok


@click.command("verify")
@click.argument("paths", nargs=-1, required=True)
@connection_options
@identifier_system_option
@click.option("--concurrency", type=click.IntRange(1, 64), default=4, show_default=True,
              help="Threads read back at once.")
@format_option("one object per thread")
@participants_option
@read_model_option
@allow_outside_files_option
@click.option("--progress/--no-progress", default=None, help="A progress line on stderr.  [default: on a terminal]")
@report_errors(nothing="nothing sent")
@with_client
def verify_command(paths: tuple[str, ...], client: FhirClient, identifier_system: str, concurrency: int,
                   format_: str, participants: Path | None, read_model: str | None, allow_outside_files: bool,
                   progress: bool | None) -> None:
    """Read each thread in PATHS back from the server (part-of, _sort=sent, every page) and compare it
    with its spec field by field, in the words `load` uses for what changed.

    \b
    Example:
      thread-bundler verify threads/
    """
    bars: list[Bar] = []

    def on_start(threads: int | None, messages: int | None) -> None:
        bars.append(bar := Bar("verifying", threads or 0, messages or 0, live=progress))
        bar.start()

    def on_thread(result: VerifyResult) -> None:
        bars[0].advance(result.messages, failed=not result.ok)

    try:
        results = verify_each(list(paths), client, participants=participants, read_model=read_model,
                              allow_outside_files=allow_outside_files, identifier_system=identifier_system,
                              concurrency=concurrency, on_start=on_start, on_thread=on_thread)
        ok = _json_verified(results) if format_ == "json" else print_verify(results, before=lambda: _close(bars))
    finally:
        _close(bars)
    sys.exit(EXIT_OK if ok else EXIT_ISSUES)
