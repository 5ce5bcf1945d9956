"""Attachments from files: the one I/O the spec stage does for them. A message's `{file: path}` (relative to the
spec file) is read here; its `size`, `hash` (vocabulary.attachment_hash) and, unless given, `contentType` (from
the file name) are filled into the spec's data, and where its bytes are is kept by hash (`FileBytes`), so the
builder gets them as a pure input (`ThreadSpec.files`): same spec, same files, same bytes.

    data, files, problems = read_files(doc)

The bytes are not kept: a file is read (and hashed) when its spec is checked, then again when they are needed
(the build of its thread, or its upload), one file at a time, never all of a run's at once. Read again, a file
whose bytes are no longer the ones checked (its hash) is an error naming it (`Changed`), not other bytes sent.

A spec may come from someone else, so what it can make us read is bounded: only a regular file (never a named
pipe, a device or a socket: opening one never waits), at most `vocabulary.MAX_ATTACHMENT_FILE_BYTES`, and only in
the spec's own folder (nothing absolute, no `..` out of it, no link inside it that leads out) unless
`allow_outside_files`. `file: -` is stdin, read once (every `file: -` of a run attaches the same bytes) and
bounded alike. Each refusal is a problem at the attachment's `file` field. `read_regular` is the reader, for spec
files too (`files.read_documents`).
"""

from __future__ import annotations

import os
import stat
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO

from ..errors import BundlerError, Problem
from ..vocabulary import MAX_ATTACHMENT_FILE_BYTES, attachment_hash, content_type_for
from .source import Document

ALLOW_OUTSIDE_HINT = "allow it with --allow-outside-files (allow_outside_files=True in the library)"


class Refused(Exception):
    """A file we do not read, and why, in words for a message (`is a named pipe (FIFO), not a regular file`)."""


_KINDS = ((stat.S_ISDIR, "a folder, not a file"), (stat.S_ISFIFO, "a named pipe (FIFO), not a regular file"),
          (stat.S_ISCHR, "a character device, not a regular file"), (stat.S_ISBLK, "a block device, not a regular "
                                                                                  "file"),
          (stat.S_ISSOCK, "a socket, not a regular file"))


def _regular(mode: int) -> None:
    if not stat.S_ISREG(mode):
        raise Refused("is " + next((what for test, what in _KINDS if test(mode)), "not a regular file"))


def _too_large(size: int, limit: int) -> Refused:
    return Refused(f"is {size:,} bytes: a file attachment may have at most {limit:,} (MAX_ATTACHMENT_FILE_BYTES)")


_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_BINARY", 0)
"""Opening never waits (a named pipe without a writer would, for ever) nor takes a terminal as ours."""


def read_regular(path: str | Path, limit: int | None = None) -> bytes:
    """The bytes of the regular file at `path`, at most `limit` of them: Refused for anything else (a folder, a
    named pipe, a device, a socket) or a larger file; OSError if it cannot be read. The file is looked at before
    it is opened, and opened without waiting (O_NONBLOCK), then looked at again (it may have been swapped); at most
    `limit + 1` bytes are read, so a file that grows while it is read is refused too, not read on and on."""
    _regular(os.stat(path).st_mode)
    fd = os.open(path, _OPEN_FLAGS)
    with open(fd, "rb", closefd=True) as f:
        info = os.fstat(fd)
        _regular(info.st_mode)
        if limit is not None and info.st_size > limit:
            raise _too_large(info.st_size, limit)
        return _bounded(f, limit, info.st_size)


def _bounded(f: BinaryIO, limit: int | None, size: int) -> bytes:
    data = f.read() if limit is None else f.read(limit + 1)
    if limit is not None and len(data) > limit:
        raise Refused(f"grew past {limit:,} bytes (MAX_ATTACHMENT_FILE_BYTES) while it was read (it was {size:,})")
    return data


_stdin: tuple[object, bytes | None] | None = None
"""The stream stdin was, and what was read from it: the bytes the first `file: -` read, or None when a spec was."""


