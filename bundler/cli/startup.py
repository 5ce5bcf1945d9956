"""What the command does to its own process before a command runs (the library leaves the process it is in alone).

The C allocator's arenas are capped (`cap_arenas`). glibc gives each thread that allocates at the same time as
another an arena of its own, up to 8 a core, and memory freed in one arena serves only that arena: a load's workers
(up to `load.concurrency.MOST`) each held freed memory that another could not reuse, so the process's peak grew with
the number of workers and the length of the run (`load DIR` on 100,000 messages, each window's specs let go: 143 MB
at glibc's default, 134 MB with the arenas capped at 2, and flat; no slower: `bench/memory.py --variant`). Python's own
allocator serves small objects from its own arenas; what the C allocator serves is the rest: request and answer
bodies, bundles, parsed spec files, SQLite's pages.
"""

from __future__ import annotations

import ctypes
import os
import sys

ARENAS = 2
"""The C allocator's arenas the command allows (glibc's `M_ARENA_MAX`): the main one and one its threads share."""
_M_ARENA_MAX = -8  # (glibc's malloc.h)


def cap_arenas(arenas: int = ARENAS) -> bool:
    """Cap glibc's malloc arenas at `arenas` for this process (`mallopt(M_ARENA_MAX)`), before threads are started;
    whether it did. Not on another C library (musl's malloc has no arenas) or platform, and not when the user set
    `MALLOC_ARENA_MAX` (glibc reads it at start: theirs wins)."""
    if sys.platform != "linux" or os.environ.get("MALLOC_ARENA_MAX"):
        return False
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018  # (glibc's own: musl has a mallopt that does nothing)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_ARENA_MAX, arenas))
