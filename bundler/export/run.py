"""`export`: threads out of a project as specs, streamed and paced like `load`.

Headers are read a page at a time (`search.header_pages`); each thread is handed to a pool of `concurrency`
workers that read its messages (`part-of`, `_sort=sent`, every page) and its read receipts (`Task?focus=<header>`
`&code=...|read-receipt`, the tasks read model), shape it (`shape.shape_thread`) and write it (`write.Writer`) as it
completes; at most a few pages' worth of threads are in flight, so memory does not grow
with the number of threads. The client paces every request by the server's RateLimit header.
"""

from __future__ import annotations

import contextlib
import os
import time
import warnings
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..build import DEFAULT_IDENTIFIER_SYSTEM, check_identifier_system
from ..errors import AuthError, BundlerError, OptionError, SpecError, Unreachable
from ..files import staged_folder, write_atomic
from ..finished import Finished
from ..load.verify import hold_part_of, read_part_of, read_receipts
from ..medplum.client import FhirClient
from ..spec.dump import dump_yaml
from ..spec.model import Attachment
from ..spec.participants import check_participants
from ..spec.source import Document
from .download import download
from .held import Held
from .participants import People, check_participants_file, plan, rewrite_spec
from .read import HeaderIds, orphan_targets
from .search import DEFAULT_PAGE_SIZE, Filters, check_page_size, header_pages
from .shape import Shaped, shape_orphans, shape_thread, unsigned
from .write import REPORT_NAME, ThreadExport, Writer

Attachments = Literal["keep", "download"]
SHOWN = 20
"""Threads with problems an ExportReport keeps to show (the report file has every one)."""


