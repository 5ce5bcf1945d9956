"""The pure builder: a ThreadSpec in, a FHIR R4 transaction Bundle (a plain dict) out.

Same spec in, same bytes out: no clock, no randomness, no I/O. fullUrls are `urn:uuid:` + a UUIDv5 of
the resource's identifier, so a thread always gets the same urns and a loaded thread can be found
again by `identifier=<system>|<thread key>` (header) or `<system>|<thread key>/<message id>`.

    bundle = build_bundle(spec)
    for bundle in build_bundles(specs): ...
"""

from __future__ import annotations

import base64
import functools
import hashlib
import uuid
from collections.abc import Callable, Container, Iterable, Iterator, Mapping, Sequence
from typing import Any, Final

import orjson

from .errors import OptionError, Problem, SpecError
from .lazy import Lazy
from .spec.model import Attachment, Coding, Message, Participant, ThreadSpec, parse_spec
from .vocabulary import (
    COMMUNICATION_STATUSES,
    DEFAULT_CONTENT_TYPE,
    DRAFT_STATUS,
    MAX_CONDITIONAL_ENTRIES,
    MAX_INLINE_FILE_BYTES,
    READ_RECEIPT_CODE,
    READ_RECEIPT_INTENT,
    READ_RECEIPT_READ,
    READ_RECEIPT_SYSTEM,
    READ_RECEIPT_UNREAD,
    READ_STATE_EXTENSION,
    READ_STATE_LAST_READ,
    READ_STATE_LAST_READ_AT,
    READ_STATE_PARTICIPANT,
    READ_STATUS,
    REQUEST_PRIORITIES,
    TRANSACTION,
    identifier_search,
    identifier_system_problem,
    is_conditional_reference,
    wire_reference,
)

DEFAULT_IDENTIFIER_SYSTEM = "urn:thread-bundler:thread"
"""The identifier system put on every Communication unless another is given (`--identifier-system`)."""


@functools.lru_cache(maxsize=64)
def check_identifier_system(system: str) -> str:
    """`system` if it can be the identifier system of our resources (`vocabulary.identifier_system_problem`: an
    absolute URI without whitespace, `|`, `,`, `$` or `\\`), else OptionError saying why."""
    why = identifier_system_problem(system)
    if why is not None:
        raise OptionError(f"identifier system: {why}")
    return system

URN_NAMESPACE = uuid.UUID("5f0c2a7e-3d3b-5b8e-9a57-0c1f2b7d6e41")
"""The UUIDv5 namespace of fullUrls: urn = uuid5(URN_NAMESPACE, f"{system}|{identifier value}")."""

_NS = URN_NAMESPACE.bytes
_REQUEST = {"method": "POST", "url": "Communication"}
_TASK_REQUEST = {"method": "POST", "url": "Task"}


def identifier_value(key: str, message_id: str | None = None, reader: str | None = None) -> str:
    """The identifier value of a thread's header (`key`), of one of its messages (`key/id`), or of the read
    receipt (tasks read model) of a message for one of its recipients (`key/id/read/<alias>`: neither keys nor
    ids hold a '/', so no two of these are ever equal)."""
    if message_id is None:
        return key
    return f"{key}/{message_id}" if reader is None else f"{key}/{message_id}{READ_RECEIPT_MARK}{reader}"


READ_RECEIPT_MARK: Final = "/read/"
"""What stands between a message's identifier value and a reader's alias in a read receipt's (`identifier_value`)."""


def split_identifier_value(value: str) -> tuple[str, str | None, str | None]:
    """(key, message id, reader) of an identifier value `identifier_value` made (None for what it has not): the
    reader is after the last `READ_RECEIPT_MARK` (an alias holds no '/'), the key before the first '/'."""
    head, mark, reader = value.rpartition(READ_RECEIPT_MARK)
    key, slash, message_id = (head if mark else value).partition("/")
    return key, message_id if slash else None, reader if mark else None