def _stdin_stream() -> BinaryIO:
    if sys.stdin is None:
        raise Refused("reads stdin, and there is none")
    return sys.stdin.buffer


def read_stdin(limit: int = MAX_ATTACHMENT_FILE_BYTES) -> bytes:
    """The bytes on stdin for `file: -`, at most `limit`, read once: a second `file: -` attaches the same bytes,
    not the nothing left after the first. Refused: more than `limit`, a terminal (it would wait for typing), or
    stdin already read as a spec (`read_stdin_spec`)."""
    global _stdin
    stream = _stdin_stream()
    if _stdin is not None and _stdin[0] is stream:
        if _stdin[1] is None:
            raise Refused("reads stdin, which a spec was read from: give the file's path")
        return _stdin[1]
    if sys.stdin.isatty():
        raise Refused("reads stdin, which is a terminal: pipe the file in (< file)")
    data = stream.read(limit + 1)
    if len(data) > limit:
        raise Refused(f"reads stdin, which holds more than {limit:,} bytes (MAX_ATTACHMENT_FILE_BYTES)")
    _stdin = (stream, data)
    return data


def read_stdin_spec() -> bytes:
    """All of stdin, as a spec (path '-'); Refused if a `file: -` has read it already."""
    global _stdin
    stream = _stdin_stream()
    if _stdin is not None and _stdin[0] is stream:
        raise Refused("stdin was read already" + (", for a file attachment (file: -)" if _stdin[1] is not None
                                                   else ""))
    _stdin = (stream, None)
    return stream.read()


class Changed(BundlerError):
    """A file (a spec, or an attachment) whose bytes are not the ones checked: it changed since (or it can no longer
    be read). A BundlerError: a thread whose attachment changed fails, saying so; a spec file that changed stops
    the run before any of its threads is sent."""


Hashes = dict[str, tuple[int, str]]
"""An attachment's path (as `base / name` spells it) → (size, hash) as its spec's check read it: a spec checked
again (the second pass over a folder, `files.SpecStream`) takes the figures from here instead of reading the
file again; its bytes, when needed, are checked against them (`FileBytes`)."""


class FileBytes(Mapping[str, bytes]):
    """A spec's file attachments by hash (`Attachment.hash`) → their bytes, each read from its file when asked for
    and checked against its hash (Changed if it is no longer the file that was checked); stdin's bytes (`file: -`,
    read once) are held. What `ThreadSpec.files` gives for a spec read from a file: the builder and the uploads
    read one file when they need it, and nothing holds the bytes of a run's files."""

    __slots__ = ("_where",)

    def __init__(self) -> None:
        self._where: dict[str, tuple[Path, int] | bytes] = {}

    def add(self, digest: str, where: tuple[Path, int] | bytes) -> None:
        """The file with hash `digest`: its (path, size), or its bytes (stdin's)."""
        self._where.setdefault(digest, where)

    def __getitem__(self, digest: str) -> bytes:
        where = self._where[digest]
        if isinstance(where, bytes):
            return where
        path, size = where
        try:
            data = read_regular(path, MAX_ATTACHMENT_FILE_BYTES)
        except (Refused, OSError) as exc:
            why = str(exc) if isinstance(exc, Refused) else exc.strerror or str(exc)
            raise Changed(f"{path}: the attached file cannot be read again ({why}); it was read when its spec was "
                          "checked") from None
        if (now := attachment_hash(data)) != digest:
            raise Changed(f"{path}: the attached file changed since its spec was checked (it was {size:,} bytes, "
                          f"hash {digest}; now {len(data):,} bytes, hash {now}): not sent; run again to send it as "
                          "it is now")
        return data

    def __contains__(self, digest: object) -> bool:
        return digest in self._where  # (without reading the file, as Mapping's own would)

    def __iter__(self) -> Iterator[str]:
        return iter(self._where)

    def __len__(self) -> int:
        return len(self._where)

    def __repr__(self) -> str:
        return f"FileBytes({sorted(self._where)})"


