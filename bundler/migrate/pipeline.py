"""The migration run: read rows → group on disk → assemble threads → write specs or NDJSON bundles.

`iter_threads` is the stream of ThreadSpecs (for writers and the loader); `migrate` writes them, in one
process or, by default, in several (see "parallel" below).
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import heapq
import multiprocessing
import os
import shutil
import signal
import struct
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal, TypeVar

import orjson

from ..build import DEFAULT_IDENTIFIER_SYSTEM, bundle_bytes
from ..errors import BundlerError
from ..files import TEMP_PREFIX, atomic_file, held_folder, remove_leftovers, staged_folder, write_atomic
from ..spec.dump import dump_yaml
from ..spec.model import ThreadSpec, parse_spec
from ..spec.participants import ParticipantsFile, read_participants
from ..vocabulary import READ_MODELS
from .grouping import SCRATCH_PREFIX, GroupStore, SealedStores, max_stores
from .mapping import MigrationMapping, load_mapping
from .readers import prepare
from .rejects import Reject, write_rejects
from .report import summary_json
from .stream import (
    MigrateSummary,
    Phase,
    Progress,
    ProgressFn,
    RowRejected,
    Shard,
    ThreadStream,
    iter_threads,
    peak_rss,
)

if TYPE_CHECKING:
    from ..load.report import LoadWatcher
    from ..medplum.client import FhirClient

__all__ = [
    "START_METHOD",
    "MigrateSummary",
    "Progress",
    "ProgressFn",
    "RowRejected",
    "Shard",
    "Stopped",
    "ThreadStream",
    "default_rejects",
    "iter_threads",
    "migrate",
    "spec_yaml",
]

# --- writing ---------------------------------------------------------------------------------------


def spec_yaml(spec: ThreadSpec) -> bytes:
    """A ThreadSpec as a YAML spec file (UTF-8), readable by `thread-bundler build`."""
    return dump_yaml(spec.to_data())


def default_rejects(out: Path) -> Path:
    """Where rejects go when not given: beside the output, `<out>.rejects.jsonl`."""
    return out.with_name(out.name + ".rejects.jsonl")


def migrate(inputs: Sequence[str | Path], mapping: str | Path | MigrationMapping, *,
            to: Literal["specs", "ndjson", "load"] = "specs", out: str | Path | None = None,
            client: FhirClient | None = None, shard: Shard | str | None = None, strict: bool = False,
            rejects: str | Path | None = None, summary: str | Path | None = None, work_dir: str | Path | None = None,
            progress: ProgressFn | None = None, identifier_system: str = DEFAULT_IDENTIFIER_SYSTEM,
            read_model: str | None = None, participants: str | Path | ParticipantsFile | None = None,
            workers: int | None = None, **load_options: Any) -> MigrateSummary:
    """Migrate a legacy export: one YAML spec per thread into folder `out` (`to='specs'`), one transaction
    Bundle per line into file `out` (`to='ndjson'`), or the threads loaded into the server behind `client`
    (`to='load'`, with `load_options`: every argument of `bundler.load.load`, such as `journal` (default
    `<first input>.journal.sqlite`), `update`, `dry_run`, `report`, `watcher`). What `thread-bundler migrate`
    does, option for option (`--to specs DIR` is `to="specs", out=DIR`; `--load` is `to="load"`).

    Output appears only when the run completes (written aside, then moved in); rejects go to
    `rejects` (default `<out>.rejects.jsonl`; loading, `<first input>.rejects.jsonl`), and the summary as
    JSON to `summary` (for `combine`) when given. `read_model` overrides the mapping's `thread.read_model`.
    `participants`: a participants file (as `load` takes) whose entries, keyed by the alias the migration makes of
    each legacy user id (`tel-17735550123` for `+17735550123`; the id itself when it is an alias already),
    come before the mapping's table and rules: with `create`, `load` creates them
    when missing. See `iter_threads` for the rest.

    `workers` processes (default: the CPU count, at most 4; 1 with `strict` or `to='load'`; at most as many
    as SQLite can read together, 10): each judges and stores a share of the rows, then assembles one range of
    thread keys from every process's store; the ranges' outputs are joined in key order, so the result
    is the same bytes whatever the number of workers. A worker that fails or dies fails the run
    (BundlerError), and nothing is written.

        summary = migrate(["export.csv"], "mapping.yaml", to="ndjson", out="bundles.ndjson")
        assert summary.accounted  # rows_read == messages + rejected + skipped + rows_other_shards
        summary = migrate(["export.csv"], "mapping.yaml", to="load", client=client, update=True)
        assert summary.load is not None and summary.load.ok
    """
    if to not in ("specs", "ndjson", "load"):
        raise ValueError(f"to must be 'specs', 'ndjson' or 'load', not {to!r}")
    if (out is None) != (to == "load"):
        raise BundlerError("give out= to write specs or ndjson, and not when loading (to='load')")
    if to != "load" and load_options:
        raise BundlerError(f"{', '.join(sorted(load_options))}: options of to='load' only")
    mapping = _with_participants(_with_read_model(mapping, read_model), participants)
    where = (Shard.parse(shard) if isinstance(shard, str) else shard)
    if to == "load":
        if client is None:
            raise BundlerError("to='load' needs a client")
        done = _migrate_load(inputs, mapping, client, shard=where, strict=strict,
                             rejects=Path(rejects) if rejects is not None else default_rejects(Path(inputs[0])),
                             work_dir=work_dir, progress=progress, identifier_system=identifier_system,
                             load_options=load_options)
    else:
        assert out is not None
        done = _migrate_files(inputs, mapping, to=to, out=Path(out), shard=where, strict=strict,
                              rejects=Path(rejects) if rejects is not None else default_rejects(Path(out)),
                              work_dir=work_dir, progress=progress, identifier_system=identifier_system,
                              workers=workers)
    if summary is not None:
        data = summary_json(done, shard=(where.index, where.count) if where is not None else None,
                            load_ok=done.load is None or done.load.ok)
        write_atomic(Path(summary), orjson.dumps(data, option=orjson.OPT_INDENT_2))
    return done


def _with_read_model(mapping: str | Path | MigrationMapping, read_model: str | None) -> str | Path | MigrationMapping:
    """The mapping, or with `read_model` a copy of it with that read model (it overrides `thread.read_model`)."""
    if read_model is None:
        return mapping
    if read_model not in READ_MODELS:
        raise BundlerError(f"read_model must be one of {', '.join(READ_MODELS)}, not {read_model!r}")
    loaded = mapping if isinstance(mapping, MigrationMapping) else load_mapping(mapping)
    return dataclasses.replace(loaded, read_model=read_model)


def _with_participants(mapping: str | Path | MigrationMapping, participants: str | Path | ParticipantsFile | None
                       ) -> str | Path | MigrationMapping:
    """The mapping, or with a participants file a copy of it whose participants come from that file first."""
    if participants is None:
        return mapping
    shared = read_participants(participants)
    loaded = mapping if isinstance(mapping, MigrationMapping) else load_mapping(mapping)
    return dataclasses.replace(loaded, participants=loaded.participants.with_file(shared))


def _migrate_load(inputs: Sequence[str | Path], mapping: str | Path | MigrationMapping, client: FhirClient, *,
                  shard: Shard | None, strict: bool, rejects: Path, work_dir: str | Path | None,
                  progress: ProgressFn | None, identifier_system: str, load_options: dict[str, Any]) -> MigrateSummary:
    """The threads streamed (one process) into `bundler.load.load`; the watcher's `on_start` is told the totals
    the stream counted before its first thread. (`load` is imported here: the worker processes of a migration to
    files never need the client.)"""
    from ..load.inputs import default_journal
    from ..load.loader import load

    journal = load_options.pop("journal", None) or default_journal(inputs)
    with iter_threads(inputs, mapping, shard=shard, strict=strict, rejects=rejects, work_dir=work_dir,
                      progress=progress) as stream:
        totals = stream.start()
        watcher = _with_totals(load_options.pop("watcher", None), totals)
        report = load(stream, client, journal=journal, identifier_system=identifier_system, watcher=watcher,
                      **load_options)
    done = stream.summary
    done.loaded = dict(report.messages)
    done.load = report
    return done


def _with_totals(watcher: LoadWatcher | None, totals: tuple[int, int]) -> LoadWatcher | None:
    """`watcher`, its `on_start` told (threads, messages) counted by the stream instead of None (a stream's
    length is unknown to `load`)."""
    if watcher is None or watcher.on_start is None:
        return watcher
    start = watcher.on_start

    def on_start(threads: int | None, messages: int | None) -> None:
        start(totals[0] if threads is None else threads, totals[1] if messages is None else messages)

    return dataclasses.replace(watcher, on_start=on_start)


def _migrate_files(inputs: Sequence[str | Path], mapping: str | Path | MigrationMapping, *,
                   to: Literal["specs", "ndjson"], out: Path, shard: Shard | None, strict: bool, rejects: Path,
                   work_dir: str | Path | None, progress: ProgressFn | None, identifier_system: str,
                   workers: int | None) -> MigrateSummary:
    if workers is None:
        workers = min(os.cpu_count() or 1, 4)
    workers = min(workers, max_stores())
    if strict or workers <= 1:
        # no origins: the writers do not name a spec's lines (as in a parallel run)
        stream = ThreadStream(inputs, mapping, shard=shard, strict=strict, rejects=rejects, work_dir=work_dir,
                              progress=progress, origins=False)
        with stream:
            if to == "ndjson":
                _write_ndjson(stream, out, identifier_system)
            else:
                _write_specs(stream, out)
        stream.summary.output = out
        stream.summary.peak_rss = [peak_rss()]
        return stream.summary
    return _migrate_parallel(inputs, mapping, to=to, out=out, shard=shard, rejects=rejects, work_dir=work_dir,
                             progress=progress, identifier_system=identifier_system, workers=workers)


def _write_bundles(threads: Iterator[ThreadSpec], f: IO[bytes], identifier_system: str) -> None:
    write = f.write
    for spec in threads:
        write(bundle_bytes(spec, identifier_system=identifier_system))
        write(b"\n")


def _write_ndjson(threads: Iterator[ThreadSpec], out: Path, identifier_system: str) -> None:
    remove_leftovers(out.parent, f"{TEMP_PREFIX}{out.name}.")
    with atomic_file(out, buffering=1 << 20) as f:
        _write_bundles(threads, f, identifier_system)


def _same_file(path: Path, data: bytes) -> bool:
    """Whether `path` holds exactly `data` (its size first: most changed files differ in size)."""
    try:
        return path.stat().st_size == len(data) and path.read_bytes() == data
    except OSError:
        return False


def _write_spec_files(threads: Iterator[ThreadSpec], staging: Path, out: Path) -> None:
    """Each spec into `staging`, unless `out` has its file with these very bytes already: a re-run over a
    grown export touches only the files of threads that changed."""
    for spec in threads:
        data = spec.to_data()
        parse_spec(data, file=f"{spec.key}.yaml")  # insurance: what we write, `build` reads back
        name = f"{spec.key}.yaml"
        text = dump_yaml(data)
        if not _same_file(out / name, text):
            (staging / name).write_bytes(text)


def _write_specs(threads: Iterator[ThreadSpec], out: Path) -> None:
    with staged_folder(out) as staging:
        _write_spec_files(threads, staging, out)


# --- parallel: every process loads a share of the rows, then assembles a range of thread keys -------
#
# Step 1 (read, judge, store) is split by row: every process parses all the input (the CSV reader is C
# and must see every byte to know where rows begin) but judges and stores only rows k mod n, in a store
# of its own. Step 2 is split by thread key: from the stored keys' samples, n-1 cuts; each process sorts
# and assembles the keys of its range from all the stores (read-only), into a part of the output.
#
# The processes are this one (share 0, and the first key range, written straight into the output) and
# a standard process pool of n-1 (START_METHOD; every task and its arguments are picklable, so any start
# method works). Each step is one task per share; the parent waits for them, cuts, submits the second
# step, and appends the other parts in order. No row crosses a process boundary: only paths, key
# samples and summaries. Progress goes through a small file (`_Board`), which also tells the pool to
# stop early when the run fails.

START_METHOD = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
"""How the pool's processes start: fork where there is fork (fast; they start small, before this
process loads anything), else spawn."""

T = TypeVar("T")


class Stopped(BundlerError):
    """A worker was told to stop: another process of its migration failed."""


_COUNTS = struct.Struct("<3q")  # per process: rows read, messages, threads
_INT = struct.Struct("<q")  # the stop flag, and each count


@dataclass(frozen=True)
class _Board:
    """The progress of a parallel run, in a small file: a stop flag, then a slot per process. Each process
    writes its slot as it reports progress (and stops if the flag is up); the parent adds the slots up."""

    path: Path
    workers: int

    @classmethod
    def create(cls, folder: Path, workers: int) -> _Board:
        path = folder / "progress"
        path.write_bytes(bytes(_INT.size + _COUNTS.size * workers))
        return cls(path, workers)

    def reporter(self, w: int) -> _Reporter:
        return _Reporter(self.path, _INT.size + _COUNTS.size * w)

    def totals(self) -> tuple[int, int, int]:
        data = self.path.read_bytes()
        rows = messages = threads = 0
        for offset in range(_INT.size, len(data) - _COUNTS.size + 1, _COUNTS.size):
            r, m, t = _COUNTS.unpack_from(data, offset)
            rows, messages, threads = rows + r, messages + m, threads + t
        return rows, messages, threads

    def stop(self) -> None:
        with self.path.open("r+b") as f:
            f.write(_INT.pack(1))


@dataclass(frozen=True)
class _Reporter:
    """A ProgressFn writing one process's slot of the board: rows while reading, then messages, threads."""

    path: Path
    offset: int

    def __call__(self, p: Progress) -> None:
        fd = os.open(self.path, os.O_RDWR)
        try:
            if p.phase == "reading":
                os.pwrite(fd, _INT.pack(p.rows), self.offset)
            else:
                os.pwrite(fd, _INT.pack(p.messages) + _INT.pack(p.threads), self.offset + _INT.size)
            flag = os.pread(fd, _INT.size, 0)
        finally:
            os.close(fd)
        if flag != bytes(_INT.size):
            raise Stopped("stopped: another process of this migration failed")


