"""The C allocator of this process (glibc's malloc): its arenas capped (`cap_arenas`, which the command does as it
starts: a library leaves the process it is in alone) and its free memory given back to the system (`give_back`,
after each window of a `load` or `verify`). On another C library or platform both do nothing.

glibc gives each thread that allocates at the same time as another an arena of its own, up to 8 a core, and memory
freed in one arena serves only that arena: a load's workers (up to `load.concurrency.MOST`) each held freed memory
that another could not reuse, so the process's peak crept up with the number of workers and the length of the run.
And memory freed in the middle of an arena stays the process's until the allocator is asked to give it back. Python
serves small objects from its own arenas; the C allocator serves the rest: request and answer bodies, bundles,
parsed spec files, SQLite's pages. (`load DIR`, 100,000 messages, each window's specs let go: 143 MB creeping at
glibc's defaults, 134 MB with the arenas capped at 2, 126 MB also giving back after each window; no slower:
`bench/memory.py --variant`.)
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys

ARENAS = 2
"""The C allocator's arenas the command allows (glibc's `M_ARENA_MAX`): the main one and one its threads share."""
_M_ARENA_MAX = -8  # (glibc's malloc.h)


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    """This process's C library if it is glibc (musl has a mallopt and a malloc_trim that do nothing), else None."""
    if sys.platform != "linux":
        return None
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018  # (glibc's own)
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
    except (OSError, AttributeError):
        return None
    return libc


def cap_arenas(arenas: int = ARENAS) -> bool:
    """Cap glibc's malloc arenas at `arenas` for this process (`mallopt(M_ARENA_MAX)`), before threads are started;
    whether it did. Not when the user set `MALLOC_ARENA_MAX` (glibc reads it at start: theirs wins)."""
    libc = _glibc()
    if libc is None or os.environ.get("MALLOC_ARENA_MAX"):
        return False
    return bool(libc.mallopt(_M_ARENA_MAX, arenas))


def give_back() -> None:
    """Give the free memory of glibc's arenas back to the system (`malloc_trim(0)`: the pages wholly free, wherever
    they are; a few milliseconds): what a window of threads freed is not kept beside the next."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)
