"""Loading threads into a FHIR server: atomically, exactly once, at the pace the server allows; and, run
again on specs that grew or changed, as a sync.

    from bundler.load import load
    from bundler.medplum.client import ClientCredentials, FhirClient

    with FhirClient(base_url, ClientCredentials(client_id, secret)) as client:
        report = load(["threads/"], client, report="loaded.json")   # journal: threads.journal.sqlite

Exactly once, in five layers:
1. one load per journal at a time: the journal is locked (the real file's lock, whatever path names it), and a
   second load refuses (or waits);
2. the journal records every thread's request before it is sent and its server ids as it commits; a re-run
   skips what is done and carries on with what is not (a thread cut into parts resumes at its next part);
3. threads the journal does not know are first looked for on the server by their identifiers (many
   per search), so a load into a project that already has some of them creates no duplicates;
4. a request whose outcome is unknown (timeout, connection lost, 502/503/504) is never re-sent blindly.
   By default (`exactly_once="quarantine"`) it is searched for by its entries' identifiers only once it
   can no longer land: `late_margin` seconds after the client gave up on it (for a request a crashed run
   had in flight, the journal's moment: the client's timeout plus that margin after it was sent);
   meanwhile the thread waits without holding a worker. Then what is there is recorded, and
   only the rest is sent again. `exactly_once="strict"` makes every entry a conditional create on its
   identifier (at most 8 to a request, Medplum's cap), so a request of any lateness meets its twin's
   identifier and creates nothing: lost answers are simply sent again. It costs more requests and quota
   points (a conditional create is a search and a write); `bench/load.py` measures how much.
5. another load of the same threads at the same time, with another journal, is not seen by any of these: once a
   thread's requests are in, the identifiers it sent are looked for on the server (`duplicates`, a batch of
   threads to a request), and a thread found there twice is `duplicated`, said and noted in the journal (strict
   mode's conditional creates prevent it: the check then finds nothing); `dedupe`, given every load's report,
   keeps one copy, and a load whose copy it deleted finds the thread again on its next run.

A thread already loaded is synced with its spec: new messages are sent, and only they, as a part pointing
at the header's server id (replies at their targets' server ids); changed fields are found (by the
journal's per-entry hashes, then read back and compared by `compare.compare_thread`, in `verify`'s words)
and, with `update=True`, sent as updates version-checked with `ifMatch`; messages the spec no longer has
are reported, never deleted. Without a journal the server's identifiers say which messages are there.

Before a window's threads are sent, the participants they use that say how to create them are made sure of
(`participants.Ensurer`: conditional creates, once per run, journaled); a thread whose participant could not be
is not sent, and says why at its spec line. Where the server holds each file attachment's bytes is one record
for the run (`uploads.Binaries`, journaled by hash): a thread's request carries the Binary of a file the server
does not hold yet, or a file too large for that is uploaded first, when a request needs it.

Each thread is a `machine.ThreadLoad`, a state machine; this module feeds them in windows of `window`
threads (a stream is never read whole), runs them on a pool of workers whose transactions a gate lets in
(`concurrency`: "auto", the default, finds how many the server answers fastest at, `concurrency.AutoConcurrency`;
a number fixes it), and tells each result to the journal and the watcher as it comes (`report.LoadReport` keeps
counts only).
"""

from __future__ import annotations

import collections
import contextlib
import heapq
import itertools
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

from ..build import DEFAULT_IDENTIFIER_SYSTEM
from ..errors import AuthError, BundlerError, JournalError, NotAtomic, Unreachable
from ..finished import Finished
from ..medplum.client import FhirClient, chunked
from ..medplum.probe import Atomicity, probe_atomicity, remove_probes
from ..medplum.ratelimit import Gate
from ..spec.model import ThreadSpec
from ..spec.participants import ParticipantsFile
from ..vocabulary import SEARCH_POINTS, identifier_system_problem
from ..words import count
from .concurrency import AUTO, MOST, AutoConcurrency, Concurrency
from .duplicates import CHECK_AFTER, CHECK_BATCH, NOTE, SEARCH_BATCH, Waiting, checked, find_copies, found_twice
from .inputs import Threads, journal_for, read_threads, totals, windows
from .journal import Entry, Journal, State
from .machine import Deferred, Settings, ThreadLoad
from .participants import Ensurer
from .plan import SAFE_MAX_BYTES, RequestLimits
from .planbook import PlanBook
from .report import LoadReport, LoadWatcher, Outcome, Plan, ReportWriter, ThreadResult
from .thread import Thread
from .uploads import Binaries
from .verify import Resolver

