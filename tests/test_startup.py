"""The command's own process: glibc's malloc arenas capped before any command runs (`bundler.cli.startup`), so that a
load's worker threads share two arenas instead of holding freed memory in one each (`bench/memory.py` measures the
peak). Observed through glibc's own account of its arenas (`malloc_stats`), never through memory figures."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

import bundler.cli
from bundler.cli import main
from bundler.cli.startup import ARENAS, cap_arenas

REPO = Path(__file__).resolve().parent.parent
glibc = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's arenas")

ARENAS_USED = """
import ctypes, sys, threading
from bundler.cli.startup import cap_arenas
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
