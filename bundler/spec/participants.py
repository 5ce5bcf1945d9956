"""A participants file shared by many specs: `participants: {alias: {reference?, display?, create?}}`, the
spec's own `participants` block under the same key, read and checked by the same model.

    shared = read_participants("people.yaml")         # SpecError with the file's lines
    specs = load_specs(["threads/"], participants=shared)

A spec's own participants win; the thread's participants are its own (in the order written), then each
participant of the file the thread uses (subject, sender, messages' senders and recipients) in the order
of first use (`merged`).

A participant to create is one resource, found by the conditional reference of its first identifier, whoever
names it: two participants with that reference but different `create` blocks (in one spec, in two, or in a spec
and the file) are a problem naming both (`Creates`), as `load` creates each reference once, from the first.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ..errors import Problem, SpecError
from .model import Participant, Participants, ParticipantsDocument, ThreadSpec
from .problems import problems_of
from .source import Document, Path_


@dataclass(frozen=True)
class ParticipantsFile:
    """The participants of a participants file, and where each was written."""

    file: str
    participants: Participants
    doc: Document

    def __len__(self) -> int:
        return len(self.participants)

    def merged(self, data: Any) -> tuple[Any, frozenset[str]]:
        """Thread data with the file's participants it uses added after its own, and the aliases added."""
        if not isinstance(data, dict):
            return data, frozenset()
        own = data.get("participants", {})
        if not isinstance(own, Mapping):
            return data, frozenset()
        added: dict[str, Participant] = {}
        for alias in _used(data):
            if alias not in own and alias not in added and alias in self.participants:
                added[alias] = self.participants[alias]
        if not added:
            return data, frozenset()
        return {**data, "participants": {**own, **added}}, frozenset(added)


def _used(data: Mapping[str, Any]) -> Iterator[str]:
    """The aliases a thread's data names, in order of first use (not checked: anything not a string is skipped)."""
    subject = data.get("subject")
    if isinstance(subject, str) and "/" not in subject and "?" not in subject:
        yield subject
    if isinstance(sender := data.get("sender"), str):
        yield sender
    messages = data.get("messages")
    for m in messages if isinstance(messages, list | tuple) else ():
        if not isinstance(m, Mapping):
            continue
        if isinstance(s := m.get("sender"), str):
            yield s
        recipient = m.get("recipient")
        yield from (r for r in (recipient if isinstance(recipient, list | tuple) else ()) if isinstance(r, str))


class Creates:
    """The participants to create read so far (a participants file's, then each spec's), by reference: the first
    with each, and where it is written. Another with the same reference but a different `create` is a problem at
    its own `create`, naming the first's file and line: `load` would create the first and silently use it for
    both."""

    def __init__(self) -> None:
        self._first: dict[str, tuple[Participant, str]] = {}  # reference → (participant, "file:line")

    def add_file(self, shared: ParticipantsFile) -> list[Problem]:
        """Every participant to create of a participants file; problems for those that contradict one before."""
        out = []
        for alias, p in shared.participants.items():
            if p.create is None:
                continue
            path: Path_ = ("participants", alias, "create")
            pos = shared.doc.position(path)
            if (why := self._add(p, f"{shared.file}:{pos[0]}" if pos else shared.file)) is not None:
                out.append(shared.doc.problem(path, why))
        return out

    def add(self, spec: ThreadSpec) -> list[Problem]:
        """Every participant to create of `spec` (its own, and those it takes from a participants file); problems
        for those that contradict one before."""
        out = []
        for alias, p in spec.participants.items():
            if p.create is None:
                continue
            file, line = spec.origin(None, "participants", alias, "create")
            if (why := self._add(p, f"{file}:{line}" if line is not None else file)) is not None:
                out.append(spec.problem(("participants", alias, "create"), why))
        return out

    def _add(self, p: Participant, where: str) -> str | None:
        if p.create is None:
            return None
        first, at = self._first.setdefault(p.reference, (p, where))
        if first.create == p.create:
            return None
        return (f"creates {p.reference} differently from participants.{first.alias} at {at} (the same first "
                f"identifier, another create): `load` creates it once, from the first it reads; make the two create "
                f"blocks the same, or give one another identifier")


def check_participants(doc: Document) -> tuple[ParticipantsFile | None, list[Problem]]:
    """The participants of one parsed participants document, or every problem with its position (two that would
    create one resource differently among them: `Creates`)."""
    if not isinstance(doc.data, dict) or "participants" not in doc.data:
        return None, [doc.problem((), "expected a participants file: a mapping with one key, participants: "
                                      "{alias: {reference, display, create}}")]
    try:
        parsed = ParticipantsDocument.model_validate(doc.data)
    except ValidationError as exc:
        return None, problems_of(exc, doc, ParticipantsDocument)
    shared = ParticipantsFile(doc.file, parsed.participants, doc)
    problems = Creates().add_file(shared)
    return (None, problems) if problems else (shared, [])


def read_participants(path: str | Path | ParticipantsFile) -> ParticipantsFile:
    """The participants file at `path` (YAML or JSON), checked; SpecError listing every problem with its line."""
    if isinstance(path, ParticipantsFile):
        return path
    from .files import read_documents  # (files reads specs with this module's help)

    docs, problems = read_documents(Path(path))
    if not problems and len(docs) != 1:
        problems = [Problem(str(path), None, None, "", f"expected one participants document, found {len(docs)}")]
    if problems:
        raise SpecError(problems)
    shared, problems = check_participants(docs[0])
    if shared is None:
        raise SpecError(problems)
    return shared
