"""What every command shares: turning our errors into clear messages and exit codes."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar, overload

import click

from ..errors import BundlerError, SpecError
from ..medplum.auth import Secrets
from ..versions import OLD_NAMES_REMOVED_IN
from ..vocabulary import READ_MODELS
from . import display

F = TypeVar("F", bound=Callable[..., Any])

SECRETS = Secrets(set())
"""Every secret this process was given or got (client secret, tokens): scrubbed from whatever we print."""

EXIT_OK = 0
EXIT_ISSUES = 1
EXIT_BAD_INPUT = 2


def participants_option(func: F) -> F:
    """`--participants FILE`: a participants file (`participants: {alias: {reference, display, create}}`) whose
    participants the specs may use (their own win); `participants=` of the library function."""
    return click.option("--participants", type=click.Path(path_type=Path, dir_okay=False),
                        help="A participants file (participants: {alias: {reference, display, create}}) the specs "
                             "may use; a spec's own participants win.")(func)


def allow_outside_files_option(command: F) -> F:
    """`--allow-outside-files`: a spec may attach files outside its own folder (an absolute path, `..` out of it, a
    link inside it that leads out); `allow_outside_files=` of the library function. Off by default: a spec from
    someone else could otherwise attach, and `load` upload, any file the user can read."""
    return click.option("--allow-outside-files", is_flag=True,
                        help="Let specs attach files outside their own folder (an absolute path, '..', a link "
                             "that leads out). Only for specs you trust: a spec could attach any file you can "
                             "read.")(command)


def read_model_option(command: F) -> F:
    """`--read-model simple|header-extension|tasks`: which of Medplum's read models keeps read state on the server.
    It overrides every thread's own `read_model` (the app reading the project decides, for all its threads alike);
    a model that does not fit a thread (simple for a group) is that thread's spec error."""
    return click.option("--read-model", type=click.Choice(READ_MODELS), default=None,
                        help="Keep read state (read_by) this way, overriding each thread's read_model: simple (1:1 "
                             "threads), header-extension or tasks.  [default: each thread's own]")(command)


def deprecated_alias(old: str, dest: str, new: str, **option: Any) -> Callable[[F], F]:
    """A hidden old spelling `old` of the option `new` (argument `dest`), kept for scripts: given, it fills `dest`
    (over `new`'s default) and says on stderr that it is deprecated. `option`: click.option's settings for it
    (`is_flag=True`, `type=...`), as `new` has them. Old names are kept for one minor version: CHANGELOG.md lists
    them, and they go in `OLD_NAMES_REMOVED_IN`.

        @click.option("--participants-out", ...)
        @deprecated_alias("--participants-file", "participants_out", "--participants-out", type=click.Path())
    """
    name = f"deprecated_{dest}_{old.lstrip('-').replace('-', '_')}"

    def decorate(func: F) -> F:
        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            value = kwargs.pop(name)
            if value is not None and value is not False:
                click.echo(f"warning: {old} is deprecated; use {new} ({old} will be removed in {OLD_NAMES_REMOVED_IN})",
                           err=True)
                kwargs[dest] = value
            return func(*args, **kwargs)

        return click.option(old, name, hidden=True, default=None, help=f"Deprecated: use {new}.",
                            **option)(wrapper)  # type: ignore[return-value]

    return decorate


def format_option(what: str) -> Callable[[F], F]:
    """`--format text|json`: text for people on stderr/stdout, or `json` (`what` says what it holds) on stdout for
    scripts; the command's argument `format_`."""
    def as_json(ctx: click.Context, param: click.Parameter, value: bool) -> None:
        if value:
            ctx.meta["thread-bundler.json"] = True

    def chosen(ctx: click.Context, param: click.Parameter, value: str) -> str:
        return "json" if ctx.meta.get("thread-bundler.json") else value

    def decorate(func: F) -> F:
        func = click.option("--format", "format_", type=click.Choice(["text", "json"]), default="text",
                            show_default=True, callback=chosen, help=f"Output: text for people, or json: {what}.")(func)
        return click.option("--json", "json_", is_flag=True, is_eager=True, expose_value=False, callback=as_json,
                            help="The same as --format json: the JSON on stdout, for scripts.")(func)
    return decorate


@overload
def report_errors(func: F) -> F: ...


@overload
def report_errors(*, nothing: str) -> Callable[[F], F]: ...


def report_errors(func: F | None = None, *, nothing: str = "nothing written") -> F | Callable[[F], F]:
    """Run a command; a SpecError prints every problem and exits 2, other errors of ours one line and exit 2.

    `nothing` says what bad input means for the command: `nothing written` (build, migrate), or `nothing
    sent` for the commands that talk to a server (`@report_errors(nothing="nothing sent")`)."""
    if func is None:
        return functools.partial(report_errors, nothing=nothing)

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except SpecError as exc:
            for problem in exc.problems:
                click.echo(str(problem), err=True)
            click.echo(f"{display.problems_summary(exc.problems)}; {nothing}", err=True)
            sys.exit(EXIT_BAD_INPUT)
        except BundlerError as exc:
            click.echo(SECRETS.scrub(f"error: {exc}"), err=True)
            sys.exit(EXIT_BAD_INPUT)
        except OSError as exc:
            where = f" {exc.filename}" if exc.filename else ""
            click.echo(SECRETS.scrub(f"error:{where}: {exc.strerror or exc}"), err=True)
            sys.exit(EXIT_BAD_INPUT)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)

    return wrapper
