"""The `--identifier-system` option every command that builds or finds our resources takes (declared here once,
with one help text), checked by the one rule (`vocabulary.identifier_system_problem`) before the command runs.

    @identifier_system_option
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


def identifier_system_option(func: F) -> F:
    """`--identifier-system URI` (default `urn:thread-bundler:thread`), checked; `identifier_system=` of the
    library call."""
    return click.option("--identifier-system", default=DEFAULT_IDENTIFIER_SYSTEM, show_default=True,
                        callback=check_identifier_system,
                        help="Identifier system of our Communications (value: thread key, or key/message id): what "
                             "build and load write, and verify and export read by.")(func)
