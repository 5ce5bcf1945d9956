"""Participants created when missing: each distinct one ensured once per run, before the threads that need it.

A participant with `create` is referenced by its threads conditionally (`Patient?identifier=s|v`); a strict
Medplum fails a whole transaction whose conditional reference matches nothing. So before a window's threads
are sent, the participants they use are made sure of: the journal's record (an earlier run ensured it), else a
conditional create (`ifNoneExist` on its first identifier: 201 created, 200 there already), at most
`MAX_CONDITIONAL_ENTRIES` to a transaction. A conditional create is safe to send again, so a lost answer is
simply sent again. A transaction refused as a whole (an atomic project: one bad participant fails its
neighbours) is sent again one participant a request, so that only the bad one fails; the threads that need a
participant that could not be ensured are not sent, and say why at the participant's spec line.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import orjson

from ..build import participant_bundles
from ..errors import AuthError, ServerError, UnknownOutcome
from ..medplum.answer import EntryAnswer
from ..medplum.client import FhirClient
from ..spec.model import Participant, ThreadSpec
from ..vocabulary import MAX_CONDITIONAL_ENTRIES, SEARCH_POINTS, WRITE_POINTS
from .journal import Journal
from .report import ParticipantCounts

MAX_TRIES = 4
"""Times a participant's conditional create is sent (a lost answer, a 429 inside a batch) before giving up."""


@dataclass
class Ensurer:
    """The participants of one load: ensured once each (`ensure`), what it came to in `counts`."""

    client: FhirClient
    journal: Journal
    dry_run: bool = False
    counts: ParticipantCounts = field(default_factory=ParticipantCounts)
    requests: int = 0
    points: int = 0
    ensured: dict[str, str] = field(default_factory=dict)  # reference → Type/<id> (a dry run: '' for planned)
    failed: dict[str, str] = field(default_factory=dict)  # reference → why

    def ensure(self, threads: Iterable[ThreadSpec]) -> None:
        """Make sure of every participant with `create` that `threads` use and this run has not seen yet."""
        todo: dict[str, Participant] = {}
        for spec in threads:
            for p in spec.participants.values():
                if p.create is not None and p.reference not in self.ensured and p.reference not in self.failed:
                    todo.setdefault(p.reference, p)
        if not todo:
            return
        known = self.journal.get_resources(list(todo))
        self.ensured |= known
        self.counts.existing += len(known)
        left = [p for ref, p in todo.items() if ref not in known]
        if self.dry_run:
            self._plan(left)
            return
        for group in _rounds(left):
            for start in range(0, len(group), MAX_CONDITIONAL_ENTRIES):
                self._send(group[start:start + MAX_CONDITIONAL_ENTRIES])

    def _plan(self, participants: list[Participant]) -> None:
        self.counts.planned += len(participants)
        self.requests += -(-len(participants) // MAX_CONDITIONAL_ENTRIES)
        self.points += (WRITE_POINTS + SEARCH_POINTS) * len(participants)
        self.ensured |= {p.reference: "" for p in participants}

    def _send(self, group: list[Participant]) -> None:
        """Conditional creates for `group`, sent until each is ensured or refused (or tried MAX_TRIES times)."""
        for _ in range(MAX_TRIES):
            (bundle,) = participant_bundles(group, size=len(group))
            try:
                answer = self.client.transaction(orjson.dumps(bundle), entries=len(group),
                                                 cost=(WRITE_POINTS + SEARCH_POINTS) * len(group))
            except UnknownOutcome:
                self.requests += 1
                continue  # a conditional create is safe to send again
            except AuthError:
                raise  # (every request would be refused the same way: the load stops)
            except ServerError as exc:
                self.requests += 1
                if len(group) > 1:  # refused as a whole: one at a time finds the one(s) to blame
                    for p in group:
                        self._send([p])
                else:
                    self._refused(group[0], str(exc))
                return
            self.requests += 1
            group = self._apply(group, answer.entries)
            if not group:
                return
        for p in group:
            self._refused(p, f"no answer after {MAX_TRIES} tries (lost, or throttled)")

    def _apply(self, group: list[Participant], entries: Sequence[EntryAnswer]) -> list[Participant]:
        """Record each entry's outcome; the participants left to send again (answers throttled or missing)."""
        again: list[Participant] = []
        found: dict[str, str] = {}
        for n, p in enumerate(group):
            entry = entries[n] if n < len(entries) else None
            if entry is not None and entry.ok and (ref := entry.reference):
                found[p.reference] = ref
                if entry.status == 201:
                    self.counts.created += 1
                else:
                    self.counts.existing += 1
            elif entry is None or entry.throttled or not entry.status_line:
                again.append(p)
            else:
                self._refused(p, f"HTTP {entry.code}: {entry.outcome_text or 'refused'}")
        self.ensured |= found
        self.journal.put_resources(found)
        return again

    def _refused(self, participant: Participant, why: str) -> None:
        self.failed[participant.reference] = self.client.all_secrets().scrub(why)
        self.counts.failed += 1

    def why_not(self, spec: ThreadSpec) -> str | None:
        """Why `spec` cannot be sent: the first of its participants that could not be ensured, at its spec line;
        None when every one of them is there."""
        for alias, p in spec.participants.items():
            if p.create is not None and (why := self.failed.get(p.reference)) is not None:
                file, line = spec.origin(None, "participants", alias)
                where = f"{file}:{line}" if line else file
                return f"{where}: participants.{alias}: could not be created ({p.reference}): {why}"
        return None


def _rounds(participants: list[Participant]) -> list[list[Participant]]:
    """`participants` in rounds: one whose `create` refers to another of them (a RelatedPerson's `patient`, say)
    comes in a round after it, as a conditional reference matches only what exists when its transaction starts."""
    rounds: list[list[Participant]] = []
    left = list(participants)
    while left:
        refs = {p.reference for p in left}
        ready = [p for p in left if not any(r != p.reference and orjson.dumps(r).decode() in str(p.create)
                                            for r in refs)] or left
        rounds.append(ready)
        left = [p for p in left if p not in ready]
    return rounds

