"""`--report PATH` and every other file we write (`bundler.files.atomic_file`): a regular file is replaced
atomically; a symlink keeps being a symlink (its target replaced); what a rename cannot replace (a FIFO, a device,
/dev/stdout) is written through; `-` is stdout."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

from bundler.files import atomic_file, write_atomic


def test_a_regular_file_is_replaced_by_a_rename(tmp_path: Path) -> None:
    target = tmp_path / "r.json"
    target.write_text("old")
    before = target.stat().st_ino
    write_atomic(target, b"new")
    assert target.read_bytes() == b"new" and target.stat().st_ino != before


def test_a_symlink_stays_and_its_target_is_written(tmp_path: Path) -> None:
    real = tmp_path / "real.json"
    real.write_text("old")
    link = tmp_path / "link.json"
    link.symlink_to(real)
    write_atomic(link, b"new")
    assert link.is_symlink() and real.read_bytes() == b"new"


def test_a_fifo_s_reader_gets_what_is_written(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()))
    reader.start()
    write_atomic(fifo, b'{"ok": true}')
    reader.join()
    assert got == [b'{"ok": true}'] and fifo.is_fifo()


def test_writing_through_a_device_leaves_it_a_device() -> None:
    with atomic_file("/dev/null") as f:
        f.write(b"x")
    assert Path("/dev/null").is_char_device()


def test_dash_and_dev_stdout_write_to_stdout_even_when_it_is_a_file(tmp_path: Path) -> None:
    out = tmp_path / "out.txt"
    code = ("import sys; from bundler.files import write_atomic; print('before', flush=True); "
            "write_atomic(sys.argv[1], b'report\\n')")
    for name in ("-", "/dev/stdout"):
        with out.open("wb") as f:
            subprocess.run([sys.executable, "-c", code, name], stdout=f, check=True)
        assert out.read_text() == "before\nreport\n", name
    assert not Path("-").exists()
