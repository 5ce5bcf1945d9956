"""What the fields of a thread mean together, the rules `ThreadSpec` runs once its fields are read (or beside
their problems, on what it could still read): aliases known (to the thread, or to the participants file it takes
participants from), reference types FHIR allows per role, message ids unique, replies to earlier messages, read
state that fits the thread. Each rule gives pydantic error details (`error`), turned into `SpecError` by
the model.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

from pydantic_core import ErrorDetails

from ..vocabulary import (
    COMMUNICATION_TARGETS,
    DRAFT_STATUS,
    READ_RECEIPT_OWNERS,
    SIMPLE_MAX_PARTICIPANTS,
    parse_instant,
    reference_type,
)
from .records import error
from .scalars import (
    as_alias,
    as_key,
    not_allowed,
)
from .source import Path_

if TYPE_CHECKING:
    from .model import Message, Participant, ThreadSpec
    from .participants import ParticipantsFile

NO_CONTENT: Final = "a message needs text or attachments"


def default_ids(data: dict[str, Any]) -> tuple[dict[str, Any], frozenset[int]]:
    """A message without an id gets its 1-based position: `data` with those ids filled, and their indexes."""
    messages = data.get("messages")
    if type(messages) is not list and type(messages) is not tuple:
        return data, frozenset()
    filled: list[Any] | None = None
    for i, m in enumerate(messages):
        if type(m) is dict and "id" not in m:
            if filled is None:
                filled = list(messages)
            filled[i] = {**m, "id": str(i + 1)}
    if filled is None:
        return data, frozenset()
    return {**data, "messages": filled}, frozenset(i for i, m in enumerate(messages) if filled[i] is not m)


class MessageView:
    """The parts of a message the meaning rules read, from data that did not validate: None where invalid."""

    __slots__ = ("empty", "id", "recipient", "reply_to", "sender")

    def __init__(self, data: Mapping[str, Any]) -> None:
        self.empty = "text" not in data and "attachments" not in data
        self.id = as_key(data.get("id"))
        self.sender = as_alias(data.get("sender"))
        self.reply_to = as_key(data.get("reply_to"))
        recipient = data.get("recipient")
        self.recipient = tuple(map(as_alias, recipient)) if isinstance(recipient, list | tuple) else None


def _prefixes(types: frozenset[str]) -> tuple[str, ...]:
    return tuple(f"{t}{sep}" for t in sorted(types) for sep in "/?")


_SUBJECT_PREFIXES = _prefixes(COMMUNICATION_TARGETS["subject"])
_NOT_SENDER_PREFIXES = _prefixes(COMMUNICATION_TARGETS["recipient"] - COMMUNICATION_TARGETS["sender"])
"""A participant's reference is of a type FHIR allows as a recipient (its own check): it may not send if it
starts with one of these (`Group/`, `Group?`, ...)."""


def names_someone(messages: Sequence[Any], subject: str | None, sender: str | None) -> bool:
    """Whether thread data (as `_Partial.read` gives it) names a participant by alias anywhere."""
    return sender is not None or (subject is not None and "/" not in subject and "?" not in subject) or any(
        m is not None and (m.sender is not None or any(r is not None for r in m.recipient or ())) for m in messages)


_KNOWN_SHOWN: Final = 20
"""Aliases a problem lists as known, at most (a participants file may have hundreds)."""


def not_a_participant(alias: str, participants: Iterable[str], shared: ParticipantsFile | None) -> str:
    """`'bart' is not a participant (known: ...)`; with a participants file, `... of the thread nor of <file>`, and
    the file's aliases are known too."""
    if shared is None:
        return f"{alias!r} is not a participant (known: {', '.join(sorted(participants)) or 'none'})"
    known = sorted({*participants, *shared.participants})
    more = f", and {len(known) - _KNOWN_SHOWN:,} more" if len(known) > _KNOWN_SHOWN else ""
    return (f"{alias!r} is not a participant of the thread nor of {shared.file} "
            f"(known: {', '.join(known[:_KNOWN_SHOWN]) or 'none'}{more})")


