"""The `thread-bundler` command line: each command a thin layer over one library function."""

from __future__ import annotations

import click

from ..malloc import cap_arenas
from .build import build_command
from .demo import demo_command
from .export import export_command
from .generate import generate_command
from .load import doctor_command, load_command, verify_command
from .migrate import migrate_command, report_command
from .schema import schema_command
from .server import server_command
from .validate import validate_command


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="thread-bundler")
def main() -> None:
    """Turn conversation thread specs (YAML/JSON) into FHIR R4 transaction Bundles for Medplum,
    check them, and load them atomically into a Medplum project."""
    cap_arenas()  # (before any thread is started: the process's peak memory stays that of one window)


for command in (build_command, validate_command, migrate_command, report_command, load_command, verify_command,
                export_command, doctor_command, generate_command, demo_command, server_command,
                schema_command):
    main.add_command(command)