@dataclass(frozen=True)
class _Job:
    """What every task of a parallel run needs (picklable)."""

    inputs: list[str]
    mapping: MigrationMapping
    to: str
    scratch: Path  # in the work dir: the stores, the part reject files, the board
    shard: Shard | None
    identifier_system: str
    workers: int
    board: _Board
    out: Path

    def stream(self, w: int, progress: ProgressFn | None) -> ThreadStream:
        return ThreadStream(self.inputs, self.mapping, shard=self.shard, rejects=self.rejects(w),
                            progress=progress or self.board.reporter(w), origins=False)

    def rejects(self, w: int) -> Path:
        """Process w's rejects, merged by the parent (see _write_part_rejects)."""
        return self.scratch / f"rejects-{w}"


@dataclass(frozen=True)
class _Done:
    """A task's result: what its step did, and the memory of the process that ran it."""

    summary: MigrateSummary
    pid: int
    peak_rss: int
    store: Path | None = None  # step 1: the sealed store
    sample: list[str] | None = None  # step 1: the key sample


def _load_share(job: _Job, w: int, progress: ProgressFn | None = None) -> _Done:
    """Step 1 of process w: rows w mod n judged and stored in a store of its own, sealed."""
    stream = job.stream(w, progress)
    store = GroupStore(job.scratch, threads=0, held=False)  # (the scratch is held); no sorter threads: n
    # processes already keep the cores busy
    try:
        sample = stream.load_rows(store, share=(w, job.workers))
    except BaseException:
        store.close()
        raise
    return _Done(stream.summary, os.getpid(), peak_rss(), store.seal(), sample)


