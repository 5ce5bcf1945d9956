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
from typing import Any, cast

from ..spec.model import Attachment, Coding, CreateResource, Participant, ThreadSpec
from ..spec.records import without_defaults
from ..spec.source import Document, Path_, Position
from ..vocabulary import DEFAULT_STATUS, SIMPLE_MAX_PARTICIPANTS, parse_instant, reference_type
from .keys import KEY_FITS as _KEY_FITS
from .keys import MESSAGE_ID_FITS, distinct_in_case, message_id, thread_key
from .keys import alias as make_alias
from .mapping import MigrationMapping, read_table
from .participants import Resolved
from .records import MessageRecord, Tombstone
from .rejects import REJECT, WARNING, Reject


def _broken_link(rec: MessageRecord, target: str, rejected_ids: set[str], all_ids: set[str]) -> tuple[str, str]:
    """Why a reply cannot point at `target` (not an accepted earlier message of its conversation)."""
    if target in rejected_ids:
        return "reply-to-rejected", f"replies to {target!r}, which was rejected"
    if target in all_ids:
        return "reply-to-later", f"replies to {target!r}, which is not an earlier message (sent after this one, " \
                                 "or this one itself)"
    return "reply-to-unknown", f"replies to {target!r}, which is not in conversation {rec.conversation!r}"


@dataclass
class Assembled:
    spec: ThreadSpec | None
    rejects: list[tuple[int, Reject]] = field(default_factory=list)


_ALIAS_CACHE = 20_000  # legacy user id → alias entries kept across threads (then emptied)
_PARTICIPANT_CACHE = 4_096  # Participants kept across threads (then emptied): those who recur (staff) are back soon


def _thread_keys(convs: set[str]) -> dict[str, str]:
    """Legacy conversation ids of one group (their keys equal but for case, or equal) → their thread keys:
    of keys that differ only in case the first (in code point order) stays, the others are made distinct."""
    keys = {conv: conv if _KEY_FITS(conv) else thread_key(conv) for conv in convs}
    first = min(keys.values())
    return {conv: key if key == first else distinct_in_case(conv) for conv, key in keys.items()}


