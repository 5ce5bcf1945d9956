"""Export throughput against a bare ceiling, and its memory as the number of threads grows (local server).

    python bench/export.py                 # 1,000 threads of 1 header + 10 messages; memory at 1,000 and 10,000
    python bench/export.py --markdown      # the same as Markdown tables, for README.md
    python bench/export.py --quick         # a smoke run in seconds

Starts a local Medplum server and fills it with bare transactions of `sample_specs` threads. Then:
1. ceiling: a bare loop making the requests an export makes (header pages of `--page-size`, sorted by
   `_lastUpdated`, then one `part-of` search a thread) with httpx, the same concurrency, JSON parsed and dropped;
2. **export**: `bundler.export` with its defaults, specs written to a temp folder;
3. memory: a fresh process exports all of `--threads` threads, then (after `--memory-threads` more are loaded)
   all of them again; its peak resident memory from the kernel (VmHWM).

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

from common import markdown_table, synthetic_specs

from bundler import bundle_bytes, parse_spec
from bundler.export import export
from bundler.medplum.client import ClientCredentials, FhirClient
from bundler.medplum.localserver import LocalServer
from bundler.testing.server import REMOTE_ENV


def peak_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise SystemExit("needs Linux (/proc/self/status)")


def fill(client: FhirClient, threads: int, per_thread: int, *, seed: int) -> None:
    """`threads` threads posted as bare transactions, 4 at a time."""
    bodies = [bundle_bytes(parse_spec({**d, "thread": f"{seed}-{d['thread']}"}))
              for d in synthetic_specs(threads, per_thread, seed=seed)]
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda b: client.transaction(b, entries=per_thread + 1), bodies))


def ceiling(client: FhirClient, page_size: int, concurrency: int) -> tuple[int, int]:
    """The requests an export makes, bare: (threads, messages) read."""
    with httpx.Client(headers={"Accept": "application/fhir+json"}, auth=client.auth, timeout=60) as http:
        def get(url: str, params: dict[str, str] | None = None) -> dict[str, Any]:
            out: dict[str, Any] = orjson.loads(http.get(url, params=params).content)
            return out

        def thread(header_id: str) -> int:
            page = get(client.fhir_base + "Communication", {"part-of": f"Communication/{header_id}",
                                                            "_sort": "sent", "_count": str(page_size)})
            return len(page.get("entry") or ())

        futures = []
        url: str | None = client.fhir_base + "Communication"
        params: dict[str, str] | None = {"part-of:missing": "true", "_sort": "_lastUpdated",
                                         "_count": str(page_size)}
        with ThreadPoolExecutor(concurrency) as pool:
            while url:  # the next page is read while this one's threads are (as export does)
                page = get(url, params)
                futures += [pool.submit(thread, e["resource"]["id"]) for e in page.get("entry") or ()]
                url = next((link["url"] for link in page.get("link", []) if link["relation"] == "next"), None)
                params = None
            return len(futures), sum(f.result() for f in futures)


def memory_child(out: str) -> None:
    """(In a fresh process) export everything of the server named by MEDPLUM_*; print the figures as JSON."""
    base, client_id, secret = (os.environ[k] for k in REMOTE_ENV)
    with FhirClient(base, ClientCredentials(client_id, secret)) as client:
        started = time.perf_counter()
        report = export(client, out)
        seconds = time.perf_counter() - started
    print(orjson.dumps({"threads": report.threads, "messages": report.messages, "seconds": seconds,
                        "peak_mb": peak_mb()}).decode())


def run_memory(server: LocalServer) -> dict[str, Any]:
    env = {**os.environ, "MEDPLUM_BASE_URL": server.base_url, "MEDPLUM_CLIENT_ID": server.client_id,
           "MEDPLUM_CLIENT_SECRET": server.client_secret}
    with tempfile.TemporaryDirectory(prefix="bench-export-") as tmp:
        done = subprocess.run([sys.executable, __file__, "--memory-child", tmp + "/out"], env=env, check=True,
                              capture_output=True, text=True)
    figures: dict[str, Any] = orjson.loads(done.stdout.splitlines()[-1])
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1000)
    parser.add_argument("--messages", type=int, default=10, help="Messages a thread.")
    parser.add_argument("--memory-threads", type=int, default=9000, help="Threads added for the memory run.")
    parser.add_argument("--page-size", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--memory-child", metavar="OUT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        memory_child(args.memory_child)
        return
    if args.quick:
        args.threads, args.memory_threads, args.repeat = 100, 400, 1
    with LocalServer(port=0) as server, \
            FhirClient(server.base_url, ClientCredentials(server.client_id, server.client_secret)) as client:
        fill(client, args.threads, args.messages, seed=1)
        resources = args.threads * (args.messages + 1)
        bare = best = float("inf")
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            found = ceiling(client, args.page_size, args.concurrency)
            bare = min(bare, time.perf_counter() - t0)
            with tempfile.TemporaryDirectory(prefix="bench-export-") as tmp:
                t0 = time.perf_counter()
                report = export(client, Path(tmp) / "out", page_size=args.page_size, concurrency=args.concurrency)
                best = min(best, time.perf_counter() - t0)
            if not report.ok or (report.threads, report.messages) != found:
                raise SystemExit(f"export: {report.as_json()} against {found}")
        small = run_memory(server)
        fill(client, args.memory_threads, args.messages, seed=2)
        large = run_memory(server)
    rows = [["ceiling: bare httpx making the same searches", f"{resources:,}", f"{bare:.2f}",
             f"{resources / bare:,.0f}", "1.00"],
            ["**export** (defaults, YAML specs written)", f"{resources:,}", f"{best:.2f}",
             f"{resources / best:,.0f}", f"{bare / best:.2f}"]]
    memory = [[f"{m['threads']:,}", f"{m['messages']:,}", f"{m['seconds']:.1f}", f"{m['peak_mb']:.0f}",
               f"{m['peak_mb'] / small['peak_mb']:.2f}"] for m in (small, large)]
    if args.markdown:
        print(markdown_table(["mode", "resources", "seconds", "resources/s", "× ceiling"], rows))
        print()
        print(markdown_table(["threads exported", "messages", "seconds", "peak MB", "× smallest"], memory))
    else:
        for row in rows + [[]] + memory:
            print("  ".join(row))


if __name__ == "__main__":
    main()
