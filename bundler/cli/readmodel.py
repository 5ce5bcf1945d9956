"""The `--read-model` option of the commands that build, check, load or migrate threads: which of Medplum's read
models keeps read state on the server. It overrides every thread's own `read_model` (the app reading the project
decides, for all its threads alike); a model that does not fit a thread (simple for a group) is that thread's
spec error.

    @read_model_option
    def build_command(..., read_model: str | None) -> None: ...
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from ..vocabulary import READ_MODELS

F = TypeVar("F", bound=Callable[..., Any])


def read_model_option(command: F) -> F:
    """`--read-model simple|header-extension|tasks` (default: each thread's own, if any)."""
    return click.option("--read-model", type=click.Choice(READ_MODELS), default=None,
                        help="Keep read state (read_by) this way, overriding each thread's read_model: simple (1:1 "
                             "threads), header-extension or tasks.  [default: each thread's own]")(command)
