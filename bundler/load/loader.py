"""Loading threads into a FHIR server: atomically, exactly once, at the pace the server allows.

    from bundler import load_specs
    from bundler.load import load
    from bundler.medplum.client import ClientCredentials, FhirClient

    with FhirClient(base_url, ClientCredentials(client_id, secret)) as client:
        report = load(load_specs(["threads/"]), client, journal="threads.journal.sqlite")

Exactly once, in three layers:
1. the journal records every thread's server ids as its requests commit; a re-run skips what is done
   and carries on with what is not (a thread cut into parts resumes at its next part);
2. threads the journal does not know are first looked for on the server by their identifiers (many
   per search), so a load into a project that already has some of them creates no duplicates;
3. a request whose outcome is unknown (timeout, connection lost, 502/503/504) is never re-sent blindly:
   its entries' identifiers are searched, what is there is recorded, and only the rest is sent again.

Each thread the journal has not settled is one `ThreadLoad`, a state machine over `Stage`:

    stage      what it does                                           goes to
    SURVEY     what the server already has: the journal's ids, the    COMMIT when all of it is there,
               pre-check's finds, what a lost request left there      else NEXT
    NEXT       what to send next: the whole thread as built, or the   SEND; COMMIT when nothing is left;
               next part of what is left (`plan.cut`)                 FAIL when an entry fits no request
    SEND       the request, the journal first told what is in flight  APPLY; RECONCILE when the answer is
                                                                      lost; FAIL when it is refused
    APPLY      the answer: server ids, refused entries, 429s          NEXT; FAIL when an entry was refused
    RECONCILE  search what the request whose answer was lost left     NEXT; FAIL after MAX_RECONCILE
    COMMIT     journal `committed`: loaded, resumed or existing       -
    FAIL       journal `partial`, `failed` (or `sent`: answers lost)  -
"""

from __future__ import annotations

import enum
import functools
import hashlib
import itertools
import re
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import orjson

from ..build import DEFAULT_IDENTIFIER_SYSTEM, build_bundle, bundle_bytes, full_url, identifier_value
from ..errors import AuthError, BundlerError, ServerError, UnknownOutcome
from ..medplum.auth import Unreachable
from ..medplum.client import FhirClient, outcome_text
from ..medplum.probe import probe_atomicity
from ..spec.model import ThreadSpec
from ..vocabulary import SEARCH_POINTS, WRITE_POINTS
from .journal import Entry, Journal, State
from .plan import SAFE_MAX_BYTES, RequestLimits, TooLarge, cut, entry_sizes, part_bundle

Atomic = Literal["require", "auto", "off"]

_ENTRY_INDEX = re.compile(r"entry\[(\d+)\]")
MAX_RECONCILE = 6  # lost answers one thread may have in a run before it is left for the next run


class Outcome(enum.StrEnum):
    """What happened to a thread; the value is what reports and JSON show."""

    LOADED = "loaded"  # created by this run
    RESUMED = "resumed"  # part was on the server already (an earlier run, or a lost response); the rest created now
    EXISTING = "existing"  # all of it was on the server already, found by its identifiers
    SKIPPED = "skipped"  # the journal says it was loaded by an earlier run
    CHANGED = "changed"  # the journal says it was loaded, but the spec has changed since: not sent again
    PARTIAL = "partial"  # some of it is on the server, the rest failed (e.g. a non-atomic project)
    FAILED = "failed"  # nothing of it is on the server
    PLANNED = "planned"  # a dry run: it would be sent

    @property
    def ok(self) -> bool:
        """All of the thread is on the server as its spec says."""
        return self in (Outcome.LOADED, Outcome.RESUMED, Outcome.EXISTING, Outcome.SKIPPED)

    @property
    def problem(self) -> bool:
        """Someone has to look at it: the result's `error` says why."""
        return self in (Outcome.CHANGED, Outcome.PARTIAL, Outcome.FAILED)


class NotAtomic(BundlerError):
    """`--atomic require` and the project processes transactions as batches."""


@dataclass
class ThreadResult:
    key: str
    outcome: Outcome
    file: str | None = None
    line: int | None = None
    header_id: str | None = None
    message_ids: dict[str, str] = field(default_factory=dict)  # spec message id → server id
    error: str | None = None
    requests: int = 0
    created: int = 0

    def as_json(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v not in (None, {}, [])}


