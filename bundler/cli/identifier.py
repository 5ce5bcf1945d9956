"""The `--identifier-system` option every command that builds or finds our resources takes, checked by the
one rule (`bundler.build.check_identifier_system`) before the command runs.

    @identifier_system_option("Identifier system of every Communication.")
    def build_command(..., identifier_system: str) -> None: ...
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from ..build import DEFAULT_IDENTIFIER_SYSTEM
from ..vocabulary import identifier_system_problem

F = TypeVar("F", bound=Callable[..., Any])


def check_identifier_system(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """Click callback: a usage error (exit 2) for a system that `vocabulary.identifier_system_problem` refuses."""
    why = identifier_system_problem(value)
    if why is not None:
        raise click.BadParameter(why)
    return value


def identifier_system_option(help_text: str) -> Callable[[F], F]:
    """`--identifier-system URI` (default `urn:thread-bundler:thread`), checked, with this help text."""
    return click.option("--identifier-system", default=DEFAULT_IDENTIFIER_SYSTEM, show_default=True,
                        callback=check_identifier_system, help=help_text)