Atomic = Literal["require", "auto", "off"]
ExactlyOnce = Literal["quarantine", "strict"]
EXACTLY_ONCE_MODES: tuple[ExactlyOnce, ...] = ("quarantine", "strict")
DEFAULT_LATE_MARGIN = 60.0
"""Seconds a request may still land after our client gave up on it (a gateway or the server still holding
it): what `--late-margin` defaults to. Medplum's hosted gateways give up on a request after 60 s."""


class LoadInterrupted(KeyboardInterrupt):
    """Ctrl-C during a load: `report` says what was done (the journal has it too: running the same load
    again resumes), `journal` where it is; the message says how far it got ("interrupted: 12 of 40 threads
    in"). A `report=` file holds the threads settled so far."""

    def __init__(self, report: LoadReport, journal: Path | None = None) -> None:
        done = count(report.settled) if report.total is not None else count(report.settled, "thread")
        of = f" of {count(report.total, 'thread')}" if report.total is not None else ""
        super().__init__(f"interrupted: {done}{of} in")
        self.report = report
        self.journal = journal


def load(threads: Threads, client: FhirClient, *, journal: str | Path | None = None,
         participants: str | Path | ParticipantsFile | None = None, read_model: str | None = None,
         allow_outside_files: bool = False, identifier_system: str = DEFAULT_IDENTIFIER_SYSTEM,
         atomic: Atomic = "auto", exactly_once: ExactlyOnce = "quarantine", late_margin: float = DEFAULT_LATE_MARGIN,
         update: bool = False, concurrency: Concurrency = AUTO, max_entries: int | None = None,
         max_bytes: int = SAFE_MAX_BYTES,
         dry_run: bool = False, report: str | Path | None = None, watcher: LoadWatcher | None = None,
         is_atomic: bool | None = None, window: int = 1000, wait: bool = False,
         keep_results: bool = False) -> LoadReport:
    """Load `threads` into the server behind `client`; see the module docstring for the guarantees. What
    `thread-bundler load` does, option for option (`--dry-run` is `dry_run=`, `--report` is `report=`...).

    threads: thread specs (a list, or a stream such as a migration's, read `window` threads at a time), or the
    paths of spec files and folders, read as the command reads them, with `participants` (a participants file
    the specs may use), `read_model` (overrides every thread's own; applied to given specs too) and
    `allow_outside_files` (`inputs.read_threads`). journal: default `<first input>.journal.sqlite` beside the
    first path; given specs, it must be given.
    atomic: `require` refuses a project that processes transactions as batches; `auto` (default) finds
    out once (`medplum.probe`) and, on such a project, sends the header first and then the messages,
    every entry a conditional create on its identifier, so that re-running completes a thread; `off`
    sends plain transactions and reports what a non-atomic server half-committed as partial.
    `is_atomic` skips the probe when the caller already knows. exactly_once, late_margin: how a request
    whose answer was lost is made exactly once (module docstring). update: send changed fields of loaded
    threads as updates (else they are reported as `changed`). dry_run: plan only, send nothing, write
    nothing. wait: wait for another load holding the journal instead of refusing. concurrency: threads in flight,
    `"auto"` (default: found as the load goes, `concurrency.AutoConcurrency`; at most the client's `concurrency`) or
    a number (fewer only while transactions fail to serialize); `LoadReport.concurrency` says what it came to.
    report: a file to write
    every thread's outcome to as JSON as threads finish (`report.ReportWriter`; on an error the previous file
    stays). The returned report keeps counts; each thread's result goes to `watcher.on_thread` as it finishes
    (`keep_results` also keeps them in `LoadReport.threads`).
    Ctrl-C raises LoadInterrupted, which carries the report so far (the `report` file has it too).
    """
    journal = journal_for(threads, journal)
    specs = read_threads(threads, participants=participants, read_model=read_model,
                         allow_outside_files=allow_outside_files)
    writer = ReportWriter(report) if report is not None else None
    watcher = _writing(watcher, writer)
    try:
        done = _load(specs, client, journal=journal, identifier_system=identifier_system, atomic=atomic,
                     exactly_once=exactly_once, late_margin=late_margin, update=update, concurrency=concurrency,
                     max_entries=max_entries, max_bytes=max_bytes, dry_run=dry_run, watcher=watcher,
                     is_atomic=is_atomic, window=window, wait=wait, keep_results=keep_results)
    except LoadInterrupted as exc:
        if writer is not None:
            writer.finish(exc.report)
        raise
    except BaseException:
        if writer is not None:
            writer.abandon()
        raise
    if writer is not None:
        writer.finish(done)
    return done


