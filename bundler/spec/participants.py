"""A participants file shared by many specs: `participants: {alias: {reference?, display?, create?}}`, the
spec's own `participants` block under the same key, read and checked by the same model.

    shared = read_participants("people.yaml")         # SpecError with the file's lines
    specs = load_specs(["threads/"], participants=shared)

A spec's own participants win; the thread's participants are its own (in the order written), then each
participant of the file the thread uses (subject, sender, messages' senders and recipients) in the order
of first use (`merged`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ..errors import Problem, SpecError
from .model import Participant, Participants, ParticipantsDocument
from .problems import problems_of
from .source import Document


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


def check_participants(doc: Document) -> tuple[ParticipantsFile | None, list[Problem]]:
    """The participants of one parsed participants document, or every problem with its position."""
    if not isinstance(doc.data, dict) or "participants" not in doc.data:
        return None, [doc.problem((), "expected a participants file: a mapping with one key, participants: "
                                      "{alias: {reference, display, create}}")]
    try:
        parsed = ParticipantsDocument.model_validate(doc.data)
    except ValidationError as exc:
        return None, problems_of(exc, doc, ParticipantsDocument)
    return ParticipantsFile(doc.file, parsed.participants, doc), []


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
