"""The migration run: read rows → group on disk → assemble threads → write specs or NDJSON bundles.

`iter_threads` is the stream of ThreadSpecs (for writers and the loader); `migrate` writes them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import heapq
import multiprocessing
import os
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO, Literal

import orjson

from ..build import DEFAULT_IDENTIFIER_SYSTEM, bundle_bytes
from ..errors import BundlerError
from ..files import atomic_file, staged_folder
from ..spec.dump import dump_yaml
from ..spec.model import ThreadSpec, parse_spec
from .assemble import Assembler, spec_data
from .extract import Extractor, RowError
from .grouping import GroupStore, SealedStores
from .keys import KEY_FITS, thread_key
from .mapping import MigrationMapping, load_mapping
from .readers import open_sources, read_records
from .records import TOMBSTONE_SENT, Tombstone, decode, encode
from .rejects import Reject, write_rejects

BATCH = 4_000
PROGRESS_EVERY = 50_000
SAMPLE = 4_096  # thread keys sampled per process while loading, to cut the key ranges of a parallel run


class RowRejected(BundlerError):
    """`strict=True` and a row was rejected; `reject` says which and why."""

    def __init__(self, reject: Reject) -> None:
        self.reject = reject
        super().__init__(f"{reject} (--strict stops at the first rejected row)")

    def __reduce__(self) -> tuple[type[RowRejected], tuple[Reject]]:
        return type(self), (self.reject,)


@dataclass(frozen=True)
class Shard:
    """Conversations whose thread key hashes (SHA-1 of its UTF-8, first 8 bytes, big-endian) to `index`
    modulo `count`. The thread key is the conversation id itself unless it had to be sanitised."""

    index: int
    count: int

    @classmethod
    def parse(cls, text: str) -> Shard:
        """'K/N' with 0 <= K < N."""
        try:
            k, n = (int(x) for x in text.split("/"))
        except ValueError:
            raise ValueError(f"{text!r} is not K/N (like 0/4)") from None
        if not 0 <= k < n:
            raise ValueError(f"{text!r}: K must be 0..N-1")
        return cls(k, n)

    def __contains__(self, conversation: str) -> bool:
        digest = hashlib.sha1(conversation.encode("utf-8", "surrogateescape")).digest()
        return int.from_bytes(digest[:8], "big") % self.count == self.index


@dataclass(frozen=True)
class Progress:
    phase: Literal["reading", "writing", "done"]
    rows: int
    messages: int
    threads: int
    seconds: float


@dataclass
class MigrateSummary:
    """What a migration did. Always: rows_read == messages + rejected + rows_other_shards."""

    rows_read: int = 0
    rows_other_shards: int = 0
    messages: int = 0
    threads: int = 0
    threads_all_rejected: int = 0
    rejects: Counter[str] = field(default_factory=Counter)
    output: Path | None = None
    rejects_file: Path | None = None
    seconds: float = 0.0
    peak_rss: list[int] = field(default_factory=list)  # bytes, per process: this one first, then any workers

    @property
    def rejected(self) -> int:
        return sum(self.rejects.values())

    def table(self) -> list[tuple[str, str]]:
        rows = [("rows read", f"{self.rows_read:,}")]
        if self.rows_other_shards:
            rows.append(("rows of other shards", f"{self.rows_other_shards:,}"))
        rows += [("messages written", f"{self.messages:,}"), ("threads", f"{self.threads:,}")]
        if self.threads_all_rejected:
            rows.append(("conversations with every row rejected", f"{self.threads_all_rejected:,}"))
        rows.append(("rows rejected", f"{self.rejected:,}"))
        rows += [(f"  {reason}", f"{n:,}") for reason, n in sorted(self.rejects.items())]
        return rows


ProgressFn = Callable[[Progress], None]


class ThreadStream(Iterator[ThreadSpec]):
    """The threads of a migration, one at a time, in thread-key order; `summary` fills as it runs.

    The reject file is written when the stream is exhausted. Close it (or use `with`) to clean up the
    work folder if you stop early.
    """

    def __init__(self, inputs: Sequence[str | Path], mapping: str | Path | MigrationMapping, *,
                 shard: Shard | str | None = None, strict: bool = False, rejects: str | Path | None = None,
                 work_dir: str | Path | None = None, progress: ProgressFn | None = None,
                 _share: tuple[int, int] | None = None) -> None:
        if rejects is None and not strict:
            raise ValueError("rejects (a .csv or .jsonl path) is required unless strict")
        self.mapping = mapping if isinstance(mapping, MigrationMapping) else load_mapping(mapping)
        self.sources = open_sources([str(p) for p in inputs], self.mapping)
        self.shard = Shard.parse(shard) if isinstance(shard, str) else shard
        self.strict = strict
        self.rejects_path = Path(rejects) if rejects is not None else None
        self.work_dir = work_dir
        self.progress = progress
        self.share = _share  # (k, n): this process takes rows k mod n of each input (parallel runs; see _work)
        self.summary = MigrateSummary(rejects_file=self.rejects_path)
        self._store: GroupStore | None = None
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

    def _tick(self, phase: Literal["reading", "writing", "done"]) -> None:
        if self.progress is not None:
            s = self.summary
            self.progress(Progress(phase, s.rows_read, s.messages, s.threads, time.perf_counter() - self._t0))

    def _reject(self, store: GroupStore, pending: list[tuple[int, Reject]], item: tuple[int, Reject]) -> None:
        self.summary.rejects[item[1].reason] += 1
        if self.strict:
            raise RowRejected(item[1])
        pending.append(item)
        if len(pending) >= 1000:
            store.add_rejects(pending)
            pending.clear()

    def _run(self) -> Iterator[ThreadSpec]:
        store = self._store = GroupStore(self.work_dir)
        try:
            self._load(store)
            yield from self._stream(store)
        finally:
            store.close()
            self._store = None

    def _load(self, store: GroupStore) -> list[str]:
        """Pass 1: every row read (of this process's share), judged alone, and stored by thread key (or
        rejected). Returns a sample of the stored rows' keys (every stride-th, at most SAMPLE), by which a
        parallel run cuts the key ranges that its processes assemble."""
        s = self.summary
        shard = self.shard
        first = shard is None or shard.index == 0  # reports unreadable rows, which have no key to shard by
        share = self.share or (0, 1)
        sample: list[str] = []
        stride = 1
        rejects: list[tuple[int, Reject]] = []
        batch: list[tuple[str, int, int, bytes]] = []
        roles: list[tuple[str, str]] = []
        with_roles = self.mapping.sender_role is not None
        fits = KEY_FITS
        stored = 0
        next_tick = PROGRESS_EVERY
        for source in self.sources:
            extractor = Extractor(self.mapping, source)
            conversation, record = extractor.conversation, extractor.record
            name, index = source.file, source.index
            base = index << 40
            for rec in read_records(source, self.mapping, share):
                s.rows_read += 1
                if s.rows_read >= next_tick:
                    next_tick += PROGRESS_EVERY
                    self._tick("reading")
                values = rec.values
                if values is None:  # unreadable: no conversation to shard by, so shard 0 reports it
                    if first:
                        self._reject(store, rejects, (index, Reject(name, rec.row, rec.line, *rec.error, rec.raw)))  # type: ignore[misc]
                    else:
                        s.rows_other_shards += 1
                    continue
                conv = conversation(values).strip()
                if not conv:
                    if first:
                        self._reject(store, rejects, (index, Reject(name, rec.row, rec.line, "missing-thread",
                                                                    "no conversation id", rec.raw)))
                    else:
                        s.rows_other_shards += 1
                    continue
                # shards go by thread key: ids that meet in one key meet in one shard
                key = conv if fits(conv) else thread_key(conv)
                if shard is not None and key not in shard:
                    s.rows_other_shards += 1
                    continue
                seq = base + rec.row  # input order, the same in every process of a parallel run
                if stored % stride == 0:
                    sample.append(key)
                    if len(sample) >= SAMPLE:  # keep every other one: the sample stays small and even
                        del sample[1::2]
                        stride *= 2
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
                if len(batch) >= BATCH:
                    store.add(batch)
                    batch.clear()
                    if roles:
                        store.add_roles(roles)
                        roles.clear()
        store.add(batch)
        store.add_roles(roles)
        store.add_rejects(rejects)
        store.finish_loading()
        self._tick("reading")
        return sample

    def _stream(self, store: GroupStore | SealedStores) -> Iterator[ThreadSpec]:
        """Pass 2: the groups of `store`, in key order, assembled into threads; then the reject file."""
        s = self.summary
        resolve = self.mapping.participants.resolver(store.roles_of if self.mapping.participants.uses_roles else None)
        assemble = Assembler(self.mapping, resolve, [src.file for src in self.sources])
        rejects: list[tuple[int, Reject]] = []
        next_tick = PROGRESS_EVERY
        for key, rows in store.groups():
            result = assemble(key, [decode(sent, data) for sent, _, data in rows])
            for item in result.rejects:
                self._reject(store, rejects, item)
            if result.spec is None:
                s.threads_all_rejected += 1
                continue
            s.threads += 1
            s.messages += len(result.spec.messages)
            if s.messages >= next_tick:
                next_tick += PROGRESS_EVERY
                self._tick("writing")
            yield result.spec
        store.add_rejects(rejects)
        if self.share is None:  # (a parallel run's process judges rows of all keys, assembles those of some)
            assert s.rows_read == s.messages + s.rejected + s.rows_other_shards, s
        if self.rejects_path is not None:
            columns = {src.index: src.columns for src in self.sources if src.format == "csv"}
            rejected = ((i, _with_columns(r, columns.get(i))) for i, r in store.rejects())
            if self.share is not None:
                _write_part_rejects(self.rejects_path, rejected)
            else:
                write_rejects(self.rejects_path, (r for _, r in rejected))
        s.seconds = time.perf_counter() - self._t0
        self._tick("done")


def _with_columns(reject: Reject, columns: tuple[str, ...] | None) -> Reject:
    """A CSV row shown as {column: value} when it has the header's width."""
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
    raises RowRejected instead. The returned stream's `summary` counts rows, messages, threads and
    rejects. Raises SpecError (with file:line) for a bad mapping or unreadable inputs, before any row.

        with iter_threads(["export.csv"], "mapping.yaml", rejects="rejects.jsonl") as threads:
            for spec in threads:
                bundle = build_bundle(spec)
    """
    return ThreadStream(inputs, mapping, shard=shard, strict=strict, rejects=rejects, work_dir=work_dir,
                        progress=progress)


# --- writing ---------------------------------------------------------------------------------------


def spec_yaml(spec: ThreadSpec) -> bytes:
    """A ThreadSpec as a YAML spec file (UTF-8), readable by `thread-bundler build`."""
    return dump_yaml(spec_data(spec))


def default_rejects(out: Path) -> Path:
    """Where rejects go when not given: beside the output, `<out>.rejects.jsonl`."""
    return out.with_name(out.name + ".rejects.jsonl")


def migrate(inputs: Sequence[str | Path], mapping: str | Path | MigrationMapping, *,
            to: Literal["specs", "ndjson"] = "specs", out: str | Path, shard: Shard | str | None = None,
            strict: bool = False, rejects: str | Path | None = None, work_dir: str | Path | None = None,
            progress: ProgressFn | None = None, identifier_system: str = DEFAULT_IDENTIFIER_SYSTEM,
            workers: int | None = None) -> MigrateSummary:
    """Migrate a legacy export: one YAML spec per thread into folder `out` (`to='specs'`), or one
    transaction Bundle per line into file `out` (`to='ndjson'`).

    Output appears only when the run completes (written aside, then moved in); rejects go to
    `rejects` (default `<out>.rejects.jsonl`). See `iter_threads` for the rest.

    `workers` processes (default: the CPU count, at most 4; 1 with `strict`): each judges and stores a
    share of the rows, then assembles one range of thread keys from every process's store; the ranges'
    outputs are joined in key order, so the result is the same bytes whatever the number of workers.

        summary = migrate(["export.csv"], "mapping.yaml", to="ndjson", out="bundles.ndjson")
        assert summary.rows_read == summary.messages + summary.rejected
    """
    out = Path(out)
    rejects = Path(rejects) if rejects is not None else default_rejects(out)
    if to not in ("specs", "ndjson"):
        raise ValueError(f"to must be 'specs' or 'ndjson', not {to!r}")
    if workers is None:
        workers = min(os.cpu_count() or 1, 4)
    if strict or workers <= 1:
        stream = iter_threads(inputs, mapping, shard=shard, strict=strict, rejects=rejects, work_dir=work_dir,
                              progress=progress)
        with stream:
            if to == "ndjson":
                _write_ndjson(stream, out, identifier_system)
            else:
                _write_specs(stream, out)
        stream.summary.output = out
        stream.summary.peak_rss = [_peak_rss()]
        return stream.summary
    return _migrate_parallel(inputs, mapping, to=to, out=out, shard=shard, rejects=rejects, work_dir=work_dir,
                             progress=progress, identifier_system=identifier_system, workers=workers)


def _write_bundles(threads: Iterator[ThreadSpec], f: BinaryIO, identifier_system: str) -> None:
    write = f.write
    for spec in threads:
        write(bundle_bytes(spec, identifier_system=identifier_system))
        write(b"\n")


def _write_ndjson(threads: Iterator[ThreadSpec], out: Path, identifier_system: str) -> None:
    with atomic_file(out, buffering=1 << 20) as f:
        _write_bundles(threads, f, identifier_system)


def _write_spec_files(threads: Iterator[ThreadSpec], staging: Path) -> None:
    for spec in threads:
        data = spec_data(spec)
        parse_spec(data, file=f"{spec.key}.yaml")  # insurance: what we write, `build` reads back
        (staging / f"{spec.key}.yaml").write_bytes(dump_yaml(data))


def _move_in(staging: Path, out: Path) -> None:
    with os.scandir(staging) as entries:
        for entry in entries:
            if entry.is_file():
                os.replace(entry.path, out / entry.name)


def _write_specs(threads: Iterator[ThreadSpec], out: Path) -> None:
    with staged_folder(out) as staging:
        _write_spec_files(threads, staging)


# --- parallel: every process loads a share of the rows, then assembles a range of thread keys -------
#
# Phase 1 (read, judge, store) is split by row: every process parses all the input (the CSV reader is C
# and must see every byte to know where rows begin) but judges and stores only rows k mod n, in a store
# of its own. Phase 2 is split by thread key: from the stored keys' samples, n-1 cuts; each process
# sorts and assembles the keys of its range from all the stores (read-only), into a part of the output.
# The parent is process 0, with the first range: it writes straight into the output and appends the
# other parts in order. Nothing is merged, and no row crosses a pipe: only samples, paths and summaries.


def _peak_rss() -> int:
    """This process's peak resident memory (VmHWM), in bytes (0 where /proc is not there)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


