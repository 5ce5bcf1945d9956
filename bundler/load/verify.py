"""`verify`: read each loaded thread back from the server and compare it with its spec, field by field.

Threads are found by their header identifier; their messages are read as `Communication?part-of=Communication/<id>`,
following every `next` page, sorted by `_lastUpdated` (`part_of_pages`: paged by cursor, so past the 10,000 results
Medplum pages by offset), and compared a page at a time (`compare.ThreadComparer`): a thread of 100,000 messages is
never held whole, neither as read nor as built.
"""

from __future__ import annotations

import datetime as dt
import functools
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

from ..build import DEFAULT_IDENTIFIER_SYSTEM, identifier_value
from ..errors import AuthError, BundlerError, Unreachable
from ..medplum.client import FhirClient
from ..spec.model import ThreadSpec
from ..spec.participants import ParticipantsFile
from ..vocabulary import (
    READ_RECEIPT_CODE,
    READ_RECEIPT_SYSTEM,
    InstantError,
    attachment_hash,
    binary_reference,
    cursor_paged,
    parse_instant,
    stored_reference,
)
from .compare import ThreadComparer
from .inputs import Threads, read_threads, totals, windows


@dataclass
class VerifyResult:
    key: str
    file: str | None
    line: int | None
    header_id: str | None = None
    messages: int = 0
    differences: list[str] = field(default_factory=list)
    error: str | None = None  # the thread could not be read back (the others were)

    @property
    def ok(self) -> bool:
        return self.header_id is not None and not self.differences and self.error is None

    def as_json(self) -> dict[str, Any]:
        out = {"key": self.key, "ok": self.ok, "file": self.file, "line": self.line, "header_id": self.header_id,
               "messages": self.messages, "differences": self.differences}
        return out | ({"error": self.error} if self.error is not None else {})


def read_thread(client: FhirClient, header_id: str, *, receipts: bool = False, page_size: int = 1000
                ) -> list[dict[str, Any]]:
    """A thread's messages as an app reads them: part-of the header, sorted by sent, every page; with `receipts`,
    then its read receipts (tasks read model: `Task?focus=<header>&code=...|read-receipt`). Read by
    `thread_pages`, so a thread of any length is read whole."""
    messages = read_part_of(client, f"Communication/{header_id}", page_size=page_size)
    if receipts:
        messages += read_receipts(client, header_id, page_size=page_size)
    return messages


def read_receipts(client: FhirClient, header_id: str, *, page_size: int = 1000) -> list[dict[str, Any]]:
    """A thread's read receipts (tasks read model), every page (`receipt_pages`)."""
    return [r for page in receipt_pages(client, header_id, page_size=page_size) for r in page]


class Holder(Protocol):
    """What `hold_part_of` reads messages into: a list (`read_part_of`'s), or one that keeps them as bytes
    (`export.held.Held`)."""

    def add(self, messages: Iterable[Mapping[str, Any]], /) -> None: ...

    def sort(self, *, key: Callable[[Mapping[str, Any]], Any]) -> None: ...


H = TypeVar("H", bound=Holder)


class _Listed(list[dict[str, Any]]):
    add = list.extend


def read_part_of(client: FhirClient, reference: str, *, page_size: int = 1000) -> list[dict[str, Any]]:
    """The Communications part of `reference` (a header, or whatever they point at), sorted by sent (those without
    last, as Medplum sorts them), every page."""
    return hold_part_of(client, reference, _Listed(), page_size=page_size)


def hold_part_of(client: FhirClient, reference: str, holder: H, *, page_size: int = 1000) -> H:
    """`read_part_of` into `holder`, a page at a time."""
    for page in part_of_pages(client, reference, page_size=page_size):
        holder.add(page)
    holder.sort(key=sent_order)
    return holder