def _assemble_range(job: _Job, w: int, stores: list[Path], lo: str | None, hi: str | None, parts: Path,
                    out: IO[bytes] | None = None, progress: ProgressFn | None = None) -> _Done:
    """Step 2 of process w: the keys in [lo, hi) of every store, assembled into `out` (NDJSON), its part
    file in `parts` (NDJSON) or spec files in `parts`; its rejects (and its store's) to its part file."""
    stream = job.stream(w, progress)
    folder = job.scratch / f"read-{w}"
    folder.mkdir()
    reader = SealedStores(stores, w, lo, hi, folder)
    try:
        threads = stream.threads_from(reader)
        if job.to == "ndjson":
            if out is not None:
                _write_bundles(threads, out, job.identifier_system)
            else:
                with (parts / f"part-{w}").open("wb", buffering=1 << 20) as f:
                    _write_bundles(threads, f, job.identifier_system)
        else:
            _write_spec_files(threads, parts, job.out)
        _write_part_rejects(job.rejects(w), stream.rejects_from(reader))
    finally:
        reader.close()
    return _Done(stream.summary, os.getpid(), peak_rss())


def _write_part_rejects(path: Path, rejects: Iterable[tuple[int, Reject]]) -> None:
    with path.open("wb") as f:
        for i, r in rejects:
            f.write(orjson.dumps([i, r.row, r.line, r.file, r.reason, r.message, r.raw, r.severity]) + b"\n")


