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

import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..build import build_bundle, full_url, identifier_value
from ..errors import SpecError
from ..load.compare import IGNORED, compare_thread
from ..spec.model import Attachment, Coding, Message, Participant, ThreadSpec
from ..vocabulary import (
    COMMUNICATION_STATUSES,
    DEFAULT_STATUS,
    DRAFT_STATUS,
    REQUEST_PRIORITIES,
    binary_reference,
    is_instant,
    is_key,
    is_thread_key,
    parse_instant,
    parse_literal,
)

KNOWN_HEADER_FIELDS = frozenset({"resourceType", "id", "meta", "identifier", "status", "category", "subject", "topic",
                                 "sent", "recipient", "sender", "priority"})
"""The fields of a header the spec format holds (`id` and `meta` are the server's own)."""
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


def aliases_for(people: Sequence[tuple[str, str | None]]) -> list[str]:
    """A readable, unique alias for each (reference, display), in order: the display's slug, else the type and the
    start of the id; a name taken already gets `-2`, `-3`, ..."""
    taken: set[str] = set()
    out = []
    for reference, display in people:
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

    def name(self) -> None:
        self.alias = dict(zip(self.displays, aliases_for(list(self.displays.items())), strict=True))

    def participants(self) -> dict[str, Participant]:
        return {self.alias[r]: Participant(self.alias[r], r, d) for r, d in self.displays.items()}


class _Thread:
    """The work of `shape_thread` for one thread."""

    def __init__(self, header: Mapping[str, Any], messages: Sequence[Mapping[str, Any]], system: str,
                 missing: str | None = None, files: Mapping[str, tuple[Attachment, bytes]] | None = None) -> None:
        self.header, self.system, self.missing, self.files = header, system, missing, files or {}
        self.out = Shaped(header_id=header.get("id"), messages=len(messages))
        if missing is not None:
            self.problem(missing)
        self.people = _People()
        unique = {str(m.get("id")): m for m in reversed(messages)}  # read twice (pages shifted): once, as first read
        self.messages = _in_order([_unsigned(m) for m in reversed(unique.values())])
        self.key = self._key()
        self.ids: dict[str, str] = {}  # server id → message id

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
        text, attachments = self.payload(m, where)
        status = self.status(m, where, thread[0])
        if sender is None or (sent is None and status != DRAFT_STATUS) or (text is None and not attachments):
            why = "no sender" if sender is None else "no text or attachment" if sent is not None or \
                status == DRAFT_STATUS else "no sent instant (only a draft, status preparation, may have none)"
            self.problem(f"{where}: {why}: the message is not in the spec", m)
            return None
        priority = self.priority(m, where)
        # issue 16 (read state): a message's `read_by` is recovered here, beside its status
        return Message(mid, sender, sent, text=text, attachments=attachments,
                       recipient=self.recipients(m, sender, where), reply_to=self.reply_to(m, ids, seen, where),
                       status=None if status == thread[0] else status, received=self.instant(m, where, "received"),
                       priority=None if priority == thread[1] else priority)

    def priority(self, resource: Mapping[str, Any], where: str) -> str | None:
        priority = resource.get("priority")
        if priority is None or priority in REQUEST_PRIORITIES:
            return priority
        self.problem(f"{where}: priority {priority!r} is not a request priority: not kept")
        return None

    def payload(self, m: Mapping[str, Any], where: str) -> tuple[str | None, list[Attachment]]:
        text: str | None = None
        attachments: list[Attachment] = []
        for part in m.get("payload") or ():
            if isinstance(part, dict) and isinstance(part.get("contentString"), str) and text is None:
                text = part["contentString"] or None
            elif isinstance(part, dict) and isinstance(part.get("contentAttachment"), dict):
                if (a := self.attachment(part["contentAttachment"], where)) is not None:
                    attachments.append(a)
            else:
                self.problem(f"{where}: a payload part the spec cannot hold is not kept: {_short(part)}")
        return text, attachments

    def attachment(self, a: Mapping[str, Any], where: str) -> Attachment | None:
        if (file := self.files.get(str(a.get("url")))) is not None:
            return file[0]
        try:
            return Attachment(a.get("url"), a.get("contentType"), a.get("title"))
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
        for resource, known, where in [(self.header, KNOWN_HEADER_FIELDS, "header")] + [
                (m, KNOWN_MESSAGE_FIELDS, f"Communication/{m.get('id')}") for m in self.messages]:
            extra = sorted(set(resource) - known)
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
        self.people.name()
        self.out.people = dict(self.people.displays)

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
        seen: set[str] = set()
        messages = []
        for m in self.messages:
            mid = ids[str(m.get("id"))]
            if (message := self.message(m, mid, ids, seen, (status, priority))) is not None:
                messages.append(message)
                seen.add(mid)
        sender = _ref(self.header.get("sender"))
        try:
            return ThreadSpec(self.key, self.topic(), self.people.participants(), messages, subject=self.subject(),
                              sender=self.people.alias[sender[0]] if sender else None,
                              sent=self.instant(self.header, "header"), status=status, category=self.category(),
                              priority=priority)
        except SpecError as exc:
            self.problem("no spec could be made: " + "; ".join(f"{p.path}: {p.message}" for p in exc.problems),
                         self.header)
            self.out.dropped.extend(dict(m) for m in self.messages)
            return None


