"""Migration throughput and memory: a shuffled CSV export → NDJSON bundles, at two sizes, through the command
as a user runs it, beside the library path and the code of another commit (the baseline).

    python bench/migrate.py [--messages 1000000] [--per-conversation 10] [--workers N] [--data DIR]
                            [--baseline REF] [--no-library] [--markdown]

Runs the export at `--messages` and at twice that (same shape: 10 messages a conversation, shuffled, 1% bad
rows). At each size, in one run and in this order:

- `main` (with `--baseline REF`, default `main`; `--baseline ''` leaves it out): the command of that commit
  (its `bundler/` taken out with `git archive`, run as `python -m bundler` from there), the same arguments;
- `command`: `thread-bundler migrate EXPORT --mapping M --to ndjson OUT --format json` in its own process, on the
  files (`common.run_command`): the wall time of the whole process, and the peak memory of its largest process
  (the kernel's, from wait4) and of its whole process tree (sampled every 20 ms);
- `library`: `bundler.migrate.migrate(...)` called in a fresh child process, timed around the call (without
  the interpreter's start and imports); memory: VmHWM of the process and of each worker it started.

Every mode must write the same bytes (bundles and rejects): the run stops if they differ. The ratios are of
rows/s, against the baseline's command and against the library path, measured in the same run; the load average
is printed with the table (the machine's other work moves the absolute figures, the ratios much less).
Generated data lives in a temporary folder and is removed, unless `--data DIR` keeps it there for the next run
(same arguments, same bytes: an export already there is used as it is).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import markdown_table, run_command
from legacy_export import MAPPING, write_export

ROOT = Path(__file__).resolve().parent.parent

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


@dataclass
class Run:
    mode: str
    rows: int
    threads: int
    messages: int
    rejected: int
    seconds: float
    processes: int
    largest_mb: float
    all_mb: float
    digest: str

    @property
    def rate(self) -> float:
        return self.rows / self.seconds


def _digest(out: Path) -> str:
    """The output's and its rejects' SHA-256 (what every mode must agree on); both files are removed."""
    h = hashlib.sha256()
    for path in (out, Path(str(out) + ".rejects.jsonl")):
        with path.open("rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        h.update(b"\0")
        path.unlink()
    return h.hexdigest()


def _workers(workers: int) -> list[str]:
    return ["--workers", str(workers)] if workers else []


def run_cli(mode: str, export: Path, mapping: Path, out: Path, workers: int, pythonpath: Path | None) -> Run:
    """The command in its own process: `pythonpath` (a baseline's code) first on the path, else this checkout's."""
    env = {"PYTHONPATH": str(pythonpath)} if pythonpath is not None else None
    done = run_command(["migrate", str(export), "--mapping", str(mapping), "--to", "ndjson", str(out),
                        "--format", "json", *_workers(workers)], env=env, cwd=out.parent, check=False)
    if done.returncode not in (0, 1):  # 1: rows rejected, as this export has on purpose
        raise RuntimeError(f"{mode}: exit {done.returncode}\n{done.stderr[-4000:]}")
    s = json.loads(done.stdout)
    return Run(mode, s["rows_read"], s["threads"], s["messages"], sum(s["rejected"].values()), done.seconds,
               0, done.peak_mb, done.tree_peak_mb, _digest(out))


def run_library(export: Path, mapping: Path, out: Path, workers: int) -> Run:
    done = subprocess.run([sys.executable, "-c", CHILD, str(export), str(mapping), str(out), str(workers)],
                          check=True, capture_output=True, text=True, cwd=out.parent)
    r = json.loads(done.stdout)
    return Run("library", r["rows"], r["threads"], r["messages"], r["rejected"], r["seconds"],
               1 + len(r["workers"]), max([r["parent"], *r["workers"]]) / 2**20,
               (r["parent"] + sum(r["workers"])) / 2**20, _digest(out))


def baseline_code(ref: str, folder: Path) -> Path:
    """`bundler/` (and the `schemas/` it reads) of commit `ref`, taken out into `folder` (for PYTHONPATH)."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", ref, "bundler", "schemas"], check=True,
                             capture_output=True).stdout
    tar = folder / "baseline.tar"
    tar.write_bytes(archive)
    with tarfile.open(tar) as t:
        t.extractall(folder, filter="data")
    tar.unlink()
    return folder