def _writing(watcher: LoadWatcher | None, writer: ReportWriter | None) -> LoadWatcher | None:
    """`watcher`, also adding each thread's result to the report file."""
    if writer is None:
        return watcher
    told = watcher.on_thread if watcher is not None else None

    def on_thread(result: ThreadResult, messages: int) -> None:
        writer.add(result)
        if told is not None:
            told(result, messages)

    return LoadWatcher(on_start=watcher.on_start if watcher else None, on_thread=on_thread,
                       on_wait=watcher.on_wait if watcher else None)


def _load(threads: Iterable[ThreadSpec], client: FhirClient, *, journal: Path, identifier_system: str,
          atomic: Atomic, exactly_once: ExactlyOnce, late_margin: float, update: bool, concurrency: Concurrency,
          max_entries: int | None, max_bytes: int, dry_run: bool, watcher: LoadWatcher | None,
          is_atomic: bool | None, window: int, wait: bool, keep_results: bool) -> LoadReport:
    _check_options(identifier_system, exactly_once, late_margin)
    gate = gate_for(concurrency, client)
    report = _started(threads, watcher, dry_run)
    started, requests_before, waited_before = client.clock.monotonic(), client.requests, client.pacer.waited
    target = f"{client.root}|{identifier_system}"
    with Journal(journal, target, read_only=dry_run, wait=wait, on_wait=watcher.on_wait if watcher else None) as jr, \
            ThreadPoolExecutor(max_workers=gate.most, thread_name_prefix="load") as pool, _gating(client, gate):
        run = _Run(client, jr, pool, report, identifier_system=identifier_system, atomic=atomic,
                   exactly_once=exactly_once, margin=late_margin, update=update, is_atomic=is_atomic,
                   limits=RequestLimits(max_bytes=max_bytes, max_entries=max_entries), watcher=watcher,
                   keep=keep_results, dry_run=dry_run, gate=gate)
        try:
            for chunk in windows(threads, window):
                run.window([run.numbered(Thread(spec, identifier_system)) for spec in chunk])
            run.finish()
            if dry_run:
                run.ready()  # a plan (and what the journal knows of the project) even when nothing was left to do
        except KeyboardInterrupt:
            run.stop()
            report.interrupted = True
            _close(report, run, client, started, requests_before, waited_before)
            raise LoadInterrupted(report, journal) from None
    return _close(report, run, client, started, requests_before, waited_before)


def gate_for(concurrency: Concurrency, client: FhirClient) -> Gate:
    """What lets a load's transactions in: `AutoConcurrency` for "auto" (at most the client's connections' worth,
    its quota its pacer's), a `Gate` of `concurrency` for a number. BundlerError for anything else."""
    if concurrency == AUTO:
        return AutoConcurrency(min(MOST, max(1, client.concurrency)), clock=client.clock.monotonic,
                               quota=lambda: client.pacer.rate)
    if type(concurrency) is not int or concurrency < 1:  # (a caller's typo may be anything: True, "4", 0)
        raise BundlerError(f'concurrency must be "auto" or a number of 1 or more, not {concurrency!r}')
    return Gate(concurrency)


