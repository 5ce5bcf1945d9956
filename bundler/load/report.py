"""What a load tells: each thread's result as it finishes, counts for the whole run, the `--report` file.

A `LoadReport` holds counts, not results: a migration of a million messages keeps the memory of a
small one. Each `ThreadResult` goes to the journal and to whoever listens (`LoadWatcher.on_thread`: the
progress bar, a `ReportWriter`) as its thread finishes, and is then let go; `load(..., keep_results=True)`
keeps them in `LoadReport.threads`, in input order, for callers that want them in memory (tests, the
demo). The first `SHOWN` problems are kept for the summary.

`ReportWriter` streams the `--report` file: one JSON document, `{"threads": [...], "ok": ..., "counts": ...}`,
threads in the order they finished, written through `bundler.files.atomic_file`, so a crash leaves the
previous report (or none), never half a document; a Ctrl-C finishes it with what was done so far.
"""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import orjson

from ..files import atomic_file

SHOWN = 20  # problems (and threads with notes) kept for the summary


class Outcome(enum.StrEnum):
    """What happened to a thread; the value is what reports and JSON show."""

    LOADED = "loaded"  # created by this run
    RESUMED = "resumed"  # part was on the server already (an earlier run, or a lost response); the rest created now
    APPENDED = "appended"  # a thread loaded before got its new messages, and only those
    UPDATED = "updated"  # changed fields sent as updates (--update); new messages too, if any
    EXISTING = "existing"  # all of it was on the server already, found by its identifiers
    SKIPPED = "skipped"  # the journal says it was loaded by an earlier run, and the spec is the same
    CHANGED = "changed"  # fields differ from what was loaded; not sent (without --update): `changes` says which
    DUPLICATED = "duplicated"  # on the server, and some of it twice: another load sent it at the same time, or a
    # request of this one whose answer was lost landed later than --late-margin
    PARTIAL = "partial"  # some of it is on the server, the rest failed (e.g. a non-atomic project)
    FAILED = "failed"  # nothing of it (or none of what was to be sent) is on the server
    PLANNED = "planned"  # a dry run: something of it would be sent

    @property
    def ok(self) -> bool:
        """All of the thread is (or, planned, would be) on the server as its spec says."""
        return not self.problem

    @property
    def problem(self) -> bool:
        """Someone has to look at it: the result's `error`, `changes` or `duplicates` say why."""
        return self in (Outcome.CHANGED, Outcome.DUPLICATED, Outcome.PARTIAL, Outcome.FAILED)


@dataclass
class Duplicate:
    """An entry of a thread the server holds more than once (`duplicates`): `ours` is the copy this load made or
    found (`Type/<id>`; None if it has none), `others` the rest."""

    entry: str  # as `changes` name it: "header", "messages[2] (m1)", ...
    identifier: str  # system|value
    ours: str | None
    others: list[str]

    def text(self) -> str:
        copies = [f"{self.ours} (this load's)"] * bool(self.ours) + self.others
        return f"{self.entry}: {len(copies)} copies (identifier {self.identifier}): {', '.join(copies)}"


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
    updated: int = 0
    changes: list[str] = field(default_factory=list)  # per-field differences, in verify's words
    removed: list[str] = field(default_factory=list)  # message ids on the server that the spec no longer has
    duplicates: list[Duplicate] = field(default_factory=list)  # entries the server holds more than once
    landed_late: int = 0  # requests of this load whose lost answers landed after all: `duplicates` are its own

    @property
    def messages(self) -> int:
        """Messages of this thread on the server (as far as this run knows)."""
        return len(self.message_ids)

    def as_json(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v not in (None, {}, [], 0) or k == "outcome"}


