"""A thread as a server holds it (its header and messages) → a ThreadSpec, and what of it the spec cannot hold. Pure.

    shaped = shape_thread(header, messages, identifier_system=system)
    shaped.spec          # a ThreadSpec (checked by the model), or None when none could be made
    shaped.problems      # what is not in our shape, in words: each a reason the spec is not the server's thread
    shaped.dropped       # resources (or their parts) the spec does not hold, as the server returned them

Identity: the thread key and message ids are read from our identifiers (`<system>|<key>` on the header,
`<system>|<key>/<message id>` on a message), else derived from the server ids (a server id is a valid key).
Aliases are not stored on a server: each participant gets a readable one, derived deterministically from its
display name (or its reference), collision-free. `sent` is kept exactly as stored; `reply_to` comes from
`inResponseTo`; a message's `recipient`, `status` and the thread's `category` are written only where they differ
from what the builder would make by default, so that building the spec gives the server's resources back.

The last word is the builder's: the spec is built and compared with the server's resources, field by field
(`bundler.load.compare`, the words `verify` uses), and every difference is a problem. So nothing the spec
loses goes unsaid, whatever its cause.
"""

from __future__ import annotations

import itertools
import re
import unicodedata
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..build import (
    BuiltEntries,
    check_identifier_system,
    entry_values,
    full_url,
    identifier_value,
    read_receipt_parts,
    split_identifier_value,
)
from ..errors import SpecError
from ..lazy import Lazy
from ..load.compare import IGNORED, compare_thread
from ..spec.model import Attachment, Coding, Message, Participant, ThreadSpec
from ..vocabulary import (
    COMMUNICATION_STATUSES,
    DEFAULT_STATUS,
    DRAFT_STATUS,
    EMPTY_FILE_HASH,
    READ_RECEIPT_READ,
    READ_STATE_EXTENSION,
    READ_STATE_LAST_READ,
    READ_STATE_LAST_READ_AT,
    READ_STATE_PARTICIPANT,
    REQUEST_PRIORITIES,
    TRANSACTION,
    binary_reference,
    is_alias,
    is_instant,
    is_key,
    is_thread_key,
    parse_instant,
    parse_literal,
)
from .download import file_name
from .held import Held, Patched

KNOWN_HEADER_FIELDS = frozenset({"resourceType", "id", "meta", "identifier", "status", "category", "subject", "topic",
                                 "sent", "recipient", "sender", "priority"})
"""The fields of a header the spec format holds (`id` and `meta` are the server's own)."""
READ_STATE_FIELDS = frozenset({"extension"})
"""Header fields that hold read state (the header-extension model), known when they hold nothing else."""
KNOWN_MESSAGE_FIELDS = frozenset({"resourceType", "id", "meta", "identifier", "status", "category", "partOf",
                                  "inResponseTo", "sent", "received", "recipient", "sender", "payload", "priority"})
"""The fields of a message the spec format holds."""
NO_TOPIC = "(no topic)"
"""The topic of an exported thread whose header has none (a spec needs one; the problem is listed)."""


@dataclass
class Shaped:
    """One thread as exported: its spec (None when no spec could be made), and what the spec does not hold."""

    header_id: str | None
    spec: ThreadSpec | None = None
    problems: list[str] = field(default_factory=list)
    dropped: list[dict[str, Any]] = field(default_factory=list)
    people: dict[str, str | None] = field(default_factory=dict)  # each participant's reference → display, in order
    messages: int = 0  # messages on the server

    @property
    def in_shape(self) -> bool:
        return self.spec is not None and not self.problems


def slug(text: str, *, length: int = 48) -> str:
    """`Dr. Alice Smith` → `dr-alice-smith`: ASCII letters and digits (accents dropped), the rest one `-`."""
    ascii_ = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii").lower()
    return re.sub(r"[^a-z0-9]+", "-", ascii_).strip("-")[:length].strip("-")


