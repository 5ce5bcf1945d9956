"""The exceptions thread-bundler raises, as one tree.

Callers catch the level they care about: `BundlerError` for anything of ours, `SpecError` for bad
input files, `ServerError` for what a FHIR server answered.

    BundlerError
    ├── SpecError          a spec (or any input file) is malformed or invalid
    ├── OptionError        an option's value cannot be used (also a ValueError)
    ├── ServerError        the server answered with an error (carries its OperationOutcome)
    │   ├── AuthError      login refused, or a token the server would not take
    │   └── Throttled      refused for quota (429), and still refused after waiting
    ├── Unreachable        the server could not be reached at all (nothing was sent)
    ├── UnknownOutcome     a request was sent but its response was lost
    ├── NotAtomic          `--atomic require`, and the project runs transactions as batches
    ├── FileLocked         another process holds a lock file (a journal's, the local server's install)
    ├── JournalError       the journal file cannot be used (not a journal, damaged, from a newer version)
    │   └── JournalBusy    another load holds the journal
    └── LocalServerError   the local server could not be installed or started (also a RuntimeError)
        └── PortInUse      the port it was to listen on is taken
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with an input: where it is and what was expected."""

    file: str
    line: int | None
    column: int | None
    path: str
    message: str

    def __str__(self) -> str:
        where = self.file
        if self.line is not None:
            where += f":{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"

    def sort_key(self) -> tuple[str, int, int, str]:
        return (self.file, self.line or 0, self.column or 0, self.path)


class BundlerError(Exception):
    """Base class of every error thread-bundler raises on purpose."""


class SpecError(BundlerError):
    """One or more input files are malformed or invalid; `problems` lists every one found."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = sorted(problems, key=Problem.sort_key)
        super().__init__("\n".join(str(p) for p in self.problems))

    def __reduce__(self) -> tuple[type[SpecError], tuple[list[Problem]]]:
        """Pickled with its problems (not its message), so it crosses to another process intact."""
        return type(self), (self.problems,)


class OptionError(BundlerError, ValueError):
    """An option's value cannot be used (an identifier system with a space, say); the message says why."""


class ServerError(BundlerError):
    """The server answered with an error status; `outcome` is its OperationOutcome, if any."""

    def __init__(self, message: str, *, status: int | None = None, outcome: dict[str, Any] | None = None) -> None:
        self.status = status
        self.outcome = outcome
        super().__init__(message)


class AuthError(ServerError):
    """The server refused our credentials or token."""


class UnknownOutcome(BundlerError):
    """A request was sent but its response was lost: the server may or may not have applied it."""


class Throttled(ServerError):
    """The server refused the request for quota (429) and kept refusing after waiting."""


class Unreachable(BundlerError):
    """The server could not be reached at all (nothing was sent)."""


class NotAtomic(BundlerError):
    """`--atomic require` and the project processes transactions as batches."""


class FileLocked(BundlerError):
    """Another process holds the lock; `holder` is what it wrote into the lock file (who and since when)."""

    def __init__(self, path: Path, holder: str) -> None:
        self.path = path
        self.holder = holder
        super().__init__(f"{path} is locked by {holder or 'another process'}")


class JournalError(BundlerError):
    """The journal file cannot be used (not a journal, damaged, written by a newer version)."""


class JournalBusy(JournalError):
    """Another load holds the journal."""


class LocalServerError(BundlerError, RuntimeError):
    """The local server could not be installed, started or reached."""


class PortInUse(LocalServerError):
    """The port the local server was to listen on is taken."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        super().__init__(f"port {port} on {host} is already in use (another local server?)")
