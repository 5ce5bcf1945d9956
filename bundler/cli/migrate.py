"""`thread-bundler migrate`: a legacy export (one row per message) in, thread specs or NDJSON bundles out."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Literal

import click
import orjson

from ..load.inputs import journal_for
from ..migrate import MigrateSummary, Progress, Shard, migrate
from ..migrate.report import combine, summary_json
from ..migrate.stream import INDEX_VARIABLE
from .common import EXIT_ISSUES, EXIT_OK, format_option, read_model_option, report_errors
from .connect import connection_options, make_client
from .display import CLEAR_LINE, columns, count, fit
from .identifier import identifier_system_option
from .load import load_options, print_loaded, shown_load, sync_options


def _shard(ctx: click.Context, param: click.Parameter, value: str | None) -> Shard | None:
    if value is None:
        return None
    try:
        return Shard.parse(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


class _ProgressLine:
    """One line on stderr, rewritten at most a few times a second: rows read, messages, rows/s."""

    def __init__(self) -> None:
        self.last = 0.0

    def __call__(self, p: Progress) -> None:
        now = time.monotonic()
        if p.phase != "done" and now - self.last < 0.25:
            return
        self.last = now
        rate = p.rows / p.seconds if p.seconds else 0.0
        line = (f"{p.phase}: {count(p.rows, 'row')} read, {count(p.messages, 'message')} in "
                f"{count(p.threads, 'thread')}, {count(round(rate))} rows/s")
        click.echo(CLEAR_LINE + fit(line, columns(sys.stderr)), err=True, nl=p.phase == "done")


def _print_summary(summary: MigrateSummary, *, loading: bool = False) -> None:
    rows = summary.table(loading=loading)
    if summary.seconds:
        rows.append(("seconds", f"{summary.seconds:,.1f}"))
    _summary_table(rows)
    if summary.rejects.get("bad-encoding"):
        click.echo(f"hint: {count(summary.rejects['bad-encoding'], 'row')} have bytes that are not valid in the input "
                   "encoding: if the export is in another one, set input.encoding in the mapping (latin-1, cp1252, "
                   "...)", err=True)


def _exit_status(summary: MigrateSummary) -> int:
    """0: every row a message (or skipped); 1: any row rejected, or no message at all."""
    return EXIT_OK if summary.rejected == 0 and summary.messages > 0 else EXIT_ISSUES


@click.command("migrate")
@click.argument("inputs", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--mapping", "mapping", required=True, type=click.Path(dir_okay=False),
              help="The mapping file (YAML): which columns hold what, and who the users are.")
@click.option("--to", "to", nargs=2, type=(click.Choice(["specs", "ndjson"]), click.Path()), default=None,
              metavar="specs DIR | ndjson FILE",
              help="One YAML spec per thread into DIR, or one transaction Bundle per line into FILE.")
@click.option("--load", "load_", is_flag=True, help="Load the threads into a Medplum project instead (with every "
                                                     "option of `load`, --update for a delta run).")
@click.option("--shard", callback=_shard, metavar="K/N | env/N",
              help="Only the conversations whose thread key hashes to K of N (0-based): split a migration across "
                   f"runs. env/N: K from ${INDEX_VARIABLE} (a Kubernetes Indexed Job).")
@click.option("--rejects", type=click.Path(dir_okay=False, path_type=Path),
              help="Where rejected rows go (.csv or .jsonl).  [default: <out>.rejects.jsonl; with --load, "
                   "<first input>.rejects.jsonl]")
@click.option("--summary", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write the summary as JSON (for `thread-bundler report` to add up shards).")
@click.option("--strict", is_flag=True, help="Stop at the first rejected row (exit 2), writing nothing; a reply "
                                             "whose parent cannot be linked is a reject too.")
@click.option("--work-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Where the temporary grouping database goes (it needs about twice the input's size).")
@click.option("--workers", type=click.IntRange(1), default=None,
              help="Processes that read and assemble (--to; a load reads in one).  [default: the number of cores, "
                   "at most 4; 1 with --strict]")
@click.option("--progress/--no-progress", default=None, help="A progress line on stderr.  [default: on a terminal]")
@click.option("--participants", type=click.Path(path_type=Path, dir_okay=False),
              help="A participants file (participants: {alias: {reference, display, create}}), keyed by the "
                   "alias the migration makes of each legacy user id (tel-17735550123 for +17735550123): it comes "
                   "before the mapping's table and rules; a participant with create is created when missing.")
@format_option("the summary as --summary writes it")
@identifier_system_option
@connection_options
@load_options
@sync_options
@read_model_option
@report_errors
def migrate_command(inputs: tuple[str, ...], mapping: str, to: tuple[str, str] | None, load_: bool,
                    shard: Shard | None, rejects: Path | None, summary: Path | None, strict: bool,
                    work_dir: Path | None, workers: int | None, progress: bool | None, participants: Path | None,
                    format_: str, identifier_system: str,
                    base_url: str | None,
                    client_id: str | None, client_secret: str | None, token: str | None, allow_insecure: bool,
                    timeout: float, journal: Path | None, atomic: str, concurrency: int, max_entries: int | None,
                    dry_run: bool, report: Path | None, exactly_once: str, late_margin: float, update: bool,
                    wait: bool, read_model: str | None) -> None:
    """Migrate a legacy message export (INPUT: CSV or JSON Lines, optionally .gz) into threads.

    Rows are grouped by conversation on disk, ordered by sent time, and every row becomes a message,
    a row skipped by the mapping's filter, or a line in the reject file. Output appears only when the
    run completes; a re-run over a grown export writes the same bytes for what did not change.

    Exit status: 0 when no row was rejected, 1 when any row was rejected (or no message came out, or
    --load failed for a thread), 2 for unusable input (mapping, files, options) with nothing written.

    \b
    Examples:
      thread-bundler migrate export.csv --mapping mapping.yaml --to specs threads/
      thread-bundler migrate part-*.jsonl.gz --mapping m.yaml --to ndjson out.ndjson --shard 0/4
      thread-bundler migrate export.csv --mapping mapping.yaml --load --report loaded.json
      thread-bundler migrate export.csv --mapping mapping.yaml --load --update   # a delta run
      thread-bundler migrate export.csv --mapping mapping.yaml --to specs threads/ --read-model tasks
      thread-bundler migrate sms.csv --mapping m.yaml --load --participants people.yaml   # created when missing
    """
    if (to is None) == (not load_):
        raise click.UsageError("give either --to specs DIR / --to ndjson FILE, or --load")
    if progress is None:
        progress = sys.stderr.isatty()
    options = {"shard": shard, "strict": strict, "rejects": rejects, "summary": summary, "work_dir": work_dir,
               "identifier_system": identifier_system, "read_model": read_model, "participants": participants}
    if load_:
        client = make_client(base_url, client_id, client_secret, token, allow_insecure, timeout, concurrency)
        with client:
            done = shown_load(lambda watcher: migrate(
                list(inputs), mapping, to="load", client=client, journal=journal, atomic=atomic,
                concurrency=concurrency, max_entries=max_entries, dry_run=dry_run, report=report,
                exactly_once=exactly_once, late_margin=late_margin, update=update, wait=wait, watcher=watcher,
                **options), progress=progress, dry_run=dry_run)  # type: ignore[arg-type]
        assert done.load is not None
        _print_json(format_, done, shard)
        print_loaded(done.load, journal_for(list(inputs), journal))
        _print_summary(done, loading=True)
        on_server = sum(done.load.messages.values())
        click.echo(f"{count(done.messages, 'message')} of {count(done.threads, 'thread')} migrated; "
                   f"{count(on_server, 'message')} "
                   f"of those threads on the server; rejects in {done.rejects_file}", err=True)
        sys.exit(max(_exit_status(done), EXIT_OK if done.load.ok else EXIT_ISSUES))
    assert to is not None
    kind: Literal["specs", "ndjson"] = "specs" if to[0] == "specs" else "ndjson"  # click.Choice checked it
    done = migrate(list(inputs), mapping, to=kind, out=to[1], workers=workers,
                   progress=_ProgressLine() if progress else None, **options)  # type: ignore[arg-type]
    _print_json(format_, done, shard)
    _print_summary(done)
    where = "files in" if kind == "specs" else "bundles in"
    click.echo(f"{where} {to[1]}; rejects in {done.rejects_file}", err=True)
    sys.exit(_exit_status(done))


def _print_json(format_: str, summary: MigrateSummary, shard: Shard | None) -> None:
    """With --format json, the summary on stdout as `--summary` writes it."""
    if format_ == "json":
        where = (shard.index, shard.count) if shard is not None else None
        data = summary_json(summary, shard=where, load_ok=summary.load is None or summary.load.ok)
        click.echo(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode())


def _summary_table(rows: list[tuple[str, str]]) -> None:
    width = max(len(k) for k, _ in rows)
    vwidth = max(len(v) for _, v in rows)
    for k, v in rows:
        click.echo(f"{k:<{width}}  {v:>{vwidth}}", err=True)


@click.command("report")
@click.argument("summaries", nargs=-1, required=True, type=click.Path(dir_okay=False))
@format_option("the summaries added up, in the format of one, with the shards, missing shards and ok")
@report_errors(nothing="nothing combined")
def report_command(summaries: tuple[str, ...], format_: str) -> None:
    """Add up the summaries of the shards of one migration (written by `migrate --summary FILE`) into one,
    and say whether every shard is there.

    Exit status: 0 when every shard of K/N is there once, no row was rejected and every load was ok; 1
    otherwise; 2 for a file that is not a summary.

    \b
    Example:
      thread-bundler report shard-*.json
    """
    total = combine(summaries)
    if format_ == "json":
        data = {**summary_json(total.summary, load_ok=total.load_ok), "files": total.files,
                "shards": [list(s) for s in sorted(total.shards)], "missing_shards": total.missing_shards,
                "ok": total.ok}
        click.echo(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode())
    _summary_table(total.summary.table())
    click.echo(count(len(total.files), "summary", "summaries")
               + (f" of shards {', '.join(f'{k}/{n}' for k, n in sorted(total.shards))}" if total.shards else ""),
               err=True)
    for missing in total.missing_shards:
        click.echo(f"missing: shard {missing}", err=True)
    if not total.load_ok:
        click.echo("a load of one of the shards had failures (see its --report)", err=True)
    sys.exit(EXIT_OK if total.ok else EXIT_ISSUES)