def thread_pages(client: FhirClient, header_id: str, *, receipts: bool = False, page_size: int = 1000
                 ) -> Iterator[list[dict[str, Any]]]:
    """A thread's messages a page at a time, in the order the server stored them (`part_of_pages`), then with
    `receipts` its read receipts: what `read_thread` reads, for a reader that need not hold them all."""
    yield from part_of_pages(client, f"Communication/{header_id}", page_size=page_size)
    if receipts:
        yield from receipt_pages(client, header_id, page_size=page_size)


def part_of_pages(client: FhirClient, reference: str, *, page_size: int = 1000) -> Iterator[list[dict[str, Any]]]:
    """The Communications part of `reference`, a page at a time, sorted by `_lastUpdated`: Medplum pages that by
    cursor, so every one is read however many there are; sorted by `sent` it pages by `_offset` and refuses
    offsets past `vocabulary.MAX_SEARCH_OFFSET` (a thread of more than 10,000 messages could not be read)."""
    return client.search_resource_pages("Communication", {"part-of": reference, **cursor_paged(page_size)})


def receipt_pages(client: FhirClient, header_id: str, *, page_size: int = 1000) -> Iterator[list[dict[str, Any]]]:
    """A thread's read receipts (tasks read model), a page at a time, paged by cursor as `part_of_pages`."""
    return client.search_resource_pages("Task", {"focus": f"Communication/{header_id}",
                                                 "code": f"{READ_RECEIPT_SYSTEM}|{READ_RECEIPT_CODE}",
                                                 **cursor_paged(page_size)})


def sent_order(resource: Mapping[str, Any]) -> tuple[int, dt.datetime | str]:
    """Sorting by `sent` as Medplum does (by the moment; none last), whatever offset each is written with."""
    sent = resource.get("sent")
    try:
        return (0, parse_instant(sent))
    except InstantError:
        return (1, "") if sent is None else (1, str(sent))


class Resolver:
    """Conditional references in their spec form (`Patient?identifier=s|v`), each searched once and remembered
    (thread-safe): how many resources each matches, and the Reference Medplum stores in place of it when it matches
    one (`vocabulary.stored_reference`: `{reference: Type/id, display}`, the display its own rendering of the
    resource, whatever display was sent)."""

    def __init__(self, client: FhirClient) -> None:
        self.client = client
        self.searches = 0
        self._found: dict[str, tuple[int, dict[str, str] | None]] = {}
        self._lock = threading.Lock()
        self._searching: dict[str, threading.Lock] = {}  # one per reference: searched by one thread only

    def _lookup(self, ref: str) -> tuple[int, dict[str, str] | None]:
        with self._lock:
            if ref in self._found:
                return self._found[ref]
            searching = self._searching.setdefault(ref, threading.Lock())
        with searching:
            with self._lock:
                if ref in self._found:
                    return self._found[ref]
            resource_type, _, token = ref.partition("?identifier=")
            found = self.client.search(resource_type, {"identifier": token, "_count": "2"})
            answer = (len(found), stored_reference(found[0]) if len(found) == 1 else None)
            with self._lock:
                self.searches += 1
                self._found[ref] = answer
                return answer

    def assume(self, refs: Iterable[str]) -> None:
        """(A dry run) take each of `refs` as matching one resource: participants a real load would create first."""
        with self._lock:
            for ref in refs:
                self._found.setdefault(ref, (1, None))

    def matches(self, ref: str) -> int:
        """How many resources `ref` matches: 0, 1, or 2 for several."""
        return self._lookup(ref)[0]

    def stored(self, refs: Iterable[str]) -> dict[str, dict[str, str]]:
        """Each of `refs` that matches exactly one resource → the Reference the server stores in its place."""
        out = {}
        for ref in refs:
            if (reference := self._lookup(ref)[1]) is not None:
                out[ref] = reference
        return out


def conditional_references(specs: Iterable[ThreadSpec]) -> set[str]:
    """Every conditional reference (participant or subject) of `specs`, in its spec form."""
    conditional = {p.reference for s in specs for p in s.participants.values() if "?" in p.reference}
    return conditional | {s.subject for s in specs if s.subject and "?" in s.subject}


