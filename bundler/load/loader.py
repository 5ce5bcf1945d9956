"""Loading threads into a FHIR server: atomically, exactly once, at the pace the server allows.

    from bundler import load_specs
    from bundler.client import FhirClient, ClientCredentials
    from bundler.load import load

    with FhirClient(base_url, ClientCredentials(client_id, secret)) as client:
        report = load(load_specs(["threads/"]), client, journal="threads.journal.sqlite")

Exactly once, in three layers:
1. the journal records every thread's server ids as its requests commit; a re-run skips what is done
   and carries on with what is not (a thread cut into parts resumes at its next part);
2. threads the journal does not know are first looked for on the server by their identifiers (many
   per search), so a load into a project that already has some of them creates no duplicates;
3. a request whose outcome is unknown (timeout, connection lost, 502/503/504) is never re-sent blindly:
   its entries' identifiers are searched, what is there is recorded, and only the rest is sent again.
"""

from __future__ import annotations

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
from ..check.validate import validate
from ..errors import AuthError, BundlerError, ServerError, UnknownOutcome
from ..medplum.auth import Unreachable
from ..medplum.client import FhirClient, outcome_text
from ..medplum.probe import probe_atomicity
from ..spec.model import ThreadSpec
from ..vocabulary import SEARCH_POINTS, WRITE_POINTS
from . import journal as J
from .plan import SAFE_MAX_BYTES, Limits, TooLarge, cut, entry_sizes, part_bundle

Atomic = Literal["require", "auto", "off"]

# outcomes of a thread in a report
LOADED = "loaded"  # created by this run
RESUMED = "resumed"  # part was on the server already (an earlier run, or a lost response); the rest created now
EXISTING = "existing"  # all of it was on the server already, found by its identifiers
SKIPPED = "skipped"  # the journal says it was loaded by an earlier run
CHANGED = "changed"  # the journal says it was loaded, but the spec has changed since: not sent again
PARTIAL = "partial"  # some of it is on the server, the rest failed (e.g. a non-atomic project)
FAILED = "failed"  # nothing of it is on the server
OK_OUTCOMES = {LOADED, RESUMED, EXISTING, SKIPPED}

_ENTRY_INDEX = re.compile(r"entry\[(\d+)\]")
MAX_RECONCILE = 6


class NotAtomic(BundlerError):
    """`--atomic require` and the project processes transactions as batches."""


@dataclass
class ThreadResult:
    key: str
    outcome: str
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
        return all(t.outcome in OK_OUTCOMES for t in self.threads)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for t in self.threads:
            out[t.outcome] = out.get(t.outcome, 0) + 1
        return out

    def as_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "atomic": self.atomic, "requests": self.requests, "seconds": round(self.seconds, 3),
                "counts": self.counts(), "threads": [t.as_json() for t in self.threads]}


@dataclass
class Progress:
    """What a progress display is told: totals first, then each finished thread."""

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
    """One thread being loaded: its bundle, what is on the server, and how to map ids back to the spec."""

    def __init__(self, spec: ThreadSpec, system: str) -> None:
        self.spec = spec
        self.system = system
        self.body = bundle_bytes(spec, identifier_system=system)  # the whole thread as one transaction
        self.fingerprint = hashlib.sha256(self.body).hexdigest()
        values = [identifier_value(spec.key)] + [identifier_value(spec.key, m.id) for m in spec.messages]
        self.identifiers: list[str | None] = [f"{system}|{v}" for v in values]
        self.urls = [full_url(system, v) for v in values]
        self.file, self.line = spec.origin()

    @functools.cached_property
    def bundle(self) -> dict[str, Any]:
        """The bundle as data, for cutting it into parts and for the validator (built only when needed)."""
        return build_bundle(self.spec, identifier_system=self.system)

    @functools.cached_property
    def sizes(self) -> list[int]:
        return entry_sizes(self.bundle)

    def whole(self, limits: Limits) -> bool:
        """True when the thread goes as one plain transaction, its bytes as built."""
        return (not limits.conditional and len(self.body) <= limits.max_bytes
                and (limits.max_entries is None or len(self.urls) <= limits.max_entries))

    def result(self, outcome: str, ids: dict[str, str], **kw: Any) -> ThreadResult:
        header = ids.get(self.urls[0])
        messages = {m.id: ids[url] for m, url in zip(self.spec.messages, self.urls[1:], strict=True) if url in ids}
        return ThreadResult(self.spec.key, outcome, self.file, self.line, header, messages, **kw)

    def problems(self) -> str | None:
        """The validator's errors (rules and references; size is the planner's job), or None.

        A spec read from a file or plain data was checked when it was parsed, and the builder makes a
        clean bundle of every checked spec (a property test holds it to that); a ThreadSpec made by hand
        was never checked, so its bundle is."""
        if self.spec.source is not None:
            return None
        errors = [i for i in validate(self.bundle, structure=False, limits="none") if i.severity == "error"]
        if not errors:
            return None
        return "; ".join(f"{self.where(i.entry)}: [{i.code}] {i.path}: {i.message}" for i in errors)

    def where(self, entry_index: int | None) -> str:
        """`file:line` of the spec element behind an entry (0 = the thread itself)."""
        if entry_index is None or entry_index <= 0:
            file, line = self.file, self.line
        else:
            file, line = self.spec.origin(entry_index - 1)
        return f"{file}:{line}" if line else str(file)