def outside(base: Path, name: str) -> str | None:
    """Why the file `name` (as a spec writes it, relative to `base`, the spec's folder) is outside `base`, in words
    for a message; None when it is inside. Links are followed: one inside that leads out is outside."""
    root = os.path.realpath(base)
    real = os.path.realpath(base / name)
    if real == root or real.startswith(root.rstrip(os.sep) + os.sep):
        return None
    lexical = os.path.normpath(name)
    within = not os.path.isabs(name) and lexical != os.pardir and not lexical.startswith(os.pardir + os.sep)
    where = "a link to " + real + ", outside" if within else "outside"
    return f"{name!r} is {where} the spec's folder ({base}): a spec attaches files from its own folder only; " \
           f"{ALLOW_OUTSIDE_HINT}"


def read_files(doc: Document, *, allow_outside_files: bool = False, hashes: Hashes | None = None
               ) -> tuple[Any, FileBytes, list[Problem]]:
    """`doc`'s data with every file attachment filled in, where the files' bytes are by hash (`FileBytes`), and the
    problems (a file missing, unreadable, not a regular file, too large, outside the spec's folder unless
    `allow_outside_files`, or not what a given size or hash says), each at its `file` field. `hashes`: each file's
    size and hash as an earlier check read them (a file there is not read again), and where this one's go."""
    data = doc.data
    files = FileBytes()
    messages = data.get("messages") if isinstance(data, dict) else None
    if not isinstance(messages, list) or not any(_has_files(m) for m in messages):
        return data, files, []
    base = Path(doc.file).parent if doc.file not in ("<stdin>", "<spec>") else Path.cwd()
    hashes = hashes if hashes is not None else {}
    problems: list[Problem] = []
    filled = []
    for i, m in enumerate(messages):
        if not _has_files(m):
            filled.append(m)
            continue
        attachments = []
        for j, a in enumerate(m["attachments"]):
            if isinstance(a, dict) and isinstance(a.get("file"), str):
                a = _read(doc, base, a, ("messages", i, "attachments", j), files, problems, allow_outside_files,
                          hashes)
            attachments.append(a)
        filled.append({**m, "attachments": attachments})
    return {**data, "messages": filled}, files, problems


def _has_files(message: Any) -> bool:
    attachments = message.get("attachments") if isinstance(message, dict) else None
    return isinstance(attachments, list) and any(isinstance(a, dict) and "file" in a for a in attachments)


def _read(doc: Document, base: Path, attachment: dict[str, Any], at: tuple[str | int, ...], files: FileBytes,
          problems: list[Problem], allow_outside_files: bool, hashes: Hashes) -> dict[str, Any]:
    name = attachment["file"]
    path = base / name
    where: tuple[Path, int] | bytes
    try:
        if name == "-":
            where = read_stdin()
            size, digest = len(where), attachment_hash(where)
        else:
            why = None if allow_outside_files else outside(base, name)
            if why is not None:
                problems.append(doc.problem((*at, "file"), why))
                return attachment
            if (known := hashes.get(str(path))) is None:
                raw = read_regular(path, MAX_ATTACHMENT_FILE_BYTES)  # (hashed, and let go: read again when needed)
                known = hashes[str(path)] = (len(raw), attachment_hash(raw))
                del raw
            size, digest = known
            where = (path, size)
    except Refused as exc:
        problems.append(doc.problem((*at, "file"), f"{name!r} {exc}"))
        return attachment
    except OSError as exc:
        problems.append(doc.problem((*at, "file"), f"cannot read {name!r} ({path}): {exc.strerror or exc}"))
        return attachment
    for field, value in (("size", size), ("hash", digest)):
        if field in attachment and attachment[field] != value:
            problems.append(doc.problem((*at, field), f"{attachment[field]!r} is not the {field} of {name!r} "
                                                      f"({value!r}): leave it out, it is filled in"))
    files.add(digest, where)
    out = {**attachment, "size": size, "hash": digest}
    if "contentType" not in attachment:
        out["contentType"] = content_type_for(name)
    return out
