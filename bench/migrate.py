"""Migration throughput and memory: a shuffled CSV export → NDJSON bundles, at two sizes.

    python bench/migrate.py [--messages 1000000] [--per-conversation 10] [--workers N] [--markdown]

Runs the export at `--messages` and at twice that (same shape: 10 messages a conversation, shuffled,
1% bad rows), each migration in a fresh child process. Memory is VmHWM (peak RSS) of each process:
the one that calls `migrate` (which does a share of the work itself) and every worker it starts;
"all processes" adds them, the honest figure for the machine. Generated data lives in a temporary
folder and is removed.
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
from bundler.migrate.pipeline import _peak_rss
t0 = time.perf_counter()
s = migrate([sys.argv[1]], sys.argv[2], to="ndjson", out=sys.argv[3], workers=int(sys.argv[4]) or None)
seconds = time.perf_counter() - t0
# s.peak_rss: this process first (as it was at the end of the run), then each worker
print(json.dumps({"seconds": seconds, "rows": s.rows_read, "messages": s.messages, "threads": s.threads,
                  "rejected": s.rejected, "workers": s.peak_rss[1:], "parent": _peak_rss()}))
"""


def run(messages: int, per_conversation: int, workers: int, tmp: Path) -> dict[str, float]:
    export, mapping, out = tmp / f"export-{messages}.csv", tmp / "mapping.yaml", tmp / f"out-{messages}.ndjson"
    t0 = time.perf_counter()
    write_export(export, messages, messages // per_conversation, bad_share=0.01, seed=1)
    print(f"generated {messages:,} rows ({export.stat().st_size / 1e6:,.0f} MB) in {time.perf_counter() - t0:.0f}s",
          file=sys.stderr)
    mapping.write_text(MAPPING, encoding="utf-8")
    done = subprocess.run([sys.executable, "-c", CHILD, str(export), str(mapping), str(out), str(workers)],
                          check=True, capture_output=True, text=True)
    result = json.loads(done.stdout)
    export.unlink()
    out.unlink()
    Path(str(out) + ".rejects.jsonl").unlink()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--per-conversation", type=int, default=10)
    parser.add_argument("--workers", type=int, default=0, help="worker processes (0: migrate's default)")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    rows = []
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-migrate-") as tmp:
        for n in (args.messages, args.messages * 2):
            r = run(n, args.per_conversation, args.workers, Path(tmp))
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
