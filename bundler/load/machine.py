"""One thread's load, as a state machine over `Stage` (see `bundler.load.loader` for the whole run). The thread
itself is `thread.Thread`; how its entries go in requests, `layout`; what a dry run adds up, `planbook`; what the
server answers, `medplum.answer`.

    stage       what it does                                            goes to
    SURVEY      what the server already has: the journal's ids, the     QUARANTINE when a request of an
                pre-check's finds; a thread loaded before whose spec    earlier run may still land; NEXT
                changed (or found without a journal row) is read back
                and compared with its spec (`compare.compare_thread`)
    QUARANTINE  wait (without holding a worker) until a request whose   RECONCILE
                answer was lost can no longer land: `settles`
    RECONCILE   search the identifiers of that request's entries;       NEXT
                record what is there
    NEXT        what to send next: the whole thread as built, or the    SEND; UPDATE when only changed
                next part of what is missing (`plan.cut`)               fields are left; COMMIT; FAIL
    SEND        the request, the journal first told what is in flight   APPLY; LOST; FAIL when refused
    LOST        the answer was lost: conditional entries are re-sent    NEXT; QUARANTINE; FAIL after
                at once, plain ones only after the quarantine           MAX_LOST
    APPLY       the answer: server ids and versions, refusals, 429s     NEXT; FAIL when an entry was refused
    UPDATE      changed entries as `PUT` with `ifMatch` (--update)      UPDATE; RECHECK; COMMIT; FAIL
    RECHECK     an update refused (412) or whose answer was lost: read  UPDATE; FAIL when someone else
                what the server holds now                               changed the resource meanwhile
    COMMIT      journal `committed`                                     -
    FAIL        journal `partial`, `failed` (or `sent`: answers lost)   -

A dry run goes through the same stages but plans instead of sending (`Settings.plan`).
"""

from __future__ import annotations

import dataclasses
import enum
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from ..build import binary_entry, binary_url
from ..errors import BundlerError, ServerError, UnknownOutcome
from ..medplum.answer import EntryAnswer, TransactionAnswer, blamed_entry, resource_version
from ..medplum.client import FhirClient, backoff
from ..spec.model import Attachment
from ..vocabulary import READ_POINTS, SEARCH_POINTS, WRITE_POINTS, wire_reference
from ..words import count
from .compare import ThreadDiff, compare_thread
from .journal import UNKNOWN, Entry, Journal, State
from .layout import Layout, lay_out
from .plan import RequestLimits, TooLarge, cut, part_bundle, trim_read_state, update_bundle, update_parts
from .planbook import PlanBook
from .report import Outcome, ThreadResult
from .thread import Thread, file_line
from .uploads import Binaries, stored_files
from .verify import Resolver, read_thread

MAX_LOST = 6  # lost answers one thread may have in a run before it is left for the next run
MAX_RECHECKS = 3  # updates refused or lost, then read back, before the thread is given up
WITH_HEADER = 2
"""`ThreadLoad.creates` of an entry this run created in the same atomic transaction as the thread's header (1: in
another request): `to_count`."""
MAX_ROLLED_BACK = 8  # answers with entries rolled back (a batch's serialization failures) before it is given up


@dataclass(frozen=True)
class Deferred:
    """The thread waits (without a worker) until `until` (epoch seconds), then goes on where it was."""

    until: float


STOPPED = object()
"""What `ThreadLoad.run` returns when the load is being stopped (Ctrl-C): the journal says where it was."""


@dataclass
class Settings:
    """What every thread's load shares: the client, the journal, how to send, what to do."""

    client: FhirClient
    journal: Journal
    system: str
    limits: RequestLimits
    margin: float  # seconds after giving up on a request until it can no longer land (--late-margin)
    update: bool = False
    resolver: Resolver | None = None
    plan: PlanBook | None = None  # a dry run
    stopping: threading.Event = field(default_factory=threading.Event)
    started: float = -1.0  # when this load began (epoch seconds; by default now, by the client's clock)
    files: Binaries | None = None  # where the server holds each file (by default, a record of this thread's own)
    atomic: bool = False  # the project is known to commit a transaction whole (probed, or the caller said so)

    def __post_init__(self) -> None:
        if self.started < 0:
            self.started = self.client.clock.time()

    @property
    def quarantine(self) -> float:
        """How long after it was sent a plain request can still land: our timeout, then the margin."""
        return self.client.timeout + self.margin


