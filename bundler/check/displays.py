"""What `validate` says of a spec's participant displays: Medplum keeps none on a conditional reference. Pure.

A real Medplum replaces every conditional reference it resolves with its own Reference to what it matched, named
by its own rendering of that resource (`vocabulary.stored_reference`): a participant's `display` on a conditional
reference is never stored. `ref.display-replaced` says so at the display's line, and by what it is replaced when
the spec creates the participant (`create`): once per place it is written, however many specs use it.

    check = DisplayCheck()
    for spec in specs:
        check.add(spec)
    check.issues
"""

from __future__ import annotations

import dataclasses

from ..spec.model import ThreadSpec
from ..vocabulary import is_conditional_reference, reference_type, stored_reference
from .issues import Issue, make_issue

WHY = "Medplum names a conditional reference after the resource it matches"


class DisplayCheck:
    """The `ref.display-replaced` warnings of the specs added, each display once (by where it is written)."""

    def __init__(self) -> None:
        self.issues: list[Issue] = []
        self._seen: set[tuple[str, int | None, str]] = set()

    def add(self, spec: ThreadSpec) -> None:
        for alias, p in spec.participants.items():
            if p.display is None or not is_conditional_reference(p.reference):
                continue
            file, line = spec.origin(None, "participants", alias, "display")
            if (file, line, alias) in self._seen:
                continue
            self._seen.add((file, line, alias))
            kind = reference_type(p.reference)
            if p.create is None:
                why = f"will be replaced by Medplum's name for the {kind} it matches ({WHY})"
            else:
                stored = stored_reference({**p.create.resource(), "id": "-"}).get("display")
                if stored == p.display:
                    continue
                why = (f"will be stored as {stored!r} ({WHY})" if stored is not None else
                       f"will not be stored: the {kind} it creates has no name, and {WHY}")
            issue = make_issue("ref.display-replaced", f"participants.{alias}.display", f"{p.display!r} {why}")
            self.issues.append(dataclasses.replace(issue, file=file, line=line))
