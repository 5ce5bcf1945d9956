"""Writing files so that nobody ever sees half of one: the one home of every output we write.

    write_atomic(path, data)                 # a small file, whole or not at all
    with atomic_file(path) as f: ...          # a large one, streamed, then renamed into place
                                              # ('-': stdout; a FIFO, a device, /dev/stdout: written through)
    with staged_folder(out) as staging: ...   # many files, moved into `out` only when all are written
    with file_lock(path, wait=False): ...     # one process at a time (FileLocked names the holder)

Temporary names start with `.thread-bundler-` beside their target (same file system, so a rename is
atomic), and an error names the target, never the temporary file. A run killed with `kill -9` can
leave such names behind: `remove_leftovers(folder)` removes them, and the writers here call it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from .errors import FileLocked

TEMP_PREFIX = ".thread-bundler-"


def _named(exc: OSError, target: Path) -> OSError:
    """`exc` about `target` (not about our temporary file), with the same errno and class."""
    return type(exc)(exc.errno, exc.strerror or str(exc), str(target))


def remove_leftovers(folder: Path, prefix: str = TEMP_PREFIX) -> None:
    """Remove the temporary files and folders an earlier, killed run left in `folder` (those of `prefix`,
    which starts with TEMP_PREFIX: all of them by default)."""
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return
    for entry in entries:
        if entry.name.startswith(prefix):
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)


STDOUT = "-"
"""The path that means standard output, for every file we write."""


@contextlib.contextmanager
def atomic_file(path: str | Path, *, buffering: int = -1) -> Iterator[IO[bytes]]:
    """A binary file to write, renamed to `path` when the block ends without an error (removed otherwise).

    What cannot be replaced by a rename is written through instead (what is written stays, even on an error):
    `-` is stdout, and a path that is not a regular file (a FIFO, a character device such as /dev/stdout or
    /dev/null) is opened and written. A symlink to a regular file keeps being a symlink: its target is replaced."""
    if str(path) == STDOUT or _is_stdout(Path(path)):
        sys.stdout.flush()
        out = sys.stdout.buffer
        yield out
        out.flush()
        return
    target = Path(path)
    try:
        mode = os.stat(target).st_mode
    except OSError:
        mode = None  # (missing, or a dangling link: made as a file, as before)
    if mode is not None and not stat.S_ISDIR(mode) and (not stat.S_ISREG(mode) or _is_process_file(target)):
        with _written_through(target, buffering) as f:
            yield f
        return
    if mode is not None and target.is_symlink():
        target = Path(os.path.realpath(target))
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f"{TEMP_PREFIX}{target.name}.", suffix=".tmp")
    except OSError as exc:
        raise _named(exc, target) from None
    try:
        with os.fdopen(fd, "wb", buffering=buffering) as f:
            yield f
        os.replace(tmp, target)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise _named(exc, target) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _is_stdout(target: Path) -> bool:
    """Whether `target` names this process's stdout (/dev/stdout, /dev/fd/1, /proc/self/fd/1): written through
    stdout itself, as a second opening of a redirected file would write over what stdout writes there."""
    if not _is_process_file(target):
        return False
    try:
        mine, named = os.fstat(sys.stdout.fileno()), os.stat(target)
    except (OSError, ValueError, AttributeError):
        return False
    return (mine.st_dev, mine.st_ino) == (named.st_dev, named.st_ino)


def _is_process_file(target: Path) -> bool:
    """Whether `target` names one of this process's open files (/dev/stdout, /dev/fd/N, /proc/self/fd/N), whatever
    it is open on: renaming over what it resolves to would take the file from under the shell's redirection."""
    return str(target).startswith(("/dev/", "/proc/"))


@contextlib.contextmanager
def _written_through(target: Path, buffering: int) -> Iterator[IO[bytes]]:
    """A FIFO, a device or an open file of this process, opened for writing as it is: appended to, never
    truncated (stdout redirected to a file keeps what was written before)."""
    try:
        fd = os.open(target, os.O_WRONLY | os.O_APPEND)
    except OSError as exc:
        raise _named(exc, target) from None
    try:
        with os.fdopen(fd, "wb", buffering=buffering) as f:
            yield f
    except OSError as exc:
        raise _named(exc, target) from None


