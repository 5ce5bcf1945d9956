"""`thread-bundler demo`: the whole tool on a local Medplum server, no account needed."""

from __future__ import annotations

import sys

import click

from ..demo import run_demo
from .common import EXIT_ISSUES, EXIT_OK, report_errors


@click.command("demo")
@click.argument("paths", nargs=-1)
@report_errors
def demo_command(paths: tuple[str, ...]) -> None:
    """Start a local Medplum server, load threads into it, and show them read back as conversations.

    PATHS default to the examples shipped with the package: six threads, among them the one of
    Medplum's "Creating your first thread" walkthrough. The first run installs the local server
    (needs npm; about 10-30 s and 300 MB, once).

    \b
    Examples:
      thread-bundler demo
      thread-bundler demo fixtures/threads
    """
    report, results = run_demo(paths or None, sys.stdout, note=sys.stderr)  # (no npm, a busy port: BundlerErrors)
    ok = report.ok and all(r.ok for r in results)
    sys.exit(EXIT_OK if ok else EXIT_ISSUES)
