"""One thread of many messages through the commands as users run them: peak memory and time of each.

    python bench/bigthread.py                        # one thread of 100,000 messages, local server
    python bench/bigthread.py --messages 10000       # smaller, while developing
    python bench/bigthread.py --markdown             # the table as Markdown, for README.md
    python bench/bigthread.py --folder /tmp/big      # keep the generated thread there (and reuse it next time)

The thread is written by `thread-bundler generate --threads 1 --messages N` (its participants file beside it),
then `validate`, `build -o`, `load`, `verify` and `export` run on it, each a fresh process (`common.run_command`):
the figures are the whole process's peak resident memory (its VmHWM at exit) and its wall time. `export` reads
only this thread: the one whose subject is the thread's (the header's `subject`, read once the thread is on the
server), so a project that holds others (a real Medplum's) is measured the same.
The server is a local one started here, or the project MEDPLUM_BASE_URL, MEDPLUM_CLIENT_ID, MEDPLUM_CLIENT_SECRET
name (then the thread's keys carry this run's prefix, so a store that is not emptied holds nothing of it yet).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from common import CommandRun, Target, markdown_table, open_target, run_command

from bundler.build import DEFAULT_IDENTIFIER_SYSTEM

COMMANDS = ("validate", "build", "load", "verify", "export")


def connection(target: Target) -> dict[str, str]:
    return {"MEDPLUM_BASE_URL": target.base_url, "MEDPLUM_CLIENT_ID": target.client_id,
            "MEDPLUM_CLIENT_SECRET": target.client_secret}


def run(target: Target, messages: int, folder: Path, commands: tuple[str, ...], quiet: bool) -> list[CommandRun]:
    """Write the thread into `folder` and run each of `commands` on it; their runs, in order."""
    threads, people = folder / "threads", folder / "participants.yaml"
    if not people.exists():  # (a folder given again: its thread as generated before, with that run's prefix)
        prefix = target.prefix("bigthread").rstrip("-")
        gen = run_command(["generate", "--threads", "1", "--messages", str(messages), "--seed", "1", "--prefix",
                           prefix, "-o", str(folder)])
        if not quiet:
            print(f"… generated {messages:,} messages in {gen.seconds:.1f}s (peak {gen.peak_mb:.0f} MB)",
                  file=sys.stderr, flush=True)
    size = sum(f.stat().st_size for f in threads.iterdir())
    if not quiet:
        print(f"… {size / 2**20:.1f} MB of YAML in {threads}", file=sys.stderr, flush=True)
    args = {
        "validate": ["validate", str(threads), "--participants", str(people)],
        "build": ["build", str(threads), "--participants", str(people), "-o", str(folder / "out")],
        "load": ["load", str(threads), "--participants", str(people), "--journal", str(folder / "j.sqlite"),
                 "--no-progress"],
        "verify": ["verify", str(threads), "--participants", str(people)],
        "export": ["export", "-o", str(folder / "exported")],
    }
    out = []
    for name in commands:
        if name == "export":
            args[name] += ["--subject", subject_of(target, threads)]
        done = run_command(args[name], env=connection(target), check=False)  # (its exit code goes in the table)
        if not quiet:
            print(f"… {name}: {done.peak_mb:.0f} MB, {done.seconds:.1f}s, exit {done.returncode}", file=sys.stderr,
                  flush=True)
        out.append(done)
    return out


def subject_of(target: Target, threads: Path) -> str:
    """The subject reference of the thread in `threads` (its header's, as the server holds it: a participant alias in
    the spec becomes a server id), by the thread's identifier."""
    [spec] = sorted(threads.iterdir())
    with spec.open() as f:
        key = f.readline().split(":", 1)[1].strip().strip("'\"")
    with target.client() as client:
        [header] = client.search("Communication", {"identifier": f"{DEFAULT_IDENTIFIER_SYSTEM}|{key}"})
    return str(header["subject"]["reference"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=100_000, help="messages of the one thread")
    parser.add_argument("--commands", default=",".join(COMMANDS), help="which commands, in order (comma-separated)")
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--folder", type=Path, help="where to generate the thread (kept; reused when it holds one)")
    args = parser.parse_args(argv)
    commands = tuple(c for c in args.commands.split(",") if c)
    if unknown := set(commands) - set(COMMANDS):
        parser.error(f"unknown commands: {', '.join(sorted(unknown))}")
    with open_target() as target, tempfile.TemporaryDirectory(prefix="bench-bigthread-") as tmp:
        folder = args.folder or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        for old in (folder / "out", folder / "exported", folder / "j.sqlite"):  # (an earlier run's on the folder)
            if old.is_dir():
                shutil.rmtree(old)
            else:
                old.unlink(missing_ok=True)
        runs = run(target, args.messages, folder, commands, args.quiet)
        where = target.describe()
    rows = [[name, f"{r.peak_mb:,.0f}", f"{r.seconds:,.1f}", str(r.returncode)]
            for name, r in zip(commands, runs, strict=True)]
    caption = (f"One thread of {args.messages:,} messages through the commands ({where}); peak resident memory "
               "of the whole process (wait4) and wall time, each command a fresh process")
    if args.markdown:
        print(f"{caption}\n\n{markdown_table(['command', 'peak MB', 'seconds', 'exit'], rows)}")
    else:
        print(caption)
        for row in [["command", "peak MB", "seconds", "exit"], *rows]:
            print(f"{row[0]:<10}{row[1]:>10}{row[2]:>10}{row[3]:>6}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
