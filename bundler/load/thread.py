"""One thread's load, as a state machine over `Stage` (see `bundler.load.loader` for the whole run).

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

import enum
import functools
import hashlib
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from ..build import (
    binary_entry,
    binary_url,
    bundle_bytes,
    carry_files,
    entry_messages,
    entry_types,
    entry_values,
    full_url,
    split_files,
)
from ..errors import BundlerError, ServerError, UnknownOutcome
from ..medplum.client import FhirClient, backoff, outcome_text, resource_version, serialization_failure
from ..spec.model import Attachment, ThreadSpec
from ..vocabulary import READ_POINTS, SEARCH_POINTS, TYPE_PATTERN, WRITE_POINTS, wire_reference
from .compare import ThreadDiff, compare_thread
from .journal import UNKNOWN, Entry, Journal, State
from .plan import (
    RequestLimits,
    TooLarge,
    cut,
    entry_sizes,
    part_bundle,
    trim_read_state,
    update_bundle,
    update_parts,
)
from .report import Outcome, ThreadResult
from .uploads import Binaries, stored_files
from .verify import Resolver, read_thread

_ENTRY_INDEX = re.compile(r"entry\[(\d+)\]")
_CONDITIONAL = re.compile(rf"'({TYPE_PATTERN}\?[^'\s]+)'")  # as the server quotes one it could not resolve
MAX_LOST = 6  # lost answers one thread may have in a run before it is left for the next run
MAX_RECHECKS = 3  # updates refused or lost, then read back, before the thread is given up
MAX_ROLLED_BACK = 8  # answers with entries rolled back (a batch's serialization failures) before it is given up
ROLLED_BACK = "409 rolled back"
"""The status we give an entry of a batch answered 409 for a serialization failure: not processed (rolled back),
sent again like an entry answered 429."""


@dataclass(frozen=True)
class Deferred:
    """The thread waits (without a worker) until `until` (epoch seconds), then goes on where it was."""

    until: float


@dataclass
class Layout:
    """How entries of a thread go in requests, given where the server holds their files: `refs`, the urn of each
    file it holds → `Binary/<id>`; `carried`, entry → the files whose Binaries go in the same request (the first
    entry of those to send that attaches a file the server does not hold yet); each entry's size and weight (how
    many entries it takes in a request) with the Binaries it carries."""

    refs: dict[str, str]
    carried: dict[int, list[Attachment]]
    sizes: list[int]
    weights: list[int]


STOPPED = object()
"""What `ThreadLoad.run` returns when the load is being stopped (Ctrl-C): the journal says where it was."""


class PlanBook:
    """What a dry run would send, added up from every thread (thread-safe); `alt` is the same for a project
    without atomic transactions, when it is not known which kind the project is."""

    def __init__(self, alt: RequestLimits | None) -> None:
        self.alt = alt
        self.requests = self.points = self.searches = 0
        self.requests_alt = self.points_alt = 0
        self._lock = threading.Lock()

    def searched(self, searches: int, points: int = SEARCH_POINTS) -> None:
        with self._lock:
            self.searches += searches
            self.points += searches * points
            self.points_alt += searches * points

    def sends(self, parts: list[list[int]], alt_parts: list[list[int]] | None, *, conditional: bool) -> None:
        create = WRITE_POINTS + (SEARCH_POINTS if conditional else 0)
        with self._lock:
            self.requests += len(parts)
            self.points += create * sum(map(len, parts))
            if alt_parts is not None:
                self.requests_alt += len(alt_parts)
                self.points_alt += (WRITE_POINTS + SEARCH_POINTS) * sum(map(len, alt_parts))

    def updates(self, parts: list[list[int]]) -> None:
        with self._lock:
            for bucket in ("requests", "requests_alt"):
                setattr(self, bucket, getattr(self, bucket) + len(parts))
            self.points += WRITE_POINTS * sum(map(len, parts))
            self.points_alt += WRITE_POINTS * sum(map(len, parts))


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
    started: float = field(default_factory=time.time)  # when this load began (epoch seconds)
    files: Binaries | None = None  # where the server holds each file (by default, a record of this thread's own)

    @property
    def quarantine(self) -> float:
        """How long after it was sent a plain request can still land: our timeout, then the margin."""
        return self.client.timeout + self.margin


class Thread:
    """One thread to load: its bundle, its entries' identifiers, fullUrls and hashes, where it came from."""

    def __init__(self, spec: ThreadSpec, system: str) -> None:
        self.spec = spec
        self.system = system
        self.body = bundle_bytes(spec, identifier_system=system)  # the whole thread as one transaction
        self.fingerprint = hashlib.sha256(self.body).hexdigest()
        values = entry_values(spec)  # the header, the messages, then any read receipts (Tasks)
        self.values = values
        self.identifiers = [f"{system}|{v}" for v in values]
        self.urls = [full_url(system, v) for v in values]
        self.types = entry_types(spec)
        self.owners = entry_messages(spec)  # each entry's message (None: the header)
        self.file, self.line = spec.origin()
        self.seq = 0  # its place in the input (set by the loader)
        self.inline, self.uploads = split_files(spec) if spec.has_files else ({}, {})

    @functools.cached_property
    def bundle(self) -> dict[str, Any]:
        """The bundle as data (what `build_bundle` gives: `bundle_bytes` is byte-equal to it)."""
        return orjson.loads(self.body)  # type: ignore[no-any-return]

    @functools.cached_property
    def sizes(self) -> list[int]:
        """Each header's, message's or read receipt's size in a request (without the Binaries it may carry)."""
        return entry_sizes(self.bundle)[:len(self.urls)]

    def files_of(self, n: int) -> list[Attachment]:
        """The file attachments with bytes (not empty) of entry `n` (a message's; none for the header or a Task)."""
        if not 1 <= n <= len(self.spec.messages):
            return []
        return [a for a in self.spec.messages[n - 1].attachments if a.file is not None and a.size and a.hash]

    @functools.cached_property
    def hashes(self) -> list[str]:
        """A hash of each entry as the spec builds it: what the journal compares a later spec with. Read from
        the body's bytes (each entry starts with its own fullUrl), without parsing it."""
        starts = []
        at = 0
        for url in self.urls:
            at = self.body.index(b'{"fullUrl":"' + url.encode() + b'"', at)
            starts.append(at)
        ends = [*(n - 1 for n in starts[1:]), len(self.body) - 2]  # before each ',' and the final ']}'
        return [hashlib.sha256(self.body[a:b]).hexdigest()[:20] for a, b in zip(starts, ends, strict=True)]

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
        return (not limits.conditional and not self.uploads and len(self.body) <= limits.max_bytes
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
            return _at(self.file, self.line)
        return _at(*self.spec.origin(self.owners[entry_index]))

    @functools.cached_property
    def _sent_references(self) -> dict[str, tuple[str, ...]]:
        """`references` by the form the server quotes: the wire form it was sent in (and the spec form)."""
        return {**self.references, **{wire_reference(ref): path for ref, path in self.references.items()}}

    def where_reference(self, text: str) -> str | None:
        """`file:line: participants.<alias>` of the conditional reference a server's error text quotes (as it was
        sent: `Conditional reference 'Patient?identifier=tel|%2B1...' did not match any resources`)."""
        m = _CONDITIONAL.search(text)
        path = self._sent_references.get(m.group(1)) if m else None
        if path is None:
            return None
        return f"{_at(*self.spec.origin(None, *path))}: {'.'.join(path[:2])}"


def _at(file: str | None, line: int | None) -> str:
    return f"{file}:{line}" if line else str(file)


def _id(reference: str) -> str:
    return reference.split("/", 1)[1]


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
        self.ids = t.known(entry, existing)  # fullUrl → Communication/<id>: what is on the server
        self.versions: dict[str, str] = {}  # fullUrl → the version to update (If-Match)
        self.changes: dict[int, list[str]] = {}  # changed entries (the spec's changes): their differences
        self.pending: list[int] = []  # changed entries still to update
        self.completing: set[int] = set()  # entries sent short of the spec (the header's read state), to update
        self.trimmed = False  # the header went without read state pointing at messages of later parts
        self.removed: list[str] = []
        self.stage: Stage | None = Stage.SURVEY
        self.had = False  # something of it was on the server before this run sent anything
        self.grown = False  # a thread on the server before (loaded, or found) that gets new messages
        self.sent = self.planned = False
        self.recorded = False  # the journal has this thread's first request already (with its window)
        self.requests = self.created = self.updated = self.lost = self.rechecks = self.rolled_back = 0
        self.creates: set[int] = set()  # entries sent in creates (whatever came of them): checked for copies
        self.part: list[int] = []  # the entries of the request at hand
        self.carry: list[Attachment] = []  # the files whose Binaries it carries (after its entries)
        self.files = settings.files or Binaries(self.client, settings.journal, dry_run=settings.plan is not None)
        self.settles = 0.0  # the request at hand, if its answer was lost: when it can no longer land
        self.body = b""
        self.response: dict[str, Any] = {}
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
        return [n for n in sorted(self.creates) if self.t.urls[n] in self.ids]

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
        self.creates.update(self.part)  # (never checked for copies: its run did not get that far)
        # recorded with its batch before it was sent: sent (if at all) before this load began
        unknown = entry.settles == UNKNOWN
        self.settles = self.s.started + self.s.quarantine if unknown else entry.settles

    def quarantine(self) -> Stage | Deferred:
        """A request whose answer was lost may still be on its way: it is searched for only once it can no
        longer land (conditional requests are never quarantined: `settles` is 0)."""
        if time.time() < self.settles and self.s.plan is None:
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
            self.ids.update({self.t.urls[n]: f"{kind}/{found[self.t.identifiers[n]]['id']}" for n in mine
                             if self.t.identifiers[n] in found})
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
        started = time.time()
        self.settles = started + self.s.quarantine if self.plain else 0.0
        if not (self.recorded and not self.sent):
            self._save(State.SENT, in_flight=self.part, settles=self.settles)
        self.sent = True
        self.requests += 1
        self.creates.update(self.part)
        try:
            self.response = self.client.transaction(self.body, entries=len(self.part), cost=self._cost())
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
            self.settles = time.time() + self.s.margin  # no later than the margin after we gave up on it
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
        statuses = self._statuses()
        if statuses is None:  # not one answer per entry: which entry is which cannot be told
            return Stage.LOST
        self.response = {"entry": [{"response": e["response"]} for e in self.response["entry"]]}  # (no resources:
        # a window of machines holds their answers until each is settled)
        statuses, binaries = statuses[:len(self.part)], statuses[len(self.part):]
        self.created += sum(1 for s in statuses if s.startswith("201"))
        self._dangling(statuses, binaries)
        if (failed := _first_failed(self.part, statuses)) is not None:
            return self._failing(self._entry_failure(*failed, statuses))
        if (refused := _first_failed(list(range(len(binaries))), binaries)) is not None:
            return self._failing(f"{self.t.where(None)}: the Binary of a file attachment was refused: HTTP "
                                 f"{refused[1].split()[0]}")
        if any(s.startswith("429") for s in statuses + binaries):
            self.client.pacer.blocked(1.0)
        if ROLLED_BACK in statuses:  # (a non-atomic project: each entry its own transaction)
            self.rolled_back += 1
            if self.rolled_back > MAX_ROLLED_BACK:
                n = statuses.index(ROLLED_BACK)
                return self._failing(self._entry_failure(self.part[n], ROLLED_BACK, statuses))
            time.sleep(backoff(self.rolled_back, base=0.1, cap=5.0))
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
            self.response = self.client.transaction(body, entries=len(self.part) + len(self.carry))
        except UnknownOutcome:
            return Stage.RECHECK
        except ServerError as exc:
            if exc.status == 412:
                return Stage.RECHECK
            return self._failing(self._refusal(exc))
        return self._updated()

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
            return (f"{self.t.where(self.pending[0])}: {n} loaded resource{'s' * (n != 1)} differ{'s' * (n == 1)} "
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
                where = _at(*self.t.spec.origin(None, *path))
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

    def _updated(self) -> Stage:
        statuses = [str(e["response"]["status"]) for e in self.response.get("entry") or ()]
        if len(statuses) != len(self.part) + len(self.carry):
            raise BundlerError(f"{self.t.spec.key}: the server answered an update of "
                               f"{len(self.part) + len(self.carry)} entries with {len(statuses)} entries")
        self._learn_binaries(self.response["entry"][len(self.part):])
        statuses = statuses[:len(self.part)]
        if any(s.startswith("412") for s in statuses):
            return Stage.RECHECK
        for n, entry, status in zip(self.part, self.response["entry"][:len(self.part)], statuses, strict=True):
            if status[:1] == "2":
                self._updated_entry(n, resource_version(entry))
        if (failed := _first_failed(self.part, statuses)) is not None:
            return self._failing(self._entry_failure(*failed, statuses))
        return Stage.UPDATE

    def _updated_entry(self, n: int, version: str | None) -> None:
        url = self.t.urls[n]
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

    def _statuses(self) -> list[str] | None:
        """Each entry's status in the answer, recording the server id and version of every committed one; None
        when the answer does not have one entry per entry sent."""
        entries = self.response.get("entry") or []
        if len(entries) != len(self.part) + len(self.carry):
            return None
        statuses = []
        urls, ids, versions, types = self.t.urls, self.ids, self.versions, self.t.types
        for i, e in zip(self.part, entries, strict=False):
            resp = e["response"]
            status = resp["status"]
            if status.startswith("409") and serialization_failure(resp.get("outcome")):
                status = ROLLED_BACK
            statuses.append(status)
            if status[:1] == "2" and (sid := _server_id(resp.get("location"), e.get("resource"))):
                ids[urls[i]] = f"{types[i]}/{sid}"
                if version := resource_version(e):
                    versions[urls[i]] = version
        binaries = entries[len(self.part):]
        self._learn_binaries(binaries)
        return statuses + [str(e["response"]["status"]) for e in binaries]

    def _learn_binaries(self, entries: list[dict[str, Any]]) -> None:
        """The answers to the Binaries the request carried (`carry`, in order): where the server stored each file."""
        stored = {}
        for a, e in zip(self.carry, entries, strict=True):
            resp = e["response"]
            if str(resp["status"])[:1] == "2" and (sid := _server_id(resp.get("location"), e.get("resource"))):
                stored[a.hash or ""] = f"Binary/{sid}"
        self.files.learn(stored)

    def _dangling(self, statuses: list[str], binaries: list[str]) -> None:
        """Messages committed while a Binary they attach was not (a project without atomic transactions: a 429
        stops a batch midway) link to a Binary the server does not hold: each is updated once the rest is in (its
        Binary carried again), as part of this load."""
        lost = {a.hash for a, status in zip(self.carry, binaries, strict=True) if status[:1] != "2"}
        if not lost:
            return
        for n, status in zip(self.part, statuses, strict=True):
            if status[:1] == "2" and n not in self.pending and any(a.hash in lost for a in self.t.files_of(n)):
                self.completing.add(n)
                self.pending.append(n)
        self.pending.sort()

    def _layout(self, indexes: list[int]) -> Layout | str:
        """How `indexes` (entries to send, in order) go in requests, given the files the server holds: the Binaries
        each entry carries (`build.carry_files`); the files too large to carry are uploaded first (`Binaries.ensure`).
        Why not, at its spec line, when a file could not be uploaded."""
        spec, t = self.t.spec, self.t
        sizes, weights = list(t.sizes), [1] * len(t.urls)
        if not spec.has_files:
            return Layout({}, {}, sizes, weights)
        messages = [n - 1 for n in indexes if t.files_of(n)]
        where = self.files.where({a.hash or "" for n in indexes for a in t.files_of(n)})
        carried, uploads = carry_files(spec, messages, where)
        self.files.reused({h: where[h] for h in carry_files(spec, messages)[1] if h in where})
        if uploads:
            if (why := self.files.ensure(spec, uploads)) is not None:
                return why
            where |= self.files.where(uploads)
        by_entry = {i + 1: files for i, files in carried.items()}
        for n, files in by_entry.items():
            sizes[n] += sum(_binary_size(a) for a in files)
            weights[n] += len(files)
        return Layout({binary_url(h): ref for h, ref in where.items()}, by_entry, sizes, weights)

    def _binary_entries(self) -> list[dict[str, Any]]:
        """The Binary entries of the files the request at hand carries."""
        return [binary_entry(a, self.t.spec.files[a.hash or ""]) for a in self.carry]

    def _refusal(self, exc: ServerError) -> str:
        """Why the server refused a request, at the spec line of what it blames: an entry (`entry[n]`), or a
        participant whose conditional reference it could not resolve."""
        where = self.t.where_reference(str(exc)) or self.t.where(self._failing_entry(exc.outcome))
        return f"{where}: {exc}"

    def _entry_failure(self, index: int, status: str, statuses: list[str]) -> str:
        entry = self.response["entry"][self.part.index(index)]
        text = outcome_text((entry.get("response") or {}).get("outcome"))
        committed = sum(1 for s in statuses if s[:1] == "2")
        where = self.t.where_reference(text) or self.t.where(index)
        why = f"{where}: HTTP {status.split()[0]}: {text or 'refused'}"
        if committed:
            why += (f" — the server processed the transaction non-atomically: {committed} of {len(self.part)} "
                    "entries were committed (is the project's transaction-bundles feature off?)")
        return why

    def _failing_entry(self, outcome: dict[str, Any] | None) -> int | None:
        """The thread entry an OperationOutcome blames (`entry[n]` of this request), if it names one."""
        for issue in (outcome or {}).get("issue") or ():
            for where in (issue.get("expression") or []) + (issue.get("location") or []):
                m = _ENTRY_INDEX.search(str(where))
                if m and int(m.group(1)) < len(self.part):
                    return self.part[int(m.group(1))]
        return None

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
        self.s.journal.put(Entry(self.t.spec.key, state, fingerprint, self.ids, urls, error, self._entries(),
                                 settles))

    def _entries(self) -> dict[str, list[str]]:
        """What the journal keeps of each entry on the server: [its version, the spec hash]. The hash is the
        spec's own when the server has the entry as the spec says; for a changed entry not updated yet, the one
        the journal had (or none), so the next run sees the change again."""
        if not self.ids:
            return {}
        hashes, index, pending, versions, entry = self.t.hashes, self._index, self.pending, self.versions, self.entry
        out = {}
        for url in self.ids:
            n = index.get(url, -1)
            known = n >= 0 and n not in pending
            out[url] = [versions.get(url, ""), hashes[n] if known else (entry.hash(url) or "") if entry else ""]
        return out

    @functools.cached_property
    def _index(self) -> dict[str, int]:
        return {url: n for n, url in enumerate(self.t.urls)}


def _server_id(location: str | None, resource: dict[str, Any] | None) -> str | None:
    if resource and resource.get("id"):
        return str(resource["id"])
    if location:
        parts = location.split("/")
        if "_history" in parts:
            parts = parts[: parts.index("_history")]
        return parts[-1] if len(parts) >= 2 else None
    return None


def _binary_size(attachment: Attachment) -> int:
    """The size of a file's Binary entry in a request (as `plan.entry_sizes` counts): its bytes in base64."""
    empty = entry_sizes({"entry": [binary_entry(attachment, b"")]})[0]
    return empty + 4 * (((attachment.size or 0) + 2) // 3)


def _first_failed(part: list[int], statuses: list[str]) -> tuple[int, str] | None:
    """The first entry (thread index, status) the server refused; a 429 or ROLLED_BACK is not a refusal: the
    entry was not processed."""
    return next(((i, s) for i, s in zip(part, statuses, strict=True)
                 if s[:1] != "2" and not s.startswith("429") and s != ROLLED_BACK), None)


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
