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
2. **export**: `bundler.export` with its defaults, specs written to a temp folder;
3. memory: a fresh process exports all of `--threads` threads, then (after `--memory-threads` more are loaded)
   all of them again; its peak resident memory from the kernel (VmHWM). `--memory-threads 0` skips it (on a real
   Medplum filling 9,000 threads takes many minutes).

Targets: export at least 50% of the ceiling (it shapes, checks, builds and compares every thread, then writes
YAML); peak memory within 10% from the small export to the ten times larger one.
"""

from __future__ import annotations

import argparse
import os
import subprocess
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

from common import REMOTE_ENV, Target, markdown_table, open_target, synthetic_specs

from bundler import bundle_bytes, parse_spec
from bundler.export import export
from bundler.export.search import Filters
from bundler.medplum.client import ClientCredentials, FhirClient
from bundler.vocabulary import READ_RECEIPT_CODE, READ_RECEIPT_SYSTEM


def peak_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise SystemExit("needs Linux (/proc/self/status)")


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


def memory_child(out: str, subject: str) -> None:
    """(In a fresh process) export the threads about `subject` of the server named by MEDPLUM_*; print the figures
    as JSON."""
    base, client_id, secret = (os.environ[k] for k in REMOTE_ENV)
    with FhirClient(base, ClientCredentials(client_id, secret)) as client:
        started = time.perf_counter()
        report = export(client, out, subject=subject)
        seconds = time.perf_counter() - started
    print(orjson.dumps({"threads": report.threads, "messages": report.messages, "seconds": seconds,
                        "peak_mb": peak_mb()}).decode())


def run_memory(target: Target, subject: str) -> dict[str, Any]:
    env = {**os.environ, "MEDPLUM_BASE_URL": target.base_url, "MEDPLUM_CLIENT_ID": target.client_id,
           "MEDPLUM_CLIENT_SECRET": target.client_secret}
    with tempfile.TemporaryDirectory(prefix="bench-export-") as tmp:
        done = subprocess.run([sys.executable, __file__, "--memory-child", tmp + "/out", "--subject", subject],
                              env=env, check=False, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"export memory run failed:\n{done.stderr[-2000:]}")
    figures: dict[str, Any] = orjson.loads(done.stdout.splitlines()[-1])
    return figures


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
    parser.add_argument("--memory-child", metavar="OUT", help=argparse.SUPPRESS)
    parser.add_argument("--subject", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        memory_child(args.memory_child, args.subject)
        return
    if args.quick:
        args.threads, args.memory_threads, args.repeat = 100, min(args.memory_threads, 400), 1
    with open_target() as target, target.client() as client:
        where = target.describe()
        before = target.load_average()
        subject = f"Patient/{target.prefix('x')}subject"
        filters = Filters.checked(subject=subject)
        fill(client, args.threads, args.messages, seed=1, prefix=target.prefix("x"), subject=subject)
        resources = args.threads * (args.messages + 1)
        bare = best = (float("inf"), (0.0, 0.0, 0.0))
        for _ in range(args.repeat):
            t0, cpu0 = time.perf_counter(), target.cpu()
            found = ceiling(client, filters, args.page_size, args.concurrency)
            bare = min(bare, (time.perf_counter() - t0, target.spent(cpu0)))
            with tempfile.TemporaryDirectory(prefix="bench-export-") as tmp:
                t0, cpu0 = time.perf_counter(), target.cpu()
                report = export(client, Path(tmp) / "out", subject=subject, page_size=args.page_size,
                                concurrency=args.concurrency)
                best = min(best, (time.perf_counter() - t0, target.spent(cpu0)))
            if found != (args.threads, args.threads * args.messages):
                raise SystemExit(f"the ceiling read {found} (threads, messages) of the {args.threads} threads loaded")
            if not report.ok or (report.threads, report.messages) != found:
                raise SystemExit(f"export: {report.as_json()} against {found}")
        memory = []
        if args.memory_threads:
            memory.append(run_memory(target, subject))
            fill(client, args.memory_threads, args.messages, seed=2, prefix=target.prefix("x"), subject=subject)
            memory.append(run_memory(target, subject))
        load_average = f"load average {before} at the start, {target.load_average()} at the end"
        cpu_note = target.cpu_note()
    caption = (f"Exporting {args.threads:,} threads of 1 header + {args.messages} messages from a {where}, best of "
               f"{args.repeat}; {load_average}")
    rows = [[label, f"{resources:,}", f"{seconds:.2f}", f"{resources / seconds:,.0f}", f"{bare[0] / seconds:.2f}",
             *(f"{c / seconds:.0%}" if c == c else "-" for c in cpu)]
            for label, (seconds, cpu) in (("ceiling: bare httpx making the same searches", bare),
                                          ("**export** (defaults, YAML specs written)", best))]
    table = [[f"{m['threads']:,}", f"{m['messages']:,}", f"{m['seconds']:.1f}", f"{m['peak_mb']:.0f}",
              f"{m['peak_mb'] / memory[0]['peak_mb']:.2f}"] for m in memory]
    if args.markdown:
        print(f"{caption}:\n")
        print(markdown_table(["mode", "resources", "seconds", "resources/s", "× ceiling", "CPU: client", "server",
                              "others"], rows))
        print(f"\n{cpu_note}")
        if table:
            print()
            print(markdown_table(["threads exported (a fresh process each)", "messages", "seconds", "peak MB",
                                  "× smallest"], table))
    else:
        print(caption)
        for row in [*rows, [], *table]:
            print("  ".join(row))
        print(cpu_note)


if __name__ == "__main__":
    main()
