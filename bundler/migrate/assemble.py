"""One conversation's rows (in sent order) → a ThreadSpec, and the rows that cannot be in it.

Judged here, with the whole conversation in view: thread key collisions, duplicate message ids,
participants the table and rules cannot resolve, and replies (to an earlier accepted message of the
same conversation only). Thread-level values (topic, subject, category, status) come from the first
accepted message that has one. The header's sender and sent are those of the first accepted message.
A conversation whose every row is rejected gives no thread.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..spec.model import DEFAULT_STATUS, Attachment, Coding, Message, Participant, ThreadSpec
from ..vocabulary import reference_type
from . import extract as f
from .extract import (
    F_CATEGORY,
    F_CONV,
    F_ID,
    F_RECIPIENTS,
    F_REPLY,
    F_SENDER,
    F_SENDER_DISPLAY,
    F_SUBJECT,
    F_THREAD_STATUS,
    F_TOPIC,
)
from .keys import KEY_FITS as _KEY_FITS
from .keys import alias as make_alias
from .keys import thread_key
from .mapping import MigrationMapping
from .participants import Resolved
from .rejects import Reject


@dataclass
class Assembled:
    spec: ThreadSpec | None
    rejects: list[tuple[int, Reject]] = field(default_factory=list)


_ALIAS_CACHE = 20_000  # legacy user id → alias entries kept across threads (then emptied)


class Assembler:
    """Callable: (thread key, records in order) → Assembled.

    It runs once per thread, over every message: the common case (every user already seen in the
    thread, no collision) takes the fewest steps, and aliases of legacy ids are cached across threads.
    """

    def __init__(self, mapping: MigrationMapping, resolve: Callable[[str], Resolved | str], files: Sequence[str]
                 ) -> None:
        self.mapping = mapping
        self.resolve = resolve
        self.files = files
        self._aliases: dict[str, str] = {}  # legacy user id → make_alias(id), bounded

    def _reject(self, rec: list[Any], reason: str, message: str) -> tuple[int, Reject]:
        i = rec[f.F_FILE]
        return i, Reject(self.files[i], rec[f.F_ROW], rec[f.F_LINE], reason, message, rec[f.F_RAW])

    def _unresolved(self, rec: list[Any], people: dict[str, Resolved]) -> tuple[str, str] | None:
        """The first user of the message (sender, recipients, subject) not in `people` that cannot be
        resolved, as a reject reason; None if all can."""
        users = [("sender", rec[f.F_SENDER])] + [("recipient", r) for r in rec[f.F_RECIPIENTS]]
        if rec[f.F_SUBJECT] is not None:
            users.append(("subject", rec[f.F_SUBJECT]))
        for role, user in users:
            if user in people:
                continue
            got = self.resolve(user)
            if isinstance(got, str):
                return "unknown-participant", f"{role}: {got}"
        return None

    def __call__(self, key: str, records: list[list[Any]]) -> Assembled:
        out = Assembled(None)
        reject = out.rejects.append
        rejected_ids: set[str] = set()  # legacy ids of rejected rows (tombstones first, then as found)
        if len(records[0]) == 2:
            rejected_ids.update(rec[1] for rec in records if len(rec) == 2)
            records = [rec for rec in records if len(rec) != 2]
            if not records:
                return out
        convs = {rec[F_CONV] for rec in records}
        if len(convs) > 1:  # different legacy ids sanitised to one key: the one that is the key keeps it
            for rec in records:
                if rec[F_CONV] != key:
                    others = ", ".join(repr(c) for c in sorted(convs - {rec[F_CONV]}))
                    reject(self._reject(rec, "id-collision", f"conversation {rec[F_CONV]!r} becomes thread key "
                                                             f"{key!r}, as does {others}"))
            records = [rec for rec in records if rec[F_CONV] == key]
            if not records:
                return out
        all_ids = {rec[F_ID] for rec in records}
        accepted: list[list[Any]] = []
        accepted_ids: dict[str, str] = {}  # legacy id → message id
        used_ids: dict[str, str] = {}  # message id → legacy id
        people: dict[str, Resolved] = {}  # legacy user id → (reference, display), in order of appearance
        resolve = self.resolve
        fits = _KEY_FITS
        for rec in records:
            mid, sender, recipients, target = rec[F_ID], rec[F_SENDER], rec[F_RECIPIENTS], rec[F_REPLY]
            why: tuple[str, str] | None = None
            msg_key = mid if fits(mid) else thread_key(mid)
            if mid in accepted_ids:
                why = ("duplicate-message-id", f"message id {mid!r} is already used in conversation "
                                               f"{rec[F_CONV]!r}")
            elif msg_key in used_ids:
                why = ("id-collision", f"message id {mid!r} becomes {msg_key!r}, as does {used_ids[msg_key]!r}")
            elif sender not in people or (rec[F_SUBJECT] is not None and rec[F_SUBJECT] not in people) or \
                    any(r not in people for r in recipients):
                why = self._unresolved(rec, people)
            if why is None and target is not None and target not in accepted_ids:
                if target in rejected_ids:
                    why = ("reply-to-rejected", f"replies to {target!r}, which was rejected")
                elif target in all_ids:
                    why = ("reply-to-later", f"replies to {target!r}, which is not an earlier message "
                                             "(sent after this one, or this one itself)")
                else:
                    why = ("reply-to-unknown", f"replies to {target!r}, which is not in conversation "
                                               f"{rec[F_CONV]!r}")
            if why is not None:
                reject(self._reject(rec, *why))
                if mid not in accepted_ids:
                    rejected_ids.add(mid)
                continue
            if sender not in people:
                people[sender] = resolve(sender)  # type: ignore[assignment]  # resolved above
            for user in recipients:
                if user not in people:
                    people[user] = resolve(user)  # type: ignore[assignment]
            accepted_ids[mid] = msg_key
            used_ids[msg_key] = mid
            accepted.append(rec)
        if accepted:
            out.spec = self._spec(key, accepted, accepted_ids, people)
        return out

    def _alias(self, user: str) -> str:
        found = self._aliases.get(user)
        if found is None:
            if len(self._aliases) >= _ALIAS_CACHE:
                self._aliases.clear()
            found = self._aliases[user] = make_alias(user)
        return found

    def _spec(self, key: str, records: list[list[Any]], ids: dict[str, str], people: dict[str, Resolved]
              ) -> ThreadSpec:
        aliases: dict[str, str] = {}
        taken: set[str] = set()
        for user in people:
            a = base = self._alias(user)
            n = 1
            while a in taken:  # only if two ids sanitise alike: deterministic by order of appearance
                n += 1
                a = f"{base[:60]}-{n}"
            aliases[user] = a
            taken.add(a)
        names: dict[str, str] = {}
        for rec in records:
            if rec[F_SENDER_DISPLAY] and rec[F_SENDER] not in names:
                names[rec[F_SENDER]] = rec[F_SENDER_DISPLAY]
        participants = {aliases[u]: Participant(aliases[u], ref, display or names.get(u))
                        for u, (ref, display) in people.items()}
        everyone = set(participants)
        others: dict[str, set[str]] = {}  # sender alias → everyone but the sender: the default recipients
        messages = []
        for (_, _, _, _, mid, sender_id, _, _, recipient_ids, sent, text, url, att_type, title, reply, status,
             *_) in records:
            sender = aliases[sender_id]
            recipient: tuple[str, ...] | None = None
            if recipient_ids:
                recipient = tuple([aliases[u] for u in recipient_ids])
                default = others.get(sender)
                if default is None:
                    default = others[sender] = everyone - {sender}
                if len(recipient) == len(default) and set(recipient) == default:
                    recipient = None  # the default: everyone but the sender
            messages.append(Message(
                id=ids[mid], sender=sender, sent=sent, text=text,
                attachments=(Attachment(url, att_type, title),) if url is not None else (),
                recipient=recipient, reply_to=ids[reply] if reply is not None else None, status=status,
            ))

        def first(i: int) -> Any:
            return next((rec[i] for rec in records if rec[i] is not None), None)

        subject: str | None = None
        if self.mapping.subject_type is not None:
            wanted = self.mapping.subject_type
            subject = next((a for a, p in participants.items() if reference_type(p.reference) == wanted), None)
        elif (user := first(F_SUBJECT)) is not None:
            got = self.resolve(user)
            assert not isinstance(got, str)
            subject = aliases.get(user, got[0])
        category = first(F_CATEGORY)
        coding = ()
        if category is not None:
            system, code = category.split("|", 1)
            coding = (Coding(code=code, system=system),)
        return ThreadSpec(
            key=key,
            topic=first(F_TOPIC) or f"Conversation {records[0][F_CONV]}",
            participants=participants,
            messages=tuple(messages),
            subject=subject,
            sender=messages[0].sender,
            sent=messages[0].sent,
            status=first(F_THREAD_STATUS) or DEFAULT_STATUS,
            category=coding,
        )

