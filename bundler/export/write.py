"""Writing an export: one spec file per thread, as each thread completes, and the report, one line per thread.

Everything goes into a staging folder (`bundler.files.staged_folder`) that is moved into the output folder only
when the whole export succeeded: an export that fails or is interrupted leaves no half of itself behind.
A thread whose key another thread of the export has already taken (two headers with one identifier) is written
under its server id instead, and that is one of its problems.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import orjson

from ..spec.dump import dump_yaml
from ..spec.model import ThreadSpec
from .shape import Shaped

REPORT_NAME = "export-report.jsonl"
"""The report's file name in the output folder (`.jsonl`: `load DIR` reads only .yaml, .yml and .json)."""


@dataclass
class ThreadExport:
    """What became of one thread: the file its spec is in (None: no spec), and every problem."""

    key: str | None
    header_id: str | None
    file: str | None = None
    messages: int = 0  # on the server
    exported: int = 0  # in the spec
    problems: list[str] = field(default_factory=list)
    dropped: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None  # the thread could not be read
    orphans: bool = False  # messages part of no header, written as a thread

    @property
    def in_shape(self) -> bool:
        return self.file is not None and not self.problems

    def as_json(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if v not in (None, [], False)}
        return out | {"in_shape": self.in_shape}


class Writer:
    """Spec files and report lines into `staging`; safe to call from many worker threads."""

    def __init__(self, staging: Path) -> None:
        self.staging = staging
        self._lock = threading.Lock()
        self._report: IO[bytes] = open(staging / REPORT_NAME, "wb")  # noqa: SIM115 - closed by close()

    def close(self, summary: dict[str, Any]) -> None:
        with self._lock:
            self._report.write(orjson.dumps({"summary": summary}) + b"\n")
            self._report.close()

    def thread(self, shaped: Shaped, *, orphans: bool = False) -> ThreadExport:
        """Write `shaped`'s spec (if any), the empty files it attaches (there is nothing to download for them), and
        its report line; what became of it."""
        spec = shaped.spec
        result = ThreadExport(spec.key if spec else None, shaped.header_id, messages=shaped.messages,
                              problems=list(shaped.problems), dropped=shaped.dropped, orphans=orphans)
        if spec is not None:
            spec, fd = self._placed(spec, result)
            with open(fd, "wb") as file:
                result.key, result.exported = spec.key, len(spec.messages)
                for m in spec.messages:
                    for name in (a.file for a in m.attachments if a.file is not None and a.size == 0):
                        (self.staging / name).write_bytes(b"")
                file.write(dump_yaml(spec.to_data()))
        self.line(result)
        return result

    def line(self, result: ThreadExport) -> None:
        with self._lock:
            self._report.write(orjson.dumps(result.as_json()) + b"\n")

    def participant(self, reference: str, why: str) -> None:
        """A report line for a participant that cannot be created in another project."""
        with self._lock:
            self._report.write(orjson.dumps({"participant": reference, "problem": why}) + b"\n")

    def _placed(self, spec: ThreadSpec, result: ThreadExport) -> tuple[ThreadSpec, int]:
        """`spec`, under a key no other thread of this export has, and its file, created (open for writing): the
        name is taken by creating the file (O_EXCL), so two threads never take one name."""
        fd = self._claim(f"{spec.key}.yaml")
        if fd is None:
            base = str(result.header_id or spec.key)
            key, n = base, 1
            while (fd := self._claim(f"{key}.yaml")) is None:
                n += 1
                key = f"{base}-{n}"
            result.problems.append(f"thread key {spec.key!r} is another thread's too (two headers with one "
                                   f"identifier): exported as {key!r}")
            spec = spec.model_copy(update={"key": key})
        result.file = f"{spec.key}.yaml"
        return spec, fd

    def _claim(self, name: str) -> int | None:
        """The file `name`, created for writing; None when it exists already."""
        try:
            return os.open(self.staging / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            return None