def alias_base(reference: str, display: str | None) -> str:
    """The alias a participant gets when no other has it: its display's slug, else its type and id's start."""
    base = slug(display) if display else ""
    if not base:
        literal = parse_literal(reference)
        base = slug(f"{literal[0]}-{literal[1][:8]}") if literal else slug(reference) or "participant"
    return base


def aliases_for(people: Sequence[tuple[str, str | None]], known: Mapping[str, str] | None = None) -> list[str]:
    """A readable, unique alias for each (reference, display), in order: the one `known` gives its reference (an
    alias the server keeps: read receipts' identifiers name their owner's), else the display's slug, else the type
    and the start of the id; a name taken already gets `-2`, `-3`, ..."""
    known = known or {}
    taken: set[str] = set(known.values())
    out = []
    for reference, display in people:
        if reference in known:
            out.append(known[reference])
            continue
        base = alias_base(reference, display)
        alias, n = base, 1
        while alias in taken:
            n += 1
            alias = f"{base}-{n}"
        taken.add(alias)
        out.append(alias)
    return out


def _ref(value: Any) -> tuple[str, str | None] | None:
    """(reference, display) of a Reference, or None if it has no reference string."""
    if isinstance(value, dict) and isinstance(value.get("reference"), str):
        display = value.get("display")
        return value["reference"], display if isinstance(display, str) else None
    return None


def _our_value(resource: Mapping[str, Any], system: str) -> str | None:
    for ident in resource.get("identifier") or ():
        if isinstance(ident, dict) and ident.get("system") == system and isinstance(ident.get("value"), str):
            return str(ident["value"])
    return None


class _People:
    """The participants of a thread as found in its resources: reference → display, in the order first seen (the
    header's recipients first: the builder lists every participant there, in order)."""

    def __init__(self) -> None:
        self.displays: dict[str, str | None] = {}
        self.alias: dict[str, str] = {}

    def see(self, value: Any) -> str | None:
        ref = _ref(value)
        if ref is None:
            return None
        reference, display = ref
        if self.displays.get(reference) is None:
            self.displays[reference] = display
        return reference

    def name(self, known: Mapping[str, str] | None = None) -> None:
        self.alias = dict(zip(self.displays, aliases_for(list(self.displays.items()), known), strict=True))

    def participants(self) -> dict[str, Participant]:
        return {self.alias[r]: Participant(self.alias[r], r, d) for r, d in self.displays.items()}


