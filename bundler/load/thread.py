"""One thread to load, as data that does not change while it loads: its bundle as built, each entry's identifier,
fullUrl, type, spec hash and spec line, its files, its conditional references (`Thread`). What its load does with
it is `machine.ThreadLoad`."""

from __future__ import annotations

import functools
import hashlib
from array import array
from collections.abc import Iterator, Sequence
from typing import Any, Final

import orjson

from ..build import (
    BUNDLE_START,
    BuiltEntries,
    EntrySequence,
    bundle_bytes,
    entry_messages,
    entry_types,
    entry_values,
    full_url,
    split_files,
)
from ..check.limits import request_entry_bytes
from ..check.validate import WINDOW
from ..lazy import Lazy
from ..medplum.answer import quoted_conditional
from ..spec.model import Attachment, ThreadSpec
from ..vocabulary import TRANSACTION, wire_reference
from .journal import Entry
from .plan import RequestLimits, entry_sizes
from .report import Outcome, ThreadResult


class Thread:
    """One thread to load: its bundle, its entries' identifiers, fullUrls and hashes, where it came from."""

    def __init__(self, spec: ThreadSpec, system: str) -> None:
        self.spec = spec
        self.system = system
        values = entry_values(spec)  # the header, the messages, then any read receipts (Tasks)
        self._built: BuiltEntries | None = None
        if len(spec.messages) > LONG_THREAD:  # never whole as bytes: its entries built again when a part is sent
            self._built = BuiltEntries(spec, system)
            self._body: bytes | None = None
            self.fingerprint, self.length, self.hashes, self.sizes = _summed(self._built, len(values))
        else:
            self._body = bundle_bytes(spec, identifier_system=system)  # the whole thread as one transaction
            self.fingerprint = hashlib.sha256(self._body).hexdigest()
            self.length = len(self._body)
        self.values = values
        self.identifiers = Identifiers(system, values)
        self.urls = [full_url(system, v) for v in values]
        self.types = entry_types(spec)
        self.owners = entry_messages(spec)  # each entry's message (None: the header)
        self.file, self.line = spec.origin()
        self.seq = 0  # its place in the input (set by the loader)
        self.inline, self.uploads = split_files(spec) if spec.has_files else ({}, {})

    @property
    def body(self) -> bytes:
        """The whole thread as one transaction (`bundle_bytes`): kept for a thread of up to LONG_THREAD messages,
        made again when asked for (a long thread goes whole only if a request may be that large)."""
        return self._body if self._body is not None else bundle_bytes(self.spec, identifier_system=self.system)

    @functools.cached_property
    def bundle(self) -> dict[str, Any]:
        """The bundle as data (what `build_bundle` gives: `bundle_bytes` is byte-equal to it), its entries read from
        the body as they are asked for (`BodyEntries`), or for a long thread built from the spec as they are asked
        for (`build.BuiltEntries`): as data a thread of 100,000 messages takes 270 MB, as bytes 80 MB."""
        entries = self._built if self._built is not None else BodyEntries(self.body)
        return {"resourceType": "Bundle", "type": TRANSACTION, "entry": entries}

    @functools.cached_property
    def sizes(self) -> Sequence[int]:  # (a long thread's: added up when it was made)
        """Each header's, message's or read receipt's size in a request (without the Binaries it may carry)."""
        return entry_sizes(self.bundle)[:len(self.urls)]

    def files_of(self, n: int) -> list[Attachment]:
        """The file attachments with bytes (not empty) of entry `n` (a message's; none for the header or a Task)."""
        if not 1 <= n <= len(self.spec.messages):
            return []
        return [a for a in self.spec.messages[n - 1].attachments if a.file is not None and a.size and a.hash]

    @functools.cached_property
    def hashes(self) -> Sequence[str]:  # (a long thread's: made when it was made, as `Hashes`)
        """A hash of each entry as the spec builds it: what the journal compares a later spec with. Read from
        the body's bytes (each entry starts with its own fullUrl), without parsing it."""
        starts = []
        at = 0
        for url in self.urls:
            at = self.body.index(b'{"fullUrl":"' + url.encode() + b'"', at)
            starts.append(at)
        ends = [*(n - 1 for n in starts[1:]), len(self.body) - 2]  # before each ',' and the final ']}'
        return [hashlib.sha256(self.body[a:b]).hexdigest()[:HASH_DIGITS] for a, b in zip(starts, ends, strict=True)]

    @functools.cached_property
    def references(self) -> dict[str, tuple[str, ...]]:
        """Each conditional reference of the thread (`Patient?identifier=...`, its spec form) → where the spec says
        it."""
        out: dict[str, tuple[str, ...]] = {}
        for alias, p in self.spec.participants.items():
            if "?" in p.reference:
                out.setdefault(p.reference, ("participants", alias, "reference"))
        if self.spec.subject and "?" in self.spec.subject:
            out.setdefault(self.spec.subject, ("subject",))
        return out

    def whole(self, limits: RequestLimits) -> bool:
        """True when the thread goes as one plain transaction, its bytes as built."""
        return (not limits.conditional and not self.uploads and self.length <= limits.max_bytes
                and (limits.max_entries is None or len(self.urls) + len(self.inline) <= limits.max_entries))

    def known(self, entry: Entry | None, existing: dict[str, str]) -> dict[str, str]:
        """fullUrl → `Communication/<id>` of the entries the journal (`entry`) or the pre-check (`existing`,
        identifier → id) found on the server, for the entries this spec has."""
        ids = {url: ref for url, ref in (entry.ids if entry else {}).items()}
        for url, ident, kind in zip(self.urls, self.identifiers, self.types, strict=True):
            if ident in existing and url not in ids:
                ids[url] = f"{kind}/{existing[ident]}"
        return ids

    def order(self, indexes: list[int]) -> list[int]:
        """`indexes` in the order parts are cut: each message followed by its read receipts, so that a part holds
        a message and its receipts together (`plan.cut` keeps a message's unit whole when it fits)."""
        if len(self.urls) == len(self.spec.messages) + 1:
            return indexes
        owners = self.owners
        return sorted(indexes, key=lambda n: (-1 if owners[n] is None else owners[n], n))

    def result(self, outcome: Outcome, ids: dict[str, str], **kw: Any) -> ThreadResult:
        header = ids.get(self.urls[0])
        messages = {m.id: ids[url] for m, url in zip(self.spec.messages, self.urls[1:len(self.spec.messages) + 1],
                                                     strict=True) if url in ids}
        return ThreadResult(self.spec.key, outcome, self.file, self.line, header and _id(header),
                            {k: _id(v) for k, v in messages.items()}, **kw)

    def where(self, entry_index: int | None) -> str:
        """`file:line` of the spec element behind an entry (0 = the thread itself)."""
        if entry_index is None or entry_index <= 0:
            return file_line(self.file, self.line)
        return file_line(*self.spec.origin(self.owners[entry_index]))

    @functools.cached_property
    def _sent_references(self) -> dict[str, tuple[str, ...]]:
        """`references` by the form the server quotes: the wire form it was sent in (and the spec form)."""
        return {**self.references, **{wire_reference(ref): path for ref, path in self.references.items()}}

    def where_reference(self, text: str) -> str | None:
        """`file:line: participants.<alias>` of the conditional reference a server's error text quotes (as it was
        sent: `Conditional reference 'Patient?identifier=tel|%2B1...' did not match any resources`)."""
        quoted = quoted_conditional(text)
        path = self._sent_references.get(quoted) if quoted else None
        if path is None:
            return None
        return f"{file_line(*self.spec.origin(None, *path))}: {'.'.join(path[:2])}"