@contextlib.contextmanager
def _gating(client: FhirClient, gate: Gate) -> Iterator[None]:
    """The client's transactions let in by `gate` for the load's time, then by the client's own again."""
    before, client.gate = client.gate, gate
    try:
        yield
    finally:
        client.gate = before


def _started(threads: Iterable[ThreadSpec], watcher: LoadWatcher | None, dry_run: bool) -> LoadReport:
    """A new report, the watcher told how much there is to do (before anything is searched or sent)."""
    report = LoadReport(dry_run=dry_run)
    report.total, messages = totals(threads)
    if watcher is not None and watcher.on_start is not None:
        watcher.on_start(report.total, messages)
    return report


def _check_options(identifier_system: str, exactly_once: str, late_margin: float) -> None:
    if (why := identifier_system_problem(identifier_system)) is not None:
        raise BundlerError(f"identifier system {why}; nothing sent")
    if exactly_once not in EXACTLY_ONCE_MODES:
        raise BundlerError(f"exactly_once must be one of {', '.join(EXACTLY_ONCE_MODES)}, not {exactly_once!r}")
    if not late_margin >= 0:
        raise BundlerError(f"late_margin must be 0 or more seconds, not {late_margin!r}")


def _close(report: LoadReport, run: _Run, client: FhirClient, started: float, requests_before: int,
           waited_before: float) -> LoadReport:
    report.atomic = run.is_atomic
    report.requests = client.requests - requests_before
    report.seconds = client.clock.monotonic() - started
    report.concurrency = run.gate.describe() if isinstance(run.gate, AutoConcurrency) else str(run.gate.most)
    report.waited = client.pacer.waited - waited_before
    report.in_input_order()
    report.participants = run.ensurer.counts
    report.files = {"uploaded": run.files.uploaded, "known": run.files.known, "failed": len(run.files.failed)}
    if run.plan is not None:
        report.plan = run.planned()
    return report


def _fatal(exc: BundlerError) -> bool:
    """Errors that would fail every thread the same way: stop the load instead."""
    return isinstance(exc, AuthError | Unreachable | NotAtomic | JournalError)