@dataclass(frozen=True)
class _Job:
    inputs: list[str]
    mapping: MigrationMapping
    to: str
    scratch: Path  # in the work dir: the stores and the part reject files
    staging: Path  # beside the output (same file system, so spec files move in): the NDJSON part files
    shard: Shard | None
    identifier_system: str
    workers: int

    def part(self, w: int) -> Path:
        """Worker w's NDJSON part file, or the staging folder that every worker writes spec files into."""
        return self.staging / f"part-{w}" if self.to == "ndjson" else self.staging

    def rejects(self, w: int) -> Path:
        return self.scratch / f"rejects-{w}"


Exchange = Callable[[Path, list[str]], tuple[list[Path], str | None, str | None]]
"""(own store, own key sample) → (every store, low and high end of own key range): the one meeting point."""


def _cuts(samples: Sequence[list[str]], n: int) -> list[str | None]:
    """n+1 range ends (None: open) that split the sampled keys into n parts of about equal rows. A key
    never straddles a cut (ranges are [lo, hi)), so a conversation's rows all land in one range."""
    keys = sorted(k for sample in samples for k in sample)
    inner: list[str | None] = [keys[len(keys) * i // n] if keys else "" for i in range(1, n)]
    return [None, *inner, None]


def _work(job: _Job, w: int, exchange: Exchange, progress: ProgressFn, out: BinaryIO | None = None
          ) -> MigrateSummary:
    """Process w of a parallel run: phase 1 on rows w mod n, then phase 2 on its key range, to `out`
    (the parent's output file) or its part file, with its rejects to a part file."""
    stream = ThreadStream(job.inputs, job.mapping, shard=job.shard, rejects=job.rejects(w), work_dir=job.scratch,
                          progress=progress, _share=(w, job.workers))
    store = GroupStore(job.scratch, threads=0)  # n processes already keep the cores busy: no sorter threads
    try:
        sample = stream._load(store)
    except BaseException:
        store.close()
        raise
    paths, lo, hi = exchange(store.seal(), sample)
    folder = job.scratch / f"read-{w}"
    folder.mkdir()
    reader = SealedStores(paths, w, lo, hi, folder)
    try:
        threads = stream._stream(reader)
        if job.to == "ndjson":
            if out is not None:
                _write_bundles(threads, out, job.identifier_system)
            else:
                with job.part(w).open("wb", buffering=1 << 20) as f:
                    _write_bundles(threads, f, job.identifier_system)
        else:
            _write_spec_files(threads, job.part(w))
    finally:
        reader.close()
    return stream.summary


def _child(job: _Job, w: int, conn: Connection, counters: Any) -> None:
    """A worker process: its phase 1, the exchange with the parent, its phase 2; failures to the parent."""
    def exchange(path: Path, sample: list[str]) -> tuple[list[Path], str | None, str | None]:
        conn.send(("loaded", path, sample))
        return conn.recv()  # type: ignore[no-any-return]

    try:
        summary = _work(job, w, exchange, _counting(counters, w))
        conn.send(("done", summary, _peak_rss()))
    except BaseException as exc:  # handed to the parent, which raises it
        try:
            conn.send(("failed", exc))
        except Exception:  # not picklable
            conn.send(("failed", BundlerError(f"migrate worker {w}: {exc!r}")))


def _counting(counters: Any, w: int, then: ProgressFn | None = None) -> ProgressFn:
    """Progress of process w into its slots of the shared counters (rows, messages, threads)."""
    def count(p: Progress) -> None:
        counters[3 * w], counters[3 * w + 1], counters[3 * w + 2] = p.rows, p.messages, p.threads
        if then is not None:
            then(p)
    return count


def _receive(w: int, conn: Connection, proc: Any, expect: str, tick: Callable[[], None]) -> tuple[Any, ...]:
    """The next message of worker w (raising what it raised, or if it died), ticking progress meanwhile."""
    while not conn.poll(0.25):
        tick()
        if not proc.is_alive() and not conn.poll():
            raise BundlerError(f"migrate worker {w} died (exit code {proc.exitcode})")
    try:
        message = conn.recv()
    except EOFError:
        proc.join()
        raise BundlerError(f"migrate worker {w} died (exit code {proc.exitcode})") from None
    if message[0] == "failed":
        raise message[1]
    assert message[0] == expect, message
    return message[1:]  # type: ignore[no-any-return]


def _write_part_rejects(path: Path, rejects: Iterator[tuple[int, Reject]]) -> None:
    with path.open("wb") as f:
        for i, r in rejects:
            f.write(orjson.dumps([i, r.row, r.line, r.file, r.reason, r.message, r.raw]) + b"\n")


def _part_rejects(path: Path) -> Iterator[tuple[int, int, Reject]]:
    with path.open("rb") as f:
        for line in f:
            i, row, ln, name, reason, message, raw = orjson.loads(line)
            yield i, row, Reject(name, row, ln, reason, message, raw)


def _append(out: BinaryIO, part: Path) -> None:
    """Copy `part` to the end of `out` (in the kernel where it can)."""
    out.flush()
    with part.open("rb") as src:
        size = os.fstat(src.fileno()).st_size
        try:
            while size > 0:
                copied = os.copy_file_range(src.fileno(), out.fileno(), size)
                if copied == 0:
                    break
                size -= copied
        except (AttributeError, OSError):
            src.seek(os.fstat(src.fileno()).st_size - size)
            out.seek(0, os.SEEK_END)
            shutil.copyfileobj(src, out, 1 << 20)
            return
    out.seek(0, os.SEEK_END)


def _combine(parts: list[MigrateSummary], rejects: Path, out: Path) -> MigrateSummary:
    summary = MigrateSummary(rejects_file=rejects, output=out)
    for part in parts:
        summary.rows_read += part.rows_read
        summary.rows_other_shards += part.rows_other_shards
        summary.messages += part.messages
        summary.threads += part.threads
        summary.threads_all_rejected += part.threads_all_rejected
        summary.rejects.update(part.rejects)
    assert summary.rows_read == summary.messages + summary.rejected + summary.rows_other_shards, summary
    return summary


def _migrate_parallel(inputs: Sequence[str | Path], mapping: str | Path | MigrationMapping, *, to: str, out: Path,
                      shard: Shard | str | None, rejects: Path, work_dir: str | Path | None,
                      progress: ProgressFn | None, identifier_system: str, workers: int) -> MigrateSummary:
    t0 = time.perf_counter()
    loaded = mapping if isinstance(mapping, MigrationMapping) else load_mapping(mapping)
    open_sources([str(p) for p in inputs], loaded)  # fail early, in this process, on missing files and columns
    if isinstance(shard, str):
        shard = Shard.parse(shard)
    out.parent.mkdir(parents=True, exist_ok=True)
    if to == "specs":
        out.mkdir(parents=True, exist_ok=True)
    if work_dir is not None:
        Path(work_dir).mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(dir=work_dir, prefix="thread-bundler-migrate-"))
    staging = Path(tempfile.mkdtemp(dir=out if to == "specs" else out.parent, prefix=f".{out.name}.migrate-"))
    ctx = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
    counters = ctx.Array("q", 3 * workers, lock=False)
    job = _Job([str(p) for p in inputs], loaded, to, scratch, staging, shard, identifier_system, workers)

    def tick(phase: Literal["reading", "writing", "done"] = "reading") -> None:
        if progress is not None:
            rows, messages, threads = (sum(counters[i::3]) for i in range(3))
            progress(Progress(phase, rows, messages, threads, time.perf_counter() - t0))

    pipes = [ctx.Pipe() for _ in range(1, workers)]
    procs = [ctx.Process(target=_child, args=(job, w, child_end, counters), daemon=True)
             for w, (_, child_end) in enumerate(pipes, 1)]
    try:
        for proc in procs:  # before this process grows: the children start small
            proc.start()
        for _, child_end in pipes:
            child_end.close()
        conns = [parent_end for parent_end, _ in pipes]
        children = list(enumerate(zip(conns, procs, strict=True), 1))
        rss: list[int] = []

        def exchange(path: Path, sample: list[str]) -> tuple[list[Path], str | None, str | None]:
            loaded = [_receive(w, conn, proc, "loaded", tick) for w, (conn, proc) in children]
            paths = [path, *(p for p, _ in loaded)]
            cuts = _cuts([sample, *(s for _, s in loaded)], workers)
            for w, conn in enumerate(conns, 1):
                conn.send((paths, cuts[w], cuts[w + 1]))
            return paths, cuts[0], cuts[1]

        def finish(write: BinaryIO | None) -> list[MigrateSummary]:
            # this process's part being done is not the run being done: only the end says "done"
            own = _counting(counters, 0, lambda p: tick("writing" if p.phase == "done" else p.phase))
            parts = [_work(job, 0, exchange, own, write)]
            for w, (conn, proc) in children:
                summary, peak = _receive(w, conn, proc, "done", tick)
                parts.append(summary)
                rss.append(peak)
                if write is not None:
                    _append(write, job.part(w))
                    job.part(w).unlink()
            return parts

        if to == "ndjson":
            with atomic_file(out, buffering=1 << 20) as f:
                parts = finish(f)
        else:
            parts = finish(None)
            _move_in(job.part(0), out)
        summary = _combine(parts, rejects, out)
        merged = heapq.merge(*(_part_rejects(job.rejects(w)) for w in range(workers)), key=lambda t: (t[0], t[1]))
        write_rejects(rejects, (r for _, _, r in merged))
        summary.peak_rss = [_peak_rss(), *rss]
        summary.seconds = time.perf_counter() - t0
        if progress is not None:
            progress(Progress("done", summary.rows_read, summary.messages, summary.threads, summary.seconds))
        return summary
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.terminate()
            proc.join()
        shutil.rmtree(scratch, ignore_errors=True)
        shutil.rmtree(staging, ignore_errors=True)
