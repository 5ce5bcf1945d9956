"""Spec files: paths → documents → checked ThreadSpecs, or every problem in every file at once.

    specs = load_specs(["fixtures/threads"])          # raises SpecError listing every problem
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..errors import Problem, SpecError
from .attachments import Refused, read_files, read_regular, read_stdin_spec
from .model import ThreadSpec, check_document, read_model_problems
from .participants import Creates, ParticipantsFile, read_participants
from .source import Document, decode, parse_text, split_threads

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
    file on a case-insensitive file system (macOS, Windows), the second overwriting the first."""

    def __init__(self) -> None:
        self._seen: dict[str, ThreadSpec] = {}

    def add(self, spec: ThreadSpec, doc: Document) -> Problem | None:
        """None if `spec`'s key is new, else the problem (at its `thread` field); the first one keeps the key."""
        first = self._seen.setdefault(spec.key.lower(), spec)
        if first is spec:
            return None
        file, line = first.origin()
        where = f"{file}:{line}" if line is not None else file
        if first.key == spec.key:
            return doc.problem(("thread",), f"thread key {spec.key!r} is already used by {where}")
        return doc.problem(("thread",), f"thread key {spec.key!r} differs only in case from {first.key!r} ({where}): "
                                        f"their bundle files would be one file on a case-insensitive file system")


def read_documents(file: Path | str) -> tuple[list[Document], list[Problem]]:
    """The thread documents in one file (or '-' for stdin); only a regular file is read (`attachments.read_regular`:
    a named pipe or a device is a problem, not a wait or an endless read)."""
    name = "<stdin>" if file == "-" else str(file)
    try:
        raw = read_stdin_spec() if file == "-" else read_regular(file)
    except Refused as exc:
        return [], [Problem(name, None, None, "", str(exc) if file == "-" else f"not read: it {exc}")]
    except OSError as exc:
        return [], [Problem(name, None, None, "", f"cannot read: {exc.strerror}")]
    text, problems = decode(raw, name)
    del raw  # (the text is all that is needed now: one copy of the file fewer while it is parsed)
    if text is None:
        return [], problems
    kind = None if file == "-" else ("json" if Path(file).suffix == ".json" else "yaml")
    docs, problems = parse_text(text, name, kind=kind)
    if not docs and not problems:
        problems = [Problem(name, None, None, "", "no thread in this file")]
    return list(split_threads(docs)), problems


def read_document(doc: Document, shared: ParticipantsFile | None = None, *, allow_outside_files: bool = False
                  ) -> tuple[ThreadSpec | None, list[Problem]]:
    """`check_document` for a document read from a file: its file attachments read first (relative to the file,
    only from its folder unless `allow_outside_files`: `attachments.read_files`), their bytes held by the spec
    (`ThreadSpec.files`)."""
    data, files, problems = read_files(doc, allow_outside_files=allow_outside_files)
    if problems:
        return None, problems
    spec, problems = check_document(dataclasses.replace(doc, data=data) if files else doc, shared)
    if spec is not None and files:
        spec.with_files(files)
    return spec, problems


def load_specs(paths: Iterable[str | Path], *, participants: str | Path | ParticipantsFile | None = None,
               read_model: str | None = None, allow_outside_files: bool = False) -> list[ThreadSpec]:
    """Every thread in `paths`, checked; raises SpecError with every problem in every file. `participants`: a
    participants file (`bundler.spec.participants`) whose participants the threads may use. `read_model` (one of
    `vocabulary.READ_MODELS`) overrides every thread's own (`model.with_read_model`). A thread key used twice, and
    a participant to create that another (in any spec, or the file) creates differently (`Creates`), are
    problems. `allow_outside_files`: a spec may attach files outside its own folder (an absolute path, `..`, a link
    that leads out); by default that is a problem at its line, since a spec from someone else could otherwise
    attach, and `load` upload, any file the user can read."""
    shared = read_participants(participants) if participants is not None else None
    files, problems = spec_files(paths)
    specs: list[ThreadSpec] = []
    keys = ThreadKeys()
    creates = Creates()
    if shared is not None:
        creates.add_file(shared)  # (read_participants refused a file that contradicts itself)
    for file in files:
        docs, file_problems = read_documents(file)
        problems.extend(file_problems)
        kind = next((k for d in docs if (k := resource_type(d.data)) is not None), None)
        if kind is not None:  # once per file, not once per field a thread spec does not have
            problems.append(not_a_spec(next(d for d in docs if resource_type(d.data) == kind), kind))
            continue
        for doc in docs:
            spec, doc_problems = read_document(doc, shared, allow_outside_files=allow_outside_files)
            problems.extend(doc_problems)
            if spec is None:
                continue
            duplicate = keys.add(spec, doc)
            if duplicate is not None:
                problems.append(duplicate)
                continue
            problems.extend(creates.add(spec))
            spec, model_problems = read_model_problems(spec, read_model)
            problems.extend(model_problems)
            specs.append(spec)
    if problems:
        raise SpecError(problems)
    return specs
