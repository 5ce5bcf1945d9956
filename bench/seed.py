"""Seeding a fresh, strict project: generated threads with their participants created when missing, beside the
bare ceiling of the same requests.

    python bench/seed.py                       # 1,000 generated threads (2-8 messages), local server, strict
    python bench/seed.py --markdown --repeat 3 # best of 3, as Markdown tables for README.md
    python bench/seed.py --quick               # a smoke run in seconds

The threads are `bundler.generate(N, seed=1)`'s: about one patient for every four threads, clinicians, a care
team, each created when missing, and the odd small file attachment (a Binary entry in its thread's
transaction). The local server runs with `checkReferencesOnWrite` (a strict project), emptied before each mode.
With MEDPLUM_BASE_URL, MEDPLUM_CLIENT_ID and MEDPLUM_CLIENT_SECRET set it seeds that project instead, whatever it
is (the caption says whether it checks references, by `doctor`'s probe); nothing is emptied there, so each mode
generates its threads with its own `--prefix` (`generate`'s: thread keys, participants' identifiers and file
names), and its participants are new to the project.

Modes:
1. ceiling: a bare loop posting the same requests with httpx (one bearer token, 4 threads, no checks but the
   status): first the participants' conditional-create transactions (8 entries each, `build.participant_bundles`)
   one at a time, as `load` sends them (each runs serializable on Medplum: concurrent ones conflict, HTTP 409),
   then the threads' transactions (`bundle_bytes`, built beforehand) on 4 threads;
2. seed, the library: `bundler.load.load` with its defaults into the empty strict project (fresh journal), wall
   time including the bundles' build, its pre-check searches, its probe, and making sure of every participant;
3. **seed, the command**: `thread-bundler load DIR/threads --participants DIR/participants.yaml` as a user runs
   it, in its own process (`common.run_command`: start-up, reading the files, login and all), into the empty
   strict project; its peak memory is its whole process's;
4. participants there already: the same `load` (library, a fresh journal) into a project that holds the
   participants, so each is found by its conditional create (200) instead of created: what making sure of them
   costs when there is nothing to create.

Target: seeding at least 80% of the ceiling's resources a second, through the command.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import REMOTE_ENV, Target, markdown_table, open_target, run_command
from load import LOAD_CONCURRENCY, Failed, Row, print_tables, run_ceiling, warm_up

from bundler import generate, load_specs
from bundler.build import bundle_bytes, created_participants, participant_bundles
from bundler.load import load
from bundler.spec import ThreadSpec


@dataclass
class Seeded:
    """Generated threads: their specs, how many resources seeding them creates, and their files (the spec folder
    and the participants file: what the command reads)."""

    specs: list[ThreadSpec]
    resources: int
    folder: Path
    participants: Path


@contextmanager
def seeded(threads: int, prefix: str) -> Iterator[Seeded]:
    """`generate(threads, seed=1, prefix=prefix)`'s threads (with their participants file, in a temp folder kept
    while they are used: the attachment files are read from there). Another prefix gives the same threads with
    other keys, identifiers and participants."""
    with tempfile.TemporaryDirectory(prefix="bench-seed-specs-") as tmp:
        summary = generate(threads, out=tmp, seed=1, prefix=prefix)
        specs = load_specs([Path(tmp) / "threads"], participants=summary.participants)
        binaries = sum(len({a.hash for m in s.messages for a in m.attachments if a.file}) for s in specs)
        yield Seeded(specs, len(created_participants(specs)) + sum(len(s.messages) + 1 for s in specs) + binaries,
                     Path(tmp) / "threads", summary.participants)


def run_command_seed(target: Target, seed: Seeded, label: str) -> Row:
    """`thread-bundler load` as a user runs it on the generated files (its own process, a fresh journal); the CPU
    columns' client is that process."""
    env = dict(zip(REMOTE_ENV, (target.base_url, target.client_id, target.client_secret), strict=True))
    with tempfile.TemporaryDirectory(prefix="bench-seed-") as tmp:
        cpu0, child0 = target.cpu(), _children_cpu()
        run = run_command(["load", str(seed.folder), "--participants", str(seed.participants), "--journal",
                           str(Path(tmp) / "j.sqlite"), "--no-progress"], env=env, check=False)
        _mine, server, others = target.spent(cpu0)
        command = _children_cpu() - child0
    if run.returncode != 0:
        raise Failed(f"{label}: thread-bundler load exited {run.returncode}: {run.stderr[-1500:]}")
    return Row(label, seed.resources, run.seconds, (command, server, others - command),
               extra={"peak_mb": run.peak_mb})


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_seed(target: Target, specs: list[ThreadSpec], resources: int, label: str) -> Row:
    with tempfile.TemporaryDirectory(prefix="bench-seed-") as tmp, target.client() as client:
        cpu0 = target.cpu()
        started = time.perf_counter()
        report = load(specs, client, journal=Path(tmp) / "j.sqlite", keep_results=True)
        seconds = time.perf_counter() - started
        cpu = target.spent(cpu0)
    bad = [t for t in report.threads if not t.outcome.ok]
    if bad or report.participants.failed:
        raise Failed(f"{label}: {len(bad)} threads not loaded, e.g. {bad[0].key}: {bad[0].error}" if bad else
                     f"{label}: {report.participants.failed} participants failed")
    return Row(label, resources, seconds, cpu, extra={"participants": report.participants.text(),
                                                      "requests": report.requests})