@dataclass
class LoadReport:
    """Every thread's result, in input order (each with its server ids: the report grows with the input)."""

    threads: list[ThreadResult]
    atomic: bool | None
    requests: int
    seconds: float
    waited: float = 0.0
    dry_run: bool = False
    planned_requests: int = 0
    planned_points: int = 0
    estimated_seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return all(t.outcome.ok for t in self.threads)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for t in self.threads:
            out[t.outcome.value] = out.get(t.outcome.value, 0) + 1
        return out

    def as_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "atomic": self.atomic, "requests": self.requests, "seconds": round(self.seconds, 3),
                "counts": self.counts(), "threads": [t.as_json() for t in self.threads]}


@dataclass
class LoadWatcher:
    """What a progress display is told: totals first (when the input is a sequence), then each finished thread."""

    threads: int = 0
    messages: int = 0
    on_thread: Callable[[ThreadResult, int], None] | None = None  # (result, messages in the thread)


def _server_id(location: str | None, resource: dict[str, Any] | None) -> str | None:
    if resource and resource.get("id"):
        return str(resource["id"])
    if location:
        parts = location.split("/")
        if "_history" in parts:
            parts = parts[: parts.index("_history")]
        return parts[-1] if len(parts) >= 2 else None
    return None


class _Thread:
    """One thread to load: its bundle, its entries' identifiers and fullUrls, where it came from."""

    def __init__(self, spec: ThreadSpec, system: str) -> None:
        self.spec = spec
        self.system = system
        self.body = bundle_bytes(spec, identifier_system=system)  # the whole thread as one transaction
        self.fingerprint = hashlib.sha256(self.body).hexdigest()
        values = [identifier_value(spec.key)] + [identifier_value(spec.key, m.id) for m in spec.messages]
        self.identifiers = [f"{system}|{v}" for v in values]
        self.urls = [full_url(system, v) for v in values]
        self.file, self.line = spec.origin()

    @functools.cached_property
    def bundle(self) -> dict[str, Any]:
        """The bundle as data, for cutting it into parts (built only when needed)."""
        return build_bundle(self.spec, identifier_system=self.system)

    @functools.cached_property
    def sizes(self) -> list[int]:
        return entry_sizes(self.bundle)

    def whole(self, limits: RequestLimits) -> bool:
        """True when the thread goes as one plain transaction, its bytes as built."""
        return (not limits.conditional and len(self.body) <= limits.max_bytes
                and (limits.max_entries is None or len(self.urls) <= limits.max_entries))

    def known(self, entry: Entry | None, existing: dict[str, str]) -> dict[str, str]:
        """fullUrl → `Communication/<id>` of the entries the journal (`entry`) or the pre-check (`existing`,
        identifier → id) found on the server."""
        ids = dict(entry.ids) if entry else {}
        for url, ident in zip(self.urls, self.identifiers, strict=True):
            if ident in existing and url not in ids:
                ids[url] = f"Communication/{existing[ident]}"
        return ids

    def result(self, outcome: Outcome, ids: dict[str, str], **kw: Any) -> ThreadResult:
        header = ids.get(self.urls[0])
        messages = {m.id: ids[url] for m, url in zip(self.spec.messages, self.urls[1:], strict=True) if url in ids}
        return ThreadResult(self.spec.key, outcome, self.file, self.line, header, messages, **kw)

    def where(self, entry_index: int | None) -> str:
        """`file:line` of the spec element behind an entry (0 = the thread itself)."""
        if entry_index is None or entry_index <= 0:
            file, line = self.file, self.line
        else:
            file, line = self.spec.origin(entry_index - 1)
        return f"{file}:{line}" if line else str(file)


class Loader:
    """What every thread's load shares: the client, the journal, the identifier system, the request limits."""

    def __init__(self, client: FhirClient, journal: Journal, *, identifier_system: str,
                 limits: RequestLimits) -> None:
        self.client = client
        self.journal = journal
        self.system = identifier_system
        self.limits = limits

    def load_thread(self, t: _Thread, entry: Entry | None, existing: dict[str, str]) -> ThreadResult:
        return ThreadLoad(self, t, entry, existing).run()


class Stage(enum.Enum):
    """The states of one thread's load (see the module docstring for the transitions)."""

    SURVEY = "what the server already has"
    NEXT = "what to send next"
    SEND = "send it"
    APPLY = "apply the answer"
    RECONCILE = "find what a request whose answer was lost left on the server"
    COMMIT = "all of it is on the server"
    FAIL = "give up on it"


