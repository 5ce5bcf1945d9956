"""`thread-bundler generate`: realistic thread specs (and their cast) for seeding and load tests."""

from __future__ import annotations

import re
from pathlib import Path

import click

from ..generator import generate
from .common import participants_option, report_errors
from .display import count


def parse_range(ctx: click.Context, param: click.Parameter, value: str) -> tuple[int, int]:
    """`MIN..MAX` (or one number N: N..N) → (MIN, MAX); a usage error otherwise."""
    m = re.fullmatch(r"\s*(\d+)\s*(?:\.\.\s*(\d+)\s*)?", value)
    if not m:
        raise click.BadParameter(f"{value!r} is not MIN..MAX (e.g. 2..8) or a number")
    low, high = int(m.group(1)), int(m.group(2) or m.group(1))
    if not 1 <= low <= high:
        raise click.BadParameter(f"{value!r}: need 1 <= MIN <= MAX")
    return low, high


@click.command("generate")
@click.option("--threads", type=click.IntRange(1), required=True, help="How many threads to write.")
@click.option("--messages", default="2..8", show_default=True, callback=parse_range, metavar="MIN..MAX",
              help="Messages a thread: MIN..MAX, or one number.")
@click.option("--seed", type=int, default=0, show_default=True, help="The same seed writes the same bytes.")
@click.option("--prefix", default="gen", show_default=True,
              help="Thread keys (<prefix>-<number>) and identifier values start with it, so it must make keys the "
                   "spec format takes (a project seeded twice: another prefix).")
@click.option("-o", "--out", type=click.Path(path_type=Path), required=True,
              help="Folder: specs into OUT/threads/, the cast into OUT/participants.yaml.")
@participants_option
@report_errors
def generate_command(threads: int, messages: tuple[int, int], seed: int, prefix: str, out: Path,
                     participants: Path | None) -> None:
    """Write realistic thread specs for seeding a project or testing a load: clinical-messaging topics and
    replies from our own templates, patients, clinicians and a care team created when missing (with
    identifiers), working hours across time zones, categories and statuses in realistic proportions, the
    odd small attachment file. Every thread validates clean.

    \b
    Examples:
      thread-bundler generate --threads 200 --seed 1 -o seed/
      thread-bundler load seed/threads --participants seed/participants.yaml
      thread-bundler generate --threads 50 --messages 1..3 --participants people.yaml -o more/
    """
    summary = generate(threads, out=out, messages=messages, seed=seed, participants=participants, prefix=prefix)
    click.echo(f"wrote {count(summary.threads, 'thread')} ({count(summary.messages, 'message')}) → {out}/threads; "
               f"participants: {summary.participants}", err=True)