def thread_meaning(participants: Mapping[str, Participant | None] | None, messages: Sequence[Any], subject: str | None,
                   sender: str | None, defaults: frozenset[int], shared: ParticipantsFile | None = None
                   ) -> list[ErrorDetails]:
    """What the fields mean together: aliases known (to the thread, or to the participants file `shared` it takes
    participants from), reference types FHIR allows per role, message ids unique, replies to earlier messages.
    Parts that are None (invalid, reported already) are not judged.

    It runs for every thread migrate makes: the common case (every sender seen before, no recipients
    given, no reply) takes the fewest steps."""
    judge = _ThreadJudge(participants, shared)
    if participants is not None:
        if sender is not None:
            judge.sender(("sender",), sender)
        if subject is not None:
            judge.subject(subject)
    ids: dict[str, int] = {}  # message id → index of its first message
    for i, m in enumerate(messages):
        if m is None:
            continue
        judge.content_and_id(i, m, ids, defaults)
        if participants is not None:
            judge.people(i, m)
        if m.reply_to is not None and ids.get(m.reply_to, i) == i:
            judge.reply_not_earlier(i, m.reply_to, ids, messages)
    return judge.errors


class _ThreadJudge:
    """`thread_meaning`'s findings, one method a part of the thread; `may_send` remembers the aliases found fit to
    send, so a sender is judged once."""

    def __init__(self, participants: Mapping[str, Participant | None] | None, shared: ParticipantsFile | None) -> None:
        self.participants = participants
        self.shared = shared
        self.errors: list[ErrorDetails] = []
        self.may_send: set[str] = set()

    def unknown(self, alias: str) -> str:
        return not_a_participant(alias, self.participants or (), self.shared)

    def not_fit(self, loc: Path_, value: str, role: str) -> None:
        p = self.participants.get(value) if self.participants is not None else None
        kind = reference_type(p.reference if p is not None else value)
        self.errors.append(error(f"{value!r} is a {kind}: " + not_allowed(kind, f"the {role}", role), loc, value))

    def sender(self, loc: Path_, alias: str) -> None:
        assert self.participants is not None
        if alias not in self.participants:
            self.errors.append(error(self.unknown(alias), loc, alias))
        elif (p := self.participants[alias]) is not None:
            if p.reference.startswith(_NOT_SENDER_PREFIXES):
                self.not_fit(loc, alias, "sender")
            else:
                self.may_send.add(alias)

    def subject(self, subject: str) -> None:
        assert self.participants is not None
        if "/" in subject or "?" in subject:
            if not subject.startswith(_SUBJECT_PREFIXES):
                self.not_fit(("subject",), subject, "subject")
        elif subject not in self.participants:
            self.errors.append(error(self.unknown(subject), ("subject",), subject))
        elif (p := self.participants[subject]) is not None and not p.reference.startswith(_SUBJECT_PREFIXES):
            self.not_fit(("subject",), subject, "subject")

    def content_and_id(self, i: int, m: Any, ids: dict[str, int], defaults: frozenset[int]) -> None:
        if type(m) is MessageView and m.empty:
            self.errors.append(error(NO_CONTENT, ("messages", i), None))
        mid = m.id
        if mid is not None and ids.setdefault(mid, i) != i:
            how = " (its default id, from its position)" if i in defaults else ""
            loc: Path_ = ("messages", i) if i in defaults else ("messages", i, "id")
            self.errors.append(error(f"duplicate message id {mid!r}{how}: messages[{ids[mid] + 1}] has it too", loc,
                                     mid))

    def people(self, i: int, m: Any) -> None:
        assert self.participants is not None
        if (s := m.sender) is not None and s not in self.may_send:
            self.sender(("messages", i, "sender"), s)
        if m.recipient is None:
            return
        seen: set[str] = set()
        for j, r in enumerate(m.recipient):
            if r is None:  # (not an alias: reported already)
                continue
            if r not in self.participants:
                self.errors.append(error(self.unknown(r), ("messages", i, "recipient", j), r))
            if r in seen:
                self.errors.append(error(f"{r!r} is listed twice", ("messages", i, "recipient", j), r))
            seen.add(r)

    def reply_not_earlier(self, i: int, target: str, ids: dict[str, int], messages: Sequence[Any]) -> None:
        later = any(o is not None and o.id == target for o in messages)
        why = (f"replies to {target!r}, which is not an earlier message (a reply must follow what it answers)"
               if later else f"no message with id {target!r} in this thread"
               + (f" (ids: {', '.join(ids)})" if ids else ""))
        self.errors.append(error(why, ("messages", i, "reply_to"), target))


