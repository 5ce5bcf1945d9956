"""Peak memory through the commands, as users run them on folders of spec files, beside the library path.

    python bench/memory.py                                  # 100,000 and 1,000,000 messages (minutes)
    python bench/memory.py --sizes 10000,100000 --markdown  # quicker, while developing

For each size, spec files of `--per-file` threads (1 header + `--messages` messages each; JSON arrays written
from `common.synthetic_specs`) are written into a folder, and each command runs on the folder in a fresh process
(`common.run_command`: the kernel's peak resident memory of the process, from wait4):
`thread-bundler validate DIR`, `build DIR -o OUT`, `load DIR`, `verify DIR` and `export -o OUT` (these three with
the local server, emptied before each load; export writes back what the load put there). The library path is the
same call in a fresh process of its own (`--child`): `validate_files([DIR])`, `build_files([DIR], out=OUT)`,
`load([DIR], client)`, `verify([DIR], client)`, `export(client, OUT)`.

`--variant NAME:VAR=VALUE,...` runs the commands again with those environment variables, beside the plain run in
the same run (so the machine's load is shared alike): e.g. `--variant arenas8:MALLOC_ARENA_MAX=8` against the
command's own cap of glibc's malloc arenas (`bundler.malloc`).

Target (issue 22): every command under 150 MB, and flat within 10% from 100,000 to 1,000,000 messages.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    _communicate,
    _waited_maxrss,
    markdown_table,
    open_target,
    run_command,
    synthetic_specs,
)

COMMANDS = ("validate", "build", "load", "verify", "export")


@dataclass
class Row:
    command: str
    path: str  # "command" or "library", or the name of a --variant (the command with its environment)
    messages: int
    threads: int
    seconds: float
    peak_mb: float


def write_specs(folder: Path, messages: int, per_thread: int, per_file: int) -> int:
    """Spec files holding `messages` messages in threads of `per_thread`, `per_file` threads to a file; the number
    of threads."""
    folder.mkdir(parents=True, exist_ok=True)
    threads = messages // per_thread
    for n, start in enumerate(range(0, threads, per_file)):
        specs = synthetic_specs(min(per_file, threads - start), per_thread, seed=n + 1)
        (folder / f"threads-{n:05d}.json").write_bytes(orjson.dumps(specs))
    return threads


def run_library(args: list[str], env: dict[str, str]) -> tuple[float, float]:
    """`python bench/memory.py --child ARGS` in a fresh process: (seconds, peak MB)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, __file__, "--child", *args], env={**os.environ, **env},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = _communicate(proc)
    seconds = time.perf_counter() - t0
    _waited_maxrss(proc)  # (reaps it; its figure starts at this process's RSS at the fork: the child tells its own)
    peak = int(out.split()[-1]) / 1024 if out.split() else float("nan")
    if proc.returncode != 0:
        raise SystemExit(f"library {' '.join(args)} exited {proc.returncode}:\n{err[-3000:]}")
    return seconds, peak


def child(command: str, folder: str, out: str) -> None:
    """(In a fresh process) the library call of `command` on `folder`."""
    if command == "validate":
        from bundler.check.files import validate_files

        validate_files([folder])
    elif command == "build":
        from bundler.bundle_files import build_files

        build_files([folder], out=Path(out))
    elif command == "export":
        from bundler.export import export
        from bundler.medplum.client import ClientCredentials, FhirClient

        with FhirClient(os.environ["MEDPLUM_BASE_URL"], ClientCredentials(os.environ["MEDPLUM_CLIENT_ID"],
                                                                          os.environ["MEDPLUM_CLIENT_SECRET"])) as c:
            export(c, Path(out) / "export")
    else:
        from bundler.load.loader import load
        from bundler.load.verify import verify_each
        from bundler.medplum.client import ClientCredentials, FhirClient

        with FhirClient(os.environ["MEDPLUM_BASE_URL"], ClientCredentials(os.environ["MEDPLUM_CLIENT_ID"],
                                                                          os.environ["MEDPLUM_CLIENT_SECRET"])) as c:
            if command == "load":
                report = load([folder], c, journal=Path(out) / "library.journal.sqlite")
                if not report.ok:
                    raise SystemExit(f"library load: {report.counts()}")
            else:
                bad = sum(not r.ok for r in verify_each([folder], c))
                if bad:
                    raise SystemExit(f"library verify: {bad} threads differ")


