"""What `load` and `verify` take: thread specs, or the paths of spec files, read as `thread-bundler load PATHS`
reads them (`spec.files.SpecStream`, with `participants`, `read_model` and `allow_outside_files`: every file checked
first, then read again a file at a time as the threads are sent).

    load(["threads/"], client, participants="people.yaml")        # the journal: threads.journal.sqlite
    load(load_specs(["threads/"]), client, journal="j.sqlite")      # the same threads, read by the caller
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TypeGuard

from ..errors import BundlerError
from ..malloc import give_back
from ..spec.files import SpecStream
from ..spec.model import ThreadSpec, with_read_model
from ..spec.participants import ParticipantsFile

Paths = str | Path | Sequence[str | Path]
"""A spec file or folder, or several (`-` for stdin)."""

Threads = Iterable[ThreadSpec] | Paths
"""Thread specs (a list, or a stream such as a migration's), or the paths to read them from."""


def is_paths(threads: Threads) -> TypeGuard[Paths]:
    """Whether `threads` names files (a path, or a non-empty sequence of them) rather than holding specs."""
    if isinstance(threads, str | Path):
        return True
    return isinstance(threads, Sequence) and bool(threads) and all(isinstance(t, str | Path) for t in threads)


def path_list(paths: Paths) -> list[str | Path]:
    return [paths] if isinstance(paths, str | Path) else list(paths)


def read_threads(threads: Threads, *, participants: str | Path | ParticipantsFile | None = None,
                 read_model: str | None = None, allow_outside_files: bool = False) -> Iterable[ThreadSpec]:
    """The specs of `threads`: read from its paths (a `SpecStream`: SpecError with every problem before any spec is
    given, so nothing is sent), or the specs given with `read_model` applied. `participants` and
    `allow_outside_files` are about reading files: given with specs, they are a mistake (OptionError's parent,
    BundlerError) rather than silently ignored."""
    if is_paths(threads):
        return SpecStream(path_list(threads), participants=participants, read_model=read_model,
                          allow_outside_files=allow_outside_files)
    if participants is not None or allow_outside_files:
        raise BundlerError("participants= and allow_outside_files= are for reading spec files: give the paths, or "
                           "pass them to load_specs")
    specs: Iterable[ThreadSpec] = threads  # type: ignore[assignment]  # (not paths: is_paths said so)
    if read_model is None:
        return specs
    if isinstance(specs, Sequence):
        return [with_read_model(s, read_model) for s in specs]
    return _with_read_model(specs, read_model)


def totals(threads: Iterable[ThreadSpec]) -> tuple[int | None, int | None]:
    """(threads, messages) in `threads` when known before they are read (a list; files, counted by their first
    pass), for a progress line; None where not (a stream)."""
    if isinstance(threads, Sequence):
        return len(threads), sum(len(t.messages) for t in threads)
    if isinstance(threads, SpecStream):
        return threads.threads, threads.messages
    return None, None


def windows(specs: Iterable[ThreadSpec], size: int) -> Iterator[list[ThreadSpec]]:
    """`specs` in lists of `size` (the last one shorter): how `load` and `verify` read a stream. Each list is emptied
    before the next is read, so that its specs (and the spec file's data they point at) are let go before the next
    file is read: a caller that keeps its name for the list keeps an empty one, not a window's worth of specs beside
    the next; and the memory they held is given back to the system (`malloc.give_back`)."""
    it = iter(specs)
    while chunk := list(itertools.islice(it, max(1, size))):
        yield chunk
        chunk.clear()
        give_back()


def _with_read_model(specs: Iterable[ThreadSpec], read_model: str) -> Iterator[ThreadSpec]:
    for spec in specs:
        yield with_read_model(spec, read_model)


def default_journal(paths: Paths) -> Path:
    """`<first input>.journal.sqlite` beside the first input (a file or folder); in the current folder for stdin."""
    first = next((Path(p) for p in path_list(paths) if str(p) != "-"), None)
    if first is None:
        return Path("thread-bundler.journal.sqlite")
    first = first.resolve()
    return first.parent / f"{first.name}.journal.sqlite"


def journal_for(threads: Threads, journal: str | Path | None) -> Path:
    """The journal a load uses: the one given, else `default_journal` of the paths; specs need one given."""
    if journal is not None:
        return Path(journal)
    if is_paths(threads):
        return default_journal(threads)
    raise BundlerError("journal= is needed when threads are given as specs (for paths it defaults to "
                       "<first input>.journal.sqlite)")
