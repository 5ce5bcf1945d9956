"""Loader throughput against a Medplum server, beside a bare ceiling and the walkthrough's one-POST-per-resource way.

    python bench/load.py                       # 1,000 threads of 1 header + 10 messages, local server
    python bench/load.py --markdown            # the same as Markdown tables, for README.md
    python bench/load.py --quick               # a smoke run in seconds

Starts a local Medplum server (`bundler.medplum.localserver.LocalServer`) unless MEDPLUM_BASE_URL,
MEDPLUM_CLIENT_ID and MEDPLUM_CLIENT_SECRET are all set; then it measures that server's project (the choice is
`common.open_target`'s). Each mode loads threads of its own (keys with a per-run, per-mode prefix: a remote store
is never emptied, so every run leaves its resources there); the local store is also emptied before each mode. A
warm-up posts bundles for `--warm-up` seconds first (Node's JIT; a real server's pools and caches). The quota,
filled-server and memory runs are local only: a remote project's quota is its own, and its store holds
whatever it holds. The CPU columns count the server's processes when they run on this machine, found by the
port they listen on: a real Medplum's Node process and the Postgres and Redis it is connected to, with their
children (Postgres's backends); "-" for a server elsewhere.

Modes, on the same threads (`sample_specs`, deterministic by seed; each mode's under its own prefix):
1. `load`: `bundler.load.load` with its defaults (concurrency auto, a fresh journal in a temp dir), wall
   time including the bundles' build, its pre-check searches and its atomicity probe;
2. ceiling: a bare loop posting the same transaction bundles (`bundle_bytes`, built beforehand) with
   httpx, one bearer token, 4 threads (what `load` defaulted to before `auto`), no checks but the status (with
   `--repeat`, the ceiling and `load` take turns going first);
3. per resource: one POST per Communication in sequence, as the walkthrough does: the header, then each
   message with `partOf` → `Communication/<header id>` and `inResponseTo` → the replied message's id
   (on a subset of the threads: its rate is what matters);
4. quota (local only): `load` with the server's quota on (`--quota-points` per `--quota-window` s) on
   enough threads for about `--quota-seconds` s; points are counted as the server charges them (100 per
   created entry, 20 per search) from the first request to the last, 429s by the transport.

5. strict: `load(..., exactly_once="strict")` on the same threads: every entry a conditional create, 8 to a
   request; its cost against the default mode in throughput and in quota points (a conditional create is
   charged a search and a write);
6. a filled server (`--filled N`, local only; `--filled-only`: alone): the same `load`, and the command
   (`load DIR`), into a server that already holds N
   Communications (posted beforehand as bare bundles), against the rate into the empty one;
7. memory (`--memory`, local only): a fresh process loads a stream of threads (1 header + 10 messages) of
   100,000 and of 1,000,000 messages; its peak resident memory, from the kernel (VmHWM). The library fed a
   generator: the commands on folders of spec files (`thread-bundler load DIR`, verify, validate, build) are
   measured by `bench/memory.py`, beside the same calls through the library on the same files;
8. the check (`--check-cost`): the same `load` with its check for copies another load made patched out (it sends
   nothing and finds none), in each round beside `load`: what the check costs in requests, quota points, time;
9. the concurrency sweep (`--sweep`, alone): `thread-bundler load DIR --concurrency N` for N in 1/2/4/8/16 and auto,
   each in its own process on spec files (JSON arrays of 100 threads) as a user runs it, beside the library path
   (`load(..., concurrency=N)`) and the bare loop at each N; auto against the best fixed setting and against the
   bare loop at its best. With `--rtt-ms` every mode goes through a delaying TCP proxy (`delayproxy.py`, its own
   process), since the command's requests cannot be delayed by this process's transport;
10. one long run (`--same-run N`, alone, local or remote): one command loading N threads in files of 1,000, its
   journal sampled: the rate from 10% to 30% of the threads in against 70% to 90%, whatever grows as the run goes
   on (the server's store, the journal, the client's sets) showing as a late rate below the early one.

Targets: load ≥ 80% of the ceiling and ≥ 10× per resource; under quota, within 10% of the quota rate
and no 429; into a server holding 200,000 Communications, and late in one long run, ≥ 90% of the rate into an
empty one (early in the run); auto within 5% of the best fixed concurrency and ≥ 0.9× the bare loop at its best; peak
memory under 150 MB and within 10% from 100,000 to 1,000,000 messages. The CPU columns tell whether other
processes shared the cores meanwhile (the server and this client share them too); `--rtt-ms` adds a
simulated network round trip to every request of every mode, since on loopback a request costs almost
nothing and one POST per resource is not much slower.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import os
import resource
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import (
    REMOTE_ENV,
    Call,
    CountingTransport,
    Target,
    markdown_table,
    open_target,
    run_command,
    synthetic_specs,
)
from delayproxy import DelayProxy

from bundler import parse_spec
from bundler.build import build_bundle, bundle_bytes
from bundler.load import LoadReport, load
from bundler.medplum.client import ClientCredentials, FhirClient
from bundler.spec import ThreadSpec
from bundler.vocabulary import SEARCH_POINTS, WRITE_POINTS

LOAD_CONCURRENCY = 4  # the ceiling's concurrency (what `load` defaulted to before `auto`)
SWEEP_LEVELS = (1, 2, 4, 8, 16)  # the fixed settings the sweep measures beside auto


class Failed(Exception):
    """A mode that could not be measured (threads not loaded, a request refused): the run goes on without it."""


# --------------------------------------------------------------------------- the modes


@dataclass
class Row:
    mode: str
    resources: int
    seconds: float
    cpu: tuple[float, float, float] = (0.0, 0.0, 0.0)  # CPU seconds meanwhile: this client, the server, the rest
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.resources / self.seconds if self.seconds else 0.0


def specs_for(threads: int, messages: int, prefix: str) -> list[ThreadSpec]:
    """`threads` specs from `synthetic_specs` (seed 1); `prefix` goes before each key (unique keys on a remote)."""
    out = []
    for data in synthetic_specs(threads, messages, seed=1):
        data["thread"] = prefix + data["thread"]
        out.append(parse_spec(data))
    return out


def run_load(target: Target, specs: list[ThreadSpec], label: str, *, profile: Path | None = None,
             **options: Any) -> Row:
    """`load` with its defaults (or `options`), in a fresh journal; the wall time of the whole call."""
    # the pool FhirClient would make for itself (its concurrency, 32, + 2), since passing a transport replaces it
    transport = target.transport(httpx.Limits(max_connections=34, max_keepalive_connections=34), counting=True)
    assert isinstance(transport, CountingTransport)
    with tempfile.TemporaryDirectory(prefix="bench-load-") as tmp, \
            FhirClient(target.base_url, ClientCredentials(target.client_id, target.client_secret),
                       transport=transport) as client:
        journal = Path(tmp) / "bench.journal.sqlite"
        cpu0 = target.cpu()
        started = time.perf_counter()
        if profile is not None:
            import cProfile

            profiler = cProfile.Profile()
            report: LoadReport = profiler.runcall(load, specs, client, journal=journal, keep_results=True,
                                                  **options)
            profiler.dump_stats(profile)
        else:
            report = load(specs, client, journal=journal, keep_results=True, **options)
        seconds = time.perf_counter() - started
        cpu = target.spent(cpu0)
    bad = [t for t in report.threads if not t.outcome.ok]
    if bad:
        raise Failed(f"{len(bad)} of {len(specs)} threads not loaded, e.g. {bad[0].key}: {bad[0].outcome} "
                     f"{bad[0].error}")
    created = sum(t.created for t in report.threads)
    by_transport = sum(c.created for c in transport.calls if c.kind == "transaction")
    expected = sum(len(s.messages) + 1 for s in specs)
    if created != expected or by_transport < expected:
        raise Failed(f"created {created} (transport saw {by_transport}), expected {expected}")
    return Row(label, created, seconds, cpu, extra={"transport": transport, "report": report, "started": started})


def run_ceiling(target: Target, bodies: list[bytes], resources: int, *, concurrency: int = LOAD_CONCURRENCY) -> Row:
    """The same bundles posted by `concurrency` threads sharing one httpx client and one token; status checked."""
    token = target.token()
    failures: list[str] = []
    with target.bare_client(token, concurrency) as http:
        counter = itertools.count()  # next() on a count is atomic under the GIL

        def worker() -> None:
            while not failures and (i := next(counter)) < len(bodies):
                response = http.post("", content=bodies[i])
                if response.status_code != 200:
                    failures.append(f"HTTP {response.status_code}: {response.text[:300]}")

        workers = [threading.Thread(target=worker, name=f"ceiling-{n}") for n in range(concurrency)]
        cpu0 = target.cpu()
        started = time.perf_counter()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        seconds = time.perf_counter() - started
        cpu = target.spent(cpu0)
    if failures:
        raise Failed(f"ceiling: {failures[0]}")
    return Row(f"ceiling: bare httpx, {concurrency} threads", resources, seconds, cpu)


def run_per_resource(target: Target, specs: list[ThreadSpec]) -> Row:
    """One POST per resource, in sequence: header, then messages pointing at the server ids already created."""
    bundles = [build_bundle(s) for s in specs]
    token = target.token()
    created = 0
    with target.bare_client(token, 1) as http:
        cpu0 = target.cpu()
        started = time.perf_counter()
        for bundle in bundles:
            ids: dict[str, str] = {}  # fullUrl → Communication/<server id>
            for entry in bundle["entry"]:
                resource = entry["resource"]
                for key in ("partOf", "inResponseTo"):
                    for ref in resource.get(key) or ():
                        ref["reference"] = ids[ref["reference"]]
                response = http.post("Communication", content=orjson.dumps(resource))
                if response.status_code != 201:
                    raise Failed(f"per resource: HTTP {response.status_code}: {response.text[:300]}")
                ids[entry["fullUrl"]] = f"Communication/{orjson.loads(response.content)['id']}"
                created += 1
        seconds = time.perf_counter() - started
        cpu = target.spent(cpu0)
    return Row(f"per resource: 1 POST each, sequential ({len(specs):,} threads)", created, seconds, cpu)


def warm_up(target: Target, messages: int, seconds: float) -> None:
    """Post bundles for `seconds` so Node's JIT (and a real server's connection pools, Postgres's caches) is warm
    before anything is measured; then empty the store (a local one). Each bundle is posted once at most, as the
    store may not be emptied."""
    specs = specs_for(max(200, int(seconds * 200)), messages, target.prefix("warm"))
    bodies = [bundle_bytes(s) for s in specs]
    token = target.token()
    deadline = time.perf_counter() + seconds
    with target.bare_client(token, LOAD_CONCURRENCY) as http:
        for body in bodies:
            if time.perf_counter() > deadline:
                break
            http.post("", content=body)
            http.get("Communication", params={"identifier": "urn:x|y", "_count": "10"})
    target.reset()


# --------------------------------------------------------------------------- the quota run


@dataclass
class QuotaResult:
    points: int
    seconds: float
    quota_rate: float
    status_429: int
    requests: int
    searches: int
    transactions: int
    threads: int
    load_seconds: float

    @property
    def achieved(self) -> float:
        return self.points / self.seconds if self.seconds else 0.0

    @property
    def ratio(self) -> float:
        return self.achieved / self.quota_rate


def run_quota(target: Target, specs: list[ThreadSpec], points: int, window: int) -> QuotaResult:
    assert target.server is not None
    target.reset()
    target.server.configure(quota={"enabled": True, "points": points, "windowSeconds": window})
    try:
        row = run_load(target, specs, "load under quota")
    finally:
        target.server.restore_defaults()
    transport: CountingTransport = row.extra["transport"]
    calls = [c for c in transport.calls if c.kind != "token"]
    used = (WRITE_POINTS * sum(c.created for c in calls)
            + SEARCH_POINTS * sum(1 for c in calls if c.kind == "search" and c.status != 429)
            + SEARCH_POINTS * sum(c.gets for c in calls if c.status != 429))
    first, last = min(c.start for c in calls), max(c.end for c in calls)
    return QuotaResult(used, last - first, points / window, transport.count(status=429), len(calls),
                       transport.count("search"), transport.count("transaction"), len(specs), row.seconds)


# --------------------------------------------------------------------------- where load's time goes


def breakdown(row: Row) -> list[tuple[str, str]]:
    """The phases of a `load` run, from the transport's record of its requests."""
    transport: CountingTransport = row.extra["transport"]
    report: LoadReport = row.extra["report"]
    started: float = row.extra["started"]
    calls = sorted(transport.calls, key=lambda c: c.start)
    tx = [c for c in calls if c.kind == "transaction"]
    # the loader's own transactions are the ones that created entries; the probe's creates nothing
    loads = [c for c in tx if c.created]
    probe_start = min((c.start for c in tx if not c.created), default=float("inf"))
    first_load = loads[0].start if loads else started
    last_end = max(c.end for c in calls) if calls else started
    before_first = calls[0].start - started if calls else 0.0
    searches = [c for c in calls if c.kind == "search" and c.end <= first_load and c.start < probe_start]
    probe = [c for c in calls if probe_start <= c.start and c.end <= first_load and c.kind != "token"]
    in_flight = sum(c.end - c.start for c in loads)
    phase = (loads[-1].end - first_load) if loads else 0.0
    out = [
        ("total wall time of load()", f"{row.seconds:.2f} s"),
        ("before the first request (build, fingerprint, validate every bundle)", f"{before_first:.2f} s"),
        (f"pre-check searches ({len(searches)})", f"{sum(c.end - c.start for c in searches):.3f} s"),
        (f"atomicity probe ({len(probe)} requests)", f"{sum(c.end - c.start for c in probe):.3f} s"),
        ("start of load() → first thread transaction", f"{first_load - started:.2f} s"),
        (f"thread transactions ({len(loads)}), first start → last end", f"{phase:.2f} s"),
        ("  mean time in flight per transaction (as the client sees it)",
         f"{in_flight / max(1, len(loads)) * 1000:.1f} ms"),
        (f"  transactions in flight on average (concurrency {report.concurrency})",
         f"{in_flight / phase:.2f}" if phase else "-"),
        ("last transaction → load() returns", f"{row.seconds - (last_end - started):.2f} s"),
        ("requests counted by the loader / by the transport", f"{report.requests} / {len(calls)}"),
    ]
    return out


