"""Spec files: paths → documents → checked ThreadSpecs, or every problem in every file at once.

    specs = load_specs(["fixtures/threads"])          # raises SpecError listing every problem
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from pathlib import Path

from ..errors import Problem, SpecError
from .model import ThreadSpec, check_document
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
            found = sorted(p for p in path.rglob("*") if p.suffix in suffixes and p.is_file())
            if not found:
                kinds = ", ".join(f"*{s}" for s in suffixes)
                problems.append(Problem(str(path), None, None, "", f"folder has no {kinds} files"))
            files.extend(found)
        elif path.is_file():
            files.append(path)
        elif path.exists():
            problems.append(Problem(str(path), None, None, "", "not a regular file or folder"))
        else:
            problems.append(Problem(str(path), None, None, "", "no such file or folder"))
    return files, problems


def read_documents(file: Path | str) -> tuple[list[Document], list[Problem]]:
    """The thread documents in one file (or '-' for stdin)."""
    name = "<stdin>" if file == "-" else str(file)
    try:
        raw = sys.stdin.buffer.read() if file == "-" else Path(file).read_bytes()
    except OSError as exc:
        return [], [Problem(name, None, None, "", f"cannot read: {exc.strerror}")]
    text, problems = decode(raw, name)
    if text is None:
        return [], problems
    kind = None if file == "-" else ("json" if Path(file).suffix == ".json" else "yaml")
    docs, problems = parse_text(text, name, kind=kind)
    if not docs and not problems:
        problems = [Problem(name, None, None, "", "no thread in this file")]
    return list(split_threads(docs)), problems


def load_specs(paths: Iterable[str | Path]) -> list[ThreadSpec]:
    """Every thread in `paths`, checked; raises SpecError with every problem in every file."""
    files, problems = spec_files(paths)
    specs: list[ThreadSpec] = []
    seen: dict[str, ThreadSpec] = {}
    for file in files:
        docs, file_problems = read_documents(file)
        problems.extend(file_problems)
        for doc in docs:
            spec, doc_problems = check_document(doc)
            problems.extend(doc_problems)
            if spec is None:
                continue
            if spec.key in seen:
                other_file, other_line = seen[spec.key].origin()
                problems.append(doc.problem(("thread",), f"thread key {spec.key!r} is already used by "
                                                         f"{other_file}:{other_line}"))
                continue
            seen[spec.key] = spec
            specs.append(spec)
    if problems:
        raise SpecError(problems)
    return specs