def people_bodies(specs: list[ThreadSpec]) -> list[bytes]:
    """The participants' conditional-create transactions, as `load` makes sure of them (8 entries each)."""
    return [orjson.dumps(b) for b in participant_bundles(created_participants(specs))]


def run_bare(target: Target, specs: list[ThreadSpec], resources: int) -> Row:
    """The ceiling: the participants' transactions, then the threads', posted bare (times added)."""
    people = people_bodies(specs)
    threads = [bundle_bytes(s) for s in specs]
    first = run_ceiling(target, people, 0, concurrency=1)  # as `load` makes sure of them: serializable, in turn
    second = run_ceiling(target, threads, 0)
    cpu = tuple(a + b for a, b in zip(first.cpu, second.cpu, strict=True))
    return Row(f"ceiling: bare httpx (participants in turn, then threads on {LOAD_CONCURRENCY})", resources,
               first.seconds + second.seconds,
               (cpu[0], cpu[1], cpu[2]), extra={"requests": len(people) + len(specs)})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=1, help="run each mode N times, keep the best")
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--warm-up", type=float, default=5.0,
                        help="seconds of warm-up traffic first (0: none; its bundles name participants that do not "
                        "exist, so a strict project refuses them, and they still cost quota points)")
    parser.add_argument("--quick", action="store_true", help="100 threads, once, no warm-up")
    args = parser.parse_args(argv)
    threads = 100 if args.quick else args.threads
    with open_target(check_references_on_write=True) as target:
        where = target.describe()
        before = target.load_average()
        if not args.quick and args.warm_up > 0:
            warm_up(target, 4, args.warm_up)
        try:
            rows, messages, people = measure(target, threads, 1 if args.quick else args.repeat)
        except Failed as exc:
            raise SystemExit(f"seed benchmark: {exc}") from None
        load_average = f"load average {before} at the start, {target.load_average()} at the end"
        cpu_note = target.cpu_note()
    ceiling = rows[0]
    table = [[r.mode, f"{r.resources:,}", f"{r.extra.get('requests', '')}", f"{r.seconds:.2f}", f"{r.rate:,.0f}",
              f"{r.rate / ceiling.rate:.2f}", f"{r.extra['peak_mb']:.0f}" if "peak_mb" in r.extra else "-",
              *(f"{c / r.seconds:.0%}" if c == c else "-" for c in r.cpu)]
             for r in rows]
    head = ["mode", "resources", "requests", "seconds", "resources/s", "× ceiling", "peak MB (process)",
            "CPU: client", "server", "others"]
    best = f", best of {args.repeat}" if args.repeat > 1 and not args.quick else ""
    caption = (f"Seeding {threads:,} generated threads ({messages:,} messages, {people:,} participants created when "
               f"missing) into a {where}{best}; {load_average}")
    if args.markdown:
        print(f"\n{caption}:\n\n{markdown_table(head, table)}\n\n{cpu_note}")
    else:
        print_tables([(caption, head, table)], False)
        print(cpu_note)
    for r in rows[1:]:
        if "participants" in r.extra:
            print(f"  {r.mode}: {r.extra['participants']}", file=sys.stderr)
    return 0


def measure(target: Target, threads: int, repeat: int) -> tuple[list[Row], int, int]:
    """Best of `repeat` for each mode, each run on threads and participants of its own (`generate --prefix`), the
    store emptied before each (a local one), the modes taking turns going first (what one leaves a real server to
    do after its requests return falls on each in turn); with the number of messages and participants seeded."""
    best: dict[str, Row] = {}
    seen: list[int] = [0, 0]  # messages, participants (the same for every prefix)

    def run(tag: str, prefix: str) -> Row:
        with seeded(threads, prefix) as seed:
            specs, resources = seed.specs, seed.resources
            people = len(created_participants(specs))
            seen[:] = [sum(len(s.messages) for s in specs), people]
            target.reset()
            if tag == "c":
                return run_bare(target, specs, resources)
            if tag == "m":
                return run_command_seed(target, seed, "**seed, the command** (`thread-bundler load DIR "
                                                      "--participants FILE`, its own process)")
            if tag == "s":
                return run_seed(target, specs, resources, "seed, the library (load: participants created, then "
                                                          "threads)")
            run_ceiling(target, people_bodies(specs), 0, concurrency=1)
            return run_seed(target, specs, resources - people, "load, the participants there already (library)")

    tags = "cmst"  # ceiling, the command, the library, participants there already
    for n in range(repeat):
        for tag in tags[n % 4:] + tags[:n % 4]:
            row = run(tag, target.prefix(f"{tag}{n}").rstrip("-"))
            if tag not in best or row.seconds < best[tag].seconds:
                best[tag] = row
    return [best[t] for t in tags], seen[0], seen[1]


if __name__ == "__main__":
    sys.exit(main())