def read_state_meaning(spec: ThreadSpec, shared: ParticipantsFile | None = None) -> list[ErrorDetails]:
    """What read state means with the rest: only a message's recipients read it, not before it was sent (nor
    was it received before); a draft is read by nobody; the simple model fits threads of two participants."""
    errors: list[ErrorDetails] = []
    count = len(spec.participants)
    if spec.read_model == "simple" and count > SIMPLE_MAX_PARTICIPANTS:
        errors.append(error(f"the simple read model fits 1:1 threads (at most {SIMPLE_MAX_PARTICIPANTS} "
                             f"participants), and this thread has {count}: use read_model: tasks (unread counts "
                             "searchable) or read_model: header-extension (kept on the header, not searchable)",
                             ("read_model",), spec.read_model))
    if spec.read_model == "tasks":
        errors += _task_owners(spec)
    for i, m in enumerate(spec.messages):
        if m.received is None and not m.read_by:
            continue
        errors += _message_reads(spec, i, m, shared)
    return errors


def _task_owners(spec: ThreadSpec) -> list[ErrorDetails]:
    """In the tasks model every recipient owns a read receipt: each participant that receives a message must be a
    type FHIR allows as Task.owner."""
    errors: list[ErrorDetails] = []
    for alias, p in spec.participants.items():
        kind = reference_type(p.reference)
        receives = any(alias != m.sender and (m.recipient is None or alias in m.recipient) for m in spec.messages)
        if receives and kind not in READ_RECEIPT_OWNERS:
            errors.append(error(f"{alias!r} is a {kind}, which cannot own a read-receipt Task (the tasks read "
                                 f"model): FHIR allows {', '.join(sorted(READ_RECEIPT_OWNERS))}; use read_model: "
                                 "header-extension, or name the people", ("participants", alias, "reference"),
                                 p.reference))
    return errors


def _message_reads(spec: ThreadSpec, i: int, m: Message, shared: ParticipantsFile | None) -> list[ErrorDetails]:
    """`read_state_meaning` of message `i`, which has a received time or readers."""
    errors: list[ErrorDetails] = []
    if m.read_by and m.status is None and spec.status == DRAFT_STATUS:
        errors.append(error(f"a draft (it has the thread's status, {DRAFT_STATUS}) was never sent, so nobody read it: "
                             "remove read_by",
                             ("messages", i, "read_by"), dict(m.read_by)))
        return errors
    sent = parse_instant(m.sent) if m.sent is not None else None
    if m.received is not None and sent is not None and parse_instant(m.received) < sent:
        errors.append(error(f"received {m.received}, before the message was sent ({m.sent})",
                             ("messages", i, "received"), m.received))
    recipients = m.recipient if m.recipient is not None else [a for a in spec.participants if a != m.sender]
    for alias, when in m.read_by.items():
        loc: Path_ = ("messages", i, "read_by", alias)
        if alias not in spec.participants:
            errors.append(error(not_a_participant(alias, spec.participants, shared), loc, alias))
        elif alias not in recipients:
            errors.append(error(f"{alias!r} is not a recipient of this message (recipients: "
                                 f"{', '.join(recipients) or 'none'}): only a recipient reads it", loc, alias))
        elif sent is not None and parse_instant(when) < sent:
            errors.append(error(f"read at {when}, before the message was sent ({m.sent})", loc, when))
    return errors