def write_atomic(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file and a rename: readers never see half a file."""
    with atomic_file(path) as f:
        f.write(data)


@contextlib.contextmanager
def staged_folder(out: str | Path) -> Iterator[Path]:
    """A folder to write many files into; they are moved into `out` (replacing files of the same name) only
    when the block ends without an error, all of them or none: nothing of them is left in `out` otherwise,
    and a file they would replace is kept until every one is in place."""
    target = Path(out)
    try:
        if target.exists() and not target.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, "exists and is not a folder", str(target))
        target.mkdir(parents=True, exist_ok=True)
        remove_leftovers(target)
        staging = Path(tempfile.mkdtemp(dir=target, prefix=f"{TEMP_PREFIX}staging-"))
    except OSError as exc:
        raise _named(exc, target) from None
    try:
        try:
            yield staging
        except OSError as exc:
            raise _named(exc, target) from None
        _move_all(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _move_all(staging: Path, target: Path) -> None:
    """Move the files of `staging` into `target`, all or none (OSError naming the file that could not be)."""
    names = sorted(e.name for e in os.scandir(staging) if e.is_file(follow_symlinks=False))
    for name in names:  # what would stop a move: found before anything is moved
        dest = target / name
        if dest.is_dir() and not dest.is_symlink():
            raise IsADirectoryError(errno.EISDIR, "a folder has the name of this file", str(dest))
    aside = staging / f"{TEMP_PREFIX}replaced"
    aside.mkdir()
    done: list[tuple[str, bool]] = []  # (name, whether a file it replaced is aside)
    try:
        for name in names:
            dest = target / name
            kept = os.path.lexists(dest)
            if kept:
                os.replace(dest, aside / name)
            done.append((name, kept))
            os.replace(staging / name, dest)
    except OSError as exc:
        for name, kept in reversed(done):  # undo: the new file out, the replaced one back
            with contextlib.suppress(OSError):
                if not (staging / name).exists():  # it was moved in (the one that failed is still staged)
                    os.unlink(target / name)
                if kept:
                    os.replace(aside / name, target / name)
        raise _named(exc, target / done[-1][0] if done else target) from None


@contextlib.contextmanager
def file_lock(path: str | Path, *, wait: bool = True, owner: str = "", remove: bool = False) -> Iterator[None]:
    """An exclusive lock between processes on the file `path` (created if missing), held for the block.

    `wait=False` raises FileLocked at once when another process holds it. `owner` is written into the file
    while the lock is held, so the one refused can say who holds it. `remove` deletes the file on release
    (a process that was waiting for it then locks afresh: the file it waited on is no longer `path`). The
    operating system releases the lock of a process that dies, even by kill -9."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd = _locked(target, wait=wait)
    try:
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, owner.encode())
        yield
    finally:
        if remove:
            with contextlib.suppress(OSError):
                os.unlink(target)
        _unlock(fd)
        os.close(fd)


def _locked(target: Path, *, wait: bool) -> int:
    """A descriptor of `target`, locked; the file it refers to is still the one at `target`."""
    while True:
        fd = os.open(target, os.O_RDWR | os.O_CREAT, 0o644)
        if not _lock(fd, wait=wait):
            os.lseek(fd, 0, os.SEEK_SET)
            holder = os.read(fd, 4096).decode(errors="replace").strip()
            os.close(fd)
            raise FileLocked(target, holder)
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(target))
        except FileNotFoundError:  # its holder removed it as we got the lock: lock the new one
            same = False
        if same:
            return fd
        _unlock(fd)
        os.close(fd)


if sys.platform == "win32":  # pragma: no cover - Windows (mypy checks this branch for win32 only)
    import msvcrt

    def _lock(fd: int, *, wait: bool) -> bool:
        while True:
            try:
                msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
                return True
            except OSError:
                if not wait:
                    return False
                time.sleep(0.2)

    def _unlock(fd: int) -> None:
        os.lseek(fd, 0, os.SEEK_SET)
        with contextlib.suppress(OSError):
            msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
else:
    import fcntl

    def _lock(fd: int, *, wait: bool) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            return False
        return True

    def _unlock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_UN)


_HELD = ".held"  # the lock file inside a held_folder


def held_folder(prefix: str, parent: str | Path | None = None) -> tuple[Path, int]:
    """A new temporary folder `<parent>/<prefix>XXXX` (parent: the system's temporary folder), and the
    descriptor of a lock in it that this process (and the children it forks) holds until it closes it or
    dies, even by kill -9. First removes the folders of `prefix` in `parent` that no process holds: what
    runs that were killed left. Close the descriptor, then remove the folder, when done."""
    base = Path(parent) if parent is not None else Path(tempfile.gettempdir())
    base.mkdir(parents=True, exist_ok=True)
    remove_abandoned(base, prefix)
    if sys.platform == "win32":  # pragma: no cover - (an open file cannot be renamed there)
        folder = Path(tempfile.mkdtemp(prefix=prefix, dir=base))
        fd = os.open(folder / _HELD, os.O_RDWR | os.O_CREAT, 0o644)
        _lock(fd, wait=False)
        return folder, fd
    # The lock is taken before its file is where `remove_abandoned` looks: made under a name no one judges, locked,
    # then moved into the new folder. (Made in place, another process's `remove_abandoned` could find it unlocked
    # between its creation and its lock, and remove the folder being made.)
    fd, aside = tempfile.mkstemp(prefix=f".{prefix}lock-", dir=base)
    try:
        _lock(fd, wait=False)
        folder = Path(tempfile.mkdtemp(prefix=prefix, dir=base))
        os.replace(aside, folder / _HELD)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(aside)
        raise
    return folder, fd


def remove_abandoned(base: Path, prefix: str) -> list[Path]:
    """Remove the folders `held_folder` made in `base` whose lock no process holds; returns them. A folder
    without its lock file (being made just now, or not ours) is left alone."""
    removed: list[Path] = []
    try:
        entries = [e for e in os.scandir(base) if e.name.startswith(prefix) and e.is_dir(follow_symlinks=False)]
    except OSError:
        return removed
    for entry in entries:
        try:
            fd = os.open(os.path.join(entry.path, _HELD), os.O_RDWR)
        except OSError:
            continue
        abandoned = _lock(fd, wait=False)
        os.close(fd)  # (before the folder goes: Windows removes no open file)
        if abandoned:
            shutil.rmtree(entry.path, ignore_errors=True)
            removed.append(Path(entry.path))
    return removed
