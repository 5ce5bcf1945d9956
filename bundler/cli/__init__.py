"""The `thread-bundler` command line: each command a thin layer over one library function."""

from __future__ import annotations

import click

from ..malloc import cap_arenas
from ..versions import version_text
from .build import build_command
from .check_files import validate_mapping_command, validate_participants_command
from .dedupe import dedupe_command
from .demo import demo_command
from .export import export_command
from .generate import generate_command
from .load import doctor_command, load_command, verify_command
from .migrate import migrate_command, report_command
from .schema import schema_command
from .server import server_command
from .show import show_command
from .validate import validate_command


def _print_version(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        click.echo(version_text())
        ctx.exit()


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--version", is_flag=True, expose_value=False, is_eager=True, callback=_print_version,
              help="Show the version and the Medplum versions it is tested against, and exit.")
def main() -> None:
    """Turn conversation thread specs (YAML/JSON) into FHIR R4 transaction Bundles for Medplum,
    check them, and load them atomically into a Medplum project."""
    cap_arenas()  # (before any thread is started: the process's peak memory stays that of one window)


for command in (build_command, validate_command, migrate_command, report_command, load_command, verify_command,
                export_command, doctor_command, generate_command, demo_command, server_command,
                schema_command, validate_participants_command, validate_mapping_command, show_command, dedupe_command):
    main.add_command(command)
