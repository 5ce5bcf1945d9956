"""Migration throughput and memory: a shuffled CSV export → NDJSON bundles, at two sizes.

    python bench/migrate.py [--messages 1000000] [--per-conversation 10] [--workers N] [--data DIR] [--markdown]

Runs the export at `--messages` and at twice that (same shape: 10 messages a conversation, shuffled,
1% bad rows), each migration in a fresh child process. Memory is VmHWM (peak RSS) of each process:
the one that calls `migrate` (which does a share of the work itself) and every worker it starts;
"all processes" adds them, the honest figure for the machine. Generated data lives in a temporary
folder and is removed, unless `--data DIR` keeps it there for the next run (same arguments, same
bytes: an export already there is used as it is).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import markdown_table
from legacy_export import MAPPING, write_export

CHILD = """
import json, sys, time
from bundler.migrate import migrate
t0 = time.perf_counter()
s = migrate([sys.argv[1]], sys.argv[2], to="ndjson", out=sys.argv[3], workers=int(sys.argv[4]) or None)
seconds = time.perf_counter() - t0
with open("/proc/self/status", encoding="ascii") as f:  # VmHWM: this process's peak RSS
    parent = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
# s.peak_rss: this process first (as it was at the end of the run), then each worker process
print(json.dumps({"seconds": seconds, "rows": s.rows_read, "messages": s.messages, "threads": s.threads,
                  "rejected": s.rejected, "workers": s.peak_rss[1:], "parent": parent}))
"""


def run(messages: int, per_conversation: int, workers: int, tmp: Path, data: Path | None) -> dict[str, float]:
    folder = data or tmp
    export = folder / f"export-{messages}-{per_conversation}.csv"
    mapping, out = tmp / "mapping.yaml", tmp / f"out-{messages}.ndjson"
    if not export.exists():
        t0 = time.perf_counter()
        partial = export.with_name(export.name + ".partial")
        write_export(partial, messages, messages // per_conversation, bad_share=0.01, seed=1)
        partial.replace(export)
        print(f"generated {messages:,} rows ({export.stat().st_size / 1e6:,.0f} MB) in "
              f"{time.perf_counter() - t0:.0f}s", file=sys.stderr)
    mapping.write_text(MAPPING, encoding="utf-8")
    done = subprocess.run([sys.executable, "-c", CHILD, str(export), str(mapping), str(out), str(workers)],
                          check=True, capture_output=True, text=True)
    result = json.loads(done.stdout)
    if data is None:
        export.unlink()
    out.unlink()
    Path(str(out) + ".rejects.jsonl").unlink()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--per-conversation", type=int, default=10)
    parser.add_argument("--workers", type=int, default=0, help="worker processes (0: migrate's default)")
    parser.add_argument("--data", type=Path, help="keep generated exports in this folder, and reuse them")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    rows = []
    results = []
    if args.data is not None:
        args.data.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench-migrate-") as tmp:
        for n in (args.messages, args.messages * 2):
            r = run(n, args.per_conversation, args.workers, Path(tmp), args.data)
            results.append(r)
            per_process = max([r["parent"], *r["workers"]]) / 2**20
            total = (r["parent"] + sum(r["workers"])) / 2**20
            rows.append([f"{r['rows']:,}", f"{r['threads']:,}", f"{r['messages']:,}", f"{r['rejected']:,}",
                         f"{r['seconds']:.1f}", f"{r['rows'] / r['seconds']:,.0f}",
                         f"{1 + len(r['workers'])}", f"{per_process:,.0f}", f"{total:,.0f}"])
    header = ["rows (shuffled CSV)", "threads", "messages written", "rejected", "seconds", "rows/s",
              "processes", "peak MB, largest process", "peak MB, all processes"]
    if args.markdown:
        print(markdown_table(header, rows))
    else:
        for row in [header, *rows]:
            print("  ".join(f"{c:>12}" for c in row))
    a, b = results
    growth = (b["parent"] + sum(b["workers"])) / (a["parent"] + sum(a["workers"]))
    print(f"\nmemory at 2× input: ×{growth:.2f}; rows/s target ≥ 50,000: "
          f"{'met' if min(r['rows'] / r['seconds'] for r in results) >= 50_000 else 'NOT met'}", file=sys.stderr)


if __name__ == "__main__":
    main()