class ThreadLoad:
    """One thread's way from SURVEY to COMMIT or FAIL; each stage is a method that returns the next one."""

    def __init__(self, loader: Loader, t: _Thread, entry: Entry | None, existing: dict[str, str]) -> None:
        self.loader, self.client, self.t, self.entry = loader, loader.client, t, entry
        self.ids = t.known(entry, existing)  # fullUrl → Communication/<id>: what is on the server
        self.had = False  # something of it was on the server before this run sent anything
        self.sent = False
        self.requests = 0
        self.created = 0
        self.lost = 0  # answers lost so far
        self.part: list[int] = []  # the entries of the request at hand
        self.body = b""
        self.response: Any = None
        self.why = ""
        self.fail_state: State | None = None  # for the journal, when not partial/failed
        self.result: ThreadResult | None = None

    def run(self) -> ThreadResult:
        stage: Stage | None = Stage.SURVEY
        while stage is not None:
            stage = _STEPS[stage](self)
        assert self.result is not None
        return self.result

    @property
    def complete(self) -> bool:
        # every entry by its fullUrl: a journal row written for an earlier version of the spec may hold
        # ids of entries the spec no longer has, so counting them would not do
        return all(url in self.ids for url in self.t.urls)

    # --- the stages ---------------------------------------------------------------------------------

    def survey(self) -> Stage:
        """What the server already has: the journal's ids and the pre-check's finds (in `ids` already),
        and what a request whose answer an earlier run never got left behind."""
        lost = self.entry.in_flight if self.entry else []
        if lost:
            self._reconcile([self.t.urls.index(u) for u in lost if u in self.t.urls])
        self.had = bool(self.ids)
        return Stage.COMMIT if self.complete else Stage.NEXT

    def next(self) -> Stage:
        """What to send next: the whole thread as built when none of it is on the server and it fits one
        request; else the next part of what is left (`plan.cut`), pointing at what is there by server id."""
        remaining = [i for i, url in enumerate(self.t.urls) if url not in self.ids]
        if not remaining:
            return Stage.COMMIT
        limits = self.loader.limits
        if not self.ids and self.t.whole(limits):
            self.part, self.body = remaining, self.t.body
            return Stage.SEND
        try:
            self.part = cut(remaining, self.t.sizes, limits)[0]
        except TooLarge as exc:
            return self._failing(f"{self.t.where(None)}: {exc}")
        self.body = orjson.dumps(part_bundle(self.t.bundle, self.part, self.ids, conditional=limits.conditional))
        return Stage.SEND

    def send(self) -> Stage:
        """Send the request, the journal first told which entries are in flight. A thread neither the
        journal nor the server has anything of is not written first: the pre-check finds it after a crash."""
        if self.entry is not None or self.ids:
            self._save(State.SENT, in_flight=self.part)
        self.sent = True
        self.requests += 1
        try:
            self.response = self.client.transaction(self.body, entries=len(self.part))
        except UnknownOutcome:
            return Stage.RECONCILE
        except ServerError as exc:  # an atomic refusal: nothing of this request is on the server
            return self._failing(f"{self.t.where(self._failing_entry(exc.outcome))}: {exc}")
        return Stage.APPLY

    def reconcile(self) -> Stage:
        """The answer was lost, so the request may or may not have been applied: search its entries by
        identifier and record what is there; only the rest is sent again. After MAX_RECONCILE lost
        answers the thread is left `sent`, for the next run to reconcile."""
        self.lost += 1
        if self.lost > MAX_RECONCILE:
            return self._failing("the server's answers kept getting lost; run again to resume", state=State.SENT)
        self._reconcile(self.part)
        return Stage.NEXT

    def apply(self) -> Stage:
        """Apply the answer: every committed entry's server id. A failed entry fails the thread (partial
        when a non-atomic project committed the others); entries answered 429 inside a batch were not
        processed: every worker backs off and they are sent again."""
        statuses = self._statuses()
        self.created += sum(1 for s in statuses if s.startswith("201"))
        if (failed := _first_failed(self.part, statuses)) is not None:
            return self._failing(self._entry_failure(*failed, statuses))
        if any(s.startswith("429") for s in statuses):
            self.client.pacer.blocked(1.0)
        if not self.complete:
            self._save(State.SENT)
        return Stage.NEXT

    def commit(self) -> None:
        self._save(State.COMMITTED)
        if not self.sent:
            outcome = Outcome.EXISTING if self.entry is None else Outcome.RESUMED
        else:
            outcome = Outcome.RESUMED if self.had else Outcome.LOADED
        self.result = self.t.result(outcome, _ids(self.ids), requests=self.requests, created=self.created)

    def fail(self) -> None:
        state = self.fail_state or (State.PARTIAL if self.ids else State.FAILED)
        self._save(state, in_flight=self.part if state == State.SENT else None, error=self.why)
        outcome = Outcome.PARTIAL if self.ids else Outcome.FAILED
        self.result = self.t.result(outcome, _ids(self.ids), error=self.why, requests=self.requests)

    # --- helpers ------------------------------------------------------------------------------------

    def _failing(self, why: str, *, state: State | None = None) -> Stage:
        self.why, self.fail_state = why, state
        return Stage.FAIL

    def _reconcile(self, part: list[int]) -> None:
        """Record which entries of `part` are on the server, by identifier search."""
        t = self.t
        found = self.client.find_identifiers("Communication", [t.identifiers[n] for n in part])
        self.ids.update({t.urls[n]: f"Communication/{found[t.identifiers[n]]}" for n in part
                         if t.identifiers[n] in found})
        self.requests += 1

    def _statuses(self) -> list[str]:
        """Each entry's status in the answer, recording the server id of every committed one."""
        entries = self.response.get("entry") if isinstance(self.response, dict) else None
        if not isinstance(entries, list) or len(entries) != len(self.part):
            raise BundlerError(f"{self.t.spec.key}: the server answered a transaction of {len(self.part)} entries "
                               f"with {len(entries) if isinstance(entries, list) else 'no'} entries")
        statuses = []
        for i, e in zip(self.part, entries, strict=True):
            resp = e.get("response") or {}
            statuses.append(status := str(resp.get("status", "")))
            if status[:1] == "2" and (sid := _server_id(resp.get("location"), e.get("resource"))):
                self.ids[self.t.urls[i]] = f"Communication/{sid}"
        return statuses

    def _entry_failure(self, index: int, status: str, statuses: list[str]) -> str:
        entry = self.response["entry"][self.part.index(index)]
        text = outcome_text((entry.get("response") or {}).get("outcome"))
        committed = sum(1 for s in statuses if s[:1] == "2")
        why = f"{self.t.where(index)}: HTTP {status.split()[0]}: {text or 'refused'}"
        if committed:
            why += (f" — the server processed the transaction non-atomically: {committed} of {len(self.part)} "
                    "entries were committed (is the project's transaction-bundles feature off?)")
        return why

    def _failing_entry(self, outcome: dict[str, Any] | None) -> int | None:
        """The thread entry an OperationOutcome blames (`entry[n]` of this request), if it names one."""
        for issue in (outcome or {}).get("issue") or ():
            for where in (issue.get("expression") or []) + (issue.get("location") or []):
                m = _ENTRY_INDEX.search(where)
                if m and int(m.group(1)) < len(self.part):
                    return self.part[int(m.group(1))]
        return None

    def _save(self, state: State, *, in_flight: list[int] | None = None, error: str | None = None) -> None:
        urls = [self.t.urls[i] for i in in_flight or ()]
        self.loader.journal.put(Entry(self.t.spec.key, state, self.t.fingerprint, self.ids, urls, error))