def _part_rejects(path: Path) -> Iterator[tuple[int, int, Reject]]:
    with path.open("rb") as f:
        for line in f:
            i, row, ln, name, reason, message, raw, severity = orjson.loads(line)
            yield i, row, Reject(name, row, ln, reason, message, raw, severity)


def _cuts(samples: Sequence[list[str]], n: int) -> list[str | None]:
    """n+1 range ends (None: open) that split the sampled keys into n parts of about equal rows. A key
    never straddles a cut (ranges are [lo, hi)), so a conversation's rows all land in one range."""
    keys = sorted(k for sample in samples for k in sample)
    inner: list[str | None] = [keys[len(keys) * i // n] if keys else "" for i in range(1, n)]
    return [None, *inner, None]


def _result(future: Future[T], w: int) -> T:
    """A task's result, or the run's failure: what it raised if ours, else a BundlerError naming it."""
    try:
        return future.result()
    except BrokenProcessPool:
        raise BundlerError("a migrate worker process died (killed, or out of memory?); nothing was written"
                           ) from None
    except BundlerError:
        raise
    except Exception as exc:
        raise BundlerError(f"migrate worker {w} failed: {type(exc).__name__}: {exc}") from exc


def _raise_failed(futures: Sequence[Future[T]]) -> None:
    """Raise the failure of the first task that failed already, if any (without waiting)."""
    for w, future in enumerate(futures, 1):
        if future.done() and (future.cancelled() or future.exception() is not None):
            _result(future, w)


def _gather(futures: Sequence[Future[T]], tick: Callable[[], None]) -> list[T]:
    """Every task's result in order, ticking progress while waiting; the first failure as soon as it comes."""
    pending = set(futures)
    while pending:
        _, pending = wait(pending, timeout=0.5, return_when=FIRST_EXCEPTION)
        _raise_failed(futures)
        tick()
    return [_result(f, w) for w, f in enumerate(futures, 1)]


@contextmanager
def _pool(job: _Job) -> Iterator[ProcessPoolExecutor]:
    """The n-1 worker processes; on any failure they are told to stop and waited for (within seconds:
    they look at the board each time they report progress), so that nothing of them outlives the run."""
    pool = ProcessPoolExecutor(job.workers - 1, mp_context=multiprocessing.get_context(START_METHOD),
                               initializer=die_with_parent, initargs=(os.getpid(),))
    try:
        yield pool
    except BaseException:
        _stop(pool, job)
        raise
    pool.shutdown(wait=True)


_PR_SET_PDEATHSIG = 1  # linux/prctl.h
WATCH_SECONDS = 0.5
"""How often a worker looks whether its parent is still there (where the kernel cannot tell it)."""


def die_with_parent(parent: int) -> None:
    """A pool worker's first step: end when the process that started it ends, even by kill -9, rather than
    wait forever for work that will not come. On Linux the kernel sends SIGKILL (PR_SET_PDEATHSIG);
    everywhere a watchdog thread also looks for the parent every WATCH_SECONDS."""
    if sys.platform == "linux":
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # it ended before the kernel was told
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(WATCH_SECONDS)
        os._exit(1)
    threading.Thread(target=watch, name="die-with-parent", daemon=True).start()


def _stop(pool: ProcessPoolExecutor, job: _Job) -> None:
    job.board.stop()
    pool.shutdown(wait=True, cancel_futures=True)


@contextmanager
def _output(to: str, out: Path) -> Iterator[tuple[IO[bytes] | None, Path]]:
    """(the output file, the folder of parts) for NDJSON; (None, the staging folder) for specs. Nothing
    appears at `out` unless the block ends without an error."""
    if to == "ndjson":
        remove_leftovers(out.parent, f"{TEMP_PREFIX}{out.name}.")  # what a killed run left beside it
        with atomic_file(out, buffering=1 << 20) as f:
            parts = Path(tempfile.mkdtemp(dir=out.parent, prefix=f"{TEMP_PREFIX}{out.name}.parts-"))
            try:
                yield f, parts
            finally:
                shutil.rmtree(parts, ignore_errors=True)
    else:
        with staged_folder(out) as staging:
            yield None, staging


def _append(out: IO[bytes], part: Path) -> None:
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


def _migrate_parallel(inputs: Sequence[str | Path], mapping: str | Path | MigrationMapping, *, to: str, out: Path,
                      shard: Shard | str | None, rejects: Path, work_dir: str | Path | None,
                      progress: ProgressFn | None, identifier_system: str, workers: int) -> MigrateSummary:
    t0 = time.perf_counter()
    loaded, _ = prepare(inputs, mapping)  # fail early, in this process, on a bad mapping and inputs (all at once)
    if isinstance(shard, str):
        shard = Shard.parse(shard)
    scratch, held = held_folder(SCRATCH_PREFIX, work_dir)  # (what killed runs left there goes first)
    try:
        job = _Job([str(p) for p in inputs], loaded, to, scratch, shard, identifier_system, workers,
                   _Board.create(scratch, workers), out)
        summary = _run(job, out, rejects, progress, t0)
    finally:
        os.close(held)
        shutil.rmtree(scratch, ignore_errors=True)
    summary.seconds = time.perf_counter() - t0
    if progress is not None:
        progress(Progress("done", summary.rows_read, summary.messages, summary.threads, summary.seconds))
    return summary


def _run(job: _Job, out: Path, rejects: Path, progress: ProgressFn | None, t0: float) -> MigrateSummary:
    n = job.workers

    def tick(phase: Phase) -> None:
        if progress is not None:
            rows, messages, threads = job.board.totals()
            progress(Progress(phase, rows, messages, threads, time.perf_counter() - t0))

    def own(phase: Phase, others: Sequence[Future[_Done]]) -> ProgressFn:
        """This process's progress: into its slot, then the whole run's line; a failed worker stops it."""
        report = job.board.reporter(0)

        def own_progress(p: Progress) -> None:
            report(p)
            _raise_failed(others)
            tick(phase)
        return own_progress

    with _pool(job) as pool:
        # the pool's processes start (fork) at the first submit: before this process grows
        loading = [pool.submit(_load_share, job, w) for w in range(1, n)]
        steps = [_load_share(job, 0, own("reading", loading))]
        steps += _gather(loading, lambda: tick("reading"))
        stores = [step.store for step in steps if step.store is not None]
        cuts = _cuts([step.sample or [] for step in steps], n)
        with _output(job.to, out) as (f, parts):
            try:
                assembling = [pool.submit(_assemble_range, job, w, stores, cuts[w], cuts[w + 1], parts)
                              for w in range(1, n)]
                mine = _assemble_range(job, 0, stores, cuts[0], cuts[1], parts, f, own("writing", assembling))
                steps += [mine, *_gather(assembling, lambda: tick("writing"))]
                if f is not None:
                    for w in range(1, n):
                        _append(f, parts / f"part-{w}")
                        (parts / f"part-{w}").unlink()
                merged = heapq.merge(*(_part_rejects(job.rejects(w)) for w in range(n)), key=lambda t: (t[0], t[1]))
                write_rejects(rejects, (r for _, _, r in merged))
            except BaseException:
                _stop(pool, job)  # before the output's temporary files go: no worker still writes them
                raise
    summary = MigrateSummary(rejects_file=rejects, output=out)
    peaks: dict[int, int] = {}
    for step in steps:
        summary.add(step.summary)
        if step.pid != os.getpid():
            peaks[step.pid] = max(peaks.get(step.pid, 0), step.peak_rss)
    assert summary.accounted, summary
    summary.peak_rss = [peak_rss(), *peaks.values()]
    return summary
