"""Files too large to travel inside a thread's transaction (`build.split_files`): uploaded first, each distinct
file once per run, before the threads that attach it, as raw bytes (`POST Binary` with its own Content-Type),
and journaled by hash, so a re-run uploads nothing twice. The threads then point at `Binary/<id>` (the loader
rewrites the urn the builder gave the attachment's url).

A Binary has no identifier to search it by: an upload whose answer was lost is sent again (at worst an unused
copy of the bytes stays on the server; the threads point at one).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from ..build import binary_url, split_files
from ..errors import AuthError, ServerError, UnknownOutcome
from ..medplum.client import FhirClient
from ..spec.model import ThreadSpec
from ..vocabulary import DEFAULT_CONTENT_TYPE, WRITE_POINTS
from .journal import Journal

MAX_TRIES = 3
JOURNAL_PREFIX = "Binary#"
"""A file's key in the journal's resources: this and its hash."""


@dataclass
class Uploader:
    """The files of one load uploaded first: `refs` maps each file's urn (`build.binary_url`) to its `Binary/<id>`."""

    client: FhirClient
    journal: Journal
    dry_run: bool = False
    refs: dict[str, str] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)  # hash → why
    uploaded: int = 0
    known: int = 0
    points: int = 0
    requests: int = 0

    def upload(self, threads: Iterable[ThreadSpec]) -> None:
        """Upload every large file `threads` attach that this run has not seen yet (the journal's first)."""
        todo: dict[str, tuple[ThreadSpec, str]] = {}
        for spec in threads:
            if not spec.has_files:
                continue
            for digest, a in split_files(spec)[1].items():
                if binary_url(digest) not in self.refs and digest not in self.failed:
                    todo.setdefault(digest, (spec, a.content_type or DEFAULT_CONTENT_TYPE))
        if not todo:
            return
        found = self.journal.get_resources([JOURNAL_PREFIX + h for h in todo])
        for digest in list(todo):
            if (ref := found.get(JOURNAL_PREFIX + digest)) is not None:
                self.refs[binary_url(digest)] = ref
                self.known += 1
                del todo[digest]
        for digest, (spec, content_type) in todo.items():
            if self.dry_run:
                self.requests += 1
                self.points += WRITE_POINTS
                self.refs[binary_url(digest)] = ""
                continue
            self._one(digest, spec.files[digest], content_type)

    def _one(self, digest: str, data: bytes, content_type: str) -> None:
        for _ in range(MAX_TRIES):
            self.requests += 1
            try:
                ref = self.client.upload_binary(data, content_type)
            except UnknownOutcome:
                continue
            except AuthError:
                raise  # (every request would be refused the same way: the load stops)
            except ServerError as exc:
                self.failed[digest] = self.client.all_secrets().scrub(str(exc))
                return
            self.refs[binary_url(digest)] = ref
            self.journal.put_resources({JOURNAL_PREFIX + digest: ref})
            self.uploaded += 1
            return
        self.failed[digest] = f"no answer after {MAX_TRIES} tries"

    def why_not(self, spec: ThreadSpec) -> str | None:
        """Why `spec` cannot be sent: the first of its files that could not be uploaded, at its spec line."""
        if not self.failed or not spec.has_files:
            return None
        for i, m in enumerate(spec.messages):
            for j, a in enumerate(m.attachments):
                if a.hash is not None and (why := self.failed.get(a.hash)) is not None:
                    file, line = spec.origin(i, "attachments", j, "file")
                    where = f"{file}:{line}" if line else file
                    return (f"{where}: messages[{i + 1}].attachments[{j + 1}].file: {a.file!r} could not be "
                            f"uploaded: {why}")
        return None