def _first_failed(part: list[int], statuses: list[str]) -> tuple[int, str] | None:
    """The first entry (thread index, status) the server refused; a 429 is not a refusal: the entry was
    not processed."""
    return next(((i, s) for i, s in zip(part, statuses, strict=True) if s[:1] != "2" and not s.startswith("429")),
                None)


_STEPS: dict[Stage, Callable[[ThreadLoad], Stage | None]] = {
    Stage.SURVEY: ThreadLoad.survey,
    Stage.NEXT: ThreadLoad.next,
    Stage.SEND: ThreadLoad.send,
    Stage.RECONCILE: ThreadLoad.reconcile,
    Stage.APPLY: ThreadLoad.apply,
    Stage.COMMIT: ThreadLoad.commit,
    Stage.FAIL: ThreadLoad.fail,
}


def _ids(ids: dict[str, str]) -> dict[str, str]:
    return {url: ref.split("/", 1)[1] for url, ref in ids.items()}


def default_journal(paths: Sequence[str | Path]) -> Path:
    """`<first input>.journal.sqlite` beside the first input (a file or folder); in the current folder for stdin."""
    first = next((Path(p) for p in paths if str(p) != "-"), None)
    if first is None:
        return Path("thread-bundler.journal.sqlite")
    first = first.resolve()
    return first.parent / f"{first.name}.journal.sqlite"