@dataclass
class ExportReport:
    """Counts of what an export did; `problems` holds the first few threads not in our shape (the report file in
    the output folder has every thread)."""

    out: Path
    threads: int = 0  # threads read
    written: int = 0  # spec files written
    messages: int = 0  # messages in the written specs
    not_in_shape: int = 0  # threads written, with problems
    failed: int = 0  # threads with no spec (unreadable, or nothing a spec could hold)
    orphans: int = 0  # groups of messages part of no header (each written as a thread, with problems)
    participants: int = 0  # in the participants file
    participant_problems: list[str] = field(default_factory=list)  # participants that cannot be created
    requests: int = 0
    seconds: float = 0.0
    waited: float = 0.0
    problems: list[ThreadExport] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Every thread found was written, in our shape (and every participant can be created, if asked)."""
        return self.failed == 0 and self.not_in_shape == 0 and not self.participant_problems

    @property
    def report_file(self) -> Path:
        return self.out / REPORT_NAME

    def add(self, result: ThreadExport) -> None:
        self.threads += 1
        self.orphans += result.orphans
        if result.file is not None:
            self.written += 1
            self.messages += result.exported
        if result.file is None:
            self.failed += 1
        elif result.problems:
            self.not_in_shape += 1
        if not result.in_shape and len(self.problems) < SHOWN:
            self.problems.append(result)

    def as_json(self) -> dict[str, Any]:
        return {"threads": self.threads, "written": self.written, "messages": self.messages,
                "not_in_shape": self.not_in_shape, "failed": self.failed, "orphans": self.orphans,
                "participants": self.participants, "participants_not_created": len(self.participant_problems),
                "requests": self.requests, "seconds": round(self.seconds, 3), "waited": round(self.waited, 3)}


def _fatal(exc: BundlerError) -> bool:
    """Errors that would fail every thread the same way: stop the export (nothing is written)."""
    return isinstance(exc, AuthError | Unreachable)


def export(client: FhirClient, out: str | Path, *, topic: str | None = None, subject: str | None = None,
           since: str | None = None, identifier_system: str = DEFAULT_IDENTIFIER_SYSTEM,
           participants_out: str | Path | None = None, attachments: Attachments = "keep", orphans: bool = False,
           concurrency: int = 4, page_size: int = DEFAULT_PAGE_SIZE,
           on_thread: Callable[[ThreadExport], None] | None = None,
           participants_file: str | Path | None = None) -> ExportReport:
    """Write one spec per thread of the project behind `client` into the folder `out`, and `export-report.jsonl`
    beside them (one line per thread: its file, its problems; a summary last).

    topic: threads whose topic text contains this (case ignored); subject: a literal reference (`Patient/123`);
    since: threads whose header changed on or after this instant; identifier_system: the system of our
    identifiers, from which thread keys and message ids are read. participants_out: also read every participant
    (one search per type) and write them to this participants file, with how to create them (`participants`); the
    specs then name them by alias (`load(participants=...)` reads it; `participants_file=` is its deprecated old
    name). attachments: `keep` keeps their URLs; `download` downloads each Binary's bytes next to the spec
    and attaches the file (`download`).
    orphans: also scan every message of the project for those part of no header this export wrote (`read`), and
    write each group of them as a thread (with its problems).
    concurrency: threads read at once; page_size: headers and messages a search page asks for. `on_thread` is
    told each thread's result as it is written. All or nothing: the files are moved into `out` only when the
    export is complete (an export that fails leaves nothing, not even the folder it would have made). OptionError
    for an option that cannot be used, before anything is sent.
    """
    filters = Filters.checked(topic=topic, subject=subject, since=since)
    check_identifier_system(identifier_system)
    check_page_size(page_size)
    if participants_file is not None:
        warnings.warn("export(participants_file=...) is deprecated: use participants_out=", DeprecationWarning,
                      stacklevel=2)
        participants_out = participants_out or participants_file
    shared = check_participants_file(participants_out, out)
    if attachments not in ("keep", "download"):
        raise OptionError(f"attachments: {attachments!r} must be keep or download")
    options = _Options(identifier_system, page_size, max(1, concurrency), shared, attachments == "download")
    run = _Run(client, filters, options, on_thread=on_thread, orphans=orphans)
    new_folder = not Path(out).exists()
    try:
        return run.into(Path(out))
    except BaseException:
        if new_folder:  # an export that did not finish leaves nothing behind, not even its folder
            with contextlib.suppress(OSError):
                Path(out).rmdir()
        raise
    finally:
        run.headers.close()


@dataclass(frozen=True)
class _Options:
    """How `export` reads and writes (checked)."""

    system: str
    page_size: int
    concurrency: int
    participants_file: Path | None
    download: bool


class _Run:
    """One `export` call: header pages read here, threads read, shaped and written by a pool of workers."""

    def __init__(self, client: FhirClient, filters: Filters, options: _Options, *,
                 on_thread: Callable[[ThreadExport], None] | None, orphans: bool) -> None:
        self.client, self.filters, self.on_thread = client, filters, on_thread
        self.system, self.page_size, self.concurrency = options.system, options.page_size, options.concurrency
        self.participants_file, self.download = options.participants_file, options.download
        self.headers = HeaderIds()  # every header seen (on disk): a header read twice is exported once
        self.orphans = orphans
        self.people = People() if self.participants_file is not None else None
        self.writer: Writer | None = None
        self.report: ExportReport | None = None

    def into(self, out: Path) -> ExportReport:
        client = self.client
        report = self.report = ExportReport(out)
        started, requests_before, waited_before = time.monotonic(), client.requests, client.pacer.waited
        with staged_folder(out) as staging:
            writer = self.writer = Writer(staging)
            try:
                self._threads()
                if self.participants_file is not None:
                    self._participants(staging, self.participants_file)
            finally:
                report.requests = client.requests - requests_before
                report.seconds = time.monotonic() - started
                report.waited = client.pacer.waited - waited_before
                writer.close(report.as_json())
        return report

    def _threads(self) -> None:
        """Every thread the filters select, then (if asked) every group of orphans; at most a few pages' worth in
        flight."""
        pending: Finished[ThreadExport] = Finished()
        with ThreadPoolExecutor(self.concurrency, thread_name_prefix="export") as pool:
            try:
                for page in header_pages(self.client, self.filters, page_size=self.page_size):
                    for header in self._new(page):
                        pending.add(pool.submit(self._one, header))
                    self._flow(pending)
                self._flow(pending, 0)
                if self.orphans:
                    for target, why in orphan_targets(self.client, self.headers, since=self.filters.since,
                                                      page_size=self.page_size):
                        pending.add(pool.submit(self._orphans, target, why))
                        self._flow(pending)
                self._flow(pending, 0)
            except BaseException:
                for future in pending.pending:
                    future.cancel()
                raise

    def _new(self, page: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The headers of `page` not seen before (a header changed during the export comes again in a later page:
        a `_lastUpdated` sort puts it last), now seen."""
        seen = self.headers.known({str(h["id"]) for h in page})
        fresh = [h for h in page if str(h["id"]) not in seen]
        for h in fresh:
            self.headers.add(str(h["id"]))
        return list({str(h["id"]): h for h in fresh}.values())

    def _flow(self, pending: Finished[ThreadExport], most: int | None = None) -> None:
        """Settle finished threads until at most `most` (default: a few pages' worth) are in flight."""
        most = 4 * self.concurrency if most is None else most
        while len(pending) > most:
            future = pending.next()
            assert future is not None  # (it waits as long as it takes)
            self._settle(future)

    def _settle(self, future: Future[ThreadExport]) -> None:
        assert self.report is not None
        result = future.result()
        self.report.add(result)
        if self.on_thread is not None:
            self.on_thread(result)

    def _one(self, header: dict[str, Any]) -> ThreadExport:
        """Read, shape and write one thread (in a worker)."""
        header_id = str(header["id"])
        messages = Held(prepare=unsigned)  # (as bytes: a thread of 100,000 messages takes about 100 MB, not 420)
        try:
            hold_part_of(self.client, f"Communication/{header_id}", messages, page_size=self.page_size)
            receipts = read_receipts(self.client, header_id, page_size=self.page_size)
        except BundlerError as exc:
            return self._failed(header_id, exc, "its messages could not be read", [header])
        try:
            return self._written(lambda files: shape_thread(header, messages, identifier_system=self.system,
                                                            files=files, receipts=receipts),
                                 shaped_all=messages.clear)  # (100 MB of a 100,000-message thread, before writing)
        except BundlerError as exc:
            return self._failed(header_id, exc, "it could not be exported", [header, *messages, *receipts])

    def _failed(self, header_id: str, exc: BundlerError, what: str, dropped: list[dict[str, Any]]) -> ThreadExport:
        """A thread that could not be read or written: its report line, with the error (the export goes on; only a
        refused login or an unreachable server stops it, raised)."""
        assert self.writer is not None
        if _fatal(exc):
            raise exc
        error = self.client.all_secrets().scrub(str(exc))
        result = ThreadExport(None, header_id, error=error, problems=[f"{what}: {error}"], dropped=dropped)
        self.writer.line(result)
        return result

    def _written(self, shape: Callable[[Mapping[str, tuple[Attachment, bytes]] | None], Shaped], *,
                 orphans: bool = False, shaped_all: Callable[[], None] | None = None) -> ThreadExport:
        """A thread shaped (`shape(files)`), its attachments downloaded if asked (then shaped again, with the files in
        place of the urls, and compared so), its participants told, and written. `shaped_all` is called once it
        is shaped for the last time (what only shaping needs may be let go before the spec is written)."""
        assert self.writer is not None
        shaped = shape(None)
        if self.download and shaped.spec is not None:
            files, problems = download(self.client, shaped.spec, self.writer.staging)
            if files:
                shaped = shape(files)
            shaped.problems += problems
        if shaped_all is not None:
            shaped_all()
        if self.people is not None:
            self.people.see(shaped.people)
        return self.writer.thread(shaped, orphans=orphans)

    def _participants(self, staging: Path, path: Path) -> None:
        """Read every participant, write the participants file, and make each spec name them by alias."""
        assert self.people is not None and self.writer is not None and self.report is not None
        known = plan(self.client, self.people)
        document = known.document(self.people)
        shared, problems = check_participants(Document(str(path), document))
        if shared is None:  # pragma: no cover - made by the model's own rules
            raise SpecError(problems)
        for name in sorted(n for n in os.listdir(staging) if n.endswith(".yaml")):
            rewrite_spec(staging / name, known, self.people, shared)
        for reference, why in known.problems.items():
            self.report.participant_problems.append(why)
            self.writer.participant(reference, why)
        self.report.participants = len(known.creates)
        write_atomic(path, dump_yaml(document))

    def _orphans(self, target: str, why: str) -> ThreadExport:
        """Read, shape and write the messages part of `target`, which is no header (in a worker)."""
        try:
            messages = read_part_of(self.client, target, page_size=self.page_size)
            return self._written(lambda files: shape_orphans(target.rpartition("/")[2], messages, why,
                                                             identifier_system=self.system, files=files), orphans=True)
        except BundlerError as exc:
            return self._failed(target, exc, "the messages part of it could not be exported", [])