def export_of(messages: int, per_conversation: int, folder: Path) -> Path:
    export = folder / f"export-{messages}-{per_conversation}.csv"
    if not export.exists():
        t0 = time.perf_counter()
        partial = export.with_name(export.name + ".partial")
        write_export(partial, messages, messages // per_conversation, bad_share=0.01, seed=1)
        partial.replace(export)
        print(f"generated {messages:,} rows ({export.stat().st_size / 1e6:,.0f} MB) in "
              f"{time.perf_counter() - t0:.0f}s", file=sys.stderr)
    return export


def _said(run: Run) -> Run:
    """`run`, told on stderr as it ends (a long run stopped halfway still shows what it measured)."""
    print(f"{run.rows:,} rows, {run.mode}: {run.seconds:.1f} s, {run.rate:,.0f} rows/s, peak {run.largest_mb:,.0f} MB "
          f"largest process, {run.all_mb:,.0f} MB all; load average {load_average()}", file=sys.stderr, flush=True)
    return run


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3]) if Path("/proc/loadavg").exists() else "?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--per-conversation", type=int, default=10)
    parser.add_argument("--workers", type=int, default=0, help="worker processes (0: migrate's default)")
    parser.add_argument("--data", type=Path, help="keep generated exports in this folder, and reuse them")
    parser.add_argument("--baseline", default="main", help="the commit whose command is the baseline ('': none)")
    parser.add_argument("--no-library", action="store_true", help="leave out the library path")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    if args.data is not None:
        args.data.mkdir(parents=True, exist_ok=True)
    table = []
    runs: dict[int, list[Run]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-migrate-") as tmp_name:
        tmp = Path(tmp_name)
        mapping = tmp / "mapping.yaml"
        mapping.write_text(MAPPING, encoding="utf-8")
        base = None
        if args.baseline:
            (tmp / "baseline").mkdir()
            base = baseline_code(args.baseline, tmp / "baseline")
        for n in (args.messages, args.messages * 2):
            export = export_of(n, args.per_conversation, args.data or tmp)
            out = tmp / f"out-{n}.ndjson"
            loads = [load_average()]
            got = []
            if base is not None:
                got.append(_said(run_cli(args.baseline, export, mapping, out, args.workers, base)))
            got.append(_said(run_cli("command", export, mapping, out, args.workers, None)))
            if not args.no_library:
                got.append(_said(run_library(export, mapping, out, args.workers)))
            loads.append(load_average())
            if len({r.digest for r in got}) != 1:
                raise SystemExit(f"the modes wrote different bytes at {n:,} rows: "
                                 + ", ".join(f"{r.mode} {r.digest[:12]}" for r in got))
            runs[n] = got
            if args.data is None:
                export.unlink()
            cli = next(r for r in got if r.mode == "command")
            for r in got:
                vs = [f"{r.rate / b.rate:.2f}×" for b in (got[0] if base is not None else None,
                                                            got[-1] if not args.no_library else None)
                      if b is not None]
                table.append([f"{r.rows:,}", r.mode, f"{r.messages:,}", f"{r.rejected:,}", f"{r.seconds:.1f}",
                              f"{r.rate:,.0f}", *vs, f"{r.largest_mb:,.0f}", f"{r.all_mb:,.0f}",
                              f"{loads[0]} → {loads[1]}" if r is cli else ""])
    header = ["rows (shuffled CSV)", "mode", "messages written", "rejected", "seconds", "rows/s"]
    if base is not None:
        header.append(f"vs {args.baseline} (command)")
    if not args.no_library:
        header.append("vs library")
    header += ["peak MB, largest process", "peak MB, all processes", "load average (1 min) before → after"]
    if args.markdown:
        print(markdown_table(header, table))
    else:
        for row in [header, *table]:
            print("  ".join(f"{c:>14}" for c in row))
    sizes = sorted(runs)
    cli_runs = [next(r for r in runs[n] if r.mode == "command") for n in sizes]
    growth = cli_runs[1].all_mb / cli_runs[0].all_mb if cli_runs[0].all_mb else float("nan")
    print(f"\n{os.cpu_count()} cores. The command's memory at 2× input: ×{growth:.2f} (all processes); rows/s target "
          f"≥ 60,000: {'met' if min(r.rate for r in cli_runs) >= 60_000 else 'NOT met'} by the command",
          file=sys.stderr)


if __name__ == "__main__":
    main()