class Loader:
    def __init__(self, client: FhirClient, journal: J.Journal, *, identifier_system: str, limits: Limits) -> None:
        self.client = client
        self.journal = journal
        self.system = identifier_system
        self.limits = limits

    # --- finding what is on the server ------------------------------------------------------------

    # --- one thread ---------------------------------------------------------------------------------

    def load_thread(self, t: _Thread, entry: J.Entry | None, existing: dict[str, str]) -> ThreadResult:
        ids: dict[str, str] = dict(entry.ids) if entry else {}
        in_flight = list(entry.in_flight) if entry else []
        before = set(ids)
        requests = 0
        # what an earlier run (or another tool) left on the server, found by identifier
        for url, ident in zip(t.urls, t.identifiers, strict=True):
            if ident in existing and url not in ids:
                ids[url] = f"Communication/{existing[ident]}"
        if in_flight:  # a request whose outcome we never learned
            ids.update(self._reconcile(t, [t.urls.index(u) for u in in_flight if u in t.urls]))
            requests += 1
        found_before = set(ids) - before
        if len(ids) == len(t.urls):
            self._save(t, J.COMMITTED, ids)
            return t.result(EXISTING if entry is None else RESUMED, _ids(ids), requests=requests)
        created = 0
        unknown_rounds = 0
        while True:
            remaining = [i for i, url in enumerate(t.urls) if url not in ids]
            if not remaining:
                break
            if not ids and t.whole(self.limits):
                part, body = remaining, t.body
            else:
                try:
                    part = cut(remaining, t.sizes, self.limits)[0]
                except TooLarge as exc:
                    return self._fail(t, ids, f"{t.where(None)}: {exc}", requests)
                body = orjson.dumps(part_bundle(t.bundle, part, ids, conditional=self.limits.conditional))
            if entry is not None or ids:  # a thread the journal has never seen is found by the pre-check instead
                self._save(t, J.SENT, ids, in_flight=[t.urls[i] for i in part])
            requests += 1
            try:
                response = self.client.transaction(body, entries=len(part))
            except UnknownOutcome:
                unknown_rounds += 1
                if unknown_rounds > MAX_RECONCILE:
                    return self._fail(t, ids, "the server's answers kept getting lost; run again to resume",
                                      requests, state=J.SENT, in_flight=[t.urls[i] for i in part])
                ids.update(self._reconcile(t, part))
                requests += 1
                continue
            except ServerError as exc:
                index = self._failing_entry(exc.outcome, part)
                why = f"{t.where(index)}: {exc}"
                return self._fail(t, ids, why, requests)
            statuses = self._read_response(t, part, response, ids)
            created += sum(1 for s in statuses if s.startswith("201"))
            failed = [(i, s) for i, s in zip(part, statuses, strict=True)
                      if s[:1] != "2" and not s.startswith("429")]
            if failed:
                i, status = failed[0]
                text = outcome_text((response["entry"][part.index(i)].get("response") or {}).get("outcome"))
                committed = sum(1 for s in statuses if s[:1] == "2")
                why = (f"{t.where(i)}: HTTP {status.split()[0]}: {text or 'refused'}"
                       + (f" — the server processed the transaction non-atomically: {committed} of {len(part)} "
                          "entries were committed (is the project's transaction-bundles feature off?)"
                          if committed else ""))
                return self._fail(t, ids, why, requests)
            if any(s.startswith("429") for s in statuses):
                self.client.pacer.blocked(1.0)  # batch mode: the rest was not processed; send it again
            if len(ids) < len(t.urls):
                self._save(t, J.SENT, ids)
        self._save(t, J.COMMITTED, ids)
        outcome = LOADED if not (before or found_before) else RESUMED
        return t.result(outcome, _ids(ids), requests=requests, created=created)

    def _read_response(self, t: _Thread, part: list[int], response: Any, ids: dict[str, str]) -> list[str]:
        entries = response.get("entry") if isinstance(response, dict) else None
        if not isinstance(entries, list) or len(entries) != len(part):
            raise BundlerError(f"{t.spec.key}: the server answered a transaction of {len(part)} entries with "
                               f"{len(entries) if isinstance(entries, list) else 'no'} entries")
        statuses = []
        for i, e in zip(part, entries, strict=True):
            resp = e.get("response") or {}
            status = str(resp.get("status", ""))
            statuses.append(status)
            if status[:1] == "2":
                sid = _server_id(resp.get("location"), e.get("resource"))
                if sid:
                    ids[t.urls[i]] = f"Communication/{sid}"
        return statuses

    def _reconcile(self, t: _Thread, part: list[int]) -> dict[str, str]:
        """The entries of `part` that are on the server, by identifier search."""
        found = self.client.find_identifiers("Communication", [i for n in part if (i := t.identifiers[n])])
        return {t.urls[i]: f"Communication/{found[ident]}" for i in part
                if (ident := t.identifiers[i]) is not None and ident in found}

    @staticmethod
    def _failing_entry(outcome: dict[str, Any] | None, part: list[int]) -> int | None:
        for issue in (outcome or {}).get("issue") or ():
            for where in (issue.get("expression") or []) + (issue.get("location") or []):
                m = _ENTRY_INDEX.search(where)
                if m and int(m.group(1)) < len(part):
                    return part[int(m.group(1))]
        return None

    def _save(self, t: _Thread, state: str, ids: dict[str, str], *, in_flight: list[str] | None = None,
              error: str | None = None) -> None:
        self.journal.put(J.Entry(t.spec.key, state, t.fingerprint, ids, in_flight or [], error))

    def _fail(self, t: _Thread, ids: dict[str, str], why: str, requests: int, *, state: str | None = None,
              in_flight: list[str] | None = None) -> ThreadResult:
        state = state or (J.PARTIAL if ids else J.FAILED)
        self._save(t, state, ids, in_flight=in_flight, error=why)
        return t.result(PARTIAL if ids else FAILED, _ids(ids), error=why, requests=requests)