class _Thread:
    """The work of `shape_thread` for one thread."""

    def __init__(self, header: Mapping[str, Any], messages: Held, system: str,
                 missing: str | None = None, files: Mapping[str, tuple[Attachment, bytes]] | None = None,
                 receipts: Sequence[Mapping[str, Any]] = ()) -> None:
        self.header, self.system, self.missing, self.files = header, system, missing, files or {}
        self.receipts = list({str(t.get("id")): t for t in receipts}.values())
        self.out = Shaped(header_id=header.get("id"), messages=len(messages))
        if missing is not None:
            self.problem(missing)
        self.people = _People()
        self.messages = _in_order(messages)  # (once each, the first read, and unsigned: as `Held` holds them)
        self.key = self._key()
        self.ids: dict[str, str] = {}  # server id → message id
        self.reads = _Reads()

    def problem(self, text: str, dropped: Mapping[str, Any] | None = None) -> None:
        self.out.problems.append(text)
        if dropped is not None:
            self.out.dropped.append(dict(dropped))

    def _key(self) -> str:
        value = _our_value(self.header, self.system)
        if value is not None and is_thread_key(value):
            return value
        header_id = str(self.header.get("id"))
        if value is not None:
            self.problem(f"header identifier {value!r} is not a thread key: the key is its server id {header_id}")
        return header_id

    def message_ids(self) -> dict[str, str]:
        """Server id → message id: from our identifiers, else the server id; never the same id twice."""
        ids: dict[str, str] = {}
        used: set[str] = set()
        prefix = f"{self.key}/"
        for m in self.messages:
            server_id = str(m.get("id"))
            value = _our_value(m, self.system)
            mid = value[len(prefix):] if value is not None and value.startswith(prefix) else None
            if mid is None or not is_key(mid) or mid in used:
                if mid in used:
                    self.problem(f"Communication/{server_id}: message id {mid!r} is another message's too: its id "
                                 f"is its server id")
                mid = server_id
            used.add(mid)
            ids[server_id] = mid
        return ids

    # --- the header ---------------------------------------------------------------------------------

    def topic(self) -> str:
        topic = self.header.get("topic")
        text = topic.get("text") if isinstance(topic, dict) else None
        if isinstance(text, str) and text:
            return text
        if self.missing is None:
            self.problem(f"header has no topic text: the spec says {NO_TOPIC!r}")
        return NO_TOPIC

    def status(self, resource: Mapping[str, Any], where: str, default: str) -> str:
        status = resource.get("status")
        if status in COMMUNICATION_STATUSES:
            return str(status)
        self.problem(f"{where}: status {status!r} is not a Communication status: the spec says {default!r}")
        return default

    def category(self) -> list[Coding]:
        out = []
        for concept in self.header.get("category") or ():
            codings = concept.get("coding") if isinstance(concept, dict) else None
            if not isinstance(codings, list) or len(codings) != 1 or not isinstance(codings[0], dict):
                self.problem("header category: a concept without exactly one coding is not kept")
                continue
            c = codings[0]
            try:
                out.append(Coding(c.get("code", ""), c.get("system"), c.get("display")))
            except SpecError:
                self.problem(f"header category: coding {c!r} is not kept (it needs a code)")
        return out

    def instant(self, resource: Mapping[str, Any], where: str, name: str = "sent") -> str | None:
        value = resource.get(name)
        if value is None:
            return None
        if isinstance(value, str) and is_instant(value):
            return value
        self.problem(f"{where}: {name} {value!r} is not an instant with seconds and a time zone: not kept")
        return None

    # --- messages -----------------------------------------------------------------------------------

    def message(self, m: Mapping[str, Any], mid: str, ids: Mapping[str, str], seen: set[str],
                thread: tuple[str, str | None]) -> Message | None:
        """Message `mid`, or None (listed) when the spec cannot hold it; `thread`: the thread's status and priority."""
        where = f"Communication/{m.get('id')}"
        sender_ref = _ref(m.get("sender"))
        sender = self.people.alias.get(sender_ref[0]) if sender_ref else None
        sent = self.instant(m, where)
        text, attachments = self.payload(m, where, mid)
        status = self.status(m, where, thread[0])
        if sender is None or (sent is None and status != DRAFT_STATUS) or (text is None and not attachments):
            why = "no sender" if sender is None else "no text or attachment" if sent is not None or \
                status == DRAFT_STATUS else "no sent instant (only a draft, status preparation, may have none)"
            self.problem(f"{where}: {why}: the message is not in the spec", m)
            return None
        priority = self.priority(m, where)
        recipient = self.recipients(m, sender, where)
        readers = recipient if recipient is not None else [a for a in self.people.alias.values() if a != sender]
        read_by = self.reads.of(str(m.get("id")), mid, readers, sent, status)
        return Message(mid, sender, sent, text=text, attachments=attachments, recipient=recipient,
                       reply_to=self.reply_to(m, ids, seen, where), status=None if status == thread[0] else status,
                       received=self.instant(m, where, "received"),
                       priority=None if priority == thread[1] else priority, read_by=read_by)

    def priority(self, resource: Mapping[str, Any], where: str) -> str | None:
        priority = resource.get("priority")
        if priority is None or priority in REQUEST_PRIORITIES:
            return priority
        self.problem(f"{where}: priority {priority!r} is not a request priority: not kept")
        return None

    def payload(self, m: Mapping[str, Any], where: str, mid: str) -> tuple[str | None, list[Attachment]]:
        text: str | None = None
        attachments: list[Attachment] = []
        for part in m.get("payload") or ():
            if isinstance(part, dict) and isinstance(part.get("contentString"), str) and text is None:
                text = part["contentString"] or None
            elif isinstance(part, dict) and isinstance(part.get("contentAttachment"), dict):
                n = len(attachments) + 1
                if (a := self.attachment(part["contentAttachment"], where, mid, n)) is not None:
                    attachments.append(a)
            else:
                self.problem(f"{where}: a payload part the spec cannot hold is not kept: {_short(part)}")
        return text, attachments

    def attachment(self, a: Mapping[str, Any], where: str, mid: str, n: int) -> Attachment | None:
        """Message `mid`'s `n`-th attachment: its url; or the file downloaded for that url (`files`: its bytes, size
        and hash, shared by every attachment of that url) with this attachment's own fields; or, with no url, size 0
        and the hash of no bytes, the empty file it is (`write.Writer` writes it: there is nothing to download)."""
        url, content_type, title = a.get("url"), a.get("contentType"), a.get("title")
        try:
            if (file := self.files.get(str(url))) is not None:
                got = file[0]
                return Attachment(file=got.file, content_type=content_type, title=title, size=got.size, hash=got.hash)
            if url is None and a.get("size") == 0 and a.get("hash", EMPTY_FILE_HASH) == EMPTY_FILE_HASH:
                name = file_name(self.key, mid, n, title, content_type)
                return Attachment(file=name, content_type=content_type, title=title, size=0, hash=EMPTY_FILE_HASH)
            return Attachment(url, content_type, title)
        except SpecError as exc:
            self.problem(f"{where}: an attachment is not kept ({exc.problems[0].message}): {_short(a)}")
            return None

    def recipients(self, m: Mapping[str, Any], sender: str, where: str) -> list[str] | None:
        given = [self.people.alias[r] for r in map(self.people.see, m.get("recipient") or ()) if r is not None]
        unique = list(dict.fromkeys(given))
        if len(unique) != len(given):
            self.problem(f"{where}: a recipient listed twice is listed once")
        default = [a for a in self.people.alias.values() if a != sender]
        if not unique:
            if default:
                self.problem(f"{where}: no recipients: the spec gives it every participant but its sender")
            return None
        return None if unique == default else unique

    def reply_to(self, m: Mapping[str, Any], ids: Mapping[str, str], seen: set[str], where: str) -> str | None:
        answers = m.get("inResponseTo") or ()
        ref = _ref(answers[0]) if answers else None
        if ref is None:
            return None
        literal = parse_literal(ref[0])
        target = ids.get(literal[1]) if literal and literal[0] == "Communication" else None
        if target is None or target not in seen:
            self.problem(f"{where}: replies to {ref[0]}, which is not an earlier message of this thread: reply "
                         "not kept")
            return None
        return target

    # --- the whole ----------------------------------------------------------------------------------

    def unknown_fields(self) -> None:
        for resource, known, where in itertools.chain([(self.header, KNOWN_HEADER_FIELDS, "header")], (
                (m, KNOWN_MESSAGE_FIELDS, f"Communication/{m.get('id')}") for m in self.messages)):
            extra = sorted(set(resource) - known - (READ_STATE_FIELDS if resource is self.header
                                                     and _read_state_only(resource) else frozenset()))
            if extra:
                self.problem(f"{where}: {', '.join(extra)} not in the spec format: not kept")
            others = [i for i in resource.get("identifier") or () if not (isinstance(i, dict)
                                                                       and i.get("system") == self.system)]
            if others:
                self.problem(f"{where}: identifiers of other systems not kept: {_short(others)}")

    def collect_people(self) -> None:
        h = self.header
        for r in h.get("recipient") or ():
            self.people.see(r)
        self.people.see(h.get("sender"))
        for m in self.messages:
            self.people.see(m.get("sender"))
            for r in m.get("recipient") or ():
                self.people.see(r)
        self.people.name(self.receipt_aliases())
        self.out.people = dict(self.people.displays)

    def receipt_aliases(self) -> dict[str, str]:
        """Reference → the alias our read receipts' identifiers (`<key>/<message id>/read/<alias>`) give their
        owner, where they agree (one alias a reference, one reference an alias)."""
        found: dict[str, set[str]] = {}
        for task in self.receipts:
            value, owner = _our_value(task, self.system), _ref(task.get("owner"))
            alias = parts[1] if value is not None and (parts := read_receipt_parts(value)) else None
            if alias is not None and owner is not None and is_alias(alias) and owner[0] in self.people.displays:
                found.setdefault(owner[0], set()).add(alias)
        known = {ref: next(iter(aliases)) for ref, aliases in found.items() if len(aliases) == 1}
        owners: dict[str, int] = {}
        for alias in known.values():
            owners[alias] = owners.get(alias, 0) + 1
        return {ref: alias for ref, alias in known.items() if owners[alias] == 1}

    def subject(self) -> str | None:
        ref = _ref(self.header.get("subject"))
        if ref is None:
            return None
        alias = self.people.alias.get(ref[0])
        if alias is not None and self.people.displays[ref[0]] == ref[1]:
            return alias
        return ref[0]

    def spec(self) -> ThreadSpec | None:
        if self.header.get("payload"):
            self.problem("header has a payload (a thread's header carries none): not kept",
                         {"id": self.header.get("id"), "payload": self.header["payload"]})
        self.unknown_fields()
        self.collect_people()
        status = self.status(self.header, "header", DEFAULT_STATUS)
        priority = self.priority(self.header, "header")
        ids = self.ids = self.message_ids()
        read_model = self.read_state()
        seen: set[str] = set()
        messages = []
        for m in self.messages:
            mid = ids[str(m.get("id"))]
            if (message := self.message(m, mid, ids, seen, (status, priority))) is not None:
                messages.append(message)
                seen.add(mid)
        sender = _ref(self.header.get("sender"))
        try:
            return self.thread_spec(messages, status, priority, read_model,
                                    self.people.alias[sender[0]] if sender else None)
        except SpecError as exc:
            self.problem("no spec could be made: " + "; ".join(f"{p.path}: {p.message}" for p in exc.problems),
                         self.header)
            self.out.dropped.extend(dict(m) for m in self.messages)
            return None


    def thread_spec(self, messages: list[Message], status: str, priority: str | None, read_model: str | None,
                    sender: str | None) -> ThreadSpec:
        """The ThreadSpec; a read model it cannot have (the tasks model with a recipient no Task may be owned by) is
        listed and left out, its `read_by` kept."""
        def make(model: str | None) -> ThreadSpec:
            return ThreadSpec(self.key, self.topic(), self.people.participants(), messages, subject=self.subject(),
                              sender=sender, sent=self.instant(self.header, "header"), status=status,
                              category=self.category(), priority=priority, read_model=model)
        if read_model is None:
            return make(None)
        try:
            return make(read_model)
        except SpecError as exc:
            self.problem(f"read_model {read_model} not kept: " + "; ".join(p.message for p in exc.problems))
            return make(None)

    # --- read state ---------------------------------------------------------------------------------

    def read_state(self) -> str | None:
        """The read model the server's resources show, its reads noted in `self.reads`: read-receipt Tasks focused
        on the header (tasks), else thread-read-state extensions on the header (header-extension), else none (a
        message's `status` and `received` are kept as they are: see `_Reads`)."""
        if self.receipts:
            self.task_reads()
            return "tasks"
        marks = [e for e in self.header.get("extension") or () if isinstance(e, dict)
                 and e.get("url") == READ_STATE_EXTENSION]
        if marks:
            self.extension_reads(marks)
            return "header-extension"
        return None

    def task_reads(self) -> None:
        """Who read which message, from its read receipts: `completed` ones, read when their executionPeriod ends.
        Any other receipt (unread, or not as the builder makes them) is compared in `_differences`, and listed if
        it differs."""
        for task in self.receipts:
            value, owner = _our_value(task, self.system), _ref(task.get("owner"))
            key, mid, _ = split_identifier_value(value) if value else (None, None, None)
            mid = mid if key == self.key else None
            alias = self.people.alias.get(owner[0]) if owner else None
            period = task.get("executionPeriod")
            end = period.get("end") if isinstance(period, dict) else None
            if task.get("status") == READ_RECEIPT_READ and mid and alias and isinstance(end, str) and is_instant(end):
                self.reads.by_id.setdefault(mid, {})[alias] = end

    def extension_reads(self, marks: list[dict[str, Any]]) -> None:
        """Each participant's high-water mark: the position of the last message they read, and when."""
        position = {str(m.get("id")): n for n, m in enumerate(self.messages)}
        for mark in marks:
            parts = {e.get("url"): e for e in mark.get("extension") or () if isinstance(e, dict)}
            who = _ref(parts.get(READ_STATE_PARTICIPANT, {}).get("valueReference"))
            last = _ref(parts.get(READ_STATE_LAST_READ, {}).get("valueReference"))
            when = parts.get(READ_STATE_LAST_READ_AT, {}).get("valueDateTime")
            alias = self.people.alias.get(who[0]) if who else None
            literal = parse_literal(last[0]) if last else None
            at = position.get(literal[1]) if literal and literal[0] == "Communication" else None
            if alias is None or at is None or not (isinstance(when, str) and is_instant(when)):
                self.problem(f"header: a thread-read-state extension the spec cannot hold: {_short(mark)}")
                continue
            self.reads.marks[alias] = (at, when)
        self.reads.position = position


