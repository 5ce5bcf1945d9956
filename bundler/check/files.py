"""`validate` over files: Bundle JSON, NDJSON of Bundles, or thread specs (built first), folders recursively.

    report = validate_files(["out/", "threads/homer.yaml"], limits="medplum")
    report.issues, report.errors, report.bundles

A `.json`/`.yaml`/`.yml` document with a `resourceType` is taken as a Bundle; any other is a thread
spec, built with `build_bundle` so issues name the spec file and line. Unreadable or invalid input
raises `SpecError` listing every problem (nothing is validated then).
"""

from __future__ import annotations

import codecs
import dataclasses
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..build import (
    DEFAULT_IDENTIFIER_SYSTEM,
    BuiltEntries,
    build_bundle,
    check_identifier_system,
    participant_bundles,
)
from ..errors import Problem, SpecError
from ..spec import ParticipantsFile, read_participants, spec_files
from ..spec.files import ThreadKeys, read_document
from ..spec.model import Participant, ThreadSpec, read_model_problems
from ..spec.participants import Creates
from ..spec.source import SAVE_AS_UTF8, Document, decode, parse_json, parse_text, split_threads
from ..vocabulary import MAX_CONDITIONAL_ENTRIES
from .displays import DisplayCheck
from .issues import Issue
from .limits import Limits
from .validate import WINDOW, Origin, locate, spec_origin, validate_built, validate_many

SUFFIXES = (".json", ".ndjson", ".yaml", ".yml")


@dataclass
class Report:
    """What `validate_files` found: every issue (with file and line), and how much was read."""

    issues: list[Issue] = field(default_factory=list)
    files: int = 0
    bundles: int = 0
    participant_bundles: int = 0  # of `bundles`: the conditional creates of participants to create, as `load` sends

    @property
    def errors(self) -> int:
        return sum(i.severity == "error" for i in self.issues)

    @property
    def warnings(self) -> int:
        return sum(i.severity == "warning" for i in self.issues)

    def to_dict(self) -> dict[str, Any]:
        return {"files": self.files, "bundles": self.bundles, "participant_bundles": self.participant_bundles,
                "errors": self.errors, "warnings": self.warnings, "issues": [i.to_dict() for i in self.issues]}


def input_files(paths: Iterable[str | Path]) -> tuple[list[Path], list[Problem]]:
    """Files named, and the *.json/*.ndjson/*.yaml/*.yml files in folders (recursively, sorted)."""
    files, problems = spec_files(paths, tuple(SUFFIXES), stdin=False)
    return [Path(f) for f in files], problems


def _doc_origin(doc: Document, prefix: tuple[int, ...] = ()) -> Origin:
    """Entry index → line in `doc` (positions are computed on first use: only files with issues pay)."""
    def origin(entry: int | None) -> tuple[str, int | None]:
        pos = doc.position((*prefix, "entry", entry) if entry is not None else prefix)
        return (doc.file, pos[0] if pos else None)

    return origin


def _is_bundle_like(data: Any) -> bool:
    return isinstance(data, dict) and "resourceType" in data


def _ndjson(raw: bytes, name: str) -> tuple[list[tuple[Any, Origin]], list[Problem]]:
    """One Bundle per line; every bad line is reported, not just the first."""
    out: list[tuple[Any, Origin]] = []
    problems: list[Problem] = []
    for n, line in enumerate(raw.removeprefix(codecs.BOM_UTF8).splitlines(), 1):
        if not line.strip():
            continue
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            problems.append(Problem(name, n, exc.start + 1, "", f"not UTF-8 text (byte 0x{line[exc.start]:02x}): "
                                                                f"{SAVE_AS_UTF8}"))
            continue
        docs, line_problems = parse_json(text, name, positions=False)
        if line_problems:
            problems += [dataclasses.replace(p, line=n, message=_as_line(p.message)) for p in line_problems]
        else:
            out.append((docs[0].data, _fixed(name, n)))
    if not out and not problems:
        return [], [Problem(name, None, None, "", "empty file: expected one Bundle per line")]
    return (out, []) if not problems else ([], problems)


def _as_line(message: str) -> str:
    """A JSON problem of one NDJSON line: `not JSON: ...` for a syntax error."""
    return "not JSON: " + message.removeprefix("JSON syntax error: ") if message.startswith("JSON syntax") else message


