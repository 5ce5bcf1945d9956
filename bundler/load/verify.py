"""`verify`: read each loaded thread back from the server and compare it with its spec, field by field.

Threads are found by their header identifier; their messages are read the way apps read them,
`Communication?part-of=Communication/<id>&_sort=sent`, following every `next` page.
"""

from __future__ import annotations

import functools
import itertools
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..build import DEFAULT_IDENTIFIER_SYSTEM, identifier_value
from ..errors import AuthError, BundlerError, Unreachable
from ..medplum.client import FhirClient
from ..spec.model import ThreadSpec
from ..spec.participants import ParticipantsFile
from ..vocabulary import READ_RECEIPT_CODE, READ_RECEIPT_SYSTEM, attachment_hash, binary_reference, stored_reference
from .compare import diff_thread
from .inputs import Threads, read_threads


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
    then its read receipts (tasks read model: `Task?focus=<header>&code=...|read-receipt`)."""
    messages = read_part_of(client, f"Communication/{header_id}", page_size=page_size)
    if receipts:
        messages += client.search("Task", {"focus": f"Communication/{header_id}",
                                           "code": f"{READ_RECEIPT_SYSTEM}|{READ_RECEIPT_CODE}", "_count": "1000"})
    return messages


def read_part_of(client: FhirClient, reference: str, *, page_size: int = 1000) -> list[dict[str, Any]]:
    """The Communications part of `reference` (a header, or whatever they point at), sorted by sent, every page."""
    return client.search("Communication", {"part-of": reference, "_sort": "sent", "_count": str(page_size)})


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
                     hashes: dict[str, tuple[int, str]] | None = None) -> list[str]:
    """The file attachments of `spec` whose bytes, read back from the server (`FhirClient.read_binary`), are not the
    file's (by size and hash, `vocabulary.attachment_hash`). `hashes` remembers what each Binary read gave."""
    seen = hashes if hashes is not None else {}
    by_value = {str(i.get("value")): m for m in messages for i in m.get("identifier") or ()
                if i.get("system") == system}
    out = []
    for i, m in enumerate(spec.messages):
        resource = by_value.get(identifier_value(spec.key, m.id))
        if resource is None or not any(a.file is not None for a in m.attachments):
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
                    out.append(f"{where}: {ref} could not be read: {client.all_secrets().scrub(str(exc))}")
                    continue
                seen[ref] = (len(data), attachment_hash(data))
            if seen[ref] != (a.size, a.hash):
                out.append(f"{where}: {ref} reads back {seen[ref][0]:,} bytes, hash {seen[ref][1]}; the file has "
                           f"{a.size:,} bytes, hash {a.hash}")
    return out


def verify(threads: Threads, client: FhirClient, *, participants: str | Path | ParticipantsFile | None = None,
           read_model: str | None = None, allow_outside_files: bool = False,
           identifier_system: str = DEFAULT_IDENTIFIER_SYSTEM, concurrency: int = 4,
           on_thread: Callable[[VerifyResult], None] | None = None) -> list[VerifyResult]:
    """Compare every thread in `threads` with what the server holds; one result per thread, in order. A thread that
    cannot be read back gets its `error`, and the others are verified all the same; only a refused login or an
    unreachable server stops it (raised). What `thread-bundler verify` does, option for option: `threads` are
    specs, or paths of spec files read with `participants`, `read_model`, `allow_outside_files` as `load` reads
    them (`inputs.read_threads`). `verify_each` gives the same results one at a time, holding none."""
    return list(verify_each(threads, client, participants=participants, read_model=read_model,
                            allow_outside_files=allow_outside_files, identifier_system=identifier_system,
                            concurrency=concurrency, on_thread=on_thread))


def verify_each(threads: Threads, client: FhirClient, *, participants: str | Path | ParticipantsFile | None = None,
                read_model: str | None = None, allow_outside_files: bool = False,
                identifier_system: str = DEFAULT_IDENTIFIER_SYSTEM, concurrency: int = 4,
                on_thread: Callable[[VerifyResult], None] | None = None, window: int = 1000
                ) -> Iterator[VerifyResult]:
    """`verify`, its results in order as they come, `window` threads at a time (their headers found together, each
    conditional reference searched once a run): the memory of a window, whatever the input's size. Paths are read
    (and every file checked: SpecError) when it is called, before anything is searched."""
    specs = read_threads(threads, participants=participants, read_model=read_model,
                         allow_outside_files=allow_outside_files)
    return _verified(specs, client, identifier_system, concurrency, on_thread, window)


def _verified(specs: Iterable[ThreadSpec], client: FhirClient, identifier_system: str, concurrency: int,
              on_thread: Callable[[VerifyResult], None] | None, window: int) -> Iterator[VerifyResult]:
    resolver = Resolver(client)
    hashes: dict[str, tuple[int, str]] = {}

    def one(headers: dict[str, str], resolved: dict[str, dict[str, str]], spec: ThreadSpec) -> VerifyResult:
        file, line = spec.origin()
        result = VerifyResult(spec.key, file, line)
        header_id = headers.get(f"{identifier_system}|{spec.key}")
        if header_id is None:
            result.differences.append("not on the server (no header with its identifier)")
        else:
            result.header_id = header_id
            try:
                header = client.read(f"Communication/{header_id}")
                messages = read_thread(client, header_id, receipts=spec.read_model == "tasks")
                result.messages = sum(1 for m in messages if m.get("resourceType") == "Communication")
                result.differences = diff_thread(spec, [header, *messages], identifier_system=identifier_system,
                                                 resolved=resolved)
                if spec.has_files:
                    result.differences += file_differences(client, spec, messages, identifier_system, hashes)
            except (AuthError, Unreachable):
                raise
            except BundlerError as exc:
                result.error = client.all_secrets().scrub(str(exc))
        if on_thread:
            on_thread(result)
        return result

    with ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="verify") as pool:
        it = iter(specs)
        while chunk := list(itertools.islice(it, max(1, window))):
            headers = client.find_identifiers("Communication", [f"{identifier_system}|{s.key}" for s in chunk])
            resolved = resolver.stored(sorted(conditional_references(chunk)))
            yield from pool.map(functools.partial(one, headers, resolved), chunk)