class _Run:
    """One `load` call: the state its windows share (the probe's answer, the settings, the pool, the report)."""

    def __init__(self, client: FhirClient, journal: Journal, pool: ThreadPoolExecutor, report: LoadReport, *,
                 identifier_system: str, atomic: Atomic, exactly_once: ExactlyOnce, margin: float, update: bool,
                 is_atomic: bool | None, limits: RequestLimits, watcher: LoadWatcher | None, keep: bool,
                 dry_run: bool, gate: Gate) -> None:
        self.client, self.journal, self.pool, self.report = client, journal, pool, report
        self.system, self.atomic, self.strict, self.is_atomic = identifier_system, atomic, exactly_once == "strict", \
            is_atomic
        self.margin, self.update, self.limits, self.watcher, self.keep = margin, update, limits, watcher, keep
        self.resolver = Resolver(client)
        self.ensurer = Ensurer(client, journal, dry_run=dry_run)
        self.files = Binaries(client, journal, dry_run=dry_run)
        self.plan: PlanBook | None = None
        self.dry_run = dry_run
        self.settings: Settings | None = None
        self.probe: Atomicity | None = None
        self.probed_at = 0.0
        self.stopping = threading.Event()
        self.clock = client.clock  # (the loader waits on the client's clock)
        self.started = self.clock.time()
        self.gate = gate
        self.futures: dict[Future[Any], ThreadLoad] = {}  # submitted, not yet settled
        self.waiting: list[Waiting] = []  # settled threads whose results wait for their check for copies
        self.waiting_size = 0  # the identifiers their check asks for (`Waiting.size`)
        self.refind: list[Thread] = []  # threads whose journaled copy someone removed: to be found again now
        self.waiting_since = 0.0  # (monotonic) when the oldest of them began to wait
        self.checks: dict[Future[Any], list[Waiting]] = {}  # checks submitted
        self.finished: Finished[Any] = Finished()  # submitted runs and checks, as they finish
        self.deferred: list[tuple[float, int, ThreadLoad]] = []  # machines waiting (a heap: the soonest first)
        self._order = itertools.count()
        self._seq = itertools.count()  # input order

    # --- how to send --------------------------------------------------------------------------------

    def ready(self) -> Settings:
        """The settings, once we know (probing only when something is to be sent) how to send."""
        if self.settings is None:
            if self.dry_run:
                self._recalled()
            elif self._probe_due():
                self._probe()
            limits = self._limits(self.atomic == "off" or self.is_atomic is not False)
            if self.dry_run:
                alt = self._limits(False) if self.is_atomic is None and self.atomic == "auto" else None
                self.plan = PlanBook(alt)
            self.settings = Settings(self.client, self.journal, self.system, limits, self.margin, update=self.update,
                                     resolver=self.resolver, plan=self.plan, stopping=self.stopping,
                                     started=self.started, files=self.files, atomic=self.is_atomic is True)
        return self.settings

    def _probe_due(self) -> bool:
        """Whether `ready` would probe the project (it has not yet, and it sends, and has to know)."""
        return self.settings is None and not self.dry_run and self.atomic != "off" and self.is_atomic is None

    def _limits(self, atomic: bool) -> RequestLimits:
        """Plain transactions on an atomic project (conditional ones in strict mode); on one that is not,
        conditional entries with the header alone first."""
        conditional = self.strict or not atomic
        return RequestLimits(self.limits.max_bytes, self.limits.max_entries, conditional=conditional,
                             header_alone=not atomic)

    def _probe(self) -> None:
        self.probe = probe_atomicity(self.client)
        self.probed_at = self.clock.time()
        self.is_atomic = self.probe.atomic
        self.journal.set_meta("atomic", "yes" if self.is_atomic else "no")
        if self.atomic == "require" and not self.is_atomic:
            raise NotAtomic("this project processes transactions non-atomically (Medplum's transaction-bundles "
                            "feature is off): refusing to load with --atomic require; nothing sent")

    def _recalled(self) -> None:
        """(A dry run) whether the project is atomic, as an earlier load of this journal found out."""
        if self.is_atomic is None and self.atomic != "off":
            known = self.journal.get_meta("atomic")
            self.is_atomic = {"yes": True, "no": False}.get(known or "")

    def planned(self) -> Plan:
        assert self.plan is not None
        book, pacer = self.plan, self.client.pacer
        extra_requests = self.ensurer.requests + self.files.requests
        extra_points = self.ensurer.points + self.files.points + SEARCH_POINTS * self.resolver.searches
        plan = Plan(book.requests + extra_requests, book.points + extra_points, book.searches + self.resolver.searches)
        if book.alt is not None:
            plan.requests_not_atomic = book.requests_alt + extra_requests
            plan.points_not_atomic = book.points_alt + extra_points
        if pacer.active:  # the server told its quota: the time it takes to spend the points
            plan.seconds = pacer.seconds_for(plan.points)
            if plan.points_not_atomic is not None:
                plan.seconds_not_atomic = pacer.seconds_for(plan.points_not_atomic)
        return plan

    # --- a window of threads ------------------------------------------------------------------------

    def window(self, items: list[Thread]) -> None:
        """Settle `items`: from the journal, else by what the pre-check finds and what is sent (or planned)."""
        known = self.journal.get_many([t.spec.key for t in items])
        loads: dict[int, tuple[Entry | None, dict[str, Any] | None]] = {}
        unseen = []
        for n, t in enumerate(items):
            entry = known.get(t.spec.key)
            if entry is None:
                unseen.append(n)
            elif entry.state == State.COMMITTED and entry.fingerprint == t.fingerprint:
                result = t.result(Outcome.SKIPPED, entry.ids)
                if entry.error and not self.dry_run:  # an earlier run found copies of it: checked again
                    self._wait(Waiting(t, result, list(range(len(t.urls))), entry.ids, again=True))
                else:
                    self._tell(result, t)
            else:
                loads[n] = (entry, None)
        # the probe (when one is due) meanwhile, on the pool: it and the pre-check each take a round trip or two
        probing = self.pool.submit(self.ready) if (unseen or loads) and self._probe_due() else None
        unseen = self._with_participants(items, unseen, loads)
        loads |= {n: (None, header) for n, header in self._unseen(items, unseen).items()}
        if probing is not None:
            probing.result()
        machines = collections.deque(ThreadLoad(self.ready(), items[n], entry, {}, header)
                                     for n, (entry, header) in sorted(loads.items()))
        items.clear()  # each thread is now held by its machine only, and let go when it is settled
        self._run(machines)

    def _unseen(self, items: list[Thread], unseen: list[int]) -> dict[int, dict[str, Any] | None]:
        """The header on the server (or None: the thread is new) of each `unseen` thread to load; a thread whose
        header the server holds more than once is not loaded: it is told as `duplicated` (`found_twice`)."""
        headers = self._headers(items, unseen)
        out: dict[int, dict[str, Any] | None] = {}
        for n in unseen:
            found = headers.get(n, [])
            if len(found) > 1:
                self._tell(found_twice(items[n], [f"Communication/{h['id']}" for h in found]), items[n])
            else:
                out[n] = found[0] if found else None
        return out

    def _with_participants(self, items: list[Thread], unseen: list[int],
                           loads: dict[int, tuple[Entry | None, dict[str, Any] | None]]) -> list[int]:
        """Ensure the participants to create that the threads to send use (`participants.Ensurer`); a thread whose
        participant could not be ensured is not sent: it fails, saying why. The `unseen` left."""
        self.ensurer.ensure(items[n].spec for n in [*unseen, *loads])
        if self.dry_run and self.ensurer.ensured:
            self.resolver.assume(ref for ref, known in self.ensurer.ensured.items() if not known)
        if not self.ensurer.failed:
            return unseen
        stopped = set()
        for n in [*unseen, *loads]:
            if (why := self.ensurer.why_not(items[n].spec)) is not None:
                loads.pop(n, None)
                stopped.add(n)
                self._tell(items[n].result(Outcome.FAILED, {}, error=why), items[n])
        return [n for n in unseen if n not in stopped]

    def _record_first_requests(self, machines: list[ThreadLoad]) -> None:
        """The journal rows of the new threads' first requests, written together before any is sent (one
        transaction for a batch of threads, not one per thread)."""
        first = [(m, entry) for m in machines if (entry := m.first_request()) is not None]
        self.journal.put_many([entry for _, entry in first])
        for m, _ in first:
            m.recorded = True

    def _found_again(self) -> list[ThreadLoad]:
        """Machines for the threads whose journal rows were forgotten in this run (`refind`), as for threads the
        journal never had: found on the server by identifier (`existing`), or sent if they are not there."""
        items, self.refind = self.refind, []
        return [ThreadLoad(self.ready(), items[n], None, {}, header)
                for n, header in sorted(self._unseen(items, list(range(len(items)))).items())]

    def _headers(self, items: list[Thread], unseen: list[int]) -> dict[int, list[dict[str, Any]]]:
        """The headers of the `unseen` threads (the journal has no row for them) that are on the server
        already, found by identifier, many per search: each that the server holds (more than one: copies)."""
        if not unseen:
            return {}
        before = self.client.requests
        found: dict[str, list[dict[str, Any]]] = {}
        # the searches at once, on the pool (idle between windows): a window's pre-check takes a round trip or
        # two, not one per search
        chunks = list(chunked([items[n].identifiers[0] for n in unseen], max_url=6000, most=SEARCH_BATCH))
        for part in self.pool.map(lambda chunk: self.client.find_every_resource("Communication", chunk), chunks):
            for ident, resources in part.items():
                found.setdefault(ident, resources)
        if self.dry_run:
            self.ready()
            assert self.plan is not None
            self.plan.searched(self.client.requests - before)
        return {n: found[items[n].identifiers[0]] for n in unseen if items[n].identifiers[0] in found}

    def _run(self, backlog: collections.deque[ThreadLoad], *, drain: bool = False) -> None:
        """Run the machines on the pool until each is settled, or waits: a machine that has to wait (a
        quarantine) gives its worker back and is started again when its time has come, in this window or a
        later one; `drain` also waits for every machine still waiting (the end of the load). Machines are
        handed to the pool a batch at a time (their first requests recorded together, so a crash leaves few
        threads whose first request may or may not have been sent); finished runs come back one at a time
        (`Finished`). Machines are taken from `backlog` (nothing else holds them: each is let go once settled)."""
        pending = self.finished.pending  # (what is submitted and not yet settled: `_submit`, `_submit_check`)
        while backlog or pending or self.waiting or self.refind or (drain and self.deferred):
            if self.refind:
                backlog.extend(self._found_again())
            if len(pending) <= self.ahead // 2:
                self._feed(backlog)
            while self.deferred and self.deferred[0][0] <= self.clock.time():
                self._submit(heapq.heappop(self.deferred)[2])
            if self._check_due(backlog):
                self._submit_check()
            if (future := self._next_done()) is not None:
                self._settle(future)

    def _next_done(self) -> Future[Any] | None:
        """The next finished run, or None when the soonest waiting machine is due first (or after a second,
        so that a Ctrl-C is never kept waiting)."""
        soonest = max(0.0, self.deferred[0][0] - self.clock.time()) if self.deferred else 1.0
        if not self.finished.pending:
            self.clock.wait(self.stopping, soonest)
            return None
        return self.finished.next(timeout=soonest)

    def _feed(self, backlog: collections.deque[ThreadLoad]) -> None:
        """Hand the pool machines from `backlog` until `ahead` are pending, their first requests recorded."""
        batch = [backlog.popleft() for _ in range(min(len(backlog), self.ahead - len(self.finished)))]
        self._record_first_requests(batch)
        for m in batch:
            self._submit(m)

    def _settle(self, future: Future[Any]) -> None:
        """What a machine's run came to: a result (told, the machine let go; if it sent creates, once they are
        checked for copies), or a time to start it again. Or what a check found."""
        if future in self.checks:
            self._checked(self.checks.pop(future), future.result())
            return
        machine = self.futures.pop(future)
        out = future.result()
        if isinstance(out, Deferred):
            heapq.heappush(self.deferred, (out.until, next(self._order), machine))
        elif isinstance(out, ThreadResult):
            if (entries := machine.to_check()) and not self.dry_run:
                self._wait(Waiting(machine.t, out, entries, machine.ids, lost=machine.lost,
                                   counted=machine.to_count(entries)))  # (its last use)
            else:
                self._tell(out, machine.t)

    # --- checks for copies another load made (`duplicates`) -----------------------------------------

    def _wait(self, waiting: Waiting) -> None:
        if not self.waiting:
            self.waiting_since = self.clock.monotonic()
        self.waiting.append(waiting)
        self.waiting_size += waiting.size

    @property
    def ahead(self) -> int:
        """Machines handed to the pool at a time: four times as many as may be in flight now (those the gate does
        not let in yet wait in it, or in the pool's queue)."""
        return 4 * max(1, int(self.gate.limit))

    def _check_due(self, backlog: collections.deque[ThreadLoad]) -> bool:
        """Whether to check the waiting threads now: a request's worth of identifiers wait, the oldest has waited
        long enough, or no thread is being loaded to add to them (the last of a window, or only threads in
        quarantine left)."""
        if not self.waiting:
            return False
        idle = not backlog and not self.futures  # (a machine's future leaves `futures` as it is settled)
        return idle or self.clock.monotonic() - self.waiting_since >= CHECK_AFTER or \
            self.waiting_size >= CHECK_BATCH

    def _submit_check(self) -> Future[Any]:
        """Check the waiting threads (up to CHECK_BATCH identifiers' worth) in one request, on the pool."""
        batch: list[Waiting] = []
        size = 0
        while self.waiting and (not batch or size + self.waiting[0].size <= CHECK_BATCH):
            batch.append(w := self.waiting.pop(0))
            size += w.size
        self.waiting_size -= size
        self.waiting_since = self.clock.monotonic()  # (the rest: as if they began to wait now)
        future = self.pool.submit(self._check, batch)
        self.checks[future] = batch
        return self.finished.add(future)

    def _check(self, batch: list[Waiting]) -> list[dict[int, list[str]]] | str:
        """What the server holds of the batch's entries; or why that could not be found out."""
        try:
            return find_copies(self.client, batch)
        except BundlerError as exc:
            if _fatal(exc):
                raise
            return self.client.all_secrets().scrub(str(exc))

    def _checked(self, batch: list[Waiting], found: list[dict[int, list[str]]] | str) -> None:
        """Tell the results of a checked batch; the journal notes the threads found with copies (and forgets a
        thread whose copy someone removed), so that the next run looks again."""
        if isinstance(found, str):
            self._unchecked(batch, found)
            return
        for w, copies in zip(batch, found, strict=True):
            result, note, forget = checked(w, copies)
            if forget:  # someone removed the journal's copy (`dedupe`): the thread is found again by identifier
                self.journal.delete_many([w.t.spec.key])
                self.refind.append(w.t)
                continue
            if note is not None or w.again:
                self.journal.note(w.t.spec.key, note)
            self._tell(result, w.t)

    def _unchecked(self, batch: list[Waiting], why: str) -> None:
        """Threads that could not be checked (the check failed, or the load was stopped): told as they are, the
        journal noting them so that the next run checks them; the report counts them (and is not ok)."""
        if not batch:
            return
        for w in batch:
            self.journal.note(w.t.spec.key, f"{NOTE}: not checked ({why})")
            self._tell(w.result, w.t)
        self.report.unchecked += len(batch)
        self.report.unchecked_why = self.report.unchecked_why or why

    def _submit(self, machine: ThreadLoad) -> Future[Any]:
        future = self.pool.submit(self._one, machine)
        self.futures[future] = machine
        return self.finished.add(future)

    def _one(self, machine: ThreadLoad) -> ThreadResult | Deferred | object:
        try:
            return machine.run()
        except BundlerError as exc:
            if _fatal(exc):
                raise
            return machine.t.result(Outcome.FAILED, machine.ids, error=self.client.all_secrets().scrub(str(exc)),
                                    requests=machine.requests)

    def numbered(self, t: Thread) -> Thread:
        t.seq = next(self._seq)
        return t

    def _tell(self, result: ThreadResult, t: Thread) -> None:
        self.report.add(result, keep=self.keep, seq=t.seq)
        if self.watcher is not None and self.watcher.on_thread is not None:
            self.watcher.on_thread(result, len(t.spec.messages))

    # --- the end ------------------------------------------------------------------------------------

    def finish(self) -> None:
        """Settle the threads still waiting for a lost request to land; remove what a probe whose answer was
        lost may have left, once it can no longer land (it leaves something only on a project that is not
        atomic)."""
        self._run(collections.deque(), drain=True)
        if self.probe is None or self.probe.atomic or not self.probe.lost:
            return
        settles = self.probed_at + self.margin  # the probe gave up on them before it answered
        if (left := settles - self.clock.time()) > 0:
            self.clock.sleep(left)
        remove_probes(self.client, *self.probe.lost)

    def stop(self) -> None:
        """Ctrl-C: no thread sends another request; those not started are dropped, and the journal forgets
        the first requests it recorded for them (they were never sent); it knows where every other one is."""
        self.stopping.set()
        for future in list(self.futures):
            future.cancel()
        self.pool.shutdown(wait=True, cancel_futures=True)
        unsent = [m.t.spec.key for m in self.futures.values() if m.recorded and not m.sent]
        self.journal.delete_many(unsent)
        for future, batch in list(self.checks.items()):  # (checks finished or not: the pool is down)
            if future.done() and not future.cancelled() and future.exception() is None:
                self._checked(batch, future.result())
            else:
                self._unchecked(batch, "the load was interrupted")
        self.checks.clear()
        self._unchecked(self.waiting, "the load was interrupted")
        self.waiting.clear()
        self.waiting_size = 0
