"""Spec files: paths → documents → checked ThreadSpecs, or every problem in every file at once.

    specs = load_specs(["fixtures/threads"])          # a list; raises SpecError listing every problem
    for spec in SpecStream(["threads/"]): ...         # the same threads, one file of them in memory at a time

`SpecStream` reads in two passes, so that a folder of any size is read in the memory of one file and a bad spec
anywhere still means nothing is sent. Made, it checks every file (every problem in every file: SpecError) and
keeps only what the second pass and a load need: each thread key and where it is (`ThreadKeys`, in a temporary
database on disk), the participants to create (`Creates`), how many threads and messages there are, each
attached file's size and hash (`attachments.Hashes`), and each file's digest. Iterated, it reads the files again
one at a time and yields their specs; a file whose bytes are not the ones checked stops it, naming the file,
before any of that file's threads is yielded (`attachments.Changed`). Attached files' bytes are read only when
they are needed (`attachments.FileBytes`). stdin (`-`) can be read once only: the first pass spools it to an
unnamed temporary file, which the second reads.
"""

from __future__ import annotations

import dataclasses
import hashlib
import sqlite3
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from ..errors import Problem, SpecError
from .attachments import Changed, Hashes, Refused, read_files, read_regular, read_stdin_spec
from .model import ThreadSpec, check_document, read_model_problems, with_read_model
from .participants import Creates, ParticipantsFile, read_participants
from .source import Document, Path_, decode, parse_text, split_threads

SPEC_SUFFIXES = (".yaml", ".yml", ".json")


def spec_files(paths: Iterable[str | Path], suffixes: tuple[str, ...] = SPEC_SUFFIXES, *, stdin: bool = True
               ) -> tuple[list[Path | str], list[Problem]]:
    """Expand folders (recursively, files with `suffixes`, sorted) and check the paths exist; '-' is stdin."""
    files: list[Path | str] = []
    problems: list[Problem] = []
    for raw in paths:
        if stdin and str(raw) == "-":
            files.append("-")
            continue
        path = Path(raw)
        if path.is_dir():
            candidates = [p for p in path.rglob("*") if p.suffix in suffixes and p.is_file()]
            found = sorted(p for p in candidates if not _hidden(p, path))
            if not found:
                kinds = ", ".join(f"*{s}" for s in suffixes)
                skipped = " (hidden ones, named .*, are skipped)" if candidates else ""
                problems.append(Problem(str(path), None, None, "", f"folder has no {kinds} files{skipped}"))
            files.extend(found)
        elif path.is_file():
            files.append(path)
        elif path.exists():
            problems.append(Problem(str(path), None, None, "", "not a regular file or folder"))
        else:
            problems.append(Problem(str(path), None, None, "", "no such file or folder"))
    return files, problems


def _hidden(path: Path, folder: Path) -> bool:
    """Whether `path`, found in `folder`, is hidden (or inside a hidden folder, like `.git`): named `.*`."""
    return any(part.startswith(".") for part in path.relative_to(folder).parts)


def resource_type(data: Any) -> str | None:
    """The `resourceType` of `data` if it is a FHIR resource (a mapping with one; '' if it is not a string)."""
    if not isinstance(data, dict) or "resourceType" not in data:
        return None
    kind = data["resourceType"]
    return kind if isinstance(kind, str) else ""


def not_a_spec(doc: Document, kind: str) -> Problem:
    """The one problem of a file that holds a FHIR resource (a Bundle, say) where thread specs belong."""
    what = "a FHIR Bundle" if kind == "Bundle" else f"a FHIR {kind} resource" if kind.isalpha() else "a FHIR resource"
    return doc.problem((), f"this is {what}, not a thread spec (`validate` checks Bundles; `build` and `load` "
                           f"read thread specs)")