def read_bundles(file: Path, *, identifier_system: str = DEFAULT_IDENTIFIER_SYSTEM, keys: ThreadKeys | None = None,
                 shared: ParticipantsFile | None = None, created: Created | None = None, read_model: str | None = None,
                 allow_outside_files: bool = False) -> tuple[list[tuple[Any, Origin]], list[Problem]]:
    """(bundle, origin) for every Bundle in `file`, building thread specs (with `identifier_system`, the
    participants of `shared`, and `read_model` overriding theirs; a thread key that `keys` has seen already is a
    problem; file attachments from the spec's folder only unless `allow_outside_files`); problems if unreadable.
    `created` collects the specs' participants to create, each where it is written (`Created`)."""
    name = str(file)
    try:
        raw = file.read_bytes()
    except OSError as exc:
        return [], [Problem(name, None, None, "", f"cannot read: {exc.strerror}")]
    if file.suffix == ".ndjson":
        return _ndjson(raw, name)
    text, problems = decode(raw, name)
    del raw  # (one copy of the file fewer while it is parsed and its specs built)
    if text is None:
        return [], problems
    json_ = file.suffix == ".json"
    if json_ and text.strip():
        docs, problems = parse_json(text, name, positions=False)
        if problems:
            return [], problems
        bundles = _json_bundles(docs[0])
        if bundles is not None:
            return bundles, []
    else:
        docs, problems = parse_text(text, name, kind="json" if json_ else "yaml")
        if not docs and not problems:
            problems = [Problem(name, None, None, "", "no thread in this file")]
    out = _document_bundles(docs, problems, identifier_system, keys, shared=shared, created=created,
                            read_model=read_model, allow_outside_files=allow_outside_files)
    return (out, []) if not problems else ([], problems)


def _json_bundles(doc: Document) -> list[tuple[Any, Origin]] | None:
    """The Bundles of a JSON file that holds a Bundle or an array of them; None if it holds something else."""
    data = doc.data
    if _is_bundle_like(data):
        return [(data, _doc_origin(doc))]
    if isinstance(data, list) and data and all(_is_bundle_like(d) for d in data):
        return [(d, _doc_origin(doc, (k,))) for k, d in enumerate(data)]
    return None


def _document_bundles(docs: list[Document], problems: list[Problem], identifier_system: str,
                      keys: ThreadKeys | None, *, shared: ParticipantsFile | None = None,
                      created: Created | None = None, read_model: str | None = None,
                      allow_outside_files: bool = False) -> list[tuple[Any, Origin]]:
    """Each document as a Bundle: as it is, or built from the thread spec it holds (with the participants of
    `shared` and `read_model` overriding its own; its participants to create collected in `created`; its file
    attachments as `spec.files.read_document` reads them, with `allow_outside_files`; problems appended)."""
    out: list[tuple[Any, Origin]] = []
    for doc in split_threads(docs):
        if _is_bundle_like(doc.data):
            out.append((doc.data, _doc_origin(doc)))
            continue
        spec, spec_problems = read_document(doc, shared, allow_outside_files=allow_outside_files)
        problems.extend(spec_problems)
        duplicate = keys.add(spec, doc) if spec is not None and keys is not None else None
        if duplicate is not None:
            problems.append(duplicate)
        elif spec is not None:
            if created is not None:
                problems.extend(created.add(spec))
            spec, model_problems = read_model_problems(spec, read_model)
            problems.extend(model_problems)
            if len(spec.messages) > 2 * WINDOW:  # (checked a window at a time when its turn comes: `validate_built`)
                out.append((BuiltEntries(spec, identifier_system), spec_origin(spec)))
            else:
                out.append((build_bundle(spec, identifier_system=identifier_system), spec_origin(spec)))
    return out


class Created:
    """The distinct participants to create of the specs read, each with where it is written: validated as the
    conditional-create bundles `load` sends (`build.participant_bundles`). One that another participant of the run
    (of a spec, or of the participants file `shared`) creates differently is a problem (`spec.participants.Creates`),
    as `load` would create the first alone."""

    def __init__(self, shared: ParticipantsFile | None = None) -> None:
        self.participants: dict[str, tuple[Participant, tuple[str, int | None]]] = {}
        self.creates = Creates()
        self.displays = DisplayCheck()  # and what Medplum makes of the displays of all the specs' participants
        if shared is not None:
            self.creates.add_file(shared)  # (read_participants refused a file that contradicts itself)

    def add(self, spec: ThreadSpec) -> list[Problem]:
        """Collect the participants to create of `spec`; the problems of those that contradict one before."""
        self.displays.add(spec)
        for alias, p in spec.participants.items():
            if p.create is not None and p.reference not in self.participants:
                self.participants[p.reference] = (p, spec.origin(None, "participants", alias))
        return self.creates.add(spec)

    def bundles(self) -> list[tuple[Any, Origin]]:
        items = list(self.participants.values())
        out: list[tuple[Any, Origin]] = []
        for start, bundle in zip(range(0, len(items), MAX_CONDITIONAL_ENTRIES), participant_bundles(
                [p for p, _ in items]), strict=True):
            out.append((bundle, _listed([at for _, at in items[start:start + MAX_CONDITIONAL_ENTRIES]])))
        return out