@dataclass
class _Reads:
    """The reads a thread's read model holds. Tasks: message id → reader → when. Header-extension: reader → (position
    of the last message read, in thread order; when), a high-water mark: each message up to it the reader received
    counts as read then (the one time the server keeps). The simple model is never assumed: a message's `completed`
    and `received` are equally plain fields of a thread without a model, and are kept as such (same bundle)."""

    by_id: dict[str, dict[str, str]] = field(default_factory=dict)
    marks: dict[str, tuple[int, str]] = field(default_factory=dict)
    position: dict[str, int] = field(default_factory=dict)  # server id → position in thread order

    def of(self, server_id: str, mid: str, readers: Sequence[str], sent: str | None, status: str) -> dict[str, str]:
        """Who read message `mid` and when: only recipients, of a sent message, at or after it was sent (what a spec
        can say; anything else the server holds is listed by the comparison)."""
        if sent is None or status == DRAFT_STATUS:
            return {}
        at = self.position.get(server_id, -1)
        found = dict(self.by_id.get(mid, {}))
        found |= {alias: when for alias, (last, when) in self.marks.items() if 0 <= at <= last}
        if not found:
            return {}
        moment = parse_instant(sent)
        return {a: found[a] for a in readers if a in found and parse_instant(found[a]) >= moment}


