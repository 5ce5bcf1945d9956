"""The migration run: read rows → group on disk → assemble threads → write specs or NDJSON bundles.

`iter_threads` is the stream of ThreadSpecs (for writers and the loader); `migrate` writes them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import heapq
import multiprocessing
import os
import pickle
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import orjson
import yaml

from ..build import DEFAULT_IDENTIFIER_SYSTEM, bundle_bytes
from ..errors import BundlerError
from ..spec import ThreadSpec, parse_spec
from .assemble import Assembler, spec_data
from .extract import F_SENDER, F_SENDER_ROLE, Extractor, RowError
from .grouping import TOMBSTONE, GroupStore
from .keys import thread_key
from .mapping import MigrationMapping, load_mapping
from .readers import open_sources, read_records
from .rejects import Reject, write_rejects

BATCH = 4_000
PROGRESS_EVERY = 50_000


class RowRejected(BundlerError):
    """`strict=True` and a row was rejected; `reject` says which and why."""

    def __init__(self, reject: Reject) -> None:
        self.reject = reject
        super().__init__(f"{reject} (--strict stops at the first rejected row)")


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
class _Split(Shard):
    """The share of one worker process: like Shard, on other bits of the hash (independent of --shard)."""

    def __contains__(self, conversation: str) -> bool:
        digest = hashlib.sha1(conversation.encode("utf-8", "surrogateescape")).digest()
        return int.from_bytes(digest[8:16], "big") % self.count == self.index


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
    peak_rss: list[int] = field(default_factory=list)  # bytes, per process (the workers')

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
                 _split: _Split | None = None) -> None:
        if rejects is None and not strict:
            raise ValueError("rejects (a .csv or .jsonl path) is required unless strict")
        self.mapping = mapping if isinstance(mapping, MigrationMapping) else load_mapping(mapping)
        self.sources = open_sources([str(p) for p in inputs], self.mapping)
        self.shard = Shard.parse(shard) if isinstance(shard, str) else shard
        self.strict = strict
        self.rejects_path = Path(rejects) if rejects is not None else None
        self.work_dir = work_dir
        self.progress = progress
        self.split = _split
        self.summary = MigrateSummary(rejects_file=self.rejects_path)
        self.rows_other_splits = 0  # rows another worker process of this run handles
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
            yield from self._stream(store)
        finally:
            store.close()
            self._store = None

    def _load(self, store: GroupStore) -> None:
        """Pass 1: every row read, judged alone, and stored by thread key (or rejected)."""
        s = self.summary
        shard = self.shard
        split = self.split
        first = (shard is None or shard.index == 0) and (split is None or split.index == 0)  # reports unreadables
        rejects: list[tuple[int, Reject]] = []
        batch: list[tuple[str, int, int, bytes]] = []
        roles: list[tuple[str, str]] = []
        with_roles = self.mapping.sender_role is not None
        dumps = orjson.dumps
        seq = 0
        next_tick = PROGRESS_EVERY
        for source in self.sources:
            extractor = Extractor(self.mapping, source)
            conversation, record = extractor.conversation, extractor.record
            name, index = source.file, source.index
            for rec in read_records(source, self.mapping):
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
                key = thread_key(conv)  # shards go by thread key: ids that meet in one key meet in one shard
                if shard is not None and key not in shard:
                    s.rows_other_shards += 1
                    continue
                if split is not None and key not in split:
                    self.rows_other_splits += 1
                    continue
                seq += 1
                try:
                    micros, data = record(values, conv, rec.row, rec.line, rec.raw)
                except RowError as exc:
                    self._reject(store, rejects, (index, Reject(name, rec.row, rec.line, exc.reason, str(exc),
                                                                rec.raw)))
                    # a tombstone, so that the conversation knows this id was rejected (for replies to it)
                    batch.append((key, TOMBSTONE, seq, dumps([conv, extractor.message_id(values)])))
                    continue
                batch.append((key, micros, seq, dumps(data)))
                if with_roles and data[F_SENDER_ROLE]:
                    roles.append((data[F_SENDER], data[F_SENDER_ROLE]))
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

    def _stream(self, store: GroupStore) -> Iterator[ThreadSpec]:
        self._load(store)
        self._tick("reading")
        s = self.summary
        resolve = self.mapping.participants.resolver(store.roles_of if self.mapping.participants.uses_roles else None)
        assemble = Assembler(self.mapping, resolve, [src.file for src in self.sources])
        loads = orjson.loads
        rejects: list[tuple[int, Reject]] = []
        next_tick = PROGRESS_EVERY
        for key, rows in store.groups():
            result = assemble(key, [loads(data) for _, _, data in rows])
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
        assert s.rows_read == s.messages + s.rejected + s.rows_other_shards + self.rows_other_splits, s
        if self.rejects_path is not None:
            columns = {src.index: src.columns for src in self.sources if src.format == "csv"}
            rejected = ((i, _with_columns(r, columns.get(i))) for i, r in store.rejects())
            if self.split is not None:
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


class _SpecDumper(yaml.CSafeDumper):  # type: ignore[misc,name-defined]
    pass


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value and value == value.strip() and "\r" not in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_SpecDumper.add_representer(str, _str)


def _yaml(data: dict[str, Any]) -> bytes:
    text = yaml.dump(data, Dumper=_SpecDumper, sort_keys=False, allow_unicode=True, width=120)
    return text.encode("utf-8")


def spec_yaml(spec: ThreadSpec) -> bytes:
    """A ThreadSpec as a YAML spec file (UTF-8), readable by `thread-bundler build`."""
    return _yaml(spec_data(spec))


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

    `workers` processes (default: the CPU count, at most 4; 1 with `strict`) each take a share of the
    conversations by hash; every one reads all the input, and their outputs are merged by thread key,
    so the result is the same bytes whatever the number of workers.

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


def _write_ndjson(threads: Iterator[ThreadSpec], out: Path, identifier_system: str) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb", buffering=1 << 20) as f:
            write = f.write
            for spec in threads:
                write(bundle_bytes(spec, identifier_system=identifier_system))
                write(b"\n")
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write_spec_files(threads: Iterator[ThreadSpec], staging: Path) -> None:
    for spec in threads:
        data = spec_data(spec)
        parse_spec(data, file=f"{spec.key}.yaml")  # insurance: what we write, `build` reads back
        (staging / f"{spec.key}.yaml").write_bytes(_yaml(data))


def _move_in(staging: Path, out: Path) -> None:
    with os.scandir(staging) as entries:
        for entry in entries:
            if entry.is_file():
                os.replace(entry.path, out / entry.name)


def _write_specs(threads: Iterator[ThreadSpec], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out, prefix=".migrate-"))
    try:
        _write_spec_files(threads, staging)
        _move_in(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# --- parallel: worker processes, each a share of the conversations, merged by thread key ------------


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
    part: Path  # NDJSON part file, or staging folder for specs
    rejects: Path
    shard: Shard | None
    split: _Split
    work_dir: str | Path | None
    identifier_system: str


def _work(job: _Job, counter: Any) -> tuple[MigrateSummary, int]:
    """One worker: its share of the conversations, to a part file ('key<TAB>bundle' lines) or spec files."""
    def count(p: Progress) -> None:
        counter.value = p.rows

    stream = ThreadStream(job.inputs, job.mapping, shard=job.shard, rejects=job.rejects, work_dir=job.work_dir,
                          progress=count, _split=job.split)
    with stream:
        if job.to == "ndjson":
            with job.part.open("wb", buffering=1 << 20) as f:
                write = f.write
                for spec in stream:
                    write(spec.key.encode() + b"\t" + bundle_bytes(spec, identifier_system=job.identifier_system)
                          + b"\n")
        else:
            _write_spec_files(stream, job.part)
    stream.summary.seconds = 0.0
    return stream.summary, _peak_rss()


def _work_process(job: _Job, counter: Any, result: Path) -> None:
    try:
        outcome: tuple[bool, Any] = (True, _work(job, counter))
    except BaseException as exc:  # handed to the parent, which raises it
        outcome = (False, exc)
    result.write_bytes(pickle.dumps(outcome))


def _write_part_rejects(path: Path, rejects: Iterator[tuple[int, Reject]]) -> None:
    with path.open("wb") as f:
        for i, r in rejects:
            f.write(orjson.dumps([i, r.row, r.line, r.file, r.reason, r.message, r.raw]) + b"\n")


def _part_rejects(path: Path) -> Iterator[tuple[int, int, Reject]]:
    with path.open("rb") as f:
        for line in f:
            i, row, ln, name, reason, message, raw = orjson.loads(line)
            yield i, row, Reject(name, row, ln, reason, message, raw)


def _part_lines(path: Path) -> Iterator[tuple[bytes, bytes]]:
    with path.open("rb", buffering=1 << 20) as f:
        for line in f:
            key, _, bundle = line.partition(b"\t")
            yield key, bundle


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
    scratch = Path(tempfile.mkdtemp(dir=out if to == "specs" else out.parent, prefix=f".{out.name}.migrate-"))
    ctx = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
    counters = [ctx.Value("q", 0, lock=False) for _ in range(workers)]
    try:
        jobs = [_Job([str(p) for p in inputs], loaded, to, scratch / (f"part-{w}" if to == "ndjson" else "specs"),
                     scratch / f"rejects-{w}", shard, _Split(w, workers), work_dir, identifier_system)
                for w in range(workers)]
        if to == "specs":
            jobs[0].part.mkdir()
        procs = [ctx.Process(target=_work_process, args=(job, counter, scratch / f"result-{w}"), daemon=True)
                 for w, (job, counter) in enumerate(zip(jobs, counters, strict=True))]
        try:
            for proc in procs:
                proc.start()
            while any(proc.is_alive() for proc in procs):
                for proc in procs:
                    proc.join(0.25)
                if progress is not None:
                    rows = min(c.value for c in counters)
                    progress(Progress("reading", rows, 0, 0, time.perf_counter() - t0))
        finally:
            for proc in procs:
                if proc.is_alive():
                    proc.terminate()
                proc.join()
        results = []
        for w, proc in enumerate(procs):
            result = scratch / f"result-{w}"
            if not result.exists():
                raise BundlerError(f"migrate worker {w} died (exit code {proc.exitcode})")
            ok, value = pickle.loads(result.read_bytes())
            if not ok:
                raise value
            results.append(value)
        summary = MigrateSummary(rejects_file=rejects, output=out)
        summary.rows_read = results[0][0].rows_read
        summary.rows_other_shards = results[0][0].rows_other_shards
        for part, rss in results:
            summary.messages += part.messages
            summary.threads += part.threads
            summary.threads_all_rejected += part.threads_all_rejected
            summary.rejects.update(part.rejects)
            summary.peak_rss.append(rss)
        assert summary.rows_read == summary.messages + summary.rejected + summary.rows_other_shards, summary
        merged = heapq.merge(*(_part_rejects(job.rejects) for job in jobs), key=lambda t: (t[0], t[1]))
        write_rejects(rejects, (r for _, _, r in merged))
        if to == "ndjson":
            fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
            try:
                with os.fdopen(fd, "wb", buffering=1 << 20) as f:
                    write = f.write
                    for _, bundle in heapq.merge(*(_part_lines(job.part) for job in jobs), key=lambda t: t[0]):
                        write(bundle)
                os.replace(tmp, out)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        else:
            _move_in(jobs[0].part, out)
        summary.seconds = time.perf_counter() - t0
        if progress is not None:
            progress(Progress("done", summary.rows_read, summary.messages, summary.threads, summary.seconds))
        return summary
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