def _unsigned(message: Mapping[str, Any]) -> Mapping[str, Any]:
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


def _in_order(messages: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """By sent instant (the moment, whatever its zone), ties in the server's order (which FHIR leaves undefined);
    messages without a readable instant last."""
    def moment(m: Mapping[str, Any]) -> tuple[int, float]:
        sent = m.get("sent")
        if isinstance(sent, str) and is_instant(sent):
            return (0, parse_instant(sent).timestamp())
        return (1, 0.0)

    return sorted(messages, key=moment)


def _short(value: Any, limit: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def shape_thread(header: Mapping[str, Any], messages: Iterable[Mapping[str, Any]], *, identifier_system: str,
                 files: Mapping[str, tuple[Attachment, bytes]] | None = None) -> Shaped:
    """`header` and its `messages` (as the server returned them) as a ThreadSpec, with every way it falls short of
    them (see the module docstring). `files`: attachment url → the file attachment that replaces it, and its bytes
    (downloaded: they travel with the spec, their size and hash with them)."""
    thread = _Thread(header, list(messages), identifier_system, files=files)
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
    keys = {v.split("/", 1)[0] for m in messages if (v := _our_value(m, identifier_system)) and "/" in v}
    stub: dict[str, Any] = {"resourceType": "Communication", "id": target}
    if len(keys) == 1:
        stub["identifier"] = [{"system": identifier_system, "value": keys.pop()}]
    thread = _Thread(stub, messages, identifier_system, missing=why, files=files)
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
    resources = []
    for resource in thread.messages if thread.missing is not None else [thread.header, *thread.messages]:
        value = wanted.get(str(resource.get("id")))
        if value is not None:
            resources.append({**resource, "identifier": [{"system": system, "value": value}]})
    resolved = {full_url(system, spec.key): f"Communication/{thread.header.get('id')}"}
    data = {a.hash: b for a, b in thread.files.values() if a.hash is not None}
    bundle = build_bundle(spec, identifier_system=system, files=data or None)
    if not thread.missing and _same(bundle, resources):
        return []
    diff = compare_thread(spec, resources, identifier_system=system, resolved=resolved, bundle=bundle)
    return [f"not as on the server: {line}" for line in diff.lines(system, _names(spec))
            if not (thread.files and _FILE_FACTS.search(line))]


def _same(bundle: Mapping[str, Any], resources: Sequence[Mapping[str, Any]]) -> bool:
    """Whether `resources` (each with the identifier its entry has) are `bundle`'s, as the server holds them: its
    urns replaced by their ids, what the server sets (`compare.IGNORED`) aside. The common case, answered without
    `compare_thread`'s field by field walk (which says how they differ, when they do)."""
    entries = bundle["entry"]
    if len(entries) != len(resources):
        return False
    ids = {r["identifier"][0]["value"]: r for r in resources}
    held: dict[str, str] = {}
    pairs = []
    for entry in entries:
        want = entry["resource"]
        got = ids.get(want["identifier"][0]["value"]) if want.get("identifier") else None
        if got is None:
            return False
        held[entry["fullUrl"]] = f"Communication/{got.get('id')}"
        pairs.append((want, got))
    for want, got in pairs:
        expected = dict(want)
        for name in ("partOf", "inResponseTo"):
            if name in expected:
                expected[name] = [{"reference": held.get(r["reference"], r["reference"])} for r in expected[name]]
        if expected != {k: v for k, v in got.items() if k not in IGNORED}:
            return False
    return True


_FILE_FACTS = re.compile(r"\.contentAttachment\.(?:size|hash): missing on the server")
"""A downloaded file brings its size and hash, which the server's attachment may not have held: not a loss."""


def _names(spec: ThreadSpec) -> list[str]:
    return [identifier_value(spec.key)] + [identifier_value(spec.key, m.id) for m in spec.messages]