def _read_state_only(header: Mapping[str, Any]) -> bool:
    """Whether every extension of `header` is a thread-read-state one (the header-extension model)."""
    extensions = header.get("extension")
    return isinstance(extensions, list) and all(isinstance(e, dict) and e.get("url") == READ_STATE_EXTENSION
                                                for e in extensions)


def unsigned(message: Mapping[str, Any]) -> Mapping[str, Any]:
    """`message` with each attachment url that Medplum signed on the way out (`<storage>/<id>/<version>?...
    Signature=...`, valid for an hour) back as the `Binary/<id>` it stores (`vocabulary.binary_reference`)."""
    payload = message.get("payload")
    if not isinstance(payload, list) or not any(isinstance(p, dict) and "contentAttachment" in p for p in payload):
        return message
    parts = []
    for part in payload:
        a = part.get("contentAttachment") if isinstance(part, dict) else None
        url = a.get("url") if isinstance(a, dict) else None
        if isinstance(url, str) and not url.startswith("Binary/") and (ref := binary_reference(url)) is not None:
            part = {**part, "contentAttachment": {**a, "url": ref}}  # type: ignore[dict-item]
        parts.append(part)
    return {**message, "payload": parts}


def _in_order(messages: Held) -> Held:
    """By sent instant (the moment, whatever its zone), ties in the server's order (which FHIR leaves undefined);
    messages without a readable instant last: put in order where they are."""
    if _sorted_as_written(messages):  # as the server sorts them (`_sort=sent`): nothing to parse
        return messages

    def moment(m: Mapping[str, Any]) -> tuple[int, float]:
        sent = m.get("sent")
        if isinstance(sent, str) and is_instant(sent):
            return (0, parse_instant(sent).timestamp())
        return (1, 0.0)

    messages.sort(key=moment)
    return messages