def read_receipt_parts(value: str) -> tuple[str, str] | None:
    """(what names the message, the reader's alias) of a read receipt's identifier value `<key>/<id>/read/<alias>`,
    or of a search token `<system>|<key>/<id>/read/<alias>` (then the first holds the system too); None for any
    other value."""
    head, mark, reader = value.rpartition(READ_RECEIPT_MARK)
    return (head, reader) if mark else None


_VARIANT = {c: "89ab"[int(c, 16) & 3] for c in "0123456789abcdef"}



def full_url(system: str, value: str) -> str:
    """`urn:uuid:` + lowercase uuid5 of `system|value` (the same as `uuid.uuid5`, computed faster)."""
    h = hashlib.sha1(_NS + f"{system}|{value}".encode()).hexdigest()
    return f"urn:uuid:{h[:8]}-{h[8:12]}-5{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:32]}"


def _coding(c: Coding) -> dict[str, Any]:
    coding: dict[str, Any] = {}
    if c.system is not None:
        coding["system"] = c.system
    coding["code"] = c.code
    if c.display is not None:
        coding["display"] = c.display
    return coding


def _concept(c: Coding) -> dict[str, Any]:
    return {"coding": [_coding(c)]}


def _payload(text: str | None, attachments: Sequence[Attachment]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if text is not None:
        out.append({"contentString": text})
    for a in attachments:
        att: dict[str, Any] = {}
        if a.content_type is not None:
            att["contentType"] = a.content_type
        if a.file is None:
            att["url"] = a.url
        else:
            if a.size:  # an empty file has no bytes to store: no Binary, no url (only its size, 0, and hash)
                att["url"] = binary_url(a.hash or "")
            att["size"] = a.size
            att["hash"] = a.hash
        if a.title is not None:
            att["title"] = a.title
        out.append({"contentAttachment": att})
    return out


BINARY_URN_SYSTEM = "urn:thread-bundler:binary"
"""The name space of a file's Binary: its urn is uuid5 of this system and the file's hash."""


def binary_url(digest: str) -> str:
    """The `urn:uuid:` of the Binary holding the file whose `attachment_hash` is `digest`: the url of its attachments
    (the server rewrites it to `Binary/<id>` in a transaction holding that Binary; the loader does for a file it
    uploaded first)."""
    return full_url(BINARY_URN_SYSTEM, digest)


def file_attachments(spec: ThreadSpec) -> list[tuple[int, int, Attachment]]:
    """(message index, attachment index, attachment) of every file attachment of `spec`, in order."""
    return [(i, j, a) for i, m in enumerate(spec.messages) for j, a in enumerate(m.attachments) if a.file is not None]


def carry_files(spec: ThreadSpec, messages: Iterable[int], known: Container[str] = ()
                ) -> tuple[dict[int, list[Attachment]], dict[str, Attachment]]:
    """Which of `messages` (indexes into `spec.messages`, in the order they are sent) carries the Binary of each file
    they attach whose hash is not in `known` (files the server holds already), and which files are uploaded first.
    A message carries each file it is the first of `messages` to attach, while their sizes add up to at most
    MAX_INLINE_FILE_BYTES (so a message with its Binaries fits one request); the files that do not fit are uploaded
    first. An empty file is neither: it has no bytes to store."""
    carried: dict[int, list[Attachment]] = {}
    uploaded: dict[str, Attachment] = {}
    seen: set[str] = set()
    for i in messages:
        budget = MAX_INLINE_FILE_BYTES
        for a in spec.messages[i].attachments:
            digest = a.hash
            if a.file is None or digest is None or not a.size or digest in seen or digest in known:
                continue
            seen.add(digest)
            if a.size <= budget:
                carried.setdefault(i, []).append(a)
                budget -= a.size
            else:
                uploaded[digest] = a
    return carried, uploaded


def split_files(spec: ThreadSpec) -> tuple[dict[str, Attachment], dict[str, Attachment]]:
    """A thread's distinct files by hash: those whose bytes travel inside its transaction (a Binary entry each, in
    order of first use), and those uploaded first (`carry_files`, every message sent in order)."""
    carried, uploaded = carry_files(spec, range(len(spec.messages)))
    return {a.hash or "": a for i in sorted(carried) for a in carried[i]}, uploaded


def binary_entry(attachment: Attachment, data: bytes) -> dict[str, Any]:
    """The transaction entry of a file's Binary: its bytes in base64, its urn the url of its attachments."""
    return {"fullUrl": binary_url(attachment.hash or ""),
            "resource": {"resourceType": "Binary", "contentType": attachment.content_type or DEFAULT_CONTENT_TYPE,
                         "data": base64.b64encode(data).decode()},
            "request": {"method": "POST", "url": "Binary"}}


def _inline_files(spec: ThreadSpec, files: Mapping[str, bytes] | None) -> list[Attachment]:
    """The file attachments whose Binary entries a thread's bundle carries (one per distinct file, in order of first
    use); SpecError, at its line, for a file whose bytes are not given (`files`, by default the spec's own)."""
    entries: dict[str, Attachment] = {}
    problems: list[Problem] = []
    given = spec.files if files is None else files
    inline, _ = split_files(spec)
    for i, j, a in file_attachments(spec):
        if a.size == 0:
            continue  # (no bytes, no Binary)
        if a.hash is None or a.hash not in given:
            file, line = spec.origin(i, "attachments", j, "file")
            problems.append(Problem(file, line, None, f"messages[{i + 1}].attachments[{j + 1}].file",
                                    f"the bytes of {a.file!r} were not read: read the spec from its file "
                                    "(load_specs), or give files= (hash → bytes)"))
        elif a.hash in inline and a.hash not in entries:  # (the bytes of a file uploaded first are not read here)
            entries[a.hash] = a
    if problems:
        raise SpecError(problems)
    return list(entries.values())


def build_bundle(thread: ThreadSpec | Mapping[str, Any], *, identifier_system: str = DEFAULT_IDENTIFIER_SYSTEM,
                 files: Mapping[str, bytes] | None = None) -> dict[str, Any]:
    """The transaction Bundle for one thread: its header first, then its messages in spec order, then its read
    receipts (Tasks, `read_model: tasks`), then a Binary for each small file attachment (`inline`; their bytes
    from `files`, hash → bytes, by default the spec's own `ThreadSpec.files`).

    `thread` is a ThreadSpec, or plain spec data (checked first; SpecError if invalid); `identifier_system`
    must be usable in identifier searches (`check_identifier_system`; OptionError if not). Nothing in the
    result is shared between resources, so it is safe to change.
    """
    entries = bundle_entries(thread, identifier_system=identifier_system, files=files)
    return {"resourceType": "Bundle", "type": TRANSACTION, "entry": list(entries)}


def bundle_entries(thread: ThreadSpec | Mapping[str, Any], *, identifier_system: str = DEFAULT_IDENTIFIER_SYSTEM,
                   files: Mapping[str, bytes] | None = None) -> Iterator[dict[str, Any]]:
    """The entries of `build_bundle`'s Bundle, the same ones in the same order, each made when it is asked for: a
    thread of 100,000 messages need not be held whole (an entry is about 2.7 kB as Python data). The spec and the
    identifier system are checked before this returns."""
    system = check_identifier_system(identifier_system)
    spec = thread if isinstance(thread, ThreadSpec) else parse_spec(thread)
    return _entries(spec, system, files)


def _entries(spec: ThreadSpec, system: str, files: Mapping[str, bytes] | None) -> Iterator[dict[str, Any]]:
    built = BuiltEntries(spec, system, files)
    yield built.header()
    message = built.message
    for i in range(len(spec.messages)):
        yield message(i)
    for k in range(len(built.receipts)):
        yield built.receipt(k)
    yield from built.binaries()  # last: the loader finds a thread's Binaries after its header, messages and receipts


class EntrySequence(Lazy[dict[str, Any]]):
    """A bundle's entries, each made when it is asked for (`entry(n)`, n in range) and not kept: a new copy every
    time, as `build_bundle`'s would be, so a caller may change it."""

    def entry(self, n: int) -> dict[str, Any]:
        raise NotImplementedError

    def item(self, n: int) -> dict[str, Any]:
        return self.entry(n)


class BuiltEntries(EntrySequence):
    """The entries of `build_bundle`'s Bundle (the same ones, in the same order), each built when it is asked for
    and not kept: a thread of 100,000 messages need not be held whole as data (270 MB) to be checked or written a
    part at a time. What every entry shares (participants' references, the header, the read receipts' places) is
    made once; a Binary's base64 only when its entry is asked for. Checked like `bundle_entries` when made."""

    def __init__(self, spec: ThreadSpec, system: str, files: Mapping[str, bytes] | None = None) -> None:
        self.spec, self.system, self.files = spec, system, files
        self.refs = _refs(spec)
        self.header_url = full_url(system, spec.key)
        self.prefix = f"{spec.key}/"
        self.receipts = read_receipts(spec)
        self.inline = _inline_files(spec, files) if spec.has_files else []
        self._codings = [_coding(c) for c in spec.category]  # read once; every resource gets its own copy
        self._recipients_of: dict[str, list[str]] = {}
        self._subject = None if spec.subject is None else self.refs.get(
            spec.subject, {"reference": wire_reference(spec.subject)})

    def __len__(self) -> int:
        return 1 + len(self.spec.messages) + len(self.receipts) + len(self.inline)

    def entry(self, n: int) -> dict[str, Any]:
        messages, receipts = len(self.spec.messages), len(self.receipts)
        if n == 0:
            return self.header()
        if n <= messages:
            return self.message(n - 1)
        if n <= messages + receipts:
            return self.receipt(n - 1 - messages)
        a = self.inline[n - 1 - messages - receipts]
        return binary_entry(a, self._given[a.hash or ""])

    @property
    def _given(self) -> Mapping[str, bytes]:
        return self.spec.files if self.files is None else self.files

    def header(self) -> dict[str, Any]:
        spec, system = self.spec, self.system
        header = _header(spec, system, self.refs)
        prefix = self.prefix
        if spec.read_model == "header-extension" and \
                (blocks := _read_state_blocks(spec, self.refs, lambda mid: full_url(system, prefix + mid))):
            header["extension"] = blocks
        return {"fullUrl": self.header_url, "resource": header, "request": dict(_REQUEST)}

    def message(self, i: int) -> dict[str, Any]:
        """The entry of message `i` (its index in the spec's messages)."""
        spec, system, refs = self.spec, self.system, self.refs
        m = spec.messages[i]
        mid, reply_to = m.id, m.reply_to
        value = self.prefix + mid
        res: dict[str, Any] = {
            "resourceType": "Communication",
            "identifier": [{"system": system, "value": value}],
            "partOf": [{"reference": self.header_url}],
        }
        if reply_to is not None:  # (an earlier message's url, made again rather than kept for every message)
            res["inResponseTo"] = [{"reference": full_url(system, self.prefix + reply_to)}]
        simple = spec.read_model == "simple"
        res["status"] = READ_STATUS if simple and m.read_by else m.status or spec.status
        if self._codings:
            res["category"] = [{"coding": [dict(c)]} for c in self._codings]
        _times(res, m, spec.priority, simple)
        sender = m.sender
        recipients = _recipients(m.recipient, sender, refs, self._recipients_of)
        if recipients:
            res["recipient"] = [dict(refs[a]) for a in recipients]
        res["sender"] = dict(refs[sender])
        res["payload"] = _payload(m.text, m.attachments)
        return {"fullUrl": full_url(system, value), "resource": res, "request": dict(_REQUEST)}

    def receipt(self, k: int) -> dict[str, Any]:
        """The entry of read receipt `k` (the tasks model; its place in `read_receipts`)."""
        spec, system, refs = self.spec, self.system, self.refs
        i, alias = self.receipts[k]
        m = spec.messages[i]
        priority = m.priority or spec.priority
        value = identifier_value(spec.key, m.id, alias)
        read = m.read_by.get(alias)
        task: dict[str, Any] = {"resourceType": "Task", "identifier": [{"system": system, "value": value}],
                                "status": READ_RECEIPT_READ if read is not None else READ_RECEIPT_UNREAD,
                                "intent": READ_RECEIPT_INTENT}
        if priority is not None:
            task["priority"] = priority
        task["code"] = {"coding": [{"system": READ_RECEIPT_SYSTEM, "code": READ_RECEIPT_CODE}]}
        task["focus"] = {"reference": self.header_url}
        if self._subject is not None:
            task["for"] = dict(self._subject)
        if read is not None:
            task["executionPeriod"] = {"end": read}
        if m.sent is not None:
            task["authoredOn"] = m.sent
        task["owner"] = dict(refs[alias])
        return {"fullUrl": full_url(system, value), "resource": task, "request": dict(_TASK_REQUEST)}

    def binaries(self) -> Iterator[dict[str, Any]]:
        """The Binary entries of the thread's small file attachments, in order of first use."""
        given = self._given
        for a in self.inline:
            yield binary_entry(a, given[a.hash or ""])

    def url_of(self, n: int) -> str:
        """The fullUrl of entry `n`, without building it."""
        messages, receipts = len(self.spec.messages), len(self.receipts)
        if n == 0:
            return self.header_url
        if n <= messages:
            return full_url(self.system, self.prefix + self.spec.messages[n - 1].id)
        if n <= messages + receipts:
            i, alias = self.receipts[n - 1 - messages]
            return full_url(self.system, identifier_value(self.spec.key, self.spec.messages[i].id, alias))
        return binary_url(self.inline[n - 1 - messages - receipts].hash or "")


def _times(res: dict[str, Any], m: Message, thread_priority: str | None, simple: bool) -> None:
    """A message's priority, sent and received, in that order; in the simple read model a read message's received
    is when it was read, unless the spec says when it arrived."""
    if (priority := m.priority or thread_priority) is not None:
        res["priority"] = priority
    if m.sent is not None:
        res["sent"] = m.sent
    if received := m.received or (next(iter(m.read_by.values())) if simple and m.read_by else None):
        res["received"] = received


def _read_state_blocks(spec: ThreadSpec, refs: Mapping[str, dict[str, str]], url_of: Callable[[str], str]
                       ) -> list[dict[str, Any]]:
    """The header-extension model: for each participant who read something, in the order of participants, the
    last message (in thread order) they read and when. It keeps a high-water mark: messages before it count as
    read."""
    last: dict[str, Message] = {}
    for m in spec.messages:
        for alias in m.read_by:
            last[alias] = m
    return [{"url": READ_STATE_EXTENSION, "extension": [
        {"url": READ_STATE_PARTICIPANT, "valueReference": dict(refs[alias])},
        {"url": READ_STATE_LAST_READ, "valueReference": {"reference": url_of(last[alias].id)}},
        {"url": READ_STATE_LAST_READ_AT, "valueDateTime": last[alias].read_by[alias]},
    ]} for alias in refs if alias in last]


def read_receipts(spec: ThreadSpec) -> list[tuple[int, str]]:
    """(message index, recipient alias) of each read receipt the tasks model gives `spec`, in bundle order (after
    the messages): one for each sent message (not a draft) and each of its recipients; [] for other models."""
    if spec.read_model != "tasks":
        return []
    aliases = list(spec.participants)
    return [(i, alias) for i, m in enumerate(spec.messages) if (m.status or spec.status) != DRAFT_STATUS
            for alias in (m.recipient if m.recipient is not None else [a for a in aliases if a != m.sender])]


def entry_messages(spec: ThreadSpec) -> list[int | None]:
    """For each entry of `spec`'s bundle, the index of the message it stands for: None for the header, then each
    message's own, then those of the read receipts (`read_receipts`)."""
    return [None, *range(len(spec.messages)), *(i for i, _ in read_receipts(spec))]


def entry_values(spec: ThreadSpec) -> list[str]:
    """The identifier value of each entry of `spec`'s bundle, in order: header, messages, read receipts."""
    key = spec.key
    return [key, *(identifier_value(key, m.id) for m in spec.messages),
            *(identifier_value(key, spec.messages[i].id, alias) for i, alias in read_receipts(spec))]


def entry_types(spec: ThreadSpec) -> list[str]:
    """The resource type of each entry of `spec`'s bundle, in order (Communications, then any read-receipt Tasks)."""
    return ["Communication"] * (1 + len(spec.messages)) + ["Task"] * len(read_receipts(spec))


def _reference(reference: str, display: str | None) -> dict[str, str]:
    """A participant's Reference as it is sent: a conditional reference in its wire form (`wire_reference`)."""
    wire = wire_reference(reference)
    return {"reference": wire, "display": display} if display is not None else {"reference": wire}


def _refs(spec: ThreadSpec) -> dict[str, dict[str, str]]:
    """Each participant's Reference as it is sent (`_reference`), by alias."""
    return {alias: _reference(p.reference, p.display) for alias, p in spec.participants.items()}


@functools.lru_cache(maxsize=4096)
def _reference_json(reference: str, display: str | None) -> bytes:
    """`_reference` as JSON: made once for a participant that recurs across threads (staff, in a migration), not
    once a thread (its wire form percent-encodes the query)."""
    return orjson.dumps(_reference(reference, display))


def _recipients(recipient: Sequence[str] | None, sender: str, refs: Mapping[str, Any], cache: dict[str, list[str]]
                ) -> Sequence[str]:
    """A message's recipient aliases: as given, or every participant but the sender."""
    if recipient is not None:
        return recipient
    found = cache.get(sender)
    if found is None:
        found = cache[sender] = [a for a in refs if a != sender]
    return found


def _header(spec: ThreadSpec, system: str, refs: Mapping[str, dict[str, str]]) -> dict[str, Any]:
    header: dict[str, Any] = {
        "resourceType": "Communication",
        "identifier": [{"system": system, "value": spec.key}],
        "status": spec.status,
    }
    if spec.category:
        header["category"] = [_concept(c) for c in spec.category]
    if spec.priority is not None:
        header["priority"] = spec.priority
    if spec.subject is not None:
        header["subject"] = dict(refs[spec.subject]) if spec.subject in refs else {
            "reference": wire_reference(spec.subject)}
    header["topic"] = {"text": spec.topic}
    if spec.sent is not None:
        header["sent"] = spec.sent
    header["recipient"] = [dict(r) for r in refs.values()]
    if spec.sender is not None:
        header["sender"] = dict(refs[spec.sender])
    return header


@functools.lru_cache(maxsize=64)
def _identifier_json(system: str) -> bytes:
    return (b'","resource":{"resourceType":"Communication","identifier":[{"system":' + orjson.dumps(system)
            + b',"value":')


BUNDLE_START: Final = b'{"resourceType":"Bundle","type":"transaction","entry":['
_STATUS_JSON: Final = {s: b'"status":"' + s.encode() + b'",' for s in COMMUNICATION_STATUSES}
_PRIORITY_JSON: Final = {p: b'"priority":"' + p.encode() + b'",' for p in REQUEST_PRIORITIES}
"""A message's own status and priority as bundle_bytes writes them (a checked spec holds no other values)."""


def bundle_bytes(thread: ThreadSpec | Mapping[str, Any], *, identifier_system: str = DEFAULT_IDENTIFIER_SYSTEM
                 ) -> bytes:
    """Exactly `orjson.dumps(build_bundle(thread))`, made faster for NDJSON output and loading.

    The header and each message are written from templates whose values are serialised by orjson, or
    written as they are where the spec's grammar leaves nothing to escape (message ids, statuses,
    instants: a ThreadSpec is always checked). A property test holds the two equal, byte for byte.
    OptionError for an unusable `identifier_system`.
    """
    system = check_identifier_system(identifier_system)
    spec = thread if isinstance(thread, ThreadSpec) else parse_spec(thread)
    dumps_ = orjson.dumps
    if spec.has_files or spec.read_model is not None:  # Binaries; read state: Tasks, an extension, or statuses
        out = bytearray(BUNDLE_START)  # an entry at a time: the whole bundle as data is 3.4 times its bytes
        for n, entry in enumerate(_entries(spec, system, None)):
            out += b"," + dumps_(entry) if n else dumps_(entry)
        out += b"]}"
        return bytes(out)
    ref_json = {alias: _reference_json(p.reference, p.display) for alias, p in spec.participants.items()}
    header_url = full_url(system, spec.key)
    category = b'"category":' + dumps_([_concept(c) for c in spec.category]) + b"," if spec.category else b""
    status_json = b'"status":' + dumps_(spec.status) + b","
    identifier = _identifier_json(system)
    # the header, in _header's order of fields
    subject = b""
    if spec.subject is not None:
        subject = b'"subject":' + (ref_json[spec.subject] if spec.subject in ref_json
                                   else dumps_({"reference": wire_reference(spec.subject)})) + b","
    thread_priority = spec.priority
    priority_json = b'"priority":"' + thread_priority.encode() + b'",' if thread_priority is not None else b""
    head = b"".join((
        b'{"fullUrl":"', header_url.encode(), identifier, dumps_(spec.key), b"}],", status_json, category,
        priority_json, subject,
        b'"topic":{"text":', dumps_(spec.topic), b"},",
        b'"sent":' + dumps_(spec.sent) + b"," if spec.sent is not None else b"",
        b'"recipient":[', b",".join(ref_json.values()), b"]",
        b',"sender":' + ref_json[spec.sender] if spec.sender is not None else b"",
        b'},"request":{"method":"POST","url":"Communication"}}'))
    part_of = b'}],"partOf":[{"reference":"' + header_url.encode() + b'"}],'

    recipients_json: dict[str, bytes] = {}  # by sender, for messages with the default recipients
    recipients_of: dict[str, list[str]] = {}
    urls: dict[str, bytes] = {}
    prefix = f"{spec.key}/"
    name_prefix = _NS + f"{system}|{prefix}".encode()  # full_url, inlined: this loop is the hot path
    sha1, variant = hashlib.sha1, _VARIANT
    out = bytearray(BUNDLE_START + head)  # one buffer, not a list of pieces: 15 small bytes a message
    value_prefix = b'"' + prefix.encode()
    for m in spec.messages:
        mid, sender, recipient, reply_to, status = m.id, m.sender, m.recipient, m.reply_to, m.status
        raw_id = mid.encode()
        h = sha1(name_prefix + raw_id).hexdigest()
        url = urls[mid] = f"urn:uuid:{h[:8]}-{h[8:12]}-5{h[13:16]}-{variant[h[16]]}{h[17:20]}-{h[20:32]}".encode()
        rec = recipients_json.get(sender) if recipient is None else None
        if rec is None:
            recipients = _recipients(recipient, sender, ref_json, recipients_of)
            rec = b'"recipient":[' + b",".join([ref_json[a] for a in recipients]) + b"]," if recipients else b""
            if recipient is None:
                recipients_json[sender] = rec
        # keys, ids, statuses and instants of a ThreadSpec (always checked) hold no character JSON escapes:
        # written as they are, they are what orjson writes
        text, attachments, sent, received, priority = m.text, m.attachments, m.sent, m.received, m.priority
        out += b"".join((
            b',{"fullUrl":"', url, identifier, value_prefix, raw_id, b'"', part_of,
            b'"inResponseTo":[{"reference":"' + urls[reply_to] + b'"}],' if reply_to is not None else b"",
            _STATUS_JSON[status] if status else status_json,
            category, priority_json if priority is None else _PRIORITY_JSON[priority],
            b'"sent":"' + sent.encode() + b'",' if sent is not None else b"",
            b'"received":"' + received.encode() + b'",' if received is not None else b"",
            rec, b'"sender":', ref_json[sender],
            b',"payload":' + dumps_(_payload(text, attachments)) if attachments else b',"payload":[{"contentString":'
            + dumps_(text) + b"}]",
            b'},"request":{"method":"POST","url":"Communication"}}',
        ))
    out += b"]}"
    return bytes(out)


def build_bundles(threads: Iterable[ThreadSpec | Mapping[str, Any]], *,
                  identifier_system: str = DEFAULT_IDENTIFIER_SYSTEM) -> Iterator[dict[str, Any]]:
    """Bundles for many threads, built one at a time as they are asked for."""
    for thread in threads:
        yield build_bundle(thread, identifier_system=identifier_system)


# --- participants created when missing ---------------------------------------------------------------

PARTICIPANT_URN_SYSTEM = "urn:thread-bundler:participant"
"""The name space of a created participant's fullUrl: urn = uuid5 of this system and its conditional reference."""


def created_participants(threads: Iterable[ThreadSpec]) -> list[Participant]:
    """The distinct participants of `threads` that say how to create them (`create`), by reference, in order of
    first use (the first spec that gives a reference wins)."""
    out: dict[str, Participant] = {}
    for spec in threads:
        for p in spec.participants.values():
            if p.create is not None and p.reference not in out:
                out[p.reference] = p
    return list(out.values())


def participant_entry(participant: Participant) -> dict[str, Any]:
    """A participant's conditional create: POST its `create` resource unless one with its first identifier exists."""
    if participant.create is None:
        raise ValueError(f"participant {participant.alias!r} has no create")
    resource = _wired(participant.create.resource())
    first = resource["identifier"][0]
    return {"fullUrl": full_url(PARTICIPANT_URN_SYSTEM, participant.reference), "resource": resource,
            "request": {"method": "POST", "url": resource["resourceType"],
                        "ifNoneExist": identifier_search(first["system"], first["value"])}}


def _wired(value: Any) -> Any:
    """`value` (a resource to create, as the spec gives it) with each conditional reference in it in its wire form
    (`wire_reference`): a RelatedPerson's `patient: {reference: Patient?identifier=...}` is written as a spec
    writes every reference."""
    if isinstance(value, dict):
        out = {k: _wired(v) for k, v in value.items()}
        if isinstance(ref := value.get("reference"), str) and is_conditional_reference(ref):
            out["reference"] = wire_reference(ref)
        return out
    if isinstance(value, list):
        return [_wired(v) for v in value]
    return value


def participant_bundles(participants: Iterable[Participant], *, size: int = MAX_CONDITIONAL_ENTRIES
                        ) -> Iterator[dict[str, Any]]:
    """Transactions of conditional creates for `participants` (those with `create`), at most `size` entries each
    (Medplum's cap for transactions with conditional entries)."""
    entries = [participant_entry(p) for p in participants if p.create is not None]
    for start in range(0, len(entries), size):
        yield {"resourceType": "Bundle", "type": TRANSACTION, "entry": entries[start:start + size]}


def dumps(bundle: Mapping[str, Any], *, pretty: bool = False) -> bytes:
    """A bundle as JSON bytes: compact (NDJSON lines) or indented with a final newline (files)."""
    if pretty:
        return orjson.dumps(bundle, option=orjson.OPT_INDENT_2) + b"\n"
    return orjson.dumps(bundle)