class ThreadKeys:
    """The thread keys seen so far: a key used twice, or twice but for case, is a problem.

    Keys that differ only in case (`Case-A`, `case-a`) are refused too: their bundle files would be one
    file on a case-insensitive file system (macOS, Windows), the second overwriting the first.

    The keys, and where each is (file, line), are kept in a temporary database on disk, not in memory: a run of
    a million threads keeps the memory of a small one. A line not known when the key was added (a JSON file read
    without positions) is found, if the key is used again, by `relocate(file, path)`."""

    def __init__(self, relocate: Callable[[str, Path_], int | None] | None = None) -> None:
        self._db = sqlite3.connect("", check_same_thread=False)  # (""): a private temporary database, on disk
        self._db.execute("CREATE TABLE seen (lower TEXT PRIMARY KEY, key TEXT, file TEXT, line INTEGER, at TEXT) "
                         "WITHOUT ROWID")
        self._relocate = relocate if relocate is not None else line_in

    def add(self, spec: ThreadSpec, doc: Document) -> Problem | None:
        """None if `spec`'s key is new, else the problem (at its `thread` field); the first one keeps the key."""
        line = None
        if doc.locate is None:  # (positions read already: free to ask)
            line = spec.origin()[1]
        at = ",".join(map(str, doc.prefix))
        added = self._db.execute("INSERT OR IGNORE INTO seen VALUES (?, ?, ?, ?, ?)",
                                 (spec.key.lower(), spec.key, doc.file, line, at)).rowcount
        if added:
            return None
        key, file, line, at = self._db.execute("SELECT key, file, line, at FROM seen WHERE lower = ?",
                                               (spec.key.lower(),)).fetchone()
        if line is None:
            line = self._relocate(file, tuple(int(i) for i in at.split(",") if i))
        where = f"{file}:{line}" if line is not None else file
        if key == spec.key:
            return doc.problem(("thread",), f"thread key {spec.key!r} is already used by {where}")
        return doc.problem(("thread",), f"thread key {spec.key!r} differs only in case from {key!r} ({where}): "
                                        f"their bundle files would be one file on a case-insensitive file system")

    def close(self) -> None:
        self._db.close()


def line_in(file: str, prefix: Path_, raw: bytes | None = None) -> int | None:
    """The line of the thread at `prefix` (its place in a list of threads) in spec file `file` (its bytes `raw`, if
    given; read again if not): for a message naming where a thread of a file read without positions is."""
    if raw is None:
        if file in ("-", "<stdin>"):
            return None
        raw, _ = _read_raw(Path(file))
    docs, _ = documents(raw, file) if raw is not None else ([], [])
    doc = next((d for d in docs if d.prefix == prefix), None)
    pos = doc.position(()) if doc is not None else None
    return pos[0] if pos else None


def read_documents(file: Path | str) -> tuple[list[Document], list[Problem]]:
    """The thread documents in one file (or '-' for stdin); only a regular file is read (`attachments.read_regular`:
    a named pipe or a device is a problem, not a wait or an endless read)."""
    raw, problems = _read_raw(file)
    if raw is None:
        return [], problems
    return documents(raw, file)


def _read_raw(file: Path | str) -> tuple[bytes | None, list[Problem]]:
    name = "<stdin>" if file == "-" else str(file)
    try:
        return (read_stdin_spec() if file == "-" else read_regular(file)), []
    except Refused as exc:
        return None, [Problem(name, None, None, "", str(exc) if file == "-" else f"not read: it {exc}")]
    except OSError as exc:
        return None, [Problem(name, None, None, "", f"cannot read: {exc.strerror}")]


def documents(raw: bytes, file: Path | str) -> tuple[list[Document], list[Problem]]:
    """The thread documents in `raw`, the bytes of `file` ('-': stdin's)."""
    name = "<stdin>" if file == "-" else str(file)
    text, problems = decode(raw, name)
    del raw  # (the text is all that is needed now: one copy of the file fewer while it is parsed)
    if text is None:
        return [], problems
    kind = None if file == "-" else ("json" if Path(file).suffix == ".json" else "yaml")
    docs, problems = parse_text(text, name, kind=kind)
    if not docs and not problems:
        problems = [Problem(name, None, None, "", "no thread in this file")]
    return list(split_threads(docs)), problems