class Assembler:
    """Callable: (group, its records in sent order, tombstones first) → one Assembled per conversation.

    A group is the rows of one thread key (`keys.fold`: keys that differ only in case meet in one group,
    and all but the first are made distinct). It runs once per group, over every message: the common
    case (one conversation, every user already seen in the thread, no collision) takes the fewest steps,
    and aliases of legacy ids are cached across threads. With `strict`, a reply whose parent cannot be
    linked is a reject; else the message keeps everything but the link, and a warning says so.
    """

    def __init__(self, mapping: MigrationMapping, resolve: Callable[[str], Resolved | str], files: Sequence[str],
                 *, strict: bool = False, origins: bool = False) -> None:
        self.mapping = mapping
        self.origins = origins
        self.resolve = resolve
        self.files = files
        self.strict = strict
        self._aliases: dict[str, str] = {}  # legacy user id → make_alias(id), bounded
        self._participants: dict[tuple[str, str, str | None, str | None], Participant] = {}  # _participant
        self.read_model = mapping.read_model
        self.reads = read_table(mapping.reads) if mapping.reads is not None else {}

    def _reject(self, rec: MessageRecord, reason: str, message: str, severity: str = REJECT) -> tuple[int, Reject]:
        return rec.file, Reject(self.files[rec.file], rec.row, rec.line, reason, message, rec.raw, severity)

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

    def __call__(self, group: str, items: list[MessageRecord | Tombstone]) -> list[Assembled]:
        rejected_ids: dict[str, set[str]] = {}  # conversation → legacy ids of its rejected rows
        records: list[MessageRecord]
        if isinstance(items[0], Tombstone):  # the store puts a group's tombstones first
            records = []
            for item in items:
                if isinstance(item, Tombstone):
                    rejected_ids.setdefault(item.conversation, set()).add(item.message_id)
                else:
                    records.append(item)
        else:
            records = cast(list[MessageRecord], items)  # no tombstone first: none at all
        convs = {rec.conversation for rec in records}
        # a conversation whose every row was rejected alone: no thread
        out = [Assembled(None) for conv in rejected_ids if conv not in convs]
        if len(convs) == 1:
            conv = records[0].conversation
            key = conv if _KEY_FITS(conv) else thread_key(conv)
            out.append(self._thread(key, records, rejected_ids.get(conv, set())))
        elif convs:
            out += self._several(convs, records, rejected_ids)
        return out

    def _several(self, convs: set[str], records: list[MessageRecord], rejected_ids: dict[str, set[str]]
                 ) -> list[Assembled]:
        """A group of several conversations: those whose ids make one key (the one that is the key keeps
        it, the others are `id-collision`s), and those whose keys differ only in case (made distinct)."""
        keys = _thread_keys(convs)
        by_key: dict[str, list[MessageRecord]] = {}
        for rec in records:
            by_key.setdefault(keys[rec.conversation], []).append(rec)
        out = []
        for key in sorted(by_key):
            done = Assembled(None)
            mine = by_key[key]
            same = {rec.conversation for rec in mine}
            if len(same) > 1:  # different legacy ids sanitised to one key: the one that is the key keeps it
                for rec in mine:
                    if rec.conversation != key:
                        others = ", ".join(repr(c) for c in sorted(same - {rec.conversation}))
                        done.rejects.append(self._reject(rec, "id-collision", f"conversation {rec.conversation!r} "
                                                                             f"becomes thread key {key!r}, as does "
                                                                             f"{others}"))
                mine = [rec for rec in mine if rec.conversation == key]
            if mine:
                got = self._thread(key, mine, rejected_ids.get(mine[0].conversation, set()))
                got.rejects[:0] = done.rejects
                done = got
            out.append(done)
        return out

    def _thread(self, key: str, records: list[MessageRecord], rejected_ids: set[str]) -> Assembled:
        out = Assembled(None)
        reject = out.rejects.append
        rejected_ids = set(rejected_ids)
        all_ids = {rec.message_id for rec in records}
        accepted: list[MessageRecord] = []
        accepted_ids: dict[str, str] = {}  # legacy id → message id
        used_ids: dict[str, str] = {}  # message id → legacy id
        unlinked: set[int] = set()  # index in accepted of replies kept without their link
        people: dict[str, Resolved] = {}  # legacy user id → (reference, display, create), in order of appearance
        resolve = self.resolve
        fits = MESSAGE_ID_FITS
        known = people.__contains__
        for rec in records:
            mid, sender, recipients, target = rec.message_id, rec.sender, rec.recipients, rec.reply_to
            why: tuple[str, str] | None = None
            msg_key = mid if fits(mid) else message_id(mid)
            if mid in accepted_ids:
                why = ("duplicate-message-id", f"message id {mid!r} is already used in conversation "
                                               f"{rec.conversation!r}")
            elif msg_key in used_ids:
                why = ("id-collision", f"message id {mid!r} becomes {msg_key!r}, as does {used_ids[msg_key]!r}")
            elif sender not in people or (rec.subject is not None and rec.subject not in people) or \
                    not all(map(known, recipients)):  # (a generator's frame a message, else)
                why = self._unresolved(rec, people)
            link: tuple[str, str] | None = None
            if why is None and target is not None and target not in accepted_ids:
                link = _broken_link(rec, target, rejected_ids, all_ids)
                if self.strict:
                    why, link = link, None
            if why is not None:
                reject(self._reject(rec, *why))
                if mid not in accepted_ids:
                    rejected_ids.add(mid)
                continue
            if link is not None:
                reject(self._reject(rec, link[0], link[1] + "; the message is kept without the link", WARNING))
                unlinked.add(len(accepted))
            if sender not in people:
                people[sender] = resolve(sender)  # type: ignore[assignment]  # resolved above
            for user in recipients:
                if user not in people:
                    people[user] = resolve(user)  # type: ignore[assignment]
            accepted_ids[mid] = msg_key
            used_ids[msg_key] = mid
            accepted.append(rec)
        if accepted:
            out.spec = self._spec(key, accepted, accepted_ids, people, unlinked, reject)
            if self.origins:
                out.spec.with_source(self._origin(accepted))
        return out

    def _origin(self, records: list[MessageRecord]) -> Document:
        """Where a thread's values come from, for what names them (`spec.origin`, the loader's failures):
        the input file of its first row, the line of each message's row (a thread whose rows come from several
        inputs is named by the first, and its rows from the others by the thread's first line)."""
        first = records[0]
        values: dict[Path_, Position] = {(): (first.line, 1)}
        for i, rec in enumerate(records):
            if rec.file == first.file:
                values[("messages", i)] = (rec.line, 1)
        return Document(self.files[first.file], None, values=values)

    def _alias(self, user: str) -> str:
        found = self._aliases.get(user)
        if found is None:
            if len(self._aliases) >= _ALIAS_CACHE:
                self._aliases.clear()
            found = self._aliases[user] = make_alias(user)
        return found

    def _spec(self, key: str, records: list[MessageRecord], ids: dict[str, str], people: dict[str, Resolved],
              unlinked: set[int], reject: Callable[[tuple[int, Reject]], None]) -> ThreadSpec:
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
        topic = subject_id = category = thread_status = thread_priority = None
        for rec in records:  # one pass: the first display of each sender, the first of each thread value
            if rec.sender_display and rec.sender not in names:
                names[rec.sender] = rec.sender_display
            if topic is None:
                topic = rec.topic
            if subject_id is None:
                subject_id = rec.subject
            if category is None:
                category = rec.category
            if thread_status is None:
                thread_status = rec.thread_status
            if thread_priority is None:
                thread_priority = rec.thread_priority
        participants = {aliases[u]: self._participant(aliases[u], ref, display or names.get(u), create)
                        for u, (ref, display, create) in people.items()}
        everyone = set(participants)
        others: dict[str, set[str]] = {}  # sender alias → everyone but the sender: the default recipients
        reads = bool(self.reads)
        # messages as data, checked with the thread in one validation (a Message object each costs a call more)
        messages: list[dict[str, Any]] = []
        for i, rec in enumerate(records):
            sender = aliases[rec.sender]
            data: dict[str, Any] = {"id": ids[rec.message_id], "sender": sender, "sent": rec.sent}
            if rec.text is not None:
                data["text"] = rec.text
            if rec.attachments:
                data["attachments"] = tuple(Attachment(url=cast(str, url), content_type=kind, title=title)
                                            for url, kind, title in rec.attachments)
            recipient: tuple[str, ...] | None = None
            if rec.recipients:
                recipient = tuple([aliases[u] for u in rec.recipients])
                default = others.get(sender)
                if default is None:
                    default = others[sender] = everyone - {sender}
                if len(recipient) == len(default) and set(recipient) == default:
                    recipient = None  # the default: everyone but the sender
                else:
                    data["recipient"] = recipient
            reply = rec.reply_to if i not in unlinked else None
            if reply is not None:
                data["reply_to"] = ids[reply]
            if rec.status is not None:
                data["status"] = rec.status
            if rec.received is not None and (received := self._received(rec, reject)) is not None:
                data["received"] = received
            if rec.priority is not None:
                data["priority"] = rec.priority
            if rec.read_at is not None or reads:
                readers = recipient if recipient is not None else tuple(sorted(everyone - {sender}))
                if read_by := self._read_by(rec, aliases, readers, reject):
                    data["read_by"] = read_by
            messages.append(data)

        subject: str | None = None
        if self.mapping.subject_type is not None:
            wanted = self.mapping.subject_type
            subject = next((a for a, p in participants.items() if reference_type(p.reference) == wanted), None)
        elif subject_id is not None:
            got = self.resolve(subject_id)
            assert not isinstance(got, str)  # resolved when its message was accepted
            subject = aliases.get(subject_id, got[0])
        coding: tuple[Coding, ...] = ()
        if category is not None:
            system, code = category.split("|", 1)
            coding = (Coding(code=code, system=system),)
        # `model_construct` checks as the constructor does (SpecError listing every problem), and takes the
        # messages as data
        return ThreadSpec.model_construct(
            key=key,
            topic=topic or f"Conversation {records[0].conversation}",
            participants=participants,
            messages=messages,
            sender=aliases[records[0].sender],
            sent=records[0].sent,
            status=thread_status or DEFAULT_STATUS,
            category=coding,
            **without_defaults(subject=subject, priority=thread_priority,
                               read_model=self._read_model(records[0], len(participants), reject)),
        )

    def _participant(self, alias: str, reference: str, display: str | None, create: CreateResource | None
                     ) -> Participant:
        """The Participant of these values: one object for all the threads that name it alike (it is immutable),
        made and checked once while it stays in the cache. With `create`, `load` creates it when missing."""
        key = (alias, reference, display, create)
        cached = self._participants.get(key)
        if cached is None:
            if len(self._participants) >= _PARTICIPANT_CACHE:
                self._participants.clear()
            cached = self._participants[key] = Participant(alias, reference, display,
                                                            create.resource() if create is not None else None)
        return cached

    def _read_model(self, rec: MessageRecord, participants: int, reject: Callable[[tuple[int, Reject]], None]
                    ) -> str | None:
        """The thread's read model: the mapping's (or --read-model's); simple does not fit a group conversation,
        whose read state is then left out, with a warning on its first row."""
        if self.read_model == "simple" and participants > SIMPLE_MAX_PARTICIPANTS:
            reject(self._reject(rec, "read-model-simple-group", f"the simple read model fits 1:1 conversations, and "
                                                                f"{rec.conversation!r} has {participants} "
                                                                "participants: its read state is left out (use "
                                                                "--read-model tasks or header-extension)", WARNING))
            return None
        return self.read_model

    def _read_by(self, rec: MessageRecord, aliases: dict[str, str], readers: Sequence[str],
                 reject: Callable[[tuple[int, Reject]], None]) -> dict[str, str]:
        """A message's readers (alias → instant): every recipient at the row's read time, then the read table's
        rows for it. A read before the message was sent, or by someone not among its recipients, is left out
        with a warning."""
        reads = [(a, rec.read_at) for a in readers] if rec.read_at is not None else []
        for user, when in self.reads.get(rec.message_id, ()):
            alias = aliases.get(user)
            if alias is None or alias not in readers:
                reject(self._reject(rec, "reader-not-recipient", f"the read table says {user!r} read it, who is "
                                                                 "not a recipient of it: that read is left out",
                                    WARNING))
            else:
                reads.append((alias, when))
        if not reads:  # (most rows: no instant to parse)
            return {}
        sent = parse_instant(rec.sent)
        out: dict[str, str] = {}
        for alias, when in reads:
            if parse_instant(when) < sent:
                reject(self._reject(rec, "read-before-sent", f"read at {when}, before it was sent ({rec.sent}): "
                                                             "that read is left out", WARNING))
            else:
                out[alias] = when
        return out

    def _received(self, rec: MessageRecord, reject: Callable[[tuple[int, Reject]], None]) -> str | None:
        """The row's received time, left out with a warning when it is before the message was sent."""
        if rec.received is not None and parse_instant(rec.received) < parse_instant(rec.sent):
            reject(self._reject(rec, "received-before-sent", f"received at {rec.received}, before it was sent "
                                                             f"({rec.sent}): left out", WARNING))
            return None
        return rec.received

