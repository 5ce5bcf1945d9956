"""Where each file of a load is stored on the server: file hash → its `Binary/<id>`, one record for the whole run,
shared by its threads (thread-safe), and kept in the journal (`Binary#<hash>`) for later runs.

A message's attachment names its file's Binary by the urn of its hash (`build.binary_url`), which the server
rewrites to `Binary/<id>` only in a request that holds that Binary's entry. So every request a thread sends
either carries the Binary of each file its messages attach (`build.carry_files`) or points at the `Binary/<id>`
the server holds for it; which, this record says. It learns a file's Binary

- from the answer to a request that carried it (`learn`, by the loader's threads),
- from the server itself: a loaded message read back holds its attachments' `url` (Medplum answers a signed URL
  of its storage, `vocabulary.binary_reference` turns it back into `Binary/<id>`) and `hash` (`stored_files`),
- from an upload: a file too large to travel inside a request is uploaded first, as raw bytes (`POST Binary`
  with its own Content-Type), when a request is about to need it and no earlier one stored it (`ensure`): a run
  that sends nothing uploads nothing, and a file stored once is never uploaded again.

A Binary has no identifier to search it by: an upload whose answer was lost is sent again (at worst an unused
copy of the bytes stays on the server; the threads point at one).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import AuthError, ServerError, UnknownOutcome
from ..medplum.client import FhirClient
from ..spec.model import Attachment, ThreadSpec
from ..vocabulary import DEFAULT_CONTENT_TYPE, WRITE_POINTS, binary_reference
from .journal import Journal

MAX_TRIES = 3
JOURNAL_PREFIX = "Binary#"
"""A file's key in the journal's resources: this and its hash."""
PLANNED = ""
"""(A dry run) the reference of a file an upload is planned for."""


def stored_files(resources: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    """File hash → `Binary/<id>` of every file attachment that `resources` (messages as the server returned them)
    hold: an attachment with a `hash` whose `url` names a Binary of the server."""
    out: dict[str, str] = {}
    for resource in resources:
        for part in resource.get("payload") or ():
            a = part.get("contentAttachment") if isinstance(part, dict) else None
            if isinstance(a, dict) and isinstance(a.get("hash"), str) and (ref := binary_reference(a.get("url"))):
                out.setdefault(a["hash"], ref)
    return out


@dataclass
class Binaries:
    """The files of one load and where the server holds them (see the module docstring)."""

    client: FhirClient
    journal: Journal
    dry_run: bool = False
    failed: dict[str, str] = field(default_factory=dict)  # hash → why it could not be uploaded
    uploaded: int = 0
    points: int = 0
    requests: int = 0
    _refs: dict[str, str] = field(default_factory=dict)  # hash → Binary/<id> (PLANNED: an upload a dry run plans)
    _looked_up: set[str] = field(default_factory=set)  # hashes looked up in the journal
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _uploading: dict[str, threading.Lock] = field(default_factory=dict)  # one per hash: uploaded by one thread
    _stored: set[str] = field(default_factory=set)  # files to upload first that were found stored already
    _uploaded: set[str] = field(default_factory=set)

    @property
    def known(self) -> int:
        """Files too large for a request that a request needed and the server held already (none uploaded)."""
        return len(self._stored - self._uploaded)

    def where(self, hashes: Iterable[str]) -> dict[str, str]:
        """hash → `Binary/<id>` of those of `hashes` the server holds, as this run or the journal knows it."""
        wanted = set(hashes)
        with self._lock:
            unknown = [h for h in wanted if h not in self._refs and h not in self._looked_up]
        if unknown:
            found = self.journal.get_resources([JOURNAL_PREFIX + h for h in unknown])
            with self._lock:
                self._looked_up.update(unknown)
                for h in unknown:
                    if (ref := found.get(JOURNAL_PREFIX + h)) is not None and h not in self._refs:
                        self._refs[h] = ref
        with self._lock:
            return {h: self._refs[h] for h in wanted if h in self._refs}

    def learn(self, found: Mapping[str, str]) -> None:
        """Record that the server holds each file of `found` (hash → `Binary/<id>`), here and in the journal."""
        with self._lock:
            new = {h: ref for h, ref in found.items() if self._refs.get(h) != ref}
            self._refs.update(new)
        if new and not self.dry_run:
            self.journal.put_resources({JOURNAL_PREFIX + h: ref for h, ref in new.items()})

    def reused(self, files: Mapping[str, str]) -> None:
        """Count files too large to travel inside a request that a request points at where the server holds them
        (hash → `Binary/<id>`; counted once a run: `known`)."""
        with self._lock:
            self._stored.update(h for h, ref in files.items() if ref != PLANNED)

    def ensure(self, spec: ThreadSpec, files: Mapping[str, Attachment]) -> str | None:
        """Make sure the server holds each of `files` (hash → an attachment of `spec` that names it): those it does
        not yet, uploaded now (a dry run counts what it would upload). None when it does; else why not, at the
        spec line of the first that could not be uploaded."""
        known = self.where(files)
        self.reused(known)
        for digest, a in files.items():
            if digest in known:
                continue
            with self._lock:
                one = self._uploading.setdefault(digest, threading.Lock())
            with one:  # another thread uploading the same file: wait for it, then use its Binary
                with self._lock:
                    done = digest in self._refs or digest in self.failed
                if not done:
                    self._upload(digest, spec.files[digest], a.content_type or DEFAULT_CONTENT_TYPE)
            if digest in self.failed:
                return self._why(spec, digest)
        return None

    def _upload(self, digest: str, data: bytes, content_type: str) -> None:
        if self.dry_run:
            with self._lock:
                self.requests += 1
                self.points += WRITE_POINTS
                self._refs[digest] = PLANNED
            return
        for _ in range(MAX_TRIES):
            with self._lock:
                self.requests += 1
            try:
                ref = self.client.upload_binary(data, content_type)
            except UnknownOutcome:
                continue
            except AuthError:
                raise  # (every request would be refused the same way: the load stops)
            except ServerError as exc:
                with self._lock:
                    self.failed[digest] = self.client.all_secrets().scrub(str(exc))
                return
            self.learn({digest: ref})
            with self._lock:
                self.uploaded += 1
                self._uploaded.add(digest)
            return
        with self._lock:
            self.failed[digest] = f"no answer after {MAX_TRIES} tries"

    def _why(self, spec: ThreadSpec, digest: str) -> str:
        """Why `spec` cannot be sent: its first attachment of a file that could not be uploaded, at its spec line."""
        for i, m in enumerate(spec.messages):
            for j, a in enumerate(m.attachments):
                if a.hash == digest:
                    file, line = spec.origin(i, "attachments", j, "file")
                    where = f"{file}:{line}" if line else file
                    return (f"{where}: messages[{i + 1}].attachments[{j + 1}].file: {a.file!r} could not be "
                            f"uploaded: {self.failed[digest]}")
        return f"a file could not be uploaded: {self.failed[digest]}"  # pragma: no cover - digest is spec's
