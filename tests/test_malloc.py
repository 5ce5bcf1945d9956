"""The command's own process: glibc's malloc arenas capped before any command runs (`bundler.malloc`), so that a
load's worker threads share two arenas instead of holding freed memory in one each (`bench/memory.py` measures the
peak). Observed through glibc's own account of its arenas (`malloc_stats`), never through memory figures."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import bundler.cli
import bundler.cli.validate  # (the commands are imported when they run: this test patches one first)
import bundler.load.inputs
from bundler.cli import main
from bundler.load.inputs import windows
from bundler.malloc import ARENAS, cap_arenas

REPO = Path(__file__).resolve().parent.parent
glibc = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's arenas")

ARENAS_USED = """
import ctypes, sys, threading
from bundler.malloc import cap_arenas
if sys.argv[1] == "cap":
    cap_arenas()
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
together = threading.Barrier(8)
def allocate():
    together.wait()
    libc.free(libc.malloc(1000))   # (ctypes lets go of the GIL: the eight allocate at once)
threads = [threading.Thread(target=allocate) for _ in range(8)]
for t in threads:
    t.start()
for t in threads:
    t.join()
libc.malloc_stats()                 # one "Arena N:" paragraph per arena, on stderr
"""


def arenas_used(mode: str, **env: str) -> int:
    """How many arenas a process that starts eight allocating threads ends with (`mode` "cap": capped first)."""
    run = subprocess.run([sys.executable, "-c", ARENAS_USED, mode], capture_output=True, text=True, check=True,
                         env={**os.environ, **env}, cwd=REPO)
    return sum(line.startswith("Arena ") for line in run.stderr.splitlines())


@glibc
def test_capped_threads_share_the_arenas() -> None:
    assert arenas_used("none") > ARENAS  # (glibc's own default: one a thread, up to 8 a core)
    assert arenas_used("cap") == ARENAS


@glibc
def test_the_users_malloc_arena_max_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert not cap_arenas()
    assert arenas_used("cap", MALLOC_ARENA_MAX="4") == 4


def test_every_command_caps_the_arenas_before_it_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    monkeypatch.setattr(bundler.cli, "cap_arenas", lambda: calls.append("cap") or True)
    real = bundler.cli.validate.validate_files

    def validate_files(*args: object, **kw: object) -> object:
        calls.append("validate")
        return real(*args, **kw)

    monkeypatch.setattr(bundler.cli.validate, "validate_files", validate_files)
    result = CliRunner().invoke(main, ["validate", str(REPO / "fixtures/threads")])
    assert result.exit_code == 0, result.output
    assert calls == ["cap", "validate"]


GIVEN_BACK = """
import ctypes
from bundler.malloc import give_back
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
def resident():
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmRSS")) // 1024
blocks = [libc.malloc(32 * 1024) for _ in range(2000)]   # 64 MB in the heap (under glibc's mmap threshold)
for block in blocks:
    ctypes.memset(block, 1, 32 * 1024)
for block in blocks[:-1]:
    libc.free(block)                                      # freed, but the last one keeps the heap's top in place
before = resident()
give_back()
print(before - resident())
"""


@glibc
def test_memory_freed_in_the_middle_of_the_heap_is_given_back() -> None:
    run = subprocess.run([sys.executable, "-c", GIVEN_BACK], capture_output=True, text=True, check=True, cwd=REPO)
    assert int(run.stdout) >= 48  # MB of the 64 freed (the rest: pages a free chunk's header keeps)


def test_each_window_is_emptied_and_its_memory_given_back_before_the_next_is_read(
        monkeypatch: pytest.MonkeyPatch) -> None:
    events: list[str] = []
    monkeypatch.setattr(bundler.load.inputs, "give_back", lambda: events.append("give back"))

    def specs() -> Iterator[Any]:
        for n in range(5):
            events.append(f"read {n}")
            yield n

    seen = []
    for window in windows(specs(), 2):
        events.append(f"window {window}")
        seen.append(window)
    assert events == ["read 0", "read 1", "window [0, 1]", "give back", "read 2", "read 3", "window [2, 3]",
                      "give back", "read 4", "window [4]", "give back"]
    assert seen == [[], [], []]  # (the caller's lists: emptied)
