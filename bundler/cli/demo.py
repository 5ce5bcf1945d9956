"""`thread-bundler demo`: the whole tool on a local Medplum server, no account needed."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ..apps.demo import run_demo
from .common import EXIT_ISSUES, EXIT_OK, allow_outside_files_option, participants_option, report_errors


@click.command("demo")
@click.argument("paths", nargs=-1)
@participants_option
@allow_outside_files_option
@report_errors
def demo_command(paths: tuple[str, ...], participants: Path | None, allow_outside_files: bool) -> None:
    """Start a local Medplum server, strict (references must exist) and empty, seed it, and show the threads
    read back as conversations: participants created when missing, a file attachment read back, every
    thread verified.

    PATHS default to the examples shipped with the package: six threads, among them the one of
    Medplum's "Creating your first thread" walkthrough, and four generated with the shipped participants
    file as their cast. The first run installs the local server (needs npm; about 10-30 s and 300 MB, once).

    \b
    Examples:
      thread-bundler demo
      thread-bundler demo fixtures/threads --participants people.yaml
    """
    report, results = run_demo(paths or None, sys.stdout, note=sys.stderr,
                               participants=participants,
                               allow_outside_files=allow_outside_files)  # (no npm, a busy port: BundlerErrors)
    ok = report.ok and all(r.ok for r in results)
    sys.exit(EXIT_OK if ok else EXIT_ISSUES)