def read_document(doc: Document, shared: ParticipantsFile | None = None, *, allow_outside_files: bool = False,
                  hashes: Hashes | None = None) -> tuple[ThreadSpec | None, list[Problem]]:
    """`check_document` for a document read from a file: its file attachments read first (relative to the file,
    only from its folder unless `allow_outside_files`: `attachments.read_files`, with `hashes` of those read
    before), where their bytes are held by the spec (`ThreadSpec.files`: read when asked for)."""
    data, files, problems = read_files(doc, allow_outside_files=allow_outside_files, hashes=hashes)
    if problems:
        return None, problems
    spec, problems = check_document(dataclasses.replace(doc, data=data) if files else doc, shared)
    if spec is not None and files:
        spec.with_files(files)
    return spec, problems


def load_specs(paths: Iterable[str | Path], *, participants: str | Path | ParticipantsFile | None = None,
               read_model: str | None = None, allow_outside_files: bool = False) -> list[ThreadSpec]:
    """Every thread in `paths`, checked, as a list (`SpecStream` gives the same threads without holding them all);
    raises SpecError with every problem in every file. `participants`: a participants file
    (`bundler.spec.participants`) whose participants the threads may use. `read_model` (one of
    `vocabulary.READ_MODELS`) overrides every thread's own (`model.with_read_model`). A thread key used twice, and
    a participant to create that another (in any spec, or the file) creates differently (`Creates`), are
    problems. `allow_outside_files`: a spec may attach files outside its own folder (an absolute path, `..`, a link
    that leads out); by default that is a problem at its line, since a spec from someone else could otherwise
    attach, and `load` upload, any file the user can read."""
    stream = SpecStream(paths, participants=participants, read_model=read_model,
                        allow_outside_files=allow_outside_files, spool=False)
    return stream.checked if stream.checked is not None else list(stream)


@dataclasses.dataclass
class _Checked:
    """A spec file as the first pass read it: what the second needs to read it again and know it is the same."""

    file: Path | str
    digest: str  # SHA-256 of its bytes
    spool: IO[bytes] | None = None  # stdin's bytes, spooled


