"""Seeding a fresh, strict project: generated threads with their participants created when missing, beside the
bare ceiling of the same requests.

    python bench/seed.py                       # 1,000 generated threads (2-8 messages), local server, strict
    python bench/seed.py --markdown --repeat 3 # best of 3, as Markdown tables for README.md
    python bench/seed.py --quick               # a smoke run in seconds

The threads are `bundler.generate(N, seed=1)`'s: about one patient for every four threads, clinicians, a care
team, each created when missing, and the odd small file attachment (a Binary entry in its thread's
transaction). The local server runs with `checkReferencesOnWrite` (a strict project), emptied before each mode.

Modes:
1. ceiling: a bare loop posting the same requests with httpx (one bearer token, 4 threads, no checks but the
   status): first the participants' conditional-create transactions (8 entries each, `build.participant_bundles`),
   then the threads' transactions (`bundle_bytes`, built beforehand);
2. seed: `bundler.load.load` with its defaults into the empty strict project (fresh journal), wall time including
   the bundles' build, its pre-check searches, its probe, and making sure of every participant;
3. participants there already: the same `load` (a fresh journal) into a project that holds the participants, so
   each is found by its conditional create (200) instead of created: what making sure of them costs when there is
   nothing to create.

Target: seeding at least 80% of the ceiling's resources a second.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import markdown_table
from load import LOAD_CONCURRENCY, Row, Target, _spent, print_tables, run_ceiling, warm_up

from bundler import generate, load_specs
from bundler.build import bundle_bytes, created_participants, participant_bundles
from bundler.load import load
from bundler.medplum.client import ClientCredentials, FhirClient
from bundler.medplum.localserver import LocalServer
from bundler.spec import ThreadSpec


def seeded(folder: Path, threads: int) -> tuple[list[ThreadSpec], int]:
    """The generated specs (with their participants file) and how many resources seeding them creates."""
    summary = generate(threads, out=folder, seed=1)
    specs = load_specs([folder / "threads"], participants=summary.participants)
    binaries = sum(len({a.hash for m in s.messages for a in m.attachments if a.file}) for s in specs)
    resources = len(created_participants(specs)) + sum(len(s.messages) + 1 for s in specs) + binaries
    return specs, resources


def run_seed(target: Target, specs: list[ThreadSpec], resources: int, label: str) -> Row:
    with tempfile.TemporaryDirectory(prefix="bench-seed-") as tmp, \
            FhirClient(target.base_url, ClientCredentials(target.client_id, target.client_secret)) as client:
        cpu0 = target.cpu()
        started = time.perf_counter()
        report = load(specs, client, journal=Path(tmp) / "j.sqlite", keep_results=True)
        seconds = time.perf_counter() - started
        cpu = _spent(cpu0, target.cpu())
    bad = [t for t in report.threads if not t.outcome.ok]
    if bad or report.participants.failed:
        raise SystemExit(f"{label}: {len(bad)} threads not loaded, e.g. {bad[0].key}: {bad[0].error}" if bad else
                         f"{label}: {report.participants.failed} participants failed")
    return Row(label, resources, seconds, cpu, extra={"participants": report.participants.text(),
                                                      "requests": report.requests})


def run_bare(target: Target, specs: list[ThreadSpec], resources: int) -> Row:
    """The ceiling: the participants' transactions, then the threads', posted bare (times added)."""
    people = [orjson.dumps(b) for b in participant_bundles(created_participants(specs))]
    first = run_ceiling(target, people, 0)
    second = run_ceiling(target, [bundle_bytes(s) for s in specs], 0)
    cpu = tuple(a + b for a, b in zip(first.cpu, second.cpu, strict=True))
    return Row(f"ceiling: bare httpx, {LOAD_CONCURRENCY} threads", resources, first.seconds + second.seconds,
               (cpu[0], cpu[1], cpu[2]), extra={"requests": len(people) + len(specs)})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=1, help="run each mode N times, keep the best")
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--quick", action="store_true", help="100 threads, once, no warm-up")
    args = parser.parse_args(argv)
    threads = 100 if args.quick else args.threads
    server = LocalServer(quota=False, check_references_on_write=True).start()
    target = Target(server.base_url, server.client_id, server.client_secret, server)
    try:
        with tempfile.TemporaryDirectory(prefix="bench-seed-specs-") as tmp:
            specs, resources = seeded(Path(tmp), threads)
            if not args.quick:
                warm_up(target, 4, 5.0)
            rows = measure(target, specs, resources, 1 if args.quick else args.repeat)
    finally:
        server.stop()
    ceiling = rows[0]
    table = [[r.mode, f"{r.resources:,}", f"{r.extra.get('requests', '')}", f"{r.seconds:.2f}", f"{r.rate:,.0f}",
              f"{r.rate / ceiling.rate:.2f}", f"{r.cpu[0] / r.seconds:.0%}", f"{r.cpu[1] / r.seconds:.0%}"]
             for r in rows]
    head = ["mode", "resources", "requests", "seconds", "resources/s", "× ceiling", "CPU: client", "server"]
    caption = (f"Seeding {threads:,} generated threads ({sum(len(s.messages) for s in specs):,} messages, "
               f"{len(created_participants(specs)):,} participants created when missing) into a strict local server")
    if args.markdown:
        print(f"\n{caption}:\n\n{markdown_table(head, table)}")
    else:
        print_tables([(caption, head, table)], False)
    for r in rows[1:]:
        print(f"  {r.mode}: {r.extra['participants']}", file=sys.stderr)
    return 0


def measure(target: Target, specs: list[ThreadSpec], resources: int, repeat: int) -> list[Row]:
    """Best of `repeat` for each mode, the store emptied before each run."""
    best: dict[str, Row] = {}

    def keep(row: Row) -> None:
        if row.mode not in best or row.seconds < best[row.mode].seconds:
            best[row.mode] = row

    people = len(created_participants(specs))
    for _ in range(repeat):
        target.reset()
        keep(run_bare(target, specs, resources))
        target.reset()
        keep(run_seed(target, specs, resources, "**seed** (load: participants created, then threads)"))
        target.reset()
        run_ceiling(target, [orjson.dumps(b) for b in participant_bundles(created_participants(specs))], 0)
        keep(run_seed(target, specs, resources - people, "load, the participants there already"))
    return list(best.values())


if __name__ == "__main__":
    sys.exit(main())