def measure(sizes: list[int], per_thread: int, per_file: int, commands: list[str], library: bool,
            say: Callable[[str], None], variants: dict[str, dict[str, str]] | None = None) -> list[Row]:
    rows: list[Row] = []
    with open_target() as target, tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        env = {"MEDPLUM_BASE_URL": target.base_url, "MEDPLUM_CLIENT_ID": target.client_id,
               "MEDPLUM_CLIENT_SECRET": target.client_secret}
        for size in sizes:
            folder = Path(tmp) / f"specs-{size}"
            threads = write_specs(folder, size, per_thread, per_file)
            say(f"{size:,} messages: {threads:,} threads in {len(list(folder.iterdir()))} files")
            paths = ["command", *(variants or {}), *(["library"] if library else [])]
            for path in paths:
                for command in commands:
                    out = Path(tmp) / f"out-{size}-{path}-{command}"
                    out.mkdir()
                    if command == "load":
                        target.reset()
                    if path != "library":
                        args = {"validate": ["validate", str(folder)], "build": ["build", str(folder), "-o", str(out)],
                                "load": ["load", str(folder), "--no-progress", "--journal",
                                         str(out / "journal.sqlite")],
                                "verify": ["verify", str(folder)],
                                "export": ["export", "-o", str(out / "export"), "--no-progress"]}[command]
                        run = run_command(args, env={**env, **(variants or {}).get(path, {})},
                                          check=command != "validate")
                        if command == "validate" and run.returncode not in (0, 1):
                            raise SystemExit(f"validate exited {run.returncode}:\n{run.stderr[-3000:]}")
                        seconds, peak = run.seconds, run.peak_mb
                    else:
                        seconds, peak = run_library([command, str(folder), str(out)], env)
                    rows.append(Row(command, path, size, threads, seconds, peak))
                    say(f"  {path} {command}: {peak:.0f} MB, {seconds:.1f} s")
                    shutil.rmtree(out, ignore_errors=True)
            shutil.rmtree(folder, ignore_errors=True)
    return rows


def table(rows: list[Row]) -> tuple[list[str], list[list[str]]]:
    """command × path × size → peak MB, and the ratio of the largest size to the smallest."""
    sizes = sorted({r.messages for r in rows})
    header = ["command", "path", *(f"{s:,} messages: peak MB (seconds)" for s in sizes), f"× {sizes[0]:,}"]
    out = []
    for command in dict.fromkeys(r.command for r in rows):
        for path in dict.fromkeys(r.path for r in rows):
            by_size = {r.messages: r for r in rows if r.command == command and r.path == path}
            if not by_size:
                continue
            cells = [f"**{by_size[s].peak_mb:.0f}** ({by_size[s].seconds:.0f})" if s in by_size else "-"
                     for s in sizes]
            ratio = (f"{by_size[sizes[-1]].peak_mb / by_size[sizes[0]].peak_mb:.2f}"
                     if sizes[0] in by_size and sizes[-1] in by_size else "-")
            shown = {"command": f"thread-bundler {command}", "library": f"{command} (library)"}.get(
                path, f"thread-bundler {command} ({path})")
            out.append([shown, path, *cells, ratio])
    return header, out


def variants(given: list[str]) -> dict[str, dict[str, str]]:
    """`--variant NAME:VAR=VALUE,...` → {NAME: {VAR: VALUE}}."""
    out = {}
    for item in given:
        name, _, assignments = item.partition(":")
        out[name] = dict(a.split("=", 1) for a in assignments.split(",") if a)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--sizes", default="100000,1000000", help="messages of each run, comma-separated")
    parser.add_argument("--messages", type=int, default=10, help="messages a thread")
    parser.add_argument("--per-file", type=int, default=1000, help="threads a spec file")
    parser.add_argument("--commands", default=",".join(COMMANDS), help="which commands, comma-separated")
    parser.add_argument("--no-library", action="store_true", help="the commands only, not the library path")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME:VAR=VALUE,...",
                        help="the commands again with these environment variables (repeatable)")
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--child", nargs=3, metavar=("COMMAND", "DIR", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(*args.child)
        with open("/proc/self/status", encoding="ascii") as f:  # VmHWM: this process's own peak RSS, in KiB
            print(next(line.split()[1] for line in f if line.startswith("VmHWM:")))
        return 0

    def say(text: str) -> None:
        if not args.quiet:
            print(text, file=sys.stderr, flush=True)

    rows = measure([int(s) for s in args.sizes.split(",")], args.messages, args.per_file,
                   args.commands.split(","), not args.no_library, say, variants(args.variant))
    header, body = table(rows)
    load_average = " ".join(Path("/proc/loadavg").read_text().split()[:3]) if Path("/proc/loadavg").exists() else "?"
    caption = (f"Peak memory (MB, the whole process: wait4's ru_maxrss) and seconds, spec files of {args.per_file:,} "
               f"threads of 1 header + {args.messages} messages, local server; load average at the end "
               f"{load_average} on {os.cpu_count()} cores")
    if args.markdown:
        print(caption + "\n\n" + markdown_table(header, body))
    else:
        print(caption)
        for line in [header, *body]:
            print("  ".join(line))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