def load(threads: Iterable[ThreadSpec], client: FhirClient, *, journal: str | Path,
         identifier_system: str = DEFAULT_IDENTIFIER_SYSTEM, atomic: Atomic = "auto", concurrency: int = 4,
         max_entries: int | None = None, max_bytes: int = SAFE_MAX_BYTES, dry_run: bool = False,
         watcher: LoadWatcher | None = None, is_atomic: bool | None = None, window: int = 1000) -> LoadReport:
    """Load `threads` into the server behind `client`; see the module docstring for the guarantees.

    atomic: `require` refuses a project that processes transactions as batches; `auto` (default) finds
    out once (`medplum.probe`) and, on such a project, sends the header first and then the messages,
    every entry a conditional create on its identifier, so that re-running completes a thread; `off`
    sends plain transactions and reports what a non-atomic server half-committed as partial.
    `is_atomic` skips the probe when the caller already knows. `threads` may be a stream (a migration):
    it is read `window` threads at a time, so only one window of specs and bundles is held at once; the
    report still keeps every thread's result, with the server id of each of its messages.
    """
    started, requests_before, waited_before = time.monotonic(), client.requests, client.pacer.waited
    if watcher is not None and isinstance(threads, Sequence):
        watcher.threads, watcher.messages = len(threads), sum(len(t.messages) for t in threads)
    results: list[ThreadResult] = []
    plan = _Plan() if dry_run else None
    with Journal(journal, f"{client.root}|{identifier_system}") as jr, \
            ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="load") as pool:
        run = _Run(client, jr, pool, identifier_system=identifier_system, atomic=atomic, is_atomic=is_atomic,
                   limits=RequestLimits(max_bytes=max_bytes, max_entries=max_entries), watcher=watcher)
        for chunk in _batched(threads, max(1, window)):
            results += run.window([_Thread(spec, identifier_system) for spec in chunk], plan)
    _scrub(results, client)
    report = LoadReport(results, run.is_atomic, client.requests - requests_before, time.monotonic() - started,
                        client.pacer.waited - waited_before, dry_run=dry_run)
    if plan is not None:
        report.planned_requests, report.planned_points = plan.requests, plan.points
        report.estimated_seconds = client.pacer.seconds_for(plan.points)
    return report


def _scrub(results: list[ThreadResult], client: FhirClient) -> None:
    """No secret in an error (a server may echo what it was sent, a token included)."""
    secrets = client.all_secrets()
    for r in results:
        if r.error:
            r.error = secrets.scrub(r.error)


def _batched(items: Iterable[ThreadSpec], size: int) -> Iterable[list[ThreadSpec]]:
    it = iter(items)
    while chunk := list(itertools.islice(it, size)):
        yield chunk


@dataclass
class _Plan:
    requests: int = 0
    points: int = 0