@dataclass
class Plan:
    """What a dry run predicts: requests and quota points (also for a project that is not atomic, when that
    is not known: `*_not_atomic`), and the time at the server's quota (None: the server did not say)."""

    requests: int = 0
    points: int = 0
    searches: int = 0
    requests_not_atomic: int | None = None
    points_not_atomic: int | None = None
    seconds: float | None = None
    seconds_not_atomic: float | None = None

    def as_json(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


@dataclass
class ParticipantCounts:
    """What a load did about participants to create: how many it created, found there (by the journal or the
    server), and could not ensure."""

    created: int = 0
    existing: int = 0
    failed: int = 0
    planned: int = 0  # (a dry run) to be made sure of by conditional creates

    def __bool__(self) -> bool:
        return bool(self.created or self.existing or self.failed or self.planned)

    def text(self) -> str:
        if self.planned:
            return f"participants: {self.planned:,} to create if missing, {self.existing:,} known"
        failed = f", {self.failed:,} failed" if self.failed else ""
        return f"participants: {self.created:,} created, {self.existing:,} existing{failed}"

    def as_json(self) -> dict[str, int]:
        return {"created": self.created, "existing": self.existing, "failed": self.failed}


@dataclass
class LoadReport:
    """Counts of what a load did (results themselves are streamed: see the module docstring)."""

    atomic: bool | None = None
    requests: int = 0
    seconds: float = 0.0
    waited: float = 0.0
    dry_run: bool = False
    total: int | None = None  # threads in the input, when known before the load
    interrupted: bool = False
    by_outcome: Counter[str] = field(default_factory=Counter)
    messages: Counter[str] = field(default_factory=Counter)  # messages on the server, by the thread's outcome
    problems: list[ThreadResult] = field(default_factory=list)  # the first SHOWN
    problem_count: int = 0
    noted: list[ThreadResult] = field(default_factory=list)  # the first SHOWN with messages removed from the spec
    noted_count: int = 0
    threads: list[ThreadResult] = field(default_factory=list)  # only with keep_results: in input order
    _kept: list[tuple[int, ThreadResult]] = field(default_factory=list, repr=False)
    plan: Plan | None = None
    participants: ParticipantCounts = field(default_factory=ParticipantCounts)
    files: dict[str, int] = field(default_factory=dict)  # files uploaded first: uploaded, known, failed
    unchecked: int = 0  # threads sent but not checked for copies another load made (the next run checks them)
    unchecked_why: str = ""
    concurrency: str = ""  # transactions in flight: a number, or what "auto" settled at ("auto: settled at 6; ...")

    @property
    def ok(self) -> bool:
        return not self.interrupted and self.problem_count == 0 and not self.unchecked

    @property
    def done(self) -> int:
        return sum(self.by_outcome.values())

    @property
    def settled(self) -> int:
        """Threads that are (or would be) on the server as their spec says."""
        return sum(n for outcome, n in self.by_outcome.items() if Outcome(outcome).ok)

    def counts(self) -> dict[str, int]:
        return dict(self.by_outcome)

    def add(self, result: ThreadResult, *, keep: bool, seq: int = 0) -> None:
        """Count `result` (the `seq`-th thread of the input); with `keep`, keep it too."""
        self.by_outcome[result.outcome.value] += 1
        self.messages[result.outcome.value] += result.messages
        if result.outcome.problem:
            self.problem_count += 1
            if len(self.problems) < SHOWN:
                self.problems.append(result)
        if result.removed:
            self.noted_count += 1
            if len(self.noted) < SHOWN:
                self.noted.append(result)
        if keep:
            self._kept.append((seq, result))

    def in_input_order(self) -> None:
        """`threads`: the results kept, in input order (they came in the order threads finished)."""
        self.threads = [r for _, r in sorted(self._kept, key=lambda kept: kept[0])]

    def as_json(self) -> dict[str, Any]:
        """The summary (the `--report` file has it after the threads)."""
        out: dict[str, Any] = {"ok": self.ok, "atomic": self.atomic, "requests": self.requests,
                               "seconds": round(self.seconds, 3), "counts": self.counts()}
        if self.concurrency:
            out["concurrency"] = self.concurrency
        if self.participants:
            out["participants"] = self.participants.as_json()
        if any(self.files.values()):
            out["files"] = dict(self.files)
        if self.unchecked:
            out["unchecked"] = self.unchecked
        if self.interrupted:
            out["interrupted"] = True
        if self.plan is not None:
            out["plan"] = self.plan.as_json()
        return out


@dataclass
class LoadWatcher:
    """What a progress display is told: `on_start(threads, messages)` before anything is sent or searched
    (None when the input is a stream of unknown length), `on_wait(why)` when the load waits for another one
    to release the journal, then `on_thread(result, messages in the thread)` as each thread finishes, in the
    calling thread."""

    on_start: Callable[[int | None, int | None], None] | None = None
    on_thread: Callable[[ThreadResult, int], None] | None = None
    on_wait: Callable[[str], None] | None = None


class ReportWriter:
    """The `--report` file, written as threads finish (see the module docstring).

        writer = ReportWriter(path)
        ... writer.add(result) for each thread ...
        writer.finish(report)      # or writer.abandon(): the previous file stays
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._context = atomic_file(self.path)
        self._file: IO[bytes] | None = self._context.__enter__()
        self._file.write(b'{"threads": [')
        self._first = True

    def add(self, result: ThreadResult) -> None:
        if self._file is not None:
            self._file.write((b"\n" if self._first else b",\n") + orjson.dumps(result.as_json()))
            self._first = False

    def finish(self, report: LoadReport) -> None:
        """Write the summary after the threads and put the file in place."""
        if self._file is None:
            return
        summary = orjson.dumps(report.as_json())
        self._file.write(b"\n], " + summary[1:] + b"\n")
        self._file = None
        self._context.__exit__(None, None, None)

    def abandon(self) -> None:
        """Leave the previous file (or none) in place."""
        if self._file is not None:
            self._file = None
            error = RuntimeError("report abandoned")
            self._context.__exit__(RuntimeError, error, None)
