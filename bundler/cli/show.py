"""`thread-bundler show`: threads as a person reads them, from their specs or from the server (as `demo` shows
them); a thin layer over `bundler.apps.show.show`."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ..apps.show import show
from ..medplum.client import FhirClient
from .common import allow_outside_files_option, participants_option, read_model_option, report_errors
from .connect import connection_options, make_client
from .identifier import identifier_system_option


@click.command("show")
@click.argument("paths", nargs=-1)
@click.option("--key", "keys", multiple=True, metavar="THREAD",
              help="A thread to read from the server by its key (again for several); connects as `load` does.")
@identifier_system_option
@participants_option
@read_model_option
@allow_outside_files_option
@connection_options
@report_errors(nothing="nothing shown")
def show_command(paths: tuple[str, ...], keys: tuple[str, ...], identifier_system: str, participants: Path | None,
                 read_model: str | None, allow_outside_files: bool, base_url: str | None, client_id: str | None,
                 client_secret: str | None, token: str | None, allow_insecure: bool, timeout: float) -> None:
    """Print threads as the demo does: each message with when, who, to whom, what it replies to, its text and
    files. PATHS are spec files or folders (shown as they will be sent; nothing is sent); --key reads a thread
    back from the server (as it was stored: the server's names for participants, its times).

    \b
    Examples:
      thread-bundler show fixtures/threads/homer-lab-results.yaml
      thread-bundler show --key homer-lab-results-2024-04-10      # MEDPLUM_* set, e.g. from `thread-bundler server`
    """
    if not paths and not keys:
        raise click.UsageError("give spec files or folders (PATHS), or --key THREAD to read a thread from the server")
    client: FhirClient | None = None
    if keys:
        client = make_client(base_url, client_id, client_secret, token, allow_insecure, timeout)
    try:
        show(list(paths), sys.stdout, client=client, keys=list(keys), identifier_system=identifier_system,
             participants=participants, read_model=read_model, allow_outside_files=allow_outside_files)
    finally:
        if client is not None:
            client.close()
