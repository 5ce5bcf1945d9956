"""One process's migration: rows read → grouped on disk → assembled into threads, as a stream of ThreadSpecs.

`ThreadStream` is the stream (what `iter_threads` returns). Its two steps are public, so that a
parallel run (`pipeline.migrate` with workers) can give each process a share of either:

    stream = ThreadStream(["export.csv"], "mapping.yaml", rejects="rejects.jsonl")
    with GroupStore() as store:
        sample = stream.load_rows(store)              # step 1: every row read, judged, stored by thread key
        for spec in stream.threads_from(store): ...   # step 2: the groups, in key order, assembled
        rejects = list(stream.rejects_from(store))    # every reject of both steps, by input and row
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import time
from collections import Counter
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Literal

from ..errors import BundlerError
from ..spec.model import ThreadSpec
from .assemble import Assembler
from .extract import Extractor, RowError
from .grouping import Groups, GroupStore
from .keys import KEY_FITS, thread_key
from .mapping import MigrationMapping, Row
from .readers import Record, prepare, read_records
from .records import TOMBSTONE_SENT, Tombstone, decode_rows, encode
from .rejects import WARNING, Reject, write_rejects

if TYPE_CHECKING:
    from ..load.report import LoadReport

BATCH = 4_000  # rows per insert into the store
PROGRESS_EVERY = 10_000  # rows read between progress reports (well under a second)
PROGRESS_SECONDS = 1.0  # between progress reports while assembling (how long a thread takes is the writer's)
SAMPLE = 4_096  # thread keys sampled while loading, by which a parallel run cuts its key ranges

Phase = Literal["reading", "writing", "done"]


class RowRejected(BundlerError):
    """`strict=True` and a row was rejected; `reject` says which and why."""

    def __init__(self, reject: Reject) -> None:
        self.reject = reject
        super().__init__(f"{reject} (--strict stops at the first rejected row)")

    def __reduce__(self) -> tuple[type[RowRejected], tuple[Reject]]:
        return type(self), (self.reject,)


INDEX_VARIABLE = "JOB_COMPLETION_INDEX"
"""Where `--shard env/N` reads its index: what a Kubernetes Indexed Job sets in each of its pods (0..N-1)."""


@dataclass(frozen=True)
class Shard:
    """Conversations whose thread key in lower case hashes (SHA-1 of its UTF-8, first 8 bytes, big-endian)
    to `index` modulo `count`. The thread key is the conversation id itself unless it had to be sanitised;
    lower case, so that keys which differ only in case (made distinct) are in one shard."""

    index: int
    count: int

    @classmethod
    def parse(cls, text: str, environ: Mapping[str, str] = os.environ) -> Shard:
        """'K/N' with 0 <= K < N; or 'env/N': K from the environment variable JOB_COMPLETION_INDEX."""
        head, _, count = text.partition("/")
        where = ""
        if head == "env":
            if INDEX_VARIABLE not in environ:
                raise ValueError(f"{text!r} reads K from {INDEX_VARIABLE}, which is not set (a Kubernetes Indexed "
                                 "Job sets it)")
            head, where = environ[INDEX_VARIABLE].strip(), f" ({INDEX_VARIABLE}={environ[INDEX_VARIABLE]!r})"
        try:
            k, n = int(head), int(count)
        except ValueError:
            raise ValueError(f"{text!r}{where} is not K/N (like 0/4) or env/N") from None
        if not 0 <= k < n:
            raise ValueError(f"{text!r}{where}: K must be 0..N-1")
        return cls(k, n)

    def __contains__(self, conversation: str) -> bool:
        digest = hashlib.sha1(conversation.encode("utf-8", "surrogateescape")).digest()
        return int.from_bytes(digest[:8], "big") % self.count == self.index


@dataclass(frozen=True)
class Progress:
    phase: Phase
    rows: int
    messages: int
    threads: int
    seconds: float


ProgressFn = Callable[[Progress], None]


@dataclass
class MigrateSummary:
    """What a migration did. Always: rows_read == messages + rejected + skipped + rows_other_shards.

    `rejects`: rows that are not messages, by reason; `warnings`: messages kept with something left out (a
    reply's link), by reason, also lines of the reject file; `skipped`: rows left out by the mapping's
    `skip` rules, by rule."""

    rows_read: int = 0
    rows_other_shards: int = 0
    messages: int = 0
    threads: int = 0
    threads_all_rejected: int = 0
    rejects: Counter[str] = field(default_factory=Counter)
    warnings: Counter[str] = field(default_factory=Counter)
    skipped_by: Counter[str] = field(default_factory=Counter)
    output: Path | None = None
    rejects_file: Path | None = None
    seconds: float = 0.0
    peak_rss: list[int] = field(default_factory=list)  # bytes, per process: this one first, then any workers
    loaded: dict[str, int] | None = None  # with --load: messages on the server by the thread's load outcome
    load: LoadReport | None = None  # with --load: the load's report

    @property
    def rejected(self) -> int:
        return sum(self.rejects.values())

    @property
    def skipped(self) -> int:
        return sum(self.skipped_by.values())

    @property
    def accounted(self) -> bool:
        """Whether every row read is a message, a reject, skipped by a filter or a row of another shard."""
        return self.rows_read == self.messages + self.rejected + self.skipped + self.rows_other_shards

    def add(self, part: MigrateSummary) -> None:
        """Count in what `part` (a step of one process of a parallel run) did."""
        self.rows_read += part.rows_read
        self.rows_other_shards += part.rows_other_shards
        self.messages += part.messages
        self.threads += part.threads
        self.threads_all_rejected += part.threads_all_rejected
        self.rejects.update(part.rejects)
        self.warnings.update(part.warnings)
        self.skipped_by.update(part.skipped_by)

    def table(self, *, loading: bool = False) -> list[tuple[str, str]]:
        """(label, count) rows for people; `loading`: the messages went to a loader, not to files."""
        rows = [("rows read", f"{self.rows_read:,}")]
        if self.rows_other_shards:
            rows.append(("rows of other shards", f"{self.rows_other_shards:,}"))
        made = "messages migrated (given to load)" if loading or self.loaded is not None else "messages written"
        rows += [(made, f"{self.messages:,}"), ("threads", f"{self.threads:,}")]
        if self.loaded is not None:
            rows.append(("messages of those threads on the server", f"{sum(self.loaded.values()):,}"))
        if self.threads_all_rejected:
            rows.append(("conversations with every row rejected", f"{self.threads_all_rejected:,}"))
        if self.skipped_by:
            rows.append(("skipped by filter", f"{self.skipped:,}"))
            rows += [(f"  {rule}", f"{n:,}") for rule, n in sorted(self.skipped_by.items())]
        rows.append(("rows rejected", f"{self.rejected:,}"))
        rows += [(f"  {reason}", f"{n:,}") for reason, n in sorted(self.rejects.items())]
        if self.warnings:
            rows.append(("messages kept with a warning", f"{sum(self.warnings.values()):,}"))
            rows += [(f"  {reason}" + (" (link dropped)" if reason.startswith("reply-") else " (left out)"), f"{n:,}")
                     for reason, n in sorted(self.warnings.items())]
        return rows


def peak_rss() -> int:
    """This process's peak resident memory (VmHWM), in bytes (0 where /proc is not there)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class ThreadStream(Iterator[ThreadSpec]):
    """The threads of a migration, one at a time, in thread-key order; `summary` fills as it runs.

    Iterating runs both steps over a store of its own in `work_dir`, then writes the reject file (when
    the stream is exhausted). Close it (or use `with`) to clean up the work folder if you stop early.
    The steps can also be run one by one, over stores of your own (see the module doc):
    `load_rows`, `threads_from`, `rejects_from`.
    """

    def __init__(self, inputs: Sequence[str | Path], mapping: str | Path | MigrationMapping, *,
                 shard: Shard | str | None = None, strict: bool = False, rejects: str | Path | None = None,
                 work_dir: str | Path | None = None, progress: ProgressFn | None = None, origins: bool = True
                 ) -> None:
        if rejects is None and not strict:
            raise ValueError("rejects (a .csv or .jsonl path) is required unless strict")
        self.mapping, self.sources = prepare(inputs, mapping)
        self.shard = Shard.parse(shard) if isinstance(shard, str) else shard
        self.strict = strict
        self.rejects_path = Path(rejects) if rejects is not None else None
        self.work_dir = work_dir
        self.progress = progress
        self.summary = MigrateSummary(rejects_file=self.rejects_path)
        self.origins = origins
        self._store: GroupStore | None = None
        self._loaded = False
        self._gen = self._run()
        self._t0 = time.perf_counter()

    def __next__(self) -> ThreadSpec:
        return next(self._gen)

    def close(self) -> None:
        self._gen.close()
        if self._store is not None:
            self._store.close()
            self._store = None

    def __enter__(self) -> ThreadStream:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def start(self) -> tuple[int, int]:
        """Run step 1 now (every row read, judged and stored), before the first thread is asked for; returns
        (conversations, messages) stored: what the threads will be, at most (assembling rejects some rows).
        For a progress bar with real totals."""
        if self._store is None:
            self._store = GroupStore(self.work_dir)
        if not self._loaded:
            self.load_rows(self._store)
            self._loaded = True
        return self._store.totals(TOMBSTONE_SENT)

    def _run(self) -> Generator[ThreadSpec, None, None]:
        if self._store is None:
            self._store = GroupStore(self.work_dir)
        store = self._store
        try:
            if not self._loaded:
                self.load_rows(store)
                self._loaded = True
            yield from self.threads_from(store)
            s = self.summary
            assert s.accounted, s
            if self.rejects_path is not None:
                write_rejects(self.rejects_path, (r for _, r in self.rejects_from(store)))
            s.seconds = time.perf_counter() - self._t0
            self._tick("done")
        finally:
            store.close()
            self._store = None

    def _tick(self, phase: Phase) -> None:
        if self.progress is not None:
            s = self.summary
            self.progress(Progress(phase, s.rows_read, s.messages, s.threads, time.perf_counter() - self._t0))

    def _reject(self, store: Groups, pending: list[tuple[int, Reject]], item: tuple[int, Reject]) -> None:
        if item[1].severity == WARNING:
            self.summary.warnings[item[1].reason] += 1
        else:
            self.summary.rejects[item[1].reason] += 1
            if self.strict:
                raise RowRejected(item[1])
        pending.append(item)
        if len(pending) >= 1000:
            store.add_rejects(pending)
            pending.clear()

    def _unreadable(self, store: Groups, rejects: list[tuple[int, Reject]], first: bool, index: int, name: str,
                    rec: Record) -> None:
        if first:
            assert rec.error is not None  # a row without values says why
            reason, message = rec.error
            self._reject(store, rejects, (index, Reject(name, rec.row, rec.line, reason, message, rec.raw)))
        else:
            self.summary.rows_other_shards += 1

    def _skipped(self, skipped: Callable[[Row], str | None] | None, values: Row) -> bool:
        """Whether a skip rule of the mapping leaves this row out (counted by rule if so)."""
        rule = skipped(values) if skipped is not None else None
        if rule is not None:
            self.summary.skipped_by[rule] += 1
        return rule is not None

    def load_rows(self, store: GroupStore, share: tuple[int, int] = (0, 1)) -> list[str]:
        """Step 1: every row read, judged alone, and stored in `store` by thread key (or rejected there);
        then the store is committed. Counts rows and rejects into `summary`.

        `share` (k, n): only rows k mod n of each input, for one of n processes that split the reading.
        Returns a sample of the stored rows' thread keys (every stride-th, at most SAMPLE), by which a
        parallel run cuts the key ranges its processes assemble.
        """
        s = self.summary
        shard = self.shard
        first = shard is None or shard.index == 0  # reports unreadable rows, which have no key to shard by
        sample: list[str] = []
        stride = 1
        rejects: list[tuple[int, Reject]] = []
        batch: list[tuple[str, int, int, bytes]] = []
        roles: list[tuple[str, str]] = []
        with_roles = self.mapping.sender_role is not None
        names: list[tuple[str, int, str]] = []  # (user, input order, name): for a create's {name}
        with_names = self.mapping.participants.uses_names
        named: set[str] = set()  # users whose name this process has stored (the first it saw wins)
        fits = KEY_FITS
        stored = 0
        next_tick = PROGRESS_EVERY
        for source in self.sources:
            extractor = Extractor(self.mapping, source)
            conversation, record, skipped = extractor.conversation, extractor.record, extractor.skipped
            name, index = source.file, source.index
            base = index << 40
            for rec in read_records(source, self.mapping, share):
                s.rows_read += 1
                if s.rows_read >= next_tick:
                    next_tick += PROGRESS_EVERY
                    self._tick("reading")
                values = rec.values
                if values is None:  # unreadable: no conversation to shard by, so shard 0 reports it
                    self._unreadable(store, rejects, first, index, name, rec)
                    continue
                conv = conversation(values).strip()
                if not conv:  # no conversation to shard by: shard 0 says what it is
                    if not first:
                        s.rows_other_shards += 1
                    elif not self._skipped(skipped, values):
                        self._reject(store, rejects, (index, Reject(name, rec.row, rec.line, "missing-thread",
                                                                    "no conversation id", rec.raw)))
                    continue
                # shards and groups go by thread key in lower case: ids that meet in one (or meet but for
                # case) meet in one shard and one group
                key = (conv if fits(conv) else thread_key(conv)).lower()
                if shard is not None and key not in shard:
                    s.rows_other_shards += 1
                    continue
                if skipped is not None and self._skipped(skipped, values):
                    continue
                seq = base + rec.row  # input order, the same in every process of a parallel run
                if stored % stride == 0:
                    stride = _sampled(sample, key, stride)
                stored += 1
                try:
                    micros, message_record = record(values, conv, rec.row, rec.line, rec.raw)
                except RowError as exc:
                    self._reject(store, rejects, (index, Reject(name, rec.row, rec.line, exc.reason, str(exc),
                                                                rec.raw)))
                    # so that the conversation knows this id was rejected (for replies to it)
                    tombstone = Tombstone(conv, extractor.message_id(values))
                    batch.append((key, TOMBSTONE_SENT, seq, encode(tombstone)))
                    continue
                batch.append((key, micros, seq, encode(message_record)))
                if with_roles and message_record.sender_role:
                    roles.append((message_record.sender, message_record.sender_role))
                if with_names and message_record.sender_display and message_record.sender not in named:
                    named.add(message_record.sender)
                    names.append((message_record.sender, seq, message_record.sender_display))
                if len(batch) >= BATCH:
                    store.add(batch)
                    batch.clear()
                    if roles:
                        store.add_roles(roles)
                        roles.clear()
                    if names:
                        store.add_names(names)
                        names.clear()
        store.add(batch)
        store.add_roles(roles)
        store.add_names(names)
        store.add_rejects(rejects)
        store.finish_loading()
        self._tick("reading")
        return sample

    def threads_from(self, store: Groups) -> Iterator[ThreadSpec]:
        """Step 2: the groups of `store`, in key order, assembled into threads. Counts messages, threads
        and rejects into `summary`; rows rejected here go into `store`, beside those of step 1."""
        s = self.summary
        people = self.mapping.participants
        resolve = people.resolver(store.roles_of if people.uses_roles else None,
                                  store.name_of if people.uses_names else None)
        assemble = Assembler(self.mapping, resolve, [src.file for src in self.sources], strict=self.strict,
                             origins=self.origins)
        rejects: list[tuple[int, Reject]] = []
        clock = time.monotonic
        next_tick = clock() + PROGRESS_SECONDS
        self._tick("writing")  # before the store's sort, which comes first and takes a while
        for key, rows in store.groups():
            for result in assemble(key, decode_rows(rows)):
                for item in result.rejects:
                    self._reject(store, rejects, item)
                if result.spec is None:
                    s.threads_all_rejected += 1
                    continue
                s.threads += 1
                s.messages += len(result.spec.messages)
                if clock() >= next_tick:
                    next_tick = clock() + PROGRESS_SECONDS
                    self._tick("writing")
                yield result.spec
        store.add_rejects(rejects)
        self._tick("writing")

    def rejects_from(self, store: Groups) -> Iterator[tuple[int, Reject]]:
        """The rejects in `store` as (input index, reject), by input and row; a CSV row that has its
        header's width is shown as {column: value}."""
        columns = {src.index: src.columns for src in self.sources if src.format == "csv"}
        for index, reject in store.rejects():
            yield index, _with_columns(reject, columns.get(index))


def _sampled(sample: list[str], key: str, stride: int) -> int:
    """`key` into the sample of thread keys; the stride from now on (doubled when the sample is thinned: it keeps
    every other key, so it stays small and even)."""
    sample.append(key)
    if len(sample) >= SAMPLE:
        del sample[1::2]
        return stride * 2
    return stride


def _with_columns(reject: Reject, columns: tuple[str, ...] | None) -> Reject:
    raw = reject.raw
    if columns is not None and isinstance(raw, list) and len(raw) == len(columns):
        return dataclasses.replace(reject, raw=dict(zip(columns, raw, strict=True)))
    return reject


def iter_threads(inputs: Sequence[str | Path], mapping: str | Path | MigrationMapping, *,
                 shard: Shard | str | None = None, strict: bool = False, rejects: str | Path | None = None,
                 work_dir: str | Path | None = None, progress: ProgressFn | None = None) -> ThreadStream:
    """The threads of a legacy export, as ThreadSpecs in thread-key order, at constant memory.

    `inputs` are CSV/JSONL files (optionally .gz); `mapping` a mapping file (or a loaded one). Rejected
    rows go to `rejects` (.csv or .jsonl), written when the stream ends; with `strict`, the first one
    raises RowRejected instead. The returned stream's `summary` counts rows, messages, threads,
    rejects, warnings and skipped rows. Each spec knows the input file and line of its rows
    (`spec.origin(i)`: what `load` names a failure by); `stream.start()` reads every row before the first
    thread is asked for and says how many threads and messages are coming, at most. Raises SpecError
    (with file:line) for a bad mapping or unreadable inputs, before any row.

        with iter_threads(["export.csv"], "mapping.yaml", rejects="rejects.jsonl") as threads:
            for spec in threads:
                bundle = build_bundle(spec)
    """
    return ThreadStream(inputs, mapping, shard=shard, strict=strict, rejects=rejects, work_dir=work_dir,
                        progress=progress)