# --------------------------------------------------------------------------- strict mode, a filled server, memory


def points(row: Row) -> int:
    """Quota points Medplum would charge for `row`'s requests: 100 per created entry, 20 per search, and 20 more
    per conditional create (its search)."""
    calls: list[Call] = row.extra["transport"].calls
    return (WRITE_POINTS * sum(c.created for c in calls) + SEARCH_POINTS * sum(c.conditional + c.gets for c in calls)
            + SEARCH_POINTS * sum(1 for c in calls if c.kind == "search"))


def run_filled(target: Target, args: argparse.Namespace, quiet: bool) -> tuple[int, Row, Row, Row, Row]:
    """`load` into an empty server, then into one holding `args.filled` Communications, through the library and
    through the command (`load DIR`, default options): the best of `args.repeat` runs each, the empty ones just
    before the filling (so both see the same machine)."""
    def one(prefix: str, label: str) -> Row:
        return timed(f"load, {label}", functools.partial(
            run_load, target, specs_for(args.threads, args.messages, prefix), label), quiet)

    def command(label: str) -> Row:
        row = timed(f"command, {label}", functools.partial(run_command_load, target, args.threads, args.messages,
                                                            "auto"), quiet)
        row.mode = label
        return row

    empty, full, empty_cmd, full_cmd = [], [], [], []
    for n in range(max(1, args.repeat)):
        target.reset()
        empty.append(one(target.prefix(f"e{n}"), "empty server"))
        target.reset()
        empty_cmd.append(command("empty server"))
    target.reset()
    if not quiet:
        print(f"… filling the server with {args.filled:,} Communications", file=sys.stderr, flush=True)
    fill(target, args.filled, args.messages)
    for n in range(max(1, args.repeat)):
        full.append(one(target.prefix(f"f{n}"), f"{args.filled:,} Communications"))
        full_cmd.append(command(f"{args.filled:,} Communications"))
    best = functools.partial(min, key=lambda r: r.seconds)
    return args.filled, best(empty), best(full), best(empty_cmd), best(full_cmd)