class _Run:
    """One `load` call: the state its windows share (the probe's answer, the loader, the pool)."""

    def __init__(self, client: FhirClient, journal: Journal, pool: ThreadPoolExecutor, *, identifier_system: str,
                 atomic: Atomic, is_atomic: bool | None, limits: RequestLimits, watcher: LoadWatcher | None) -> None:
        self.client, self.journal, self.pool = client, journal, pool
        self.system, self.atomic, self.is_atomic = identifier_system, atomic, is_atomic
        self.limits, self.watcher = limits, watcher
        self.loader: Loader | None = None

    def _tell(self, result: ThreadResult, t: _Thread) -> None:
        if self.watcher and self.watcher.on_thread:
            self.watcher.on_thread(result, len(t.spec.messages))

    def _ready(self, dry_run: bool) -> Loader:
        """The loader, once we know (probing only when something is to be sent) how to send."""
        if self.loader is None:
            if self.atomic != "off" and self.is_atomic is None and not dry_run:
                self.is_atomic = probe_atomicity(self.client).atomic
                if self.atomic == "require" and not self.is_atomic:
                    raise NotAtomic("this project processes transactions non-atomically (Medplum's "
                                    "transaction-bundles feature is off): refusing to load with --atomic require")
            limits = RequestLimits(self.limits.max_bytes, self.limits.max_entries,
                                   conditional=self.atomic == "auto" and self.is_atomic is False)
            self.loader = Loader(self.client, self.journal, identifier_system=self.system, limits=limits)
        return self.loader

    def window(self, items: list[_Thread], plan: _Plan | None) -> list[ThreadResult]:
        """Settle `items`: from the journal, else by what the pre-check finds and what is sent (or planned)."""
        known = self.journal.get_many([t.spec.key for t in items])
        results = self._settled(items, known)
        entries = {n: known.get(t.spec.key) for n, t in enumerate(items) if n not in results}  # the rest
        existing = self._precheck(items, [n for n, entry in entries.items() if entry is None])
        if entries:
            loader = self._ready(dry_run=plan is not None)
            if plan is not None:
                results |= _plan_window(items, entries, existing, loader.limits, plan)
            else:
                results |= self._send_window(loader, items, entries, existing)
        return [results[n] for n in range(len(items))]

    def _settled(self, items: list[_Thread], known: dict[str, Entry]) -> dict[int, ThreadResult]:
        """The results of the threads the journal says were committed (skipped, or changed since)."""
        results: dict[int, ThreadResult] = {}
        for n, t in enumerate(items):
            if (done := _settled(t, known.get(t.spec.key))) is not None:
                results[n] = done
                self._tell(done, t)
        return results

    def _precheck(self, items: list[_Thread], unseen: list[int]) -> dict[int, dict[str, str]]:
        """Which of the `unseen` threads (the journal has no row for them) are on the server already, by
        header identifier (many per search), and then which of their messages: identifier → id."""
        headers = self.client.find_identifiers("Communication", [items[n].identifiers[0] for n in unseen])
        return {n: self.client.find_identifiers("Communication", items[n].identifiers)
                for n in unseen if items[n].identifiers[0] in headers}

    def _send_window(self, loader: Loader, items: list[_Thread], entries: dict[int, Entry | None],
                     existing: dict[int, dict[str, str]]) -> dict[int, ThreadResult]:
        def one(n: int) -> ThreadResult:
            try:
                return loader.load_thread(items[n], entries[n], existing.get(n, {}))
            except BundlerError as exc:
                if _fatal(exc):
                    raise
                return items[n].result(Outcome.FAILED, {}, error=self.client.all_secrets().scrub(str(exc)))

        results: dict[int, ThreadResult] = {}
        futures = {self.pool.submit(one, n): n for n in entries}
        try:
            for future in as_completed(futures):
                n = futures[future]
                results[n] = future.result()
                self._tell(results[n], items[n])
        except BaseException:
            for f in futures:
                f.cancel()
            raise
        return results


def _settled(t: _Thread, entry: Entry | None) -> ThreadResult | None:
    """The result of a thread the journal says was committed (skipped, or changed since); None otherwise."""
    if entry is None or entry.state != State.COMMITTED:
        return None
    if entry.fingerprint == t.fingerprint:
        return t.result(Outcome.SKIPPED, _ids(entry.ids))
    return t.result(Outcome.CHANGED, _ids(entry.ids), error="the spec has changed since it was loaded; not sent again")


def _fatal(exc: BundlerError) -> bool:
    """Errors that would fail every thread the same way: stop the load instead."""
    return isinstance(exc, AuthError | Unreachable | NotAtomic)


def _plan_window(items: list[_Thread], entries: dict[int, Entry | None], existing: dict[int, dict[str, str]],
                 limits: RequestLimits, plan: _Plan) -> dict[int, ThreadResult]:
    """What loading the threads would take (a dry run): requests and points are added to `plan`."""
    results = {n: _plan_thread(items[n], entries[n], existing.get(n, {}), limits, plan) for n in entries}
    unseen = sum(1 for n in entries if entries[n] is None)
    plan.points += SEARCH_POINTS * (1 + unseen // 100 + len(existing))
    return results


def _plan_thread(t: _Thread, entry: Entry | None, existing: dict[str, str], limits: RequestLimits, plan: _Plan
                 ) -> ThreadResult:
    have = t.known(entry, existing)
    remaining = [i for i, u in enumerate(t.urls) if u not in have]
    if not remaining:
        return t.result(Outcome.EXISTING, {})
    try:
        parts = cut(remaining, t.sizes, limits)
    except TooLarge as exc:
        return t.result(Outcome.FAILED, {}, error=f"{t.where(None)}: {exc}")
    plan.requests += len(parts)
    plan.points += WRITE_POINTS * len(remaining)
    return t.result(Outcome.PLANNED, {}, requests=len(parts))