def resolve_references(client: FhirClient, specs: Iterable[ThreadSpec]) -> dict[str, dict[str, str]]:
    """Each conditional reference of `specs` (`Patient?identifier=s|v`) → the Reference a server stores in its place
    (`{reference: Patient/<id>, display}`: `Resolver`); references matching none or several are left out."""
    return Resolver(client).stored(sorted(conditional_references(specs)))


def file_differences(client: FhirClient, spec: ThreadSpec, messages: Iterable[dict[str, Any]], system: str,
                     hashes: dict[str, tuple[int, str]] | None = None, *,
                     index: Mapping[str, int] | None = None) -> list[str]:
    """The file attachments of `spec` whose bytes, read back from the server (`FhirClient.read_binary`), are not the
    file's (by size and hash, `vocabulary.attachment_hash`), among the messages of `messages` (all of a thread's, or
    a page of them). `hashes` remembers what each Binary read gave; `index` (`message_index`), given, spares
    making it again for every page."""
    return [line for _, line in _file_findings(client, spec, messages, system, hashes, index)]


def _file_findings(client: FhirClient, spec: ThreadSpec, messages: Iterable[dict[str, Any]], system: str,
                   hashes: dict[str, tuple[int, str]] | None, index: Mapping[str, int] | None
                   ) -> list[tuple[int, str]]:
    """`file_differences`, each with the index of its message (to put those of several pages in spec order)."""
    seen = hashes if hashes is not None else {}
    numbers = index if index is not None else message_index(spec)
    by_index = {numbers[value]: m for m in messages for i in m.get("identifier") or ()
                if i.get("system") == system and (value := str(i.get("value"))) in numbers}
    out = []
    for i, resource in sorted(by_index.items(), key=lambda item: item[0]):
        m = spec.messages[i]
        if not any(a.file is not None for a in m.attachments):
            continue  # (a missing message is a difference already)
        held = [p["contentAttachment"] for p in resource.get("payload") or () if "contentAttachment" in p]
        for j, a in enumerate(m.attachments):
            if a.file is None:
                continue
            ref = binary_reference(held[j].get("url") if j < len(held) else None)
            if ref is None or not a.size:
                continue  # (an empty file has no Binary; a url that names none is a difference `compare` says)
            where = f"messages[{i + 1}] ({m.id}).attachments[{j + 1}] ({a.file})"
            if ref not in seen:
                try:
                    data = client.read_binary(ref)
                except (AuthError, Unreachable):
                    raise
                except BundlerError as exc:
                    out.append((i, f"{where}: {ref} could not be read: {client.all_secrets().scrub(str(exc))}"))
                    continue
                seen[ref] = (len(data), attachment_hash(data))
            if seen[ref] != (a.size, a.hash):
                out.append((i, f"{where}: {ref} reads back {seen[ref][0]:,} bytes, hash {seen[ref][1]}; the file "
                               f"has {a.size:,} bytes, hash {a.hash}"))
    return out


def message_index(spec: ThreadSpec) -> dict[str, int]:
    """The identifier value of each message of `spec` → its index."""
    return {identifier_value(spec.key, m.id): i for i, m in enumerate(spec.messages)}


def verify(threads: Threads, client: FhirClient, *, participants: str | Path | ParticipantsFile | None = None,
           read_model: str | None = None, allow_outside_files: bool = False,
           identifier_system: str = DEFAULT_IDENTIFIER_SYSTEM, concurrency: int = 4,
           on_thread: Callable[[VerifyResult], None] | None = None,
           on_start: Callable[[int | None, int | None], None] | None = None) -> list[VerifyResult]:
    """Compare every thread in `threads` with what the server holds; one result per thread, in order. A thread that
    cannot be read back gets its `error`, and the others are verified all the same; only a refused login or an
    unreachable server stops it (raised). What `thread-bundler verify` does, option for option: `threads` are
    specs, or paths of spec files read with `participants`, `read_model`, `allow_outside_files` as `load` reads
    them (`inputs.read_threads`). `verify_each` gives the same results one at a time, holding none."""
    return list(verify_each(threads, client, participants=participants, read_model=read_model,
                            allow_outside_files=allow_outside_files, identifier_system=identifier_system,
                            concurrency=concurrency, on_thread=on_thread, on_start=on_start))