class Stage(enum.Enum):
    """The states of one thread's load (see the module docstring for the transitions)."""

    SURVEY = "what the server already has"
    QUARANTINE = "wait until a request whose answer was lost can no longer land"
    RECONCILE = "find what that request left on the server"
    NEXT = "what to send next"
    SEND = "send it"
    LOST = "its answer was lost"
    APPLY = "apply the answer"
    UPDATE = "send changed fields as updates"
    RECHECK = "read what the server holds after an update was refused or lost"
    COMMIT = "all of it is on the server"
    FAIL = "give up on it"


class ThreadLoad:
    """One thread's way from SURVEY to COMMIT or FAIL; each stage is a method that returns the next one."""

    def __init__(self, settings: Settings, t: Thread, entry: Entry | None, existing: dict[str, str],
                 header: dict[str, Any] | None = None) -> None:
        self.s, self.client, self.t, self.entry, self.header = settings, settings.client, t, entry, header
        self.clock = settings.client.clock
        self.ids = t.known(entry, existing)  # fullUrl → Communication/<id>: what is on the server
        self.versions: dict[str, str] = {}  # fullUrl → the version to update (If-Match)
        self.changes: dict[int, list[str]] = {}  # changed entries (the spec's changes): their differences
        self.pending: list[int] = []  # changed entries still to update
        # the entries whose id, version or hash changed since the journal last recorded the thread (None: all of
        # them, recorded whole at its next save); each part adds its own, so a long thread is not rewritten whole
        self.dirty: set[int] | None = None
        self.completing: set[int] = set()  # entries sent short of the spec (the header's read state), to update
        self.trimmed = False  # the header went without read state pointing at messages of later parts
        self.removed: list[str] = []
        self.stage: Stage | None = Stage.SURVEY
        self.had = False  # something of it was on the server before this run sent anything
        self.grown = False  # a thread on the server before (loaded, or found) that gets new messages
        self.sent = self.planned = False
        self.recorded = False  # the journal has this thread's first request already (with its window)
        self.requests = self.created = self.updated = self.lost = self.rechecks = self.rolled_back = 0
        # entries sent in creates (whatever came of them), a byte each: checked for copies
        self.creates = bytearray(len(t.urls))
        self.part: list[int] = []  # the entries of the request at hand
        self.carry: list[Attachment] = []  # the files whose Binaries it carries (after its entries)
        self.files = settings.files or Binaries(self.client, settings.journal, dry_run=settings.plan is not None)
        self.settles = 0.0  # the request at hand, if its answer was lost: when it can no longer land
        self.body = b""
        self.answer: TransactionAnswer | None = None  # the answer to the request at hand, until applied
        self.answers: tuple[EntryAnswer, ...] = ()  # its entries' answers (without resources), once applied
        self.why = ""
        self.fail_state: State | None = None  # for the journal, when not partial/failed
        self.result: ThreadResult | None = None

    def run(self) -> ThreadResult | Deferred | object:
        """Go on from the current stage until the thread is settled (a result), has to wait (Deferred), or the
        load is being stopped (STOPPED, before a request would be sent)."""
        while self.stage is not None:
            if self.stage in (Stage.SEND, Stage.UPDATE) and self.s.stopping.is_set():
                return STOPPED
            step = _STEPS[self.stage](self)
            if isinstance(step, Deferred):
                return step
            self.stage = step
        assert self.result is not None
        return self.result

    @property
    def complete(self) -> bool:
        # every entry by its fullUrl: a journal row written for an earlier version of the spec may hold
        # ids of entries the spec no longer has, so counting them would not do
        return all(url in self.ids for url in self.t.urls)

    def to_check(self) -> list[int]:
        """The entries to look for copies of (`duplicates`) once the thread is settled: those this run sent in
        creates and knows to be on the server; every one when an earlier run found copies of the thread (a note on
        its committed row)."""
        if self.entry is not None and self.entry.state == State.COMMITTED and self.entry.error:
            return [n for n, url in enumerate(self.t.urls) if url in self.ids]
        return [n for n, url in enumerate(self.t.urls) if self.creates[n] and url in self.ids]

    def to_count(self, entries: list[int]) -> list[int]:
        """Of `entries` (`to_check`), those whose counts stand for all: the header stands for the entries created in
        the same atomic transaction as it (`WITH_HEADER`). Another load that made a copy of one of them made it
        with a copy of the header, or after finding ours, with every one of them (they committed together): it
        sent them again only as a part without the header, which its own check counts."""
        return [n for n in entries if n == 0 or self.creates[n] != WITH_HEADER]

    @property
    def plain(self) -> bool:
        return not self.s.limits.conditional

    # --- the stages ---------------------------------------------------------------------------------

    def survey(self) -> Stage:
        """What the server already has: the journal's ids and the pre-check's finds (in `ids` already); what
        a request of an earlier run whose answer was lost may have left; for a thread loaded before whose
        spec changed (or found without a journal row), all of it, read back and compared."""
        if self.s.plan is not None and (unresolved := self._unresolved()):
            return self._failing(unresolved)
        if self.entry is not None and self.t.inline:  # (a journal of an earlier version kept them with the thread)
            urns = {binary_url(h): h for h in self.t.inline}
            self.files.learn({urns[url]: ref for url, ref in self.entry.ids.items() if url in urns})
        if self.entry is not None and self.entry.state != State.COMMITTED and self.t.urls[0] in self.ids and \
                "extension" in self.t.bundle["entry"][0]["resource"]:
            self.trimmed = True  # an earlier run sent the header, maybe short of its read state: completed at the end
        if self.entry is not None and self.entry.in_flight:
            self._lost_earlier(self.entry)
            return Stage.QUARANTINE
        self.had = bool(self.ids)
        if self.header is not None or (self.entry is not None and self.entry.state == State.COMMITTED):
            self._read_back()
            self.grown = self.had = True
        return Stage.NEXT

    def _lost_earlier(self, entry: Entry) -> None:
        """The request an earlier run had in flight (its answer lost, or the run killed) is the one at hand,
        to be searched for once it can no longer land."""
        self.part = [self.t.urls.index(u) for u in entry.in_flight if u in self.t.urls]
        self._created(self.part)  # (never checked for copies: its run did not get that far)
        # recorded with its batch before it was sent: sent (if at all) before this load began
        unknown = entry.settles == UNKNOWN
        self.settles = self.s.started + self.s.quarantine if unknown else entry.settles

    def quarantine(self) -> Stage | Deferred:
        """A request whose answer was lost may still be on its way: it is searched for only once it can no
        longer land (conditional requests are never quarantined: `settles` is 0)."""
        if self.clock.time() < self.settles and self.s.plan is None:
            return Deferred(self.settles)
        return Stage.RECONCILE

    def reconcile(self) -> Stage:
        """Record which entries of the lost request are on the server, by identifier search; only the rest is
        sent again."""
        for kind in dict.fromkeys(self.t.types[n] for n in self.part):
            mine = [n for n in self.part if self.t.types[n] == kind]
            # (with their attachments: the Binaries the request carried are on the server with the messages)
            elements = "identifier,payload" if self.t.spec.has_files and kind == "Communication" else "identifier"
            found = self.client.find_resources(kind, [self.t.identifiers[n] for n in mine], elements=elements)
            if self.s.plan is not None:
                self.s.plan.searched(1)
            here = [n for n in mine if self.t.identifiers[n] in found]
            self.ids.update({self.t.urls[n]: f"{kind}/{found[self.t.identifiers[n]]['id']}" for n in here})
            self._touch(here)
            self.files.learn(stored_files(found.values()))
        self.requests += 1
        if not self.sent:  # what an earlier run left
            self.had = bool(self.ids)
            if self.entry is not None and self.entry.fingerprint != self.t.fingerprint and self.t.urls[0] in self.ids:
                self._read_back()  # it sent an earlier version of the spec: what changed since is found as changes
        return Stage.NEXT

    def next(self) -> Stage:
        """What to send next: the whole thread as built when none of it is on the server and it fits one
        request; else the next part of what is left (`plan.cut`), pointing at what is there by server id."""
        remaining = self.t.order([i for i, url in enumerate(self.t.urls) if url not in self.ids])
        if not remaining and self.s.plan is None:
            self._complete_read_state()
            return Stage.UPDATE if self.pending and (self.s.update or self.completing) else Stage.COMMIT
        limits = self.s.limits
        try:
            whole = not self.ids and self.t.whole(limits)
            if whole and self.s.plan is None:
                self.part, self.body = list(range(len(self.t.urls))), self.t.body  # (in the body's order)
                self.carry = list(self.t.inline.values())
                return Stage.SEND
            layout = None if whole else self._layout(remaining)
            if isinstance(layout, str):
                return self._failing(layout)
            if self.s.plan is not None:
                return self._plan(remaining, layout)
            assert layout is not None
            self.part = cut(remaining, layout.sizes, limits, weights=layout.weights, units=self.t.owners)[0]
        except TooLarge as exc:
            return self._failing(f"{self.t.where(None)}: {exc}")
        self.carry = [a for i in self.part for a in layout.carried.get(i, ())]
        part = part_bundle(self.t.bundle, self.part, {**layout.refs, **self.ids}, conditional=limits.conditional)
        part["entry"] += self._binary_entries()
        if self.part[0] == 0 and "extension" in part["entry"][0]["resource"]:
            part["entry"][0] = head = {**part["entry"][0], "resource": dict(part["entry"][0]["resource"])}
            self.trimmed = trim_read_state(head["resource"], self.ids, self.t.urls, self.part)
            # (its read state points at messages of later parts: completed once they are in)
        self.body = orjson.dumps(part)
        return Stage.SEND

    def send(self) -> Stage:
        """Send the request, the journal first told which entries are in flight and, for a plain request,
        until when it may still land after a crash."""
        started = self.clock.time()
        self.settles = started + self.s.quarantine if self.plain else 0.0
        if not (self.recorded and not self.sent):
            self._save(State.SENT, in_flight=self.part, settles=self.settles)
        self.sent = True
        self.requests += 1
        self._created(self.part)
        try:
            self.answer = self.client.transaction(self.body, entries=len(self.part), cost=self._cost())
        except UnknownOutcome:
            return Stage.LOST
        except ServerError as exc:  # an atomic refusal: nothing of this request is on the server
            return self._failing(self._refusal(exc))
        finally:
            self.body = b""  # (not needed any more: a window of machines is held until each is settled)
        return Stage.APPLY

    def lost_answer(self) -> Stage:
        """The request may or may not have been applied. Conditional entries are simply sent again (what is
        there answers 200); plain ones are quarantined, then searched for. After MAX_LOST lost answers the
        thread is left `sent`, for the next run to reconcile."""
        self.lost += 1
        if self.plain:
            self.settles = self.clock.time() + self.s.margin  # no later than the margin after we gave up on it
        if self.lost > MAX_LOST:  # (the next run searches for it once it settles, not our timeout after it was sent)
            return self._failing("the server's answers kept getting lost; run again to resume", state=State.SENT)
        if not self.plain:
            return Stage.NEXT
        self._save(State.SENT, in_flight=self.part, settles=self.settles)
        return Stage.QUARANTINE

    def apply(self) -> Stage:
        """Apply the answer: every committed entry's server id and version. A failed entry fails the thread
        (partial when a non-atomic project committed the others); entries answered 429 inside a batch were
        not processed: every worker backs off and they are sent again."""
        if self.answer is None or not self._take(self.answer):  # not one answer per entry: which is which?
            return Stage.LOST
        self.answer = None
        answers, binaries = self.answers[:len(self.part)], self.answers[len(self.part):]
        self.created += sum(1 for e in answers if e.status == 201)
        self._dangling(answers, binaries)
        if (failed := _first_failed(self.part, answers)) is not None:
            return self._failing(self._entry_failure(*failed))
        if (refused := _first_failed(list(range(len(binaries))), binaries, rolled_back=False)) is not None:
            return self._failing(f"{self.t.where(None)}: the Binary of a file attachment was refused: HTTP "
                                 f"{refused[1].code}")
        if any(e.throttled for e in self.answers):
            self.client.pacer.blocked(1.0)
        if rolled_back := [(n, e) for n, e in zip(self.part, answers, strict=True) if e.rolled_back]:
            self.rolled_back += 1  # (a non-atomic project: each entry its own transaction)
            if self.rolled_back > MAX_ROLLED_BACK:
                return self._failing(self._entry_failure(*rolled_back[0]))
            self.clock.sleep(backoff(self.rolled_back, base=0.1, cap=5.0))
        elif self.s.atomic and self.plain and self.part[0] == 0 and answers[0].status == 201:
            for n, e in zip(self.part, answers, strict=True):
                if e.status == 201:
                    self.creates[n] = WITH_HEADER  # (committed with the header: its count stands for them)
        if not self.complete:
            self._save(State.SENT)
        return Stage.NEXT

    def update(self) -> Stage:
        """Send the next changed entries as updates, each `ifMatch` on the version we know (MAX_PUT_ENTRIES
        to a transaction). Updates carry their version, so one sent twice, or late, is refused, not applied
        twice: no quarantine is needed."""
        if not self.pending:
            return Stage.COMMIT
        layout = self._layout(self.pending)
        if isinstance(layout, str):
            return self._failing(layout)
        try:
            self.part = update_parts(self.pending, layout.sizes, self.s.limits)[0]
        except TooLarge as exc:
            return self._failing(f"{self.t.where(None)}: {exc}")
        self.carry = [a for i in self.part for a in layout.carried.get(i, ())]
        bundle = update_bundle(self.t.bundle, self.part, {**self._references(), **layout.refs}, self.versions)
        bundle["entry"] += self._binary_entries()  # (POSTed before the PUTs: the server rewrites their urns)
        body = orjson.dumps(bundle)
        self._save(State.SENT)
        self.requests += 1
        try:
            answer = self.client.transaction(body, entries=len(self.part) + len(self.carry))
        except UnknownOutcome:
            return Stage.RECHECK
        except ServerError as exc:
            if exc.status == 412:
                return Stage.RECHECK
            return self._failing(self._refusal(exc))
        return self._updated(answer)

    def recheck(self) -> Stage:
        """An update was refused for its version (412) or its answer was lost: read what the server holds.
        An entry that now matches the spec is done; one still at the version we sent is sent again; one
        someone else changed meanwhile is not overwritten: the thread fails, saying which."""
        self.rechecks += 1
        diff = self._read_back(record=False)
        conflicts = []
        for n in self.part:
            url = self.t.urls[n]
            if n not in diff.differences and n in diff.found:
                self._updated_entry(n, resource_version(dict(diff.found[n])))
            elif resource_version(dict(diff.found.get(n, {}))) != self.versions.get(url):
                conflicts.append(n)
        if conflicts:
            names = ", ".join(diff.names[n] for n in conflicts)
            return self._failing(f"{self.t.where(conflicts[0])}: {names}: changed on the server since it was "
                                 "loaded (its version is not the one we know): not overwritten; run `verify` "
                                 "to see the server's version, and load again with --update to replace it")
        if self.rechecks > MAX_RECHECKS:
            return self._failing("updates kept getting refused or lost; run again to resume")
        return Stage.UPDATE

    def commit(self) -> None:
        self._save(State.COMMITTED, fingerprint=self._fingerprint())
        changes = [line for n in sorted(self.changes) for line in self.changes[n]]
        self.result = self.t.result(self._outcome(), self.ids, requests=self.requests, created=self.created,
                                    updated=self.updated, changes=changes, removed=self.removed,
                                    error=self._advice())

    def fail(self) -> None:
        state = self.fail_state or (State.PARTIAL if self.ids else State.FAILED)
        self._save(state, in_flight=self.part if state == State.SENT else None,
                   settles=self.settles if state == State.SENT else 0.0, error=self.why)
        outcome = Outcome.PARTIAL if self.ids else Outcome.FAILED
        changes = [line for n in sorted(self.changes) for line in self.changes[n]]
        self.result = self.t.result(outcome, self.ids, error=self.why, requests=self.requests,
                                    created=self.created, updated=self.updated, changes=changes,
                                    removed=self.removed)

    # --- helpers ------------------------------------------------------------------------------------

    def _failing(self, why: str, *, state: State | None = None) -> Stage:
        self.why, self.fail_state = why, state
        return Stage.FAIL

    def _outcome(self) -> Outcome:
        if self.pending and not self.s.update:
            return Outcome.CHANGED
        if self.planned:
            return Outcome.PLANNED
        if self.updated:
            return Outcome.UPDATED
        if self.sent:
            if self.grown:
                return Outcome.APPENDED
            return Outcome.RESUMED if self.had else Outcome.LOADED
        if self.entry is None:
            return Outcome.EXISTING
        return Outcome.SKIPPED if self.entry.state == State.COMMITTED else Outcome.RESUMED

    def _advice(self) -> str | None:
        if self.pending and not self.s.update:
            n = len(self.pending)
            return (f"{self.t.where(self.pending[0])}: {count(n, 'loaded resource')} differ{'s' * (n == 1)} "
                    "from the spec (see changes): not sent; load again with --update to send them as updates")
        return None

    def _fingerprint(self) -> str:
        """The thread's fingerprint for the journal: the spec's when the server has all of it as it says, else
        the earlier one (so the next run looks again)."""
        if self.pending and not self.planned:
            return self.entry.fingerprint if self.entry else ""
        return self.t.fingerprint

    def _cost(self) -> float:
        per_entry = WRITE_POINTS + (0 if self.plain else SEARCH_POINTS)
        return float(per_entry * len(self.part) + WRITE_POINTS * len(self.carry))

    def _unresolved(self) -> str | None:
        """(A dry run) why a conditional reference of the thread would fail: it matches no or several
        resources; None when each matches exactly one."""
        assert self.s.resolver is not None
        for ref, path in self.t.references.items():
            matches = self.s.resolver.matches(ref)
            if matches != 1:
                where = file_line(*self.t.spec.origin(None, *path))
                found = "matches nothing" if not matches else "matches several resources"
                return f"{where}: {'.'.join(path[:2])}: {ref} {found} on the server"
        return None

    def _read_back(self, *, record: bool = True) -> ThreadDiff:
        """Read the thread back (its header, its messages by part-of) and compare it with the spec; with
        `record`, take what is there as the truth: ids, versions, the entries the spec changed."""
        header = self.header if record and self.header is not None else self._read_header()
        messages = read_thread(self.client, str(header["id"]), receipts=self.t.spec.read_model == "tasks")
        self.requests += 1
        if self.s.plan is not None:
            self.s.plan.searched(1)
        resolved = self._resolved()
        if self.t.spec.has_files:
            self.files.learn(stored_files(messages))
        diff = compare_thread(self.t.spec, [header, *messages], identifier_system=self.t.system, resolved=resolved,
                              bundle=self.t.bundle)
        if diff.problems:
            raise BundlerError(f"{self.t.where(None)}: {'; '.join(diff.problems)}")
        if record:
            self._record(diff)
        return diff

    def _read_header(self) -> dict[str, Any]:
        ref = self.ids.get(self.t.urls[0])
        if ref is None:
            raise BundlerError(f"{self.t.where(None)}: the journal has no server id for the thread's header")
        self.requests += 1
        if self.s.plan is not None:
            self.s.plan.searched(1, READ_POINTS)
        return self.client.read(ref)

    def _resolved(self) -> dict[str, dict[str, str]]:
        """The thread's conditional references (spec form) → the Reference the server stores in place of each."""
        if not self.t.references:
            return {}
        assert self.s.resolver is not None
        return self.s.resolver.stored(self.t.references)

    def _record(self, diff: ThreadDiff) -> None:
        """What the read-back found: ids and versions; the entries whose spec changed (a hash the journal does
        not know, or no journal at all) and differ from the server are `changes`, to update."""
        self.ids = {self.t.urls[n]: f"{self.t.types[n]}/{r['id']}" for n, r in diff.found.items()}
        self.dirty = None
        for n, resource in diff.found.items():
            url = self.t.urls[n]
            known = self.entry.version(url) if self.entry else None
            if version := known or resource_version(dict(resource)):
                self.versions[url] = version
        self.changes = {n: lines for n, lines in diff.differences.items() if self._spec_changed(n)}
        self.pending = sorted(self.changes)
        prefix = f"{self.t.spec.key}/"
        self.removed = [ident.removeprefix(prefix) for ident, _ in diff.extra]

    def _spec_changed(self, n: int) -> bool:
        """Whether the spec of entry `n` is not what the journal recorded as loaded (or there is no record)."""
        recorded = self.entry.hash(self.t.urls[n]) if self.entry else None
        return recorded is None or recorded != self.t.hashes[n]

    def _plan(self, remaining: list[int], layout: Layout | None) -> Stage:
        """(A dry run) count the requests the rest would take (`layout`: None when it goes whole), for this project
        and, when it is not known whether its transactions are atomic, for one whose are not; and the updates."""
        plan, limits, units = self.s.plan, self.s.limits, self.t.owners
        assert plan is not None
        sizes, weights = (self.t.sizes, None) if layout is None else (layout.sizes, layout.weights)
        parts = [remaining] if layout is None else cut(remaining, sizes, limits, weights=weights, units=units)
        alt = cut(remaining, sizes, plan.alt, weights=weights, units=units) if plan.alt is not None else None
        plan.sends([p for p in parts if p], alt, conditional=limits.conditional)
        if self.s.update and self.pending:
            updating = self._layout(self.pending)
            if isinstance(updating, str):
                return self._failing(updating)
            plan.updates(update_parts(self.pending, updating.sizes, limits))
        self.planned = bool(remaining) or (self.s.update and bool(self.pending))
        self.requests += len([p for p in parts if p])
        return Stage.COMMIT

    def _references(self) -> dict[str, str | dict[str, str]]:
        """Every reference an update needs: our entries' server ids, and in place of each conditional reference
        (in the wire form the bundle holds) the whole Reference the server stores for it, its display the server's:
        an update sends what a conditional write would have stored, so the next read-back finds no difference."""
        stored: dict[str, str | dict[str, str]] = {wire_reference(k): v for k, v in self._resolved().items()}
        return {**stored, **self.ids}

    def _updated(self, answer: TransactionAnswer) -> Stage:
        entries = answer.entries
        if len(entries) != len(self.part) + len(self.carry):
            raise BundlerError(f"{self.t.spec.key}: the server answered an update of "
                               f"{len(self.part) + len(self.carry)} entries with {len(entries)} entries")
        self._learn_binaries(entries[len(self.part):])
        self.answers = mine = entries[:len(self.part)]
        if any(e.status == 412 for e in mine):
            return Stage.RECHECK
        for n, entry in zip(self.part, mine, strict=True):
            if entry.ok:
                self._updated_entry(n, entry.version)
        if (failed := _first_failed(self.part, mine, rolled_back=False)) is not None:
            return self._failing(self._entry_failure(*failed))
        return Stage.UPDATE

    def _updated_entry(self, n: int, version: str | None) -> None:
        url = self.t.urls[n]
        self._touch((n,))
        if version:
            self.versions[url] = version
        if n in self.pending:
            self.pending.remove(n)
            if n in self.completing:  # (part of this load, not a change)
                self.completing.discard(n)
            else:
                self.updated += 1

    def _complete_read_state(self) -> None:
        """Once every part is in: the header, if it went without the read state that points at messages of later
        parts (`plan.trim_read_state`), is updated to the spec's (If-Match on the version it was created with)."""
        if self.trimmed and 0 not in self.pending:
            self.trimmed = False
            self.completing.add(0)
            self.pending.insert(0, 0)
            self._touch((0,))

    def _take(self, answer: TransactionAnswer) -> bool:
        """Record the server id and version of every committed entry of the answer, and keep each entry's answer
        (without its resource) in `answers`; False when it does not have one entry per entry sent."""
        entries = answer.entries
        if len(entries) != len(self.part) + len(self.carry):
            return False
        urls, ids, versions, types = self.t.urls, self.ids, self.versions, self.t.types
        for i, e in zip(self.part, entries, strict=False):
            if e.ok and (sid := e.id):
                ids[urls[i]] = f"{types[i]}/{sid}"
                if e.version:
                    versions[urls[i]] = e.version
        self._touch(self.part)
        self._learn_binaries(entries[len(self.part):])
        # (no resources: a window of machines holds their answers until each is settled)
        self.answers = tuple(dataclasses.replace(e, resource=None) for e in entries)
        return True

    def _learn_binaries(self, entries: Sequence[EntryAnswer]) -> None:
        """The answers to the Binaries the request carried (`carry`, in order): where the server stored each file."""
        stored = {}
        for a, e in zip(self.carry, entries, strict=True):
            if e.ok and (sid := e.id):
                stored[a.hash or ""] = f"Binary/{sid}"
        self.files.learn(stored)

    def _dangling(self, answers: Sequence[EntryAnswer], binaries: Sequence[EntryAnswer]) -> None:
        """Messages committed while a Binary they attach was not (a project without atomic transactions: a 429
        stops a batch midway) link to a Binary the server does not hold: each is updated once the rest is in (its
        Binary carried again), as part of this load."""
        lost = {a.hash for a, e in zip(self.carry, binaries, strict=True) if not e.ok}
        if not lost:
            return
        for n, e in zip(self.part, answers, strict=True):
            if e.ok and n not in self.pending and any(a.hash in lost for a in self.t.files_of(n)):
                self.completing.add(n)
                self.pending.append(n)
                self._touch((n,))
        self.pending.sort()

    def _layout(self, indexes: list[int]) -> Layout | str:
        return lay_out(self.t, self.files, indexes)

    def _binary_entries(self) -> list[dict[str, Any]]:
        """The Binary entries of the files the request at hand carries."""
        return [binary_entry(a, self.t.spec.files[a.hash or ""]) for a in self.carry]

    def _refusal(self, exc: ServerError) -> str:
        """Why the server refused a request, at the spec line of what it blames: an entry (`entry[n]`), or a
        participant whose conditional reference it could not resolve."""
        where = self.t.where_reference(str(exc)) or self.t.where(self._failing_entry(exc.outcome))
        return f"{where}: {exc}"

    def _entry_failure(self, index: int, answer: EntryAnswer) -> str:
        """Why the server refused entry `index` (its `answer`), at its spec line; saying so when it committed
        others of the request."""
        text = answer.outcome_text
        committed = sum(1 for e in self.answers[:len(self.part)] if e.ok)
        where = self.t.where_reference(text) or self.t.where(index)
        why = f"{where}: HTTP {answer.code}: {text or 'refused'}"
        if committed:
            why += (f" — the server processed the transaction non-atomically: {committed} of {len(self.part)} "
                    "entries were committed (is the project's transaction-bundles feature off?)")
        return why

    def _failing_entry(self, outcome: dict[str, Any] | None) -> int | None:
        """The thread entry an OperationOutcome blames (`entry[n]` of this request), if it names one."""
        n = blamed_entry(outcome, below=len(self.part))
        return None if n is None else self.part[n]

    def first_request(self) -> Entry | None:
        """The journal row that records this thread's first request before it is sent, for a thread of which
        neither the journal nor the server has anything (the loader writes a window's together); None for
        others. Once the loader has written it, `recorded` is set."""
        if self.entry is not None or self.header is not None or self.ids or self.s.plan is not None:
            return None
        return Entry(self.t.spec.key, State.SENT, self.t.fingerprint, {}, list(self.t.urls), None, {},
                     UNKNOWN if self.plain else 0.0)

    def _save(self, state: State, *, in_flight: list[int] | None = None, settles: float = 0.0,
              error: str | None = None, fingerprint: str | None = None) -> None:
        if self.s.plan is not None:
            return
        urls = [self.t.urls[i] for i in in_flight or ()]
        fingerprint = self.t.fingerprint if fingerprint is None else fingerprint
        # all of it, or only what changed since the last save (each part's entries, not the whole thread again)
        ids, entries = self.records(None if self.dirty is None else sorted(self.dirty))
        self.s.journal.put(Entry(self.t.spec.key, state, fingerprint, ids, urls, error, entries, settles),
                           changed=self.dirty is not None)
        self.dirty = set()

    def _created(self, entries: Iterable[int]) -> None:
        for n in entries:
            self.creates[n] = 1

    def _touch(self, entries: Iterable[int]) -> None:
        """Entries whose id, version or hash for the journal changed: recorded at the next save."""
        if self.dirty is not None:
            self.dirty.update(entries)

    def records(self, entries: Iterable[int] | None = None) -> tuple[dict[str, str], dict[str, list[str]]]:
        """What the journal keeps of `entries` (indexes; None: every entry on the server, those of an earlier spec
        the journal holds too) that are on the server: fullUrl → `Type/<id>`, and fullUrl → [its version, the spec
        hash]. The hash is the spec's own when the server has the entry as the spec says; for a changed entry not
        updated yet, the one the journal had (or none), so the next run sees the change again. A version this run
        did not learn is the one the journal had."""
        urls, known, hashes, versions, entry = self.t.urls, self.ids, self.t.hashes, self.versions, self.entry
        pending = set(self.pending)
        indexes = range(len(urls)) if entries is None else entries
        ids: dict[str, str] = {}
        out: dict[str, list[str]] = {}

        def version(url: str) -> str:
            return versions.get(url) or (entry.version(url) or "" if entry else "")

        def journaled_hash(url: str) -> str:
            return (entry.hash(url) or "") if entry else ""

        for n in indexes:
            if (ref := known.get(url := urls[n])) is not None:
                ids[url] = ref
                out[url] = [version(url), hashes[n] if n not in pending else journaled_hash(url)]
        if entries is None and len(ids) < len(known):  # (a journal row written for an earlier version of the spec)
            for url in known.keys() - set(urls):
                ids[url] = known[url]
                out[url] = [version(url), journaled_hash(url)]
        return ids, out


def _first_failed(part: list[int], answers: Sequence[EntryAnswer], *, rolled_back: bool = True
                  ) -> tuple[int, EntryAnswer] | None:
    """The first entry (thread index, its answer) the server refused; a 429 (or, with `rolled_back`, a serialization
    failure's rollback) is not a refusal: the entry was not processed."""
    return next(((i, e) for i, e in zip(part, answers, strict=True)
                 if not e.ok and not e.throttled and not (rolled_back and e.rolled_back)), None)


_STEPS: dict[Stage, Callable[[ThreadLoad], Stage | Deferred | None]] = {
    Stage.SURVEY: ThreadLoad.survey,
    Stage.QUARANTINE: ThreadLoad.quarantine,
    Stage.RECONCILE: ThreadLoad.reconcile,
    Stage.NEXT: ThreadLoad.next,
    Stage.SEND: ThreadLoad.send,
    Stage.LOST: ThreadLoad.lost_answer,
    Stage.APPLY: ThreadLoad.apply,
    Stage.UPDATE: ThreadLoad.update,
    Stage.RECHECK: ThreadLoad.recheck,
    Stage.COMMIT: ThreadLoad.commit,
    Stage.FAIL: ThreadLoad.fail,
}
