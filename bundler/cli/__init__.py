"""The `thread-bundler` command line: each command a thin layer over one library function."""

from __future__ import annotations

import importlib
from collections.abc import Iterator, MutableMapping

import click

from ..malloc import cap_arenas
from ..versions import version_text

COMMANDS = {
    "build": "build:build_command", "validate": "validate:validate_command", "migrate": "migrate:migrate_command",
    "report": "migrate:report_command", "load": "load:load_command", "verify": "load:verify_command",
    "export": "export:export_command", "doctor": "load:doctor_command", "generate": "generate:generate_command",
    "demo": "demo:demo_command", "server": "server:server_command", "schema": "schema:schema_command",
    "validate-participants": "check_files:validate_participants_command",
    "validate-mapping": "check_files:validate_mapping_command", "show": "show:show_command",
    "dedupe": "dedupe:dedupe_command",
}
"""Each command's name, and where it is (`module:attribute` in this package)."""


class Commands(MutableMapping[str, click.Command]):
    """The group's commands, each imported when it is first asked for: `thread-bundler load` imports what `load`
    needs, not the migration's or the export's modules too (a tenth of a second of every run's start)."""

    def __init__(self, where: dict[str, str]) -> None:
        self._where = dict(where)
        self._made: dict[str, click.Command] = {}

    def __getitem__(self, name: str) -> click.Command:
        made = self._made.get(name)
        if made is None:
            module, attribute = self._where[name].split(":")  # (KeyError: no such command)
            made = self._made[name] = getattr(importlib.import_module(f".{module}", __name__), attribute)
            assert made.name == name, (name, made.name)
        return made

    def __setitem__(self, name: str, command: click.Command) -> None:
        self._where[name] = ""
        self._made[name] = command

    def __delitem__(self, name: str) -> None:
        del self._where[name]
        self._made.pop(name, None)

    def __iter__(self) -> Iterator[str]:
        return iter(self._where)

    def __len__(self) -> int:
        return len(self._where)


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


main.commands = Commands(COMMANDS)