class SpecStream(Iterable[ThreadSpec]):
    """The threads of spec files and folders, checked whole when made (SpecError with every problem in every
    file), then read again a file at a time as they are iterated (see the module docstring). `threads` and
    `messages` say how many there are (`len()` is `threads`). Iterated twice, it reads the files twice."""

    def __init__(self, paths: Iterable[str | Path], *, participants: str | Path | ParticipantsFile | None = None,
                 read_model: str | None = None, allow_outside_files: bool = False, spool: bool = True) -> None:
        self.read_model, self.allow_outside_files = read_model, allow_outside_files
        self.shared = read_participants(participants) if participants is not None else None
        self.threads = self.messages = 0
        self.hashes: Hashes = {}
        self.files: list[_Checked] = []
        self.checked: list[ThreadSpec] | None = None if spool else []  # (load_specs: the specs of the first pass)
        try:
            self._check(paths, spool=spool)
        except BaseException:
            self.close()
            raise

    def __len__(self) -> int:
        return self.threads

    def _check(self, paths: Iterable[str | Path], *, spool: bool) -> None:
        """The first pass: every problem in every file, or what the second pass needs."""
        files, problems = spec_files(paths)
        keys = ThreadKeys(relocate=self._line_of)
        creates = Creates()
        if self.shared is not None:
            creates.add_file(self.shared)  # (read_participants refused a file that contradicts itself)
        try:
            for file in files:
                raw, file_problems = _read_raw(file)
                if raw is None:
                    problems.extend(file_problems)
                    continue
                checked = _Checked(file, hashlib.sha256(raw).hexdigest())
                if file == "-" and spool:
                    checked.spool = tempfile.TemporaryFile(prefix="thread-bundler-stdin-")  # noqa: SIM115
                    checked.spool.write(raw)
                self.files.append(checked)
                problems.extend(self._check_file(raw, file, keys, creates))
        finally:
            keys.close()
        if problems:
            raise SpecError(problems)

    def _check_file(self, raw: bytes, file: Path | str, keys: ThreadKeys, creates: Creates) -> list[Problem]:
        docs, problems = documents(raw, file)
        del raw
        kind = next((k for d in docs if (k := resource_type(d.data)) is not None), None)
        if kind is not None:  # once per file, not once per field a thread spec does not have
            return [*problems, not_a_spec(next(d for d in docs if resource_type(d.data) == kind), kind)]
        for doc in docs:
            spec, doc_problems = read_document(doc, self.shared, allow_outside_files=self.allow_outside_files,
                                               hashes=self.hashes)
            problems.extend(doc_problems)
            if spec is None:
                continue
            duplicate = keys.add(spec, doc)
            if duplicate is not None:
                problems.append(duplicate)
                continue
            problems.extend(creates.add(spec))
            spec, model_problems = read_model_problems(spec, self.read_model)
            problems.extend(model_problems)
            self.threads += 1
            self.messages += len(spec.messages)
            if self.checked is not None and not model_problems:
                self.checked.append(spec)
        return problems

    def _line_of(self, file: str, prefix: Path_) -> int | None:
        """The line of the thread at `prefix` in `file` (a file already checked; stdin's from its spool)."""
        checked = next((c for c in self.files if c.file == "-" and file == "<stdin>"), None)
        if checked is None:
            return line_in(file, prefix)
        return line_in("-", prefix, self._raw(checked)) if checked.spool is not None else None

    def _raw(self, checked: _Checked) -> bytes | None:
        """The bytes of a checked file, read again (stdin's from its spool)."""
        if checked.spool is not None:
            checked.spool.seek(0)
            return checked.spool.read()
        raw, _ = _read_raw(checked.file) if checked.file != "-" else (None, [])
        return raw

    def __iter__(self) -> Iterator[ThreadSpec]:
        """The second pass: each file read again, checked to be the one checked, its threads yielded."""
        for checked in self.files:
            yield from self._threads_of(checked)

    def _threads_of(self, checked: _Checked) -> Iterator[ThreadSpec]:
        name = "<stdin>" if checked.file == "-" else str(checked.file)
        try:
            raw = self._raw(checked)
        except (Refused, OSError) as exc:
            raise Changed(f"{name}: cannot be read again ({exc}); it was read when it was checked: none of its "
                          "threads is sent") from None
        if raw is None:
            raise Changed(f"{name}: cannot be read again (stdin is read once): use load_specs for a list")
        if hashlib.sha256(raw).hexdigest() != checked.digest:
            raise Changed(f"{name}: changed since it was checked (its bytes are not the ones checked): none of its "
                          "threads is sent; the files before it were. Run the same command again to send the rest "
                          "as they are now")
        docs, problems = documents(raw, checked.file)
        del raw
        for doc in docs:
            if problems:
                break
            spec, problems = read_document(doc, self.shared, allow_outside_files=self.allow_outside_files,
                                           hashes=self.hashes)
            if spec is not None:
                yield with_read_model(spec, self.read_model)
        if problems:  # (the same bytes, checked before: only what they name outside can differ now)
            raise Changed(f"{name}: reads differently than when it was checked: {problems[0]}")

    def close(self) -> None:
        """Let go of the spool of stdin (the stream can no longer be read)."""
        for checked in self.files:
            if checked.spool is not None:
                checked.spool.close()
                checked.spool = None
