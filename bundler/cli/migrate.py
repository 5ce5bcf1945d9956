"""`thread-bundler migrate`: a legacy export (one row per message) in, thread specs or NDJSON bundles out."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Literal

import click

from ..build import DEFAULT_IDENTIFIER_SYSTEM
from ..load.loader import default_journal
from ..migrate import MigrateSummary, Progress, Shard, iter_threads, migrate
from ..migrate.pipeline import default_rejects
from .common import EXIT_ISSUES, EXIT_OK, report_errors
from .connect import connection_options, make_client
from .load import load_options, run_load


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
        line = (f"{p.phase}: {p.rows:,} rows read, {p.messages:,} messages in {p.threads:,} threads, "
                f"{rate:,.0f} rows/s")
        click.echo(f"\r\x1b[2K{line}", err=True, nl=p.phase == "done")


def _print_summary(summary: MigrateSummary) -> None:
    rows = summary.table()
    if summary.seconds:
        rows.append(("seconds", f"{summary.seconds:,.1f}"))
    width = max(len(k) for k, _ in rows)
    vwidth = max(len(v) for _, v in rows)
    for k, v in rows:
        click.echo(f"{k:<{width}}  {v:>{vwidth}}", err=True)


@click.command("migrate")
@click.argument("inputs", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--mapping", "mapping", required=True, type=click.Path(dir_okay=False),
              help="The mapping file (YAML): which columns hold what, and who the users are.")
@click.option("--to", "to", nargs=2, type=(click.Choice(["specs", "ndjson"]), click.Path()), default=None,
              metavar="specs DIR | ndjson FILE",
              help="One YAML spec per thread into DIR, or one transaction Bundle per line into FILE.")
@click.option("--load", "load_", is_flag=True, help="Load the threads into a Medplum project instead (with every "
                                                     "option of `load`).")
@click.option("--shard", callback=_shard, metavar="K/N",
              help="Only the conversations whose id hashes to K of N (0-based): split a migration across runs.")
@click.option("--rejects", type=click.Path(dir_okay=False, path_type=Path),
              help="Where rejected rows go (.csv or .jsonl).  [default: <out>.rejects.jsonl]")
@click.option("--strict", is_flag=True, help="Stop at the first rejected row (exit 2), writing nothing.")
@click.option("--work-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Where the temporary grouping database goes (it needs about twice the input's size).")
@click.option("--progress/--no-progress", default=None, help="A progress line on stderr.  [default: on a terminal]")
@click.option("--identifier-system", default=DEFAULT_IDENTIFIER_SYSTEM, show_default=True,
              help="Identifier system of every Communication (NDJSON output).")
@connection_options
@load_options
@report_errors
def migrate_command(inputs: tuple[str, ...], mapping: str, to: tuple[str, str] | None, load_: bool,
                    shard: Shard | None, rejects: Path | None, strict: bool, work_dir: Path | None,
                    progress: bool | None, identifier_system: str, base_url: str | None, client_id: str | None,
                    client_secret: str | None, token: str | None, allow_insecure: bool, timeout: float,
                    journal: Path | None, atomic: str, concurrency: int, max_entries: int | None, dry_run: bool,
                    report_path: Path | None) -> None:
    """Migrate a legacy message export (INPUT: CSV or JSON Lines, optionally .gz) into threads.

    Rows are grouped by conversation on disk, ordered by sent time, and every row becomes a message
    or a line in the reject file. Output appears only when the run completes.

    \b
    Examples:
      thread-bundler migrate export.csv --mapping mapping.yaml --to specs threads/
      thread-bundler migrate part-*.jsonl.gz --mapping m.yaml --to ndjson out.ndjson --shard 0/4
      thread-bundler migrate export.csv --mapping mapping.yaml --load --report loaded.json
    """
    if (to is None) == (not load_):
        raise click.UsageError("give either --to specs DIR / --to ndjson FILE, or --load")
    if progress is None:
        progress = sys.stderr.isatty()
    if load_:
        client = make_client(base_url, client_id, client_secret, token, allow_insecure, timeout, concurrency)
        rejects = rejects or Path(f"{inputs[0]}.rejects.jsonl")
        with client, iter_threads(list(inputs), mapping, shard=shard, strict=strict, rejects=rejects,
                                  work_dir=work_dir) as stream:
            report = run_load(stream, client, journal=journal or default_journal(inputs),
                              identifier_system=identifier_system, atomic=atomic, concurrency=concurrency,
                              max_entries=max_entries, dry_run=dry_run, report_path=report_path, progress=progress)
        _print_summary(stream.summary)
        click.echo(f"rejects in {rejects}", err=True)
        sys.exit(EXIT_OK if report.ok else EXIT_ISSUES)
    assert to is not None
    kind: Literal["specs", "ndjson"] = "specs" if to[0] == "specs" else "ndjson"  # click.Choice checked it
    out = Path(to[1])
    summary = migrate(list(inputs), mapping, to=kind, out=out, shard=shard, strict=strict, rejects=rejects,
                      work_dir=work_dir, progress=_ProgressLine() if progress else None,
                      identifier_system=identifier_system)
    _print_summary(summary)
    where = "files in" if kind == "specs" else "bundles in"
    click.echo(f"{where} {out}; rejects in {rejects or default_rejects(out)}", err=True)
