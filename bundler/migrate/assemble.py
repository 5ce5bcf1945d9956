"""One conversation's rows (in sent order) → a ThreadSpec, and the rows that cannot be in it.

Judged here, with the whole conversation in view: thread key collisions, duplicate message ids,
participants the table and rules cannot resolve, and replies (to an earlier accepted message of the
same conversation only). Thread-level values (topic, subject, category, status) come from the first
accepted message that has one. The header's sender and sent are those of the first accepted message.
A conversation whose every row is rejected gives no thread.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import cast

from ..spec.model import Attachment, Coding, Message, Participant, ThreadSpec
from ..vocabulary import DEFAULT_STATUS, reference_type
from .keys import KEY_FITS as _KEY_FITS
from .keys import alias as make_alias
from .keys import thread_key
from .mapping import MigrationMapping
from .participants import Resolved
from .records import MessageRecord, Tombstone
from .rejects import Reject


@dataclass
class Assembled:
    spec: ThreadSpec | None
    rejects: list[tuple[int, Reject]] = field(default_factory=list)


_ALIAS_CACHE = 20_000  # legacy user id → alias entries kept across threads (then emptied)


class Assembler:
    """Callable: (thread key, its records in sent order, tombstones first) → Assembled.

    It runs once per thread, over every message: the common case (every user already seen in the
    thread, no collision) takes the fewest steps, and aliases of legacy ids are cached across threads.
    """

    def __init__(self, mapping: MigrationMapping, resolve: Callable[[str], Resolved | str], files: Sequence[str]
                 ) -> None:
        self.mapping = mapping
        self.resolve = resolve
        self.files = files
        self._aliases: dict[str, str] = {}  # legacy user id → make_alias(id), bounded

    def _reject(self, rec: MessageRecord, reason: str, message: str) -> tuple[int, Reject]:
        return rec.file, Reject(self.files[rec.file], rec.row, rec.line, reason, message, rec.raw)

    def _unresolved(self, rec: MessageRecord, people: dict[str, Resolved]) -> tuple[str, str] | None:
        """The first user of the message (sender, recipients, subject) not in `people` that cannot be
        resolved, as a reject reason; None if all can."""
        users = [("sender", rec.sender)] + [("recipient", r) for r in rec.recipients]
        if rec.subject is not None:
            users.append(("subject", rec.subject))
        for role, user in users:
            if user in people:
                continue
            got = self.resolve(user)
            if isinstance(got, str):
                return "unknown-participant", f"{role}: {got}"
        return None

    def __call__(self, key: str, items: list[MessageRecord | Tombstone]) -> Assembled:
        out = Assembled(None)
        reject = out.rejects.append
        rejected_ids: set[str] = set()  # legacy ids of rejected rows (tombstones first, then as found)
        records: list[MessageRecord]
        if isinstance(items[0], Tombstone):  # the store puts a group's tombstones first
            records = []
            for item in items:
                if isinstance(item, Tombstone):
                    rejected_ids.add(item.message_id)
                else:
                    records.append(item)
            if not records:
                return out
        else:
            records = cast(list[MessageRecord], items)  # no tombstone first: none at all
        convs = {rec.conversation for rec in records}
        if len(convs) > 1:  # different legacy ids sanitised to one key: the one that is the key keeps it
            for rec in records:
                if rec.conversation != key:
                    others = ", ".join(repr(c) for c in sorted(convs - {rec.conversation}))
                    reject(self._reject(rec, "id-collision", f"conversation {rec.conversation!r} becomes thread "
                                                             f"key {key!r}, as does {others}"))
            records = [rec for rec in records if rec.conversation == key]
            if not records:
                return out
        all_ids = {rec.message_id for rec in records}
        accepted: list[MessageRecord] = []
        accepted_ids: dict[str, str] = {}  # legacy id → message id
        used_ids: dict[str, str] = {}  # message id → legacy id
        people: dict[str, Resolved] = {}  # legacy user id → (reference, display), in order of appearance
        resolve = self.resolve
        fits = _KEY_FITS
        for rec in records:
            mid, sender, recipients, target = rec.message_id, rec.sender, rec.recipients, rec.reply_to
            why: tuple[str, str] | None = None
            msg_key = mid if fits(mid) else thread_key(mid)
            if mid in accepted_ids:
                why = ("duplicate-message-id", f"message id {mid!r} is already used in conversation "
                                               f"{rec.conversation!r}")
            elif msg_key in used_ids:
                why = ("id-collision", f"message id {mid!r} becomes {msg_key!r}, as does {used_ids[msg_key]!r}")
            elif sender not in people or (rec.subject is not None and rec.subject not in people) or \
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
                                               f"{rec.conversation!r}")
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

    def _spec(self, key: str, records: list[MessageRecord], ids: dict[str, str], people: dict[str, Resolved]
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
            if rec.sender_display and rec.sender not in names:
                names[rec.sender] = rec.sender_display
        participants = {aliases[u]: Participant(alias=aliases[u], reference=ref,
                                                 display=display or names.get(u))
                        for u, (ref, display) in people.items()}
        everyone = set(participants)
        others: dict[str, set[str]] = {}  # sender alias → everyone but the sender: the default recipients
        messages = []
        for rec in records:
            sender = aliases[rec.sender]
            recipient: tuple[str, ...] | None = None
            if rec.recipients:
                recipient = tuple([aliases[u] for u in rec.recipients])
                default = others.get(sender)
                if default is None:
                    default = others[sender] = everyone - {sender}
                if len(recipient) == len(default) and set(recipient) == default:
                    recipient = None  # the default: everyone but the sender
            url, reply = rec.attachment_url, rec.reply_to
            messages.append(Message(
                id=ids[rec.message_id], sender=sender, sent=rec.sent, text=rec.text,
                attachments=(Attachment(url=url, content_type=rec.attachment_type, title=rec.attachment_title),)
                if url is not None else (),
                recipient=recipient, reply_to=ids[reply] if reply is not None else None, status=rec.status,
            ))

        def first(values: Iterable[str | None]) -> str | None:
            return next((v for v in values if v is not None), None)

        subject: str | None = None
        if self.mapping.subject_type is not None:
            wanted = self.mapping.subject_type
            subject = next((a for a, p in participants.items() if reference_type(p.reference) == wanted), None)
        elif (subject_id := first(rec.subject for rec in records)) is not None:
            got = self.resolve(subject_id)
            assert not isinstance(got, str)  # resolved when its message was accepted
            subject = aliases.get(subject_id, got[0])
        category = first(rec.category for rec in records)
        coding: tuple[Coding, ...] = ()
        if category is not None:
            system, code = category.split("|", 1)
            coding = (Coding(code=code, system=system),)
        return ThreadSpec(
            key=key,
            topic=first(rec.topic for rec in records) or f"Conversation {records[0].conversation}",
            participants=participants,
            messages=tuple(messages),
            subject=subject,
            sender=messages[0].sender,
            sent=messages[0].sent,
            status=first(rec.thread_status for rec in records) or DEFAULT_STATUS,
            category=coding,
        )

