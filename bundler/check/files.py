"""`validate` over files: Bundle JSON, NDJSON of Bundles, or thread specs (built first), folders recursively.

    report = validate_files(["out/", "threads/homer.yaml"], limits="medplum")
    report.issues, report.errors, report.bundles

A `.json`/`.yaml`/`.yml` document with a `resourceType` is taken as a Bundle; any other is a thread
spec, built with `build_bundle` so issues name the spec file and line. Unreadable or invalid input
raises `SpecError` listing every problem (nothing is validated then).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from ..build import DEFAULT_IDENTIFIER_SYSTEM, build_bundle, check_identifier_system
from ..errors import Problem, SpecError
from ..spec import check_document, read_documents, spec_files
from ..spec.source import Document, parse_json
from .issues import Issue
from .limits import Limits
from .validate import Origin, locate, spec_origin, validate_many

SUFFIXES = (".json", ".ndjson", ".yaml", ".yml")


@dataclass
class Report:
    """What `validate_files` found: every issue (with file and line), and how much was read."""

    issues: list[Issue] = field(default_factory=list)
    files: int = 0
    bundles: int = 0

    @property
    def errors(self) -> int:
        return sum(i.severity == "error" for i in self.issues)

    @property
    def warnings(self) -> int:
        return sum(i.severity == "warning" for i in self.issues)

    def to_dict(self) -> dict[str, Any]:
        return {"files": self.files, "bundles": self.bundles, "errors": self.errors, "warnings": self.warnings,
                "issues": [i.to_dict() for i in self.issues]}


def input_files(paths: Iterable[str | Path]) -> tuple[list[Path], list[Problem]]:
    """Files named, and the *.json/*.ndjson/*.yaml/*.yml files in folders (recursively, sorted)."""
    files, problems = spec_files(paths, tuple(SUFFIXES), stdin=False)
    return [Path(f) for f in files], problems


def _json_origin(file: str, text: str, prefix: tuple[int, ...] = ()) -> Origin:
    """Entry index → line in a JSON file, positions computed on first use (only files with issues pay)."""
    doc: list[Document] = []

    def origin(entry: int | None) -> tuple[str, int | None]:
        if not doc:
            docs, _ = parse_json(text, file)
            doc.append(docs[0] if docs else Document(file, None))
        pos = doc[0].position((*prefix, "entry", entry) if entry is not None else prefix)
        return (file, pos[0] if pos else None)

    return origin


def _doc_origin(doc: Document) -> Origin:
    def origin(entry: int | None) -> tuple[str, int | None]:
        pos = doc.position(("entry", entry) if entry is not None else ())
        return (doc.file, pos[0] if pos else None)

    return origin


def _is_bundle_like(data: Any) -> bool:
    return isinstance(data, dict) and "resourceType" in data


def read_bundles(file: Path, *, identifier_system: str = DEFAULT_IDENTIFIER_SYSTEM
                 ) -> tuple[list[tuple[Any, Origin]], list[Problem]]:
    """(bundle, origin) for every Bundle in `file`, building thread specs (with `identifier_system`); problems
    if unreadable."""
    name = str(file)
    try:
        raw = file.read_bytes()
    except OSError as exc:
        return [], [Problem(name, None, None, "", f"cannot read: {exc.strerror}")]
    out: list[tuple[Any, Origin]] = []
    if file.suffix == ".ndjson":
        problems: list[Problem] = []
        for n, line in enumerate(raw.splitlines(), 1):
            if not line.strip():
                continue
            try:
                out.append((orjson.loads(line), _fixed(name, n)))
            except orjson.JSONDecodeError as exc:  # every bad line is reported, not just the first
                problems.append(Problem(name, n, exc.colno, "", f"not JSON: {exc.msg}"))
        if not out and not problems:
            return [], [Problem(name, None, None, "", "empty file: expected one Bundle per line")]
        return (out, []) if not problems else ([], problems)
    if file.suffix == ".json":
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            data = None  # read_documents below gives a positioned message
        else:
            if _is_bundle_like(data):
                return [(data, _json_origin(name, raw.decode("utf-8-sig")))], []
            if isinstance(data, list) and data and all(_is_bundle_like(d) for d in data):
                text = raw.decode("utf-8-sig")
                return [(d, _json_origin(name, text, (k,))) for k, d in enumerate(data)], []
    docs, doc_problems = read_documents(file)
    problems = doc_problems
    for doc in docs:
        if _is_bundle_like(doc.data):
            out.append((doc.data, _doc_origin(doc)))
            continue
        spec, spec_problems = check_document(doc)
        problems.extend(spec_problems)
        if spec is not None:
            out.append((build_bundle(spec, identifier_system=identifier_system), spec_origin(spec)))
    return (out, []) if not problems else ([], problems)


def _fixed(file: str, line: int) -> Origin:
    return lambda entry: (file, line)


def validate_files(paths: Iterable[str | Path], *, limits: str | Limits = "medplum", structure: bool = True,
                   workers: int | None = None, identifier_system: str = DEFAULT_IDENTIFIER_SYSTEM) -> Report:
    """Validate every Bundle in `paths`, specs built with `identifier_system`; raises SpecError if any input
    cannot be read or built, OptionError if `identifier_system` is unusable in identifier searches."""
    check_identifier_system(identifier_system)
    files, problems = input_files(paths)
    items: list[tuple[Any, Origin]] = []
    for file in files:
        found, file_problems = read_bundles(file, identifier_system=identifier_system)
        problems.extend(file_problems)
        items.extend(found)
    if problems:
        raise SpecError(problems)
    report = Report(files=len(files), bundles=len(items))
    results = validate_many([b for b, _ in items], limits=limits, structure=structure, workers=workers)
    for (_, origin), issues in zip(items, results, strict=True):
        report.issues.extend(locate(issues, origin) if issues else ())
    return report

