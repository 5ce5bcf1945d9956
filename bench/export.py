"""Export throughput against a bare ceiling, and its memory as the number of threads grows.

    python bench/export.py                 # 1,000 threads of 1 header + 10 messages; memory at 1,000 and 10,000
    python bench/export.py --markdown      # the same as Markdown tables, for README.md
    python bench/export.py --quick         # a smoke run in seconds

Starts a local Medplum server, unless MEDPLUM_BASE_URL, MEDPLUM_CLIENT_ID and MEDPLUM_CLIENT_SECRET name one (see
`common.open_target`), and fills it with bare transactions of `sample_specs` threads. A remote project holds
other threads too (earlier runs', other users'), so every thread of the run has one subject of its own, a
literal `Patient/<run tag>-x-subject` (a reference to nothing: the project must not check references, as
bench.env's does not), and the export and the ceiling both ask the server for that subject only (`--subject`,
export's one filter the server applies exactly; `--since` would also take whatever others wrote meanwhile, and
the identifier system is no filter: a header of another system is exported, as not in our shape). Locally the
same filter is used, so both servers answer the same searches. Then:
1. ceiling: a bare loop making the requests an export makes (header pages of `--page-size`, sorted by
   `_lastUpdated`, then a thread's `part-of` search and its read-receipt `Task` search) with httpx, the same
   concurrency, JSON parsed and dropped;
2. **export, the command**: `thread-bundler export -o DIR --subject ...` as a user runs it, in its own process
   (`common.run_command`: start-up, login and all), specs written to a temp folder;
3. export, the library: `bundler.export` called in this process (no start-up, no login);
4. memory: the command exports all of `--threads` threads, then (after `--memory-threads` more are loaded) all of
   them again; peak resident memory of its whole process (the kernel's figure, from wait4). `--memory-threads 0`
   skips it (on a real Medplum filling 9,000 threads takes many minutes).

Every mode runs `--repeat` times, taking turns; the best of each is kept. Targets: the command at least 0.6 of
the ceiling; peak memory within 10% from the small export to the ten times larger one.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import REMOTE_ENV, CommandRun, Target, markdown_table, open_target, run_command, synthetic_specs

from bundler import bundle_bytes, parse_spec
from bundler.export import export
from bundler.export.search import Filters
from bundler.medplum.client import FhirClient
from bundler.vocabulary import READ_RECEIPT_CODE, READ_RECEIPT_SYSTEM


def fill(client: FhirClient, threads: int, per_thread: int, *, seed: int, prefix: str, subject: str) -> None:
    """`threads` threads about `subject`, keys starting with `prefix`, posted as bare transactions, 4 at a time."""
    bodies = [bundle_bytes(parse_spec({**d, "thread": f"{prefix}{seed}-{d['thread']}", "subject": subject}))
              for d in synthetic_specs(threads, per_thread, seed=seed)]
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda b: client.transaction(b, entries=per_thread + 1), bodies))


def ceiling(client: FhirClient, filters: Filters, page_size: int, concurrency: int) -> tuple[int, int]:
    """The requests an export makes, bare: (threads, messages) read."""
    with httpx.Client(headers={"Accept": "application/fhir+json"}, auth=client.auth, timeout=60) as http:
        def get(url: str, params: dict[str, str] | None = None) -> dict[str, Any]:
            response = http.get(url, params=params)
            response.raise_for_status()
            out: dict[str, Any] = orjson.loads(response.content)
            return out

        def thread(header_id: str) -> int:
            page = get(client.fhir_base + "Communication", {"part-of": f"Communication/{header_id}",
                                                            "_sort": "sent", "_count": str(page_size)})
            get(client.fhir_base + "Task", {"focus": f"Communication/{header_id}",
                                            "code": f"{READ_RECEIPT_SYSTEM}|{READ_RECEIPT_CODE}", "_count": "1000"})
            return len(page.get("entry") or ())

        futures = []
        url: str | None = client.fhir_base + "Communication"
        params: dict[str, str] | None = filters.params(page_size)
        with ThreadPoolExecutor(concurrency) as pool:
            while url:  # the next page is read while this one's threads are (as export does)
                page = get(url, params)
                futures += [pool.submit(thread, e["resource"]["id"]) for e in page.get("entry") or ()]
                url = next((link["url"] for link in page.get("link", []) if link["relation"] == "next"), None)
                params = None
            return len(futures), sum(f.result() for f in futures)


def children_cpu() -> float:
    """CPU seconds of this process's children that have ended (a command run, once waited for)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_export_command(target: Target, subject: str, out: Path, *, page_size: int, concurrency: int
                       ) -> tuple[CommandRun, tuple[float, float, float]]:
    """`thread-bundler export` as a user runs it, on the threads about `subject`; the run and the CPU seconds
    meanwhile: the command's process (this client), the server, every other process."""
    env = dict(zip(REMOTE_ENV, (target.base_url, target.client_id, target.client_secret), strict=True))
    cpu0, child0 = target.cpu(), children_cpu()
    run = run_command(["export", "-o", str(out), "--subject", subject, "--page-size", str(page_size),
                       "--concurrency", str(concurrency), "--no-progress"], env=env)
    _mine, server, others = target.spent(cpu0)
    command = children_cpu() - child0
    return run, (command, server, others - command)