def fill(target: Target, communications: int, messages: int) -> float:
    """Post bare bundles until the server holds about `communications` more Communications; the seconds taken."""
    threads = max(1, communications // (messages + 1))
    started = time.perf_counter()
    for n in range(0, threads, 2000):
        specs = specs_for(min(2000, threads - n), messages, target.prefix(f"fill{n}"))
        run_ceiling(target, [bundle_bytes(s) for s in specs], len(specs) * (messages + 1))
    return time.perf_counter() - started


@dataclass
class Memory:
    messages: int
    threads: int
    seconds: float
    peak_mb: float
    after_imports_mb: float


def peak_mb() -> float:
    """This process's peak resident memory (VmHWM: of its own address space, so not the parent's it was forked
    from, which ru_maxrss keeps across exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # not Linux: an upper bound


def memory_child(messages: int, per_thread: int) -> None:
    """(In a fresh process) load a stream of `messages` messages into the server named by MEDPLUM_*; print the
    figures as JSON. Specs are made and parsed a thousand at a time, as a migration streams them."""
    after_imports = peak_mb()
    threads = messages // per_thread

    def stream() -> Any:
        for n in range(0, threads, 1000):
            for data in synthetic_specs(min(1000, threads - n), per_thread, seed=n):
                data["thread"] = f"mem{n}-{data['thread']}"
                yield parse_spec(data)

    base, client_id, secret = (os.environ[k] for k in REMOTE_ENV)
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp, \
            FhirClient(base, ClientCredentials(client_id, secret)) as client:
        started = time.perf_counter()
        report = load(stream(), client, journal=Path(tmp) / "j.sqlite")
        seconds = time.perf_counter() - started
    if not report.ok or report.done != threads:
        raise SystemExit(f"memory run: {report.counts()}")
    peak = peak_mb()
    print(orjson.dumps({"messages": messages, "threads": threads, "seconds": seconds, "peak_mb": peak,
                        "after_imports_mb": after_imports}).decode())


def run_memory(target: Target, messages: int, per_thread: int, quiet: bool) -> Memory:
    """A fresh process loads `messages` messages (see `memory_child`) into the emptied server."""
    import subprocess

    target.reset()
    if not quiet:
        print(f"… memory: {messages:,} messages in a fresh process", file=sys.stderr, flush=True)
    environ = {**os.environ, "MEDPLUM_BASE_URL": target.base_url, "MEDPLUM_CLIENT_ID": target.client_id,
               "MEDPLUM_CLIENT_SECRET": target.client_secret}
    out = subprocess.run([sys.executable, __file__, "--memory-child", str(messages), "--messages", str(per_thread)],
                         env=environ, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"memory run of {messages:,} messages failed:\n{out.stderr[-2000:]}")
    result = Memory(**orjson.loads(out.stdout.strip().splitlines()[-1]))
    if not quiet:
        print(f"  peak {result.peak_mb:.0f} MB, {result.messages / result.seconds:,.0f} messages/s", file=sys.stderr)
    return result


def run_unchecked(target: Target, specs: list[ThreadSpec]) -> Row:
    """`load` whose check for copies another load made (`bundler.load.duplicates`) sends nothing and finds none:
    what the check costs is the difference with `load`."""
    from unittest import mock

    def nothing(client: FhirClient, batch: list[Any]) -> list[dict[int, list[str]]]:
        return [{} for _ in batch]

    with mock.patch("bundler.load.loader.find_copies", nothing):
        return run_load(target, specs, "load, its check for copies patched out")


def check_table(loaded: Row, unchecked: Row) -> tuple[str, list[str], list[list[str]]]:
    """What the check for copies costs: `load` against the same load without it."""
    rows = []
    for row in (unchecked, loaded):
        transport: CountingTransport = row.extra["transport"]
        check_seconds = sum(c.end - c.start for c in transport.calls if c.sort == "check")
        rows.append([row.mode, f"{row.resources:,}", f"{row.seconds:.2f}", f"{row.rate:,.0f}",
                     f"{row.rate / unchecked.rate:.2f}", f"{transport.count() - transport.count('token'):,}",
                     f"{transport.count('check'):,}", f"{check_seconds:.2f}", f"{points(row):,}",
                     f"{points(row) / row.resources:.2f}"])
    return ("What the check for copies another load made costs (best of each)",
            ["mode", "resources", "seconds", "resources/s", "× unchecked", "requests", "checks", "seconds in checks",
             "quota points", "a resource"], rows)


def extra_tables(args: argparse.Namespace, loaded: Row, strict: Row | str | None,
                 filled: tuple[int, Row, Row, Row, Row] | None,
                 memory: list[Memory]) -> list[tuple[str, list[str], list[list[str]]]]:
    """The strict mode, filled-server and memory tables: (caption, header, rows)."""
    tables = []
    if strict is not None:
        rows = []
        for row in (loaded, strict):
            if isinstance(row, str):  # the strict run failed: why, in place of its figures
                rows.append(["strict (every entry conditional, 8 a request)", f"**failed**: {row}", "", "", "", "",
                             ""])
                continue
            transactions = row.extra["transport"].count("transaction")
            rows.append([row.mode, f"{row.resources:,}", f"{row.seconds:.2f}", f"{row.rate:,.0f}",
                         f"{row.rate / loaded.rate:.2f}", f"{transactions:,}",
                         f"{points(row) / row.resources:.1f}"])
        tables.append(("Exactly-once modes, same threads", ["mode", "resources", "seconds", "resources/s",
                                                            "× quarantine", "transactions", "quota points a resource"],
                       rows))
    if filled is not None:
        holds, empty, full, empty_cmd, full_cmd = filled
        rows = [[path, label, f"{row.resources:,}", f"{row.seconds:.2f}", f"{row.rate:,.0f}", ratio]
                for path, label, row, ratio in (
                    ("library", "empty", empty, "1.00"),
                    ("library", f"{holds:,} Communications", full, f"**{full.rate / empty.rate:.2f}**"),
                    ("command", "empty", empty_cmd, "1.00"),
                    ("command", f"{holds:,} Communications", full_cmd, f"**{full_cmd.rate / empty_cmd.rate:.2f}**"))]
        tables.append(("`load` into a server that already holds many Communications (best of "
                       f"{max(1, args.repeat)}; the command: `load DIR`, its defaults)",
                       ["path", "server holds", "resources", "seconds", "resources/s", "× empty"], rows))
    if memory:
        first = memory[0]
        rows = [[f"{m.messages:,}", f"{m.threads:,}", f"{m.seconds:.0f}", f"{m.messages / m.seconds:,.0f}",
                 f"{m.after_imports_mb:.0f}", f"**{m.peak_mb:.0f}**", f"{m.peak_mb / first.peak_mb:.2f}"]
                for m in memory]
        tables.append(("Peak memory of the loading process (a stream of threads of 1 header + "
                       f"{args.messages} messages)", ["messages", "threads", "seconds", "messages/s",
                                                     "MB after imports", "peak MB", f"× {first.messages:,}"], rows))
    return tables


def print_tables(tables: list[tuple[str, list[str], list[list[str]]]], markdown: bool) -> None:
    for caption, head, rows in tables:
        print(f"\n{caption}:\n")
        if markdown:
            print(markdown_table(head, rows))
        else:
            widths = [max(len(str(r[i]).replace("**", "")) for r in [head, *rows]) for i in range(len(head))]
            for r in [head, *rows]:
                print("  ".join(str(c).replace("**", "").ljust(widths[i]) for i, c in enumerate(r)))


# --------------------------------------------------------------------------- the concurrency sweep


def write_specs(specs_data: list[dict[str, Any]], folder: Path, per_file: int = 100) -> None:
    """Spec files as a user has them: JSON arrays of `per_file` threads."""
    folder.mkdir(parents=True, exist_ok=True)
    for n in range(0, len(specs_data), per_file):
        (folder / f"threads-{n // per_file:04d}.json").write_bytes(orjson.dumps(specs_data[n:n + per_file]))


def spec_data(threads: int, messages: int, prefix: str) -> list[dict[str, Any]]:
    out = []
    for data in synthetic_specs(threads, messages, seed=1):
        data["thread"] = prefix + data["thread"]
        out.append(data)
    return out


def run_command_load(target: Target, threads: int, messages: int, concurrency: str, *,
                     tag: str | None = None) -> Row:
    """`thread-bundler load DIR --concurrency C` in its own process, on spec files written beforehand; the wall
    time of the whole command (start-up, reading the files, the journal, pre-checks, probe, summary)."""
    data = spec_data(threads, messages, target.prefix(f"cmd{tag or concurrency}"))
    with tempfile.TemporaryDirectory(prefix="bench-sweep-") as tmp:
        write_specs(data, Path(tmp) / "threads")
        env = {"MEDPLUM_BASE_URL": target.base_url, "MEDPLUM_CLIENT_ID": target.client_id,
               "MEDPLUM_CLIENT_SECRET": target.client_secret}
        run = run_command(["load", str(Path(tmp) / "threads"), "--concurrency", concurrency, "--journal",
                           str(Path(tmp) / "j.sqlite"), "--no-progress", "--format", "json"], env=env, check=False)
    if run.returncode != 0:
        raise Failed(f"load --concurrency {concurrency} exited {run.returncode}: {run.stderr[-1500:]}")
    summary = orjson.loads(run.stdout)
    resources = threads * (messages + 1)
    if not summary.get("ok") or summary.get("counts", {}).get("loaded") != threads:
        raise Failed(f"load --concurrency {concurrency}: {summary.get('counts')}")
    return Row(f"command: load --concurrency {concurrency}", resources, run.seconds,
               extra={"concurrency": summary.get("concurrency", concurrency), "peak_mb": run.peak_mb})


def run_sweep(args: argparse.Namespace, target: Target, quiet: bool) -> tuple[str, list[str], list[list[str]]]:
    """Fixed 1/2/4/8/16 against auto, through the command and the library, beside the bare loop at each setting:
    the table, with auto's ratio to the best fixed setting (of the same path) and the command's to the bare loop at
    its best. With `--repeat N`, N rounds of every mode, the order turned by one each round (no mode always first
    or last, as the server warms up or fills), and each mode's median run: a server's run-to-run noise (5-20% on
    the real one) is larger than the 5% asked, and one run a setting cannot rank settings that close."""
    threads, messages = args.sweep_threads, args.messages
    resources = threads * (messages + 1)
    levels = [int(n) for n in args.sweep_levels.split(",")]
    settings = [*map(str, levels), "auto"]
    modes = [("bare", str(n)) for n in levels] + [("command", c) for c in settings] + \
        ([("library", c) for c in settings] if args.sweep_library else [])
    runs: dict[tuple[str, str], list[Row]] = {mode: [] for mode in modes}
    rounds = max(1, args.repeat)
    for r in range(rounds):
        turn = r % len(modes)
        for kind, c in modes[turn:] + modes[:turn]:
            target.reset()
            label = f"{kind} {c}" + (f", round {r + 1}/{rounds}" if rounds > 1 else "")
            tag = f"{c}r{r}"
            if kind == "bare":
                bodies = [bundle_bytes(s) for s in specs_for(threads, messages, target.prefix(f"bare{tag}"))]
                make = functools.partial(run_ceiling, target, bodies, resources, concurrency=int(c))
            elif kind == "command":
                make = functools.partial(run_command_load, target, threads, messages, c, tag=tag)
            else:
                make = functools.partial(run_load, target, specs_for(threads, messages, target.prefix(f"lib{tag}")),
                                         f"library {c}", concurrency=c if c == "auto" else int(c))
            runs[(kind, c)].append(timed(label, make, quiet))
    median = {mode: sorted(rows, key=lambda row: row.rate)[(len(rows) - 1) // 2] for mode, rows in runs.items()}

    def shown(mode: tuple[str, str]) -> str:
        rates = [row.rate for row in runs[mode]]
        spread = f" ({min(rates):,.0f}-{max(rates):,.0f})" if len(rates) > 1 else ""
        return f"{median[mode].rate:,.0f}{spread}"

    bare = {n: median[("bare", str(n))] for n in levels}
    command = {c: median[("command", c)] for c in settings}
    library = {c: median[("library", c)] for c in settings} if args.sweep_library else {}
    best_bare = max(bare.values(), key=lambda r: r.rate)
    best_command = max((command[str(n)] for n in levels), key=lambda r: r.rate)
    rows = []
    for c in settings:
        cmd, lib = command[c], library.get(c)
        settled = "-"
        if c == "auto":
            settled = ", ".join(row.extra["concurrency"] for row in runs[("command", c)]) + \
                (f" (library: {lib.extra['report'].concurrency})" if lib else "")
        rows.append([f"**{c}**" if c == "auto" else c, shown(("bare", c)) if c != "auto" else "-",
                     shown(("command", c)), f"{cmd.rate / best_bare.rate:.2f}", f"{cmd.rate / best_command.rate:.2f}",
                     shown(("library", c)) if lib else "-", settled])
    auto_cmd = command["auto"]
    best_lib = max((library[str(n)] for n in levels), key=lambda r: r.rate) if library else None
    notes = [f"auto / best fixed (command): **{auto_cmd.rate / best_command.rate:.2f}** (target ≥ 0.95); "
             f"auto / bare loop at its best ({best_bare.mode.split(', ')[-1]}): "
             f"**{auto_cmd.rate / best_bare.rate:.2f}** (target ≥ 0.90)"]
    if best_lib is not None:
        notes.append(f"library: auto / best fixed {library['auto'].rate / best_lib.rate:.2f}")
    where = target.describe()
    rtt = f", +{args.rtt_ms:g} ms round trip (a delaying proxy in front of it)" if args.rtt_ms else ""
    each = (f"; each mode's median of {rounds} runs (in brackets: the least and most), the modes in turn"
            if rounds > 1 else "")
    caption = (f"Concurrency: {threads:,} threads × (1 header + {messages} messages) = {resources:,} resources, "
               f"{where}{rtt}{each}; {'; '.join(notes)}")
    head = ["concurrency", "bare loop resources/s", "command resources/s", "× bare at its best",
            "× best fixed", "library resources/s", "auto (command): settled at"]
    return caption, head, rows


def sweep_main(args: argparse.Namespace, target: Target) -> int:
    """`--sweep`: the concurrency sweep alone (through a delaying proxy at `--rtt-ms`)."""
    loads_before = target.load_average()
    if args.rtt_ms:
        with DelayProxy(target.base_url, args.rtt_ms / 1000) as proxy:
            delayed = Target(proxy.url, target.client_id, target.client_secret, target.server, run=target.run)
            table = run_sweep(args, delayed, args.markdown)
    else:
        if args.warm_up > 0:
            warm_up(target, args.messages, args.warm_up)
        table = run_sweep(args, target, args.markdown)
    print_tables([table], args.markdown)
    print(f"\nload average {loads_before} at the start, {target.load_average()} at the end")
    return 0


# --------------------------------------------------------------------------- one long run: late rate / early rate


def journal_committed(journal: Path) -> int:
    """Threads the journal holds as committed (read-only; 0 before the command wrote it)."""
    import contextlib
    import sqlite3

    if not journal.exists():
        return 0
    with contextlib.closing(sqlite3.connect(f"file:{journal}?mode=ro", uri=True, timeout=5)) as db:
        try:
            return int(db.execute("SELECT count(*) FROM threads WHERE state='committed'").fetchone()[0])
        except sqlite3.OperationalError:
            return 0


def run_same_run(target: Target, threads: int, messages: int, quiet: bool) -> tuple[str, list[str], list[list[str]]]:
    """`load DIR` (its defaults) of `threads` threads in files of 1,000, as one command; the journal's committed
    threads sampled every half second: the rate from 10% to 30% of the threads in (early) against 70% to 90% (late),
    so whatever grows as the run goes on (the server's store, the journal, the client's sets) shows as a late rate
    below the early one."""
    target.reset()
    data = spec_data(threads, messages, target.prefix("same"))
    samples: list[tuple[float, int]] = []
    with tempfile.TemporaryDirectory(prefix="bench-same-run-") as tmp:
        write_specs(data, Path(tmp) / "threads", per_file=1000)
        del data
        journal = Path(tmp) / "j.sqlite"
        env = {"MEDPLUM_BASE_URL": target.base_url, "MEDPLUM_CLIENT_ID": target.client_id,
               "MEDPLUM_CLIENT_SECRET": target.client_secret}
        result: list[Any] = []
        worker = threading.Thread(target=lambda: result.append(run_command(
            ["load", str(Path(tmp) / "threads"), "--journal", str(journal), "--no-progress"], env=env,
            check=False)))
        if not quiet:
            print(f"… one command loading {threads:,} threads", file=sys.stderr, flush=True)
        started = time.perf_counter()
        worker.start()
        while worker.is_alive():
            samples.append((time.perf_counter() - started, journal_committed(journal)))
            worker.join(0.5)
        samples.append((time.perf_counter() - started, journal_committed(journal)))
    run = result[0]
    if run.returncode != 0:
        raise Failed(f"the long run exited {run.returncode}: {run.stderr[-1500:]}")

    def when(fraction: float) -> tuple[float, int]:
        return next((t, n) for t, n in samples if n >= fraction * threads)

    per_thread = messages + 1
    (t10, n10), (t30, n30), (t70, n70), (t90, n90) = (when(f) for f in (0.1, 0.3, 0.7, 0.9))
    early = (n30 - n10) * per_thread / (t30 - t10)
    late = (n90 - n70) * per_thread / (t90 - t70)
    rows = [["early: 10% → 30% of the threads in", f"{(n30 - n10) * per_thread:,}", f"{t30 - t10:.1f}", f"{early:,.0f}",
             "1.00"],
            ["late: 70% → 90%", f"{(n90 - n70) * per_thread:,}", f"{t90 - t70:.1f}", f"{late:,.0f}",
             f"**{late / early:.2f}**"]]
    caption = (f"One `load DIR` of {threads:,} threads × (1 header + {messages} messages) = "
               f"{threads * per_thread:,} resources in files of 1,000 threads, {target.describe()}: the whole command "
               f"{run.seconds:.0f} s, peak {run.peak_mb:.0f} MB; late rate / early rate (target ≥ 0.90)")
    return caption, ["part of the run", "resources", "seconds", "resources/s", "× early"], rows


# --------------------------------------------------------------------------- main


def timed(label: str, func: Callable[[], Row], quiet: bool) -> Row:
    if not quiet:
        print(f"… {label}", file=sys.stderr, flush=True)
    row = func()
    if not quiet:
        print(f"  {row.resources:,} resources in {row.seconds:.2f} s: {row.rate:,.0f}/s", file=sys.stderr, flush=True)
    return row


def measure_more(args: argparse.Namespace, target: Target, quiet: bool
                 ) -> tuple[Row | str | None, tuple[int, Row, Row, Row, Row] | None, list[Memory]]:
    """The strict mode's run (or why it failed), the filled server's (local only) and the memory runs (local
    only), as asked."""
    strict: Row | str | None = None
    if not args.no_strict:
        target.reset()
        strict_specs = specs_for(args.threads, args.messages, target.prefix("s"))
        try:
            strict = timed("strict", functools.partial(run_load, target, strict_specs, "strict (every entry "
                                                       "conditional, 8 a request)", exactly_once="strict"), quiet)
        except Failed as exc:
            strict = str(exc)
            print(f"  strict mode failed: {strict}", file=sys.stderr, flush=True)
    filled = run_filled(target, args, quiet) if args.filled and not target.remote else None
    memory = [run_memory(target, int(n), args.messages, quiet) for n in args.memory_sizes.split(",")] \
        if args.memory and not target.remote else []
    return strict, filled, memory


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1000, help="threads loaded by `load` and the ceiling")
    parser.add_argument("--messages", type=int, default=10, help="messages per thread (plus 1 header)")
    parser.add_argument("--per-resource-threads", type=int, default=100,
                        help="threads posted one resource at a time (a subset; default 100)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="run load and the ceiling N times, keep the best (--sweep: each mode N times, the median)")
    parser.add_argument("--quota-points", type=int, default=15_000, help="quota points per window (quota run)")
    parser.add_argument("--quota-window", type=int, default=10, help="quota window in seconds (quota run)")
    parser.add_argument("--quota-seconds", type=float, default=25.0, help="about how long the quota run lasts")
    parser.add_argument("--no-quota", action="store_true", help="skip the quota run")
    parser.add_argument("--warm-up", type=float, default=3.0, help="seconds of warm-up traffic first")
    parser.add_argument("--rtt-ms", type=float, default=0.0,
                        help="simulate a network round trip: every request of every mode waits this long first")
    parser.add_argument("--profile", type=Path,
                        help="write a cProfile of the (last) load run here (its calling thread only: the work "
                        "before the requests, not the workers)")
    parser.add_argument("--no-strict", action="store_true", help="skip the strict mode's run")
    parser.add_argument("--check-cost", action="store_true",
                        help="also load with the check for copies patched out, to measure what the check costs")
    parser.add_argument("--filled", type=int, default=200_000,
                        help="Communications the server holds for the filled-server run (0: skip; local only)")
    parser.add_argument("--memory", action="store_true",
                        help="measure peak memory loading 100,000 and 1,000,000 messages (local only; minutes)")
    parser.add_argument("--memory-sizes", default="100000,1000000", help="messages of each memory run")
    parser.add_argument("--memory-child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--sweep", action="store_true",
                        help="only the concurrency sweep: fixed --sweep-levels against auto, through the command "
                             "(and the library), beside the bare loop at each (at --rtt-ms, through a delaying proxy)")
    parser.add_argument("--sweep-threads", type=int, default=1000, help="threads each mode of the sweep loads")
    parser.add_argument("--sweep-levels", default=",".join(map(str, SWEEP_LEVELS)), help="the fixed settings")
    parser.add_argument("--sweep-library", action=argparse.BooleanOptionalAction, default=True,
                        help="also the library path at each setting")
    parser.add_argument("--filled-only", action="store_true", help="only the filled-server run")
    parser.add_argument("--same-run", type=int, default=0, metavar="THREADS",
                        help="only one command loading THREADS threads: its late rate against its early rate")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 60 threads, short quota run")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args(argv)
    if args.memory_child:
        memory_child(args.memory_child, args.messages)
        return 0
    if args.quick:
        args.threads, args.per_resource_threads, args.warm_up = 60, 10, 0.5
        args.quota_points, args.quota_window, args.quota_seconds = 5000, 5, 5.0
        args.filled, args.memory_sizes = min(args.filled, 5000), "2000,6000"
    if args.memory:  # a million stored resources need more than Node's default heap
        os.environ.setdefault("NODE_OPTIONS", "--max-old-space-size=16384")
    with open_target(rtt=0.0 if args.sweep else args.rtt_ms / 1000) as target:
        try:
            if args.same_run:
                print_tables([run_same_run(target, args.same_run, args.messages, args.markdown)], args.markdown)
                return 0
            if args.filled_only:
                filled = run_filled(target, args, args.markdown)
                print_tables(extra_tables(args, filled[1], None, filled, []), args.markdown)
                return 0
            return sweep_main(args, target) if args.sweep else measure(args, target)
        except Failed as exc:
            raise SystemExit(f"load benchmark: {exc}") from None


def measure(args: argparse.Namespace, target: Target) -> int:
    resources_per_thread = args.messages + 1
    resources = args.threads * resources_per_thread
    quiet = args.markdown
    where = target.describe()
    loads_before = target.load_average()

    if args.warm_up > 0:
        warm_up(target, args.messages, args.warm_up)

    loads: list[Row] = []
    ceilings: list[Row] = []
    unchecked: list[Row] = []
    for n in range(args.repeat):
        if args.check_cost:
            target.reset()
            unchecked.append(timed("load, unchecked", functools.partial(
                run_unchecked, target, specs_for(args.threads, args.messages, target.prefix(f"u{n}"))), quiet))
        # each mode its own threads (a remote store keeps them): built before the clock starts
        ceiling_bodies = [bundle_bytes(s) for s in specs_for(args.threads, args.messages, target.prefix(f"c{n}"))]
        load_specs = specs_for(args.threads, args.messages, target.prefix(f"l{n}"))
        ceiling_run = functools.partial(run_ceiling, target, ceiling_bodies, resources)
        load_run = functools.partial(run_load, target, load_specs, "**load** (defaults: concurrency auto, journal, "
                                     "pre-checks, probe)", profile=args.profile if n == args.repeat - 1 else None)
        # in turn first: what one mode leaves the server to do (a real one's Postgres writes its pages and WAL
        # after the requests return) falls on the other mode as often as on this one
        for label, run, rows in (("ceiling", ceiling_run, ceilings), ("load", load_run, loads))[::1 - 2 * (n % 2)]:
            target.reset()
            rows.append(timed(label, run, quiet))
    ceiling = min(ceilings, key=lambda r: r.seconds)
    loaded = min(loads, key=lambda r: r.seconds)
    target.reset()
    subset = specs_for(min(args.per_resource_threads, args.threads), args.messages, target.prefix("p"))
    per_resource = timed("per resource", lambda: run_per_resource(target, subset), quiet)

    quota: QuotaResult | None = None
    if not args.no_quota and not target.remote:
        quota_rate = args.quota_points / args.quota_window
        threads = max(2, round(quota_rate * args.quota_seconds / (WRITE_POINTS * resources_per_thread)))
        if not quiet:
            print(f"… load under quota: {args.quota_points:,} points per {args.quota_window} s, {threads} threads",
                  file=sys.stderr, flush=True)
        quota = run_quota(target, specs_for(threads, args.messages, target.prefix("q")), args.quota_points,
                          args.quota_window)

    strict, filled, memory = measure_more(args, target, quiet)
    pairs = [lo.rate / ce.rate for lo, ce in zip(loads, ceilings, strict=True)]
    load_average = f"load average {loads_before} at the start, {target.load_average()} at the end"
    report(args, target, where, load_average, ceiling, loaded, per_resource, quota, pairs)
    tables = extra_tables(args, loaded, strict, filled, memory)
    if unchecked:
        tables.append(check_table(loaded, min(unchecked, key=lambda r: r.seconds)))
    print_tables(tables, args.markdown)
    skipped = []
    if target.remote:
        skipped = ["quota, filled server, memory: local only (a remote project's quota is its own, shared with "
                   "whoever else uses its client, and its store holds whatever it holds)"]
    for line in skipped:
        print(f"\nNot measured here: {line}.")
    return 0


def report(args: argparse.Namespace, target: Target, where: str, load_average: str, ceiling: Row, loaded: Row,
           per_resource: Row, quota: QuotaResult | None, pairs: list[float]) -> None:
    if target.rtt:
        where += f", +{target.rtt * 1000:g} ms simulated round trip per request"
    best = f", best of {len(pairs)}" if len(pairs) > 1 else ""
    caption = f"{args.threads:,} threads × (1 header + {args.messages} messages), {where}{best}; {load_average}"
    head = ["mode", "resources", "seconds", "resources/s", "× ceiling", "CPU: client", "server", "others"]
    rows = [[r.mode, f"{r.resources:,}", f"{r.seconds:.2f}", f"{r.rate:,.0f}", f"{r.rate / ceiling.rate:.2f}",
             *(f"{c / r.seconds:.0%}" if c == c else "-" for c in r.cpu)] for r in (ceiling, loaded, per_resource)]
    vs_ceiling = loaded.rate / ceiling.rate
    vs_per_resource = loaded.rate / per_resource.rate
    rounds = f" (each round: {', '.join(f'{r:.2f}' for r in pairs)})" if len(pairs) > 1 else ""
    targets = [["load ≥ 0.80 × ceiling", f"{vs_ceiling:.2f}{rounds}", "met" if vs_ceiling >= 0.8 else "**NOT met**"],
               ["load ≥ 10 × per resource", f"{vs_per_resource:.1f}",
                "met" if vs_per_resource >= 10 else "**NOT met**"]]
    if quota is not None:
        ok = abs(quota.ratio - 1) <= 0.10 and quota.status_429 == 0
        targets.append(["under quota: achieved / quota rate within 10%, no 429",
                        f"{quota.ratio:.2f}, {quota.status_429} × 429", "met" if ok else "**NOT met**"])
    quota_head = ["load under the server's quota", ""]
    quota_rows = []
    if quota is not None:
        quota_rows = [
            ["quota", f"{args.quota_points:,} points / {args.quota_window} s = {quota.quota_rate:,.0f} points/s"],
            ["threads loaded", f"{quota.threads} × {args.messages + 1} resources ({quota.transactions} transactions, "
                               f"{quota.searches} searches)"],
            ["points used (100 per created entry, 20 per search)", f"{quota.points:,}"],
            ["first request → last response", f"{quota.seconds:.2f} s (load() wall time {quota.load_seconds:.2f} s)"],
            ["achieved", f"{quota.achieved:,.0f} points/s = **{quota.ratio:.2f} × quota rate**"],
            ["HTTP 429 seen by the transport", f"{quota.status_429}"],
        ]
    phases = breakdown(loaded)
    cpu_note = target.cpu_note()
    if args.markdown:
        print(f"{caption}:\n")
        print(markdown_table(head, rows))
        print(f"\n{cpu_note}")
        print()
        print(markdown_table(["target", "measured", ""], targets))
        if quota_rows:
            print()
            print(markdown_table(quota_head, quota_rows))
        print()
        print(markdown_table(["where load's time goes", ""], [list(p) for p in phases]))
    else:
        print(caption)
        widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
        for r in [head, *rows]:
            print("  ".join(str(c).ljust(widths[0]) if i == 0 else str(c).rjust(widths[i]) for i, c in enumerate(r)))
        print(cpu_note)
        print()
        for t in targets:
            print(f"{t[0]:<56} {t[1]:>34}  {t[2].strip('*')}")
        if quota_rows:
            print()
            for q in quota_rows:
                print(f"{q[0]:<52} {q[1].replace('**', '')}")
        print("\nwhere load's time goes")
        for p in phases:
            print(f"  {p[0]:<72} {p[1]:>10}")


if __name__ == "__main__":
    sys.exit(main())