def verify_each(threads: Threads, client: FhirClient, *, participants: str | Path | ParticipantsFile | None = None,
                read_model: str | None = None, allow_outside_files: bool = False,
                identifier_system: str = DEFAULT_IDENTIFIER_SYSTEM, concurrency: int = 4,
                on_thread: Callable[[VerifyResult], None] | None = None, window: int = 1000,
                on_start: Callable[[int | None, int | None], None] | None = None) -> Iterator[VerifyResult]:
    """`verify`, its results in order as they come, `window` threads at a time (their headers found together, each
    conditional reference searched once a run): the memory of a window, whatever the input's size. Paths are read
    (and every file checked: SpecError) when it is called, before anything is searched; then `on_start` is told
    (threads, messages) to verify, where known (None: a stream), for a progress line."""
    specs = read_threads(threads, participants=participants, read_model=read_model,
                         allow_outside_files=allow_outside_files)
    if on_start is not None:
        on_start(*totals(specs))
    return _verified(specs, client, identifier_system, concurrency, on_thread, window)


def _verified(specs: Iterable[ThreadSpec], client: FhirClient, identifier_system: str, concurrency: int,
              on_thread: Callable[[VerifyResult], None] | None, window: int) -> Iterator[VerifyResult]:
    resolver = Resolver(client)
    hashes: dict[str, tuple[int, str]] = {}

    def one(headers: dict[str, list[str]], resolved: dict[str, dict[str, str]], spec: ThreadSpec) -> VerifyResult:
        file, line = spec.origin()
        result = VerifyResult(spec.key, file, line)
        found = headers.get(f"{identifier_system}|{spec.key}", [])
        header_id = found[0] if found else None
        if header_id is None:
            result.differences.append("not on the server (no header with its identifier)")
        else:
            if len(found) > 1:  # (the first is compared)
                result.differences.append(
                    f"on the server {len(found)} times (headers {', '.join(f'Communication/{h}' for h in found)}): "
                    "loads that ran at the same time each made one: `thread-bundler dedupe` with their reports")
            result.header_id = header_id
            try:
                header = client.read(f"Communication/{header_id}")
                comparer = ThreadComparer(spec, identifier_system=identifier_system, resolved=resolved)
                comparer.add([header])
                files: list[tuple[int, str]] = []
                index = message_index(spec) if spec.has_files else {}
                for page in thread_pages(client, header_id, receipts=spec.read_model == "tasks"):
                    result.messages += sum(1 for m in page if m.get("resourceType") == "Communication")
                    comparer.add(page)
                    if spec.has_files:
                        files += _file_findings(client, spec, page, identifier_system, hashes, index)
                result.differences += comparer.finish() + [line for _, line in sorted(files, key=lambda f: f[0])]
            except (AuthError, Unreachable):
                raise
            except BundlerError as exc:
                result.error = client.all_secrets().scrub(str(exc))
        if on_thread:
            on_thread(result)
        return result

    with ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="verify") as pool:
        for chunk in windows(specs, window):
            headers = {ident: [str(r["id"]) for r in found] for ident, found in client.find_every_resource(
                "Communication", [f"{identifier_system}|{s.key}" for s in chunk], elements="identifier").items()}
            resolved = resolver.stored(sorted(conditional_references(chunk)))
            yield from pool.map(functools.partial(one, headers, resolved), chunk)
