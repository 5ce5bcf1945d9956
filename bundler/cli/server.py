"""`thread-bundler server`: a local Medplum-compatible server in the foreground (a thin layer over
`bundler.medplum.localserver.serve`; `python -m bundler.medplum.localserver` is the same command)."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import BundlerError, PortInUse
from ..medplum.localserver import DEFAULT_PORT, default_env_file, serve
from ..vocabulary import DEFAULT_QUOTA_PER_MINUTE
from .common import deprecated_alias, report_errors


@click.command("server", help=f"""Run a local Medplum-compatible FHIR server (in memory) in the foreground, until
Ctrl-C. Strict by default, as `demo` runs it: references must exist (Medplum's checkReferencesOnWrite). Its
connection settings, the client secret too, are in a file only you can read while it runs ({default_env_file()},
whatever the port, or --env-file). The first run installs it (needs npm; about 10-30 s, once).

\b
Examples:
  thread-bundler server
  thread-bundler server --port 0 --no-transaction-bundles     # a project that runs transactions as batches
  set -a; . {default_env_file()}; set +a; thread-bundler load threads/    # in another shell
""")
@click.option("--port", type=click.IntRange(0, 65535), default=DEFAULT_PORT, show_default=True,
              help="Port (0: any free port).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--client-id", default=None,
              help="OAuth2 client id.  [default: $MEDPLUM_LOCAL_CLIENT_ID, else thread-bundler-local]")
@click.option("--client-secret", default=None,
              help="OAuth2 client secret.  [default: $MEDPLUM_LOCAL_CLIENT_SECRET, else a random one]")
@click.option("--show-secret", is_flag=True, help="Print the client secret.")
@click.option("--transaction-bundles/--no-transaction-bundles", default=True, show_default=True,
              help="Process transactions atomically; --no-transaction-bundles: as batches (a Medplum project "
                   "without transaction-bundles).")
@click.option("--quota", is_flag=True, help="Enforce Medplum's FHIR quota.")
@click.option("--quota-points", type=click.IntRange(1), default=DEFAULT_QUOTA_PER_MINUTE, show_default=True,
              help="Quota points per minute.")
@click.option("--token-ttl", type=click.IntRange(1), default=3600, show_default=True,
              help="Token lifetime in seconds.")
@click.option("--check-references-on-write/--no-check-references-on-write", default=True, show_default=True,
              help="Refuse references to resources that do not exist (Medplum's checkReferencesOnWrite), as the "
                   "demo does; --no-check-references-on-write: a lenient project.")
@deprecated_alias("--check-references", "check_references_on_write", "--check-references-on-write", is_flag=True)
@click.option("--log", type=click.Path(path_type=Path, dir_okay=False),
              help="Append the server's log (one line a request) to this file.")
@click.option("--env-file", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help=f"Where to keep the connection settings while it runs.  [default: {default_env_file()}]")
@report_errors(nothing="no server started")
def server_command(port: int, host: str, client_id: str | None, client_secret: str | None, show_secret: bool,
                   transaction_bundles: bool, quota: bool, quota_points: int, token_ttl: int,
                   check_references_on_write: bool, log: Path | None, env_file: Path | None) -> None:
    try:
        serve(port=port, host=host, client_id=client_id, client_secret=client_secret, show_secret=show_secret,
              transaction_bundles=transaction_bundles, quota=quota, quota_points=quota_points, token_ttl=token_ttl,
              check_references_on_write=check_references_on_write, log=log, env_file=env_file)
    except PortInUse as exc:
        raise BundlerError(f"{exc}: choose another with --port, or --port 0 for any free one") from exc