def written(out: Path) -> int:
    """Spec files in an export's folder."""
    return sum(1 for _ in out.glob("*.yaml"))


Timing = tuple[float, tuple[float, float, float]]  # seconds, CPU seconds (client, server, others)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1000)
    parser.add_argument("--messages", type=int, default=10, help="Messages a thread.")
    parser.add_argument("--memory-threads", type=int, default=9000,
                        help="Threads added for the memory run (0: no memory run).")
    parser.add_argument("--page-size", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.threads, args.memory_threads, args.repeat = 100, min(args.memory_threads, 400), 1
    with open_target() as target, target.client() as client:
        where = target.describe()
        before = target.load_average()
        subject = f"Patient/{target.prefix('x')}subject"
        filters = Filters.checked(subject=subject)
        fill(client, args.threads, args.messages, seed=1, prefix=target.prefix("x"), subject=subject)
        resources = args.threads * (args.messages + 1)
        expected = (args.threads, args.threads * args.messages)
        best: dict[str, Timing] = {}
        peak = float("inf")

        def keep(mode: str, timing: Timing) -> None:
            if mode not in best or timing[0] < best[mode][0]:
                best[mode] = timing

        def bare() -> None:
            t0, cpu0 = time.perf_counter(), target.cpu()
            found = ceiling(client, filters, args.page_size, args.concurrency)
            keep("ceiling", (time.perf_counter() - t0, target.spent(cpu0)))
            if found != expected:
                raise SystemExit(f"the ceiling read {found} (threads, messages) of the {args.threads} threads loaded")

        def library() -> None:
            with tempfile.TemporaryDirectory(prefix="bench-export-") as tmp:
                t0, cpu0 = time.perf_counter(), target.cpu()
                report = export(client, Path(tmp) / "out", subject=subject, page_size=args.page_size,
                                concurrency=args.concurrency)
                keep("library", (time.perf_counter() - t0, target.spent(cpu0)))
            if not report.ok or (report.threads, report.messages) != expected:
                raise SystemExit(f"export: {report.as_json()} against {expected}")

        def command() -> None:
            nonlocal peak
            with tempfile.TemporaryDirectory(prefix="bench-export-") as tmp:
                run, cpu = run_export_command(target, subject, Path(tmp) / "out", page_size=args.page_size,
                                              concurrency=args.concurrency)
                if written(Path(tmp) / "out") != args.threads:
                    raise SystemExit(f"thread-bundler export wrote {written(Path(tmp) / 'out')} specs of "
                                     f"{args.threads}:\n{run.stderr[-2000:]}")
            keep("command", (run.seconds, cpu))
            peak = min(peak, run.peak_mb)

        modes = [bare, command, library]
        for n in range(args.repeat):  # the modes take turns going first
            for mode in modes[n % 3:] + modes[:n % 3]:
                mode()
        memory: list[tuple[int, CommandRun]] = []
        if args.memory_threads:
            for threads, seed in ((args.threads, 0), (args.threads + args.memory_threads, 2)):
                if seed:
                    fill(client, args.memory_threads, args.messages, seed=seed, prefix=target.prefix("x"),
                         subject=subject)
                with tempfile.TemporaryDirectory(prefix="bench-export-") as tmp:
                    memory.append((threads, run_export_command(target, subject, Path(tmp) / "out",
                                                               page_size=args.page_size,
                                                               concurrency=args.concurrency)[0]))
        load_average = f"load average {before} at the start, {target.load_average()} at the end"
        cpu_note = target.cpu_note()
    caption = (f"Exporting {args.threads:,} threads of 1 header + {args.messages} messages from a {where}, best of "
               f"{args.repeat} (the modes taking turns); {load_average}")
    labels = {"ceiling": "ceiling: bare httpx making the same searches (in this process)",
              "command": f"**export, the command** (`thread-bundler export`, its own process: peak {peak:.0f} MB)",
              "library": "export, the library (`bundler.export` in this process)"}
    bare_seconds = best["ceiling"][0]
    rows = [[labels[mode], f"{resources:,}", f"{seconds:.2f}", f"{resources / seconds:,.0f}",
             f"{bare_seconds / seconds:.2f}", *(f"{c / seconds:.0%}" if c == c else "-" for c in cpu)]
            for mode, (seconds, cpu) in best.items()]
    table = [[f"{threads:,}", f"{threads * args.messages:,}", f"{run.seconds:.1f}", f"{run.peak_mb:.0f}",
              f"{run.peak_mb / memory[0][1].peak_mb:.2f}"] for threads, run in memory]
    head = ["mode", "resources", "seconds", "resources/s", "× ceiling", "CPU: client", "server", "others"]
    memory_head = ["threads exported (`thread-bundler export`, its own process)", "messages", "seconds",
                   "peak MB (whole process)", "× smallest"]
    if args.markdown:
        print(f"{caption}:\n")
        print(markdown_table(head, rows))
        print(f"\n{cpu_note} For the command, the client's CPU is its own process's.")
        if table:
            print()
            print(markdown_table(memory_head, table))
    else:
        print(caption)
        for row in [head, *rows, [], *([memory_head] if table else []), *table]:
            print("  ".join(row))
        print(cpu_note)


if __name__ == "__main__":
    main()