def _sorted_as_written(messages: Sequence[Mapping[str, Any]]) -> bool:
    """Whether every message's `sent` is a real instant in UTC (`Z`) with as many digits as the others, and they
    come in order: then their text's order is their moments' order, and `_in_order` keeps them as they are."""
    previous = None
    for m in messages:
        sent = m.get("sent")
        if not isinstance(sent, str) or sent[-1:] != "Z" or not is_instant(sent) or \
                (previous is not None and (len(sent) != len(previous) or sent < previous)):
            return False
        previous = sent
    return True


def _short(value: Any, limit: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def shape_thread(header: Mapping[str, Any], messages: Iterable[Mapping[str, Any]], *, identifier_system: str,
                 files: Mapping[str, tuple[Attachment, bytes]] | None = None,
                 receipts: Iterable[Mapping[str, Any]] = ()) -> Shaped:
    """`header` and its `messages` (as the server returned them) as a ThreadSpec, with every way it falls short of
    them (see the module docstring). `files`: attachment url → the file attachment that replaces it, and its bytes
    (downloaded: they travel with the spec, their size and hash with them). `receipts`: the read-receipt Tasks
    focused on the header, whose owners' reads become `read_by` (read model tasks)."""
    held = messages if isinstance(messages, Held) else Held(messages, prepare=unsigned)  # (see `held`)
    thread = _Thread(header, held, identifier_system, files=files, receipts=list(receipts))
    spec = thread.out.spec = thread.spec()
    if spec is not None:
        thread.out.problems += _differences(spec, thread, identifier_system)
    return thread.out


def shape_orphans(target: str, messages: Iterable[Mapping[str, Any]], why: str, *, identifier_system: str,
                  files: Mapping[str, tuple[Attachment, bytes]] | None = None) -> Shaped:
    """Messages whose `partOf` points at `target`, which is no header (`why` says what it is), as a thread of their
    own: its key is the one their identifiers name (`<key>/<message id>`, when they all agree), else `target`;
    topic `NO_TOPIC`. Building it would make a header the server does not have: that is one of its problems."""
    messages = list(messages)
    keys = {key for m in messages if (v := _our_value(m, identifier_system))
            for key, mid, _ in [split_identifier_value(v)] if mid is not None}
    stub: dict[str, Any] = {"resourceType": "Communication", "id": target}
    if len(keys) == 1:
        stub["identifier"] = [{"system": identifier_system, "value": keys.pop()}]
    thread = _Thread(stub, Held(messages, prepare=unsigned), identifier_system, missing=why, files=files)
    spec = thread.out.spec = thread.spec()
    if spec is not None:
        thread.out.problems += _differences(spec, thread, identifier_system)
    return thread.out


def _differences(spec: ThreadSpec, thread: _Thread, system: str) -> list[str]:
    """What building `spec` does not give back of the server's resources, in verify's words. Resources whose
    identifiers were not ours (a derived key or id) are compared as if they carried the derived ones; a header
    the server does not have (`thread.missing`) is compared as missing, its messages' `partOf` as what they hold."""
    wanted = {str(thread.header.get("id")): identifier_value(spec.key)}
    ids = {m.id for m in spec.messages}
    for server_id, mid in thread.ids.items():
        if mid in ids:
            wanted[server_id] = identifier_value(spec.key, mid)
    everything = _Joined([] if thread.missing is not None else [thread.header], thread.messages, thread.receipts)
    kept = [n for n, resource in enumerate(everything) if n >= everything.receipts or str(resource.get("id")) in wanted]

    def ours(resource: Mapping[str, Any]) -> Mapping[str, Any]:  # (receipts: by their own identifiers)
        value = wanted.get(str(resource.get("id")))
        return dict(resource) if value is None else {**resource, "identifier": [{"system": system, "value": value}]}
    resources = Patched(everything, kept, ours)  # (each made when compared: a thread of 100,000 is not held twice)
    resolved = {full_url(system, spec.key): f"Communication/{thread.header.get('id')}"}
    data = {a.hash: b for a, b in thread.files.values() if a.hash is not None}
    entries = BuiltEntries(spec, check_identifier_system(system), data or None)  # (built as compared, not held)
    bundle = {"resourceType": "Bundle", "type": TRANSACTION, "entry": entries}
    if not thread.missing and _same(entries, resources):
        return []
    diff = compare_thread(spec, resources, identifier_system=system, resolved=resolved, bundle=bundle)
    return [f"not as on the server: {line}" for line in diff.lines(system, entry_values(spec))
            if not (thread.files and _FILE_FACTS.search(line))]


def _same(entries: BuiltEntries, resources: Sequence[Mapping[str, Any]]) -> bool:
    """Whether `resources` (each with the identifier its entry has) are the bundle's (`entries`), as the server holds
    them: its urns replaced by their ids, what the server sets (`compare.IGNORED`) aside. The common case, answered
    without `compare_thread`'s field by field walk (which says how they differ, when they do). Each entry is built
    when it is compared (a thread of 100,000 messages is not held whole as data); a thread with Binaries is left to
    `compare_thread` (their entries have no identifier to find them by)."""
    if entries.inline or len(entries) != len(resources):
        return False
    values = entry_values(entries.spec)
    ids: list[str] = []  # each resource's server id, by position
    position: dict[str, int] | None = None  # identifier → position, unless they come in the entries' order
    for n, r in enumerate(resources):  # (the common case: no map of 100,000 identifiers)
        ids.append(str(r.get("id")))
        if position is None and r["identifier"][0]["value"] != values[n]:
            position = {str(o["identifier"][0]["value"]): k for k, o in enumerate(resources[:n])}
        if position is not None:
            position[r["identifier"][0]["value"]] = n
    where = list(range(len(values))) if position is None else [position.get(v, -1) for v in values]
    if -1 in where:
        return False
    # every entry's server id first: a message's reply may point further on
    held = {entries.url_of(n): f"Communication/{ids[at]}" for n, at in enumerate(where)}
    del ids
    for n, at in enumerate(where):
        want, got = entries[n]["resource"], resources[at]
        expected = dict(want)
        for name in ("partOf", "inResponseTo"):
            if name in expected:
                expected[name] = [{"reference": held.get(r["reference"], r["reference"])} for r in expected[name]]
        if "focus" in expected:  # a read receipt's: the header
            expected["focus"] = {"reference": held.get(expected["focus"]["reference"], "")}
        if expected != {k: v for k, v in got.items() if k not in IGNORED}:
            return False
    return True


class _Joined(Lazy[Mapping[str, Any]]):
    """The header (if any), the messages and the read receipts of a thread as one Sequence, without copying them
    (`Held` messages are decoded when asked for). `receipts`: where the receipts start."""

    def __init__(self, header: list[Mapping[str, Any]], messages: Sequence[Mapping[str, Any]],
                 receipts: Sequence[Mapping[str, Any]]) -> None:
        self._parts = (header, messages, receipts)
        self.receipts = len(header) + len(messages)

    def __len__(self) -> int:
        return sum(len(p) for p in self._parts)

    def item(self, n: int) -> Mapping[str, Any]:
        for part in self._parts:
            if n < len(part):
                return part[n]
            n -= len(part)
        raise IndexError(n)  # pragma: no cover - `Lazy` refused it first

    def __iter__(self) -> Iterator[Mapping[str, Any]]:
        return itertools.chain(*self._parts)


_FILE_FACTS = re.compile(r"\.contentAttachment\.(?:size|hash): missing on the server")
"""A downloaded file brings its size and hash, which the server's attachment may not have held: not a loss."""