LONG_THREAD: Final = 2 * WINDOW
"""Messages above which a thread to load is not kept as bytes (`Thread`): its entries are built again from the spec
when a part is sent, and what the journal keeps of them (hashes, the fingerprint) is made in one pass."""


def _summed(entries: BuiltEntries, count: int) -> tuple[str, int, Hashes, array[int]]:
    """What a load needs of a thread's bytes (`bundle_bytes`), made an entry at a time without them: the
    fingerprint (SHA-256 of all of them) and length, and of each of the first `count` entries (header, messages,
    read receipts) the hash (`Thread.hashes`) and size in a request (`plan.entry_sizes`)."""
    whole = hashlib.sha256(BUNDLE_START)
    length = len(BUNDLE_START) + 2
    hashes = Hashes()
    sizes = array("q")
    for n, entry in enumerate(entries):
        data = orjson.dumps(entry)  # (the bytes `bundle_bytes` writes for it: a property test holds them equal)
        if n:
            whole.update(b",")
            length += 1
        whole.update(data)
        length += len(data)
        if n < count:
            hashes.append(hashlib.sha256(data).hexdigest()[:HASH_DIGITS])
            sizes.append(request_entry_bytes(entry))
    whole.update(b"]}")
    return whole.hexdigest(), length, hashes, sizes


class Identifiers(Lazy[str]):
    """Each entry's identifier, `<system>|<value>`, made from its value when asked for: a thread of 100,000
    messages does not keep 100,000 more strings (11 MB)."""

    def __init__(self, system: str, values: Sequence[str]) -> None:
        self._prefix, self._values = f"{system}|", values

    def __len__(self) -> int:
        return len(self._values)

    def item(self, n: int) -> str:
        return self._prefix + self._values[n]

    def __iter__(self) -> Iterator[str]:
        return (self._prefix + v for v in self._values)


class Hashes(Lazy[str]):
    """Entry hashes of `HASH_DIGITS` hex digits, kept as their bytes in one buffer (a thread of 100,000 messages:
    1 MB, not 7 as strings), each made a string again when asked for."""

    def __init__(self) -> None:
        self._data = bytearray()

    def append(self, digits: str) -> None:
        self._data += bytes.fromhex(digits)

    def __len__(self) -> int:
        return len(self._data) // _HASH_BYTES

    def item(self, n: int) -> str:
        at = n * _HASH_BYTES
        return self._data[at:at + _HASH_BYTES].hex()


HASH_DIGITS: Final = 20
"""Hex digits of an entry's hash (`Thread.hashes`): the first of its SHA-256."""
_HASH_BYTES: Final = HASH_DIGITS // 2


_ENTRY_START: Final = b'{"fullUrl":"'
"""How every entry of a bundle's bytes starts (`bundle_bytes`): nowhere else, since a `"` inside a string is `\\"`."""


class BodyEntries(EntrySequence):
    """The entries of a bundle's bytes (`bundle_bytes`), each parsed when it is asked for and not kept."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.starts = array("Q")
        at = body.find(_ENTRY_START)
        while at >= 0:
            self.starts.append(at)
            at = body.find(_ENTRY_START, at + 1)

    def __len__(self) -> int:
        return len(self.starts)

    def entry(self, n: int) -> dict[str, Any]:
        end = self.starts[n + 1] - 1 if n + 1 < len(self) else len(self.body) - 2  # (a ',' between, ']}' last)
        return orjson.loads(self.body[self.starts[n]:end])  # type: ignore[no-any-return]


def file_line(file: str | None, line: int | None) -> str:
    return f"{file}:{line}" if line else str(file)


def _id(reference: str) -> str:
    return reference.split("/", 1)[1]