def _listed(where: list[tuple[str, int | None]]) -> Origin:
    """The origin of a bundle whose entry k was written at `where[k]` (the bundle as a whole: its first)."""
    return lambda entry: where[entry] if entry is not None else where[0]


def _fixed(file: str, line: int) -> Origin:
    return lambda entry: (file, line)


def validate_files(paths: Iterable[str | Path], *, limits: str | Limits = "medplum", structure: bool = True,
                   workers: int | None = None, identifier_system: str = DEFAULT_IDENTIFIER_SYSTEM,
                   participants: str | Path | ParticipantsFile | None = None, read_model: str | None = None,
                   allow_outside_files: bool = False, on_file: Callable[[int, int], None] | None = None) -> Report:
    """Validate every Bundle in `paths`, specs built with `identifier_system`, the participants file
    `participants` and `read_model` overriding the specs' own, and the conditional creates of the specs'
    participants to create (as `load` sends them); raises SpecError if any input cannot be read or built,
    OptionError if `identifier_system` is unusable in identifier searches. `allow_outside_files`: specs may attach
    files outside their own folder (`bundler.spec.load_specs`). Files are read one at a time and their bundles
    validated a batch at a time as they come (`VALIDATE_BATCH`): the memory of a batch, whatever the input's
    size; every file is read for its problems all the same. `on_file(done, total)` is told each file read (for a
    progress line)."""
    check_identifier_system(identifier_system)
    shared = read_participants(participants) if participants is not None else None
    files, problems = input_files(paths)
    keys = ThreadKeys()
    created = Created(shared)
    report = Report(files=len(files))
    pending: list[tuple[Any, Origin]] = []
    try:
        for done, file in enumerate(files, 1):
            found, file_problems = read_bundles(file, identifier_system=identifier_system, keys=keys, shared=shared,
                                                created=created, read_model=read_model,
                                                allow_outside_files=allow_outside_files)
            problems.extend(file_problems)
            if not problems:  # (every file is still read for its problems; nothing more is validated)
                pending.extend(found)
                del found
                if len(pending) >= VALIDATE_BATCH:
                    _validate_pending(pending, report, limits=limits, structure=structure, workers=workers)
            if on_file is not None:
                on_file(done, len(files))
    finally:
        keys.close()
    if problems:
        raise SpecError(problems)
    creates = created.bundles()
    report.participant_bundles = len(creates)
    pending += creates
    _validate_pending(pending, report, limits=limits, structure=structure, workers=workers)
    report.issues += created.displays.issues
    return report


VALIDATE_BATCH = 500
"""Bundles validated together (`validate_many`, on every core) as the files are read: at least this many, and a
file's at most (its bundles are built together), so a run holds one file's bundles at a time, not every file's.
(Its forked workers share the parent's memory: a larger batch shows in their peak too.)"""


def _validate_pending(pending: list[tuple[Any, Origin]], report: Report, *, limits: str | Limits, structure: bool,
                      workers: int | None) -> None:
    """Validate the bundles of `pending` into `report` (their issues, with file and line), and let them go."""
    start = 0
    while start < len(pending):  # (in order: runs of bundles on every core; a long thread's bundle a window at a time)
        if isinstance(pending[start][0], BuiltEntries):
            report.issues += validate_built(pending[start][0], limits=limits, structure=structure)
            start += 1
            continue
        end = next((k for k in range(start, len(pending)) if isinstance(pending[k][0], BuiltEntries)), len(pending))
        results = validate_many([b for b, _ in pending[start:end]], limits=limits, structure=structure,
                                workers=workers)
        for (_, origin), issues in zip(pending[start:end], results, strict=True):
            report.issues.extend(locate(issues, origin) if issues else ())
        start = end
    report.bundles += len(pending)
    pending.clear()