def _ids(ids: dict[str, str]) -> dict[str, str]:
    return {url: ref.split("/", 1)[1] for url, ref in ids.items()}


def default_journal(paths: Sequence[str | Path]) -> Path:
    """`<first input>.journal.sqlite` beside the first input (a file or folder); in the current folder for stdin."""
    first = next((Path(p) for p in paths if str(p) != "-"), None)
    if first is None:
        return Path("thread-bundler.journal.sqlite")
    first = first.resolve()
    return first.parent / f"{first.name}.journal.sqlite"


def probe_atomic(client: FhirClient) -> bool:
    return probe_atomicity(client).atomic


def load(threads: Iterable[ThreadSpec], client: FhirClient, *, journal: str | Path,
         identifier_system: str = DEFAULT_IDENTIFIER_SYSTEM, atomic: Atomic = "auto", concurrency: int = 4,
         max_entries: int | None = None, max_bytes: int = SAFE_MAX_BYTES, dry_run: bool = False,
         progress: Progress | None = None, is_atomic: bool | None = None, window: int = 1000) -> LoadReport:
    """Load `threads` into the server behind `client`; see the module docstring for the guarantees.

    atomic: `require` refuses a project that processes transactions as batches; `auto` (default) finds
    out once (`doctor`'s probe) and, on such a project, sends the header first and then the messages,
    every entry a conditional create on its identifier, so that re-running completes a thread; `off`
    sends plain transactions and reports what a non-atomic server half-committed as partial.
    `is_atomic` skips the probe when the caller already knows. `threads` may be a stream (a migration):
    it is read `window` threads at a time, so memory does not grow with it.
    """
    started, requests_before, waited_before = time.monotonic(), client.requests, client.pacer.waited
    if progress is not None and isinstance(threads, Sequence):
        progress.threads, progress.messages = len(threads), sum(len(t.messages) for t in threads)
    results: list[ThreadResult] = []
    plan = _Plan()
    with J.Journal(journal, f"{client.root}|{identifier_system}") as jr, \
            ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="load") as pool:
        run = _Run(client, jr, pool, identifier_system=identifier_system, atomic=atomic, is_atomic=is_atomic,
                   limits=Limits(max_bytes=max_bytes, max_entries=max_entries), progress=progress)
        for chunk in _batched(threads, max(1, window)):
            results += run.window([_Thread(spec, identifier_system) for spec in chunk], plan if dry_run else None)
    secrets = client.all_secrets()
    for r in results:
        if r.error:
            r.error = secrets.scrub(r.error)
    report = LoadReport(results, run.is_atomic, client.requests - requests_before, time.monotonic() - started,
                        client.pacer.waited - waited_before, dry_run=dry_run)
    if dry_run:
        report.planned_requests, report.planned_points = plan.requests, plan.points
        report.estimated_seconds = client.pacer.seconds_for(plan.points)
    return report


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

    def __init__(self, client: FhirClient, journal: J.Journal, pool: ThreadPoolExecutor, *, identifier_system: str,
                 atomic: Atomic, is_atomic: bool | None, limits: Limits, progress: Progress | None) -> None:
        self.client, self.journal, self.pool = client, journal, pool
        self.system, self.atomic, self.is_atomic = identifier_system, atomic, is_atomic
        self.limits, self.progress = limits, progress
        self.loader: Loader | None = None

    def _tell(self, result: ThreadResult, t: _Thread) -> None:
        if self.progress and self.progress.on_thread:
            self.progress.on_thread(result, len(t.spec.messages))

    def _ready(self, dry_run: bool) -> Loader:
        """The loader, once we know (probing only when something is to be sent) how to send."""
        if self.loader is None:
            if self.atomic != "off" and self.is_atomic is None and not dry_run:
                self.is_atomic = probe_atomic(self.client)
                if self.atomic == "require" and not self.is_atomic:
                    raise NotAtomic("this project processes transactions non-atomically (Medplum's "
                                    "transaction-bundles feature is off): refusing to load with --atomic require")
            limits = Limits(self.limits.max_bytes, self.limits.max_entries,
                            conditional=self.atomic == "auto" and self.is_atomic is False)
            self.loader = Loader(self.client, self.journal, identifier_system=self.system, limits=limits)
        return self.loader

    def window(self, items: list[_Thread], plan: _Plan | None) -> list[ThreadResult]:
        known = self.journal.get_many([t.spec.key for t in items])
        results: list[ThreadResult | None] = [None] * len(items)
        todo: list[int] = []
        for n, t in enumerate(items):
            entry = known.get(t.spec.key)
            if problems := t.problems():
                results[n] = t.result(FAILED, {}, error=problems)  # never sent: the server would refuse it
            elif entry and entry.state == J.COMMITTED:
                outcome = SKIPPED if entry.fingerprint == t.fingerprint else CHANGED
                error = None if outcome == SKIPPED else "the spec has changed since it was loaded; not sent again"
                results[n] = t.result(outcome, _ids(entry.ids), error=error)
            else:
                todo.append(n)
        for n, r in enumerate(results):
            if r is not None:
                self._tell(r, items[n])
        # threads the journal has never seen: are they on the server already (by header identifier)?
        unseen = [n for n in todo if items[n].spec.key not in known]
        headers = self.client.find_identifiers("Communication", [items[n].identifiers[0] for n in unseen])
        existing: dict[int, dict[str, str]] = {}
        for n in unseen:
            if items[n].identifiers[0] in headers:  # the header is there: which of its messages are?
                existing[n] = self.client.find_identifiers("Communication", [i for i in items[n].identifiers if i])
        if not todo:
            return results  # type: ignore[return-value]
        loader = self._ready(dry_run=plan is not None)
        if plan is not None:
            for n in todo:
                results[n] = _plan_thread(items[n], known.get(items[n].spec.key), existing.get(n, {}), loader.limits,
                                          plan)
            plan.points += SEARCH_POINTS * (1 + len(unseen) // 100 + len(existing))
            return results  # type: ignore[return-value]

        def run(n: int) -> ThreadResult:
            t = items[n]
            try:
                return loader.load_thread(t, known.get(t.spec.key), existing.get(n, {}))
            except BundlerError as exc:
                if _fatal(exc):
                    raise
                return t.result(FAILED, {}, error=self.client.all_secrets().scrub(str(exc)))

        futures = {self.pool.submit(run, n): n for n in todo}
        try:
            for future in as_completed(futures):
                n = futures[future]
                results[n] = result = future.result()
                self._tell(result, items[n])
        except BaseException:
            for f in futures:
                f.cancel()
            raise
        return results  # type: ignore[return-value]


def _fatal(exc: BundlerError) -> bool:
    """Errors that would fail every thread the same way: stop the load instead."""
    return isinstance(exc, AuthError | Unreachable | NotAtomic)


def _plan_thread(t: _Thread, entry: J.Entry | None, existing: dict[str, str], limits: Limits, plan: _Plan
                 ) -> ThreadResult:
    """What loading `t` would take (dry run): its requests and points are added to `plan`."""
    have = set(entry.ids if entry else ()) | {u for u, i in zip(t.urls, t.identifiers, strict=True) if i in existing}
    remaining = [i for i, u in enumerate(t.urls) if u not in have]
    if not remaining:
        return t.result(EXISTING, {})
    try:
        parts = cut(remaining, t.sizes, limits)
    except TooLarge as exc:
        return t.result(FAILED, {}, error=f"{t.where(None)}: {exc}")
    plan.requests += len(parts)
    plan.points += WRITE_POINTS * len(remaining)
    return t.result("planned", {}, requests=len(parts))
