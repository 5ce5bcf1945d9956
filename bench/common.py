"""Shared pieces of the benchmarks: the server measured (`Target`: local or the one the environment names),
synthetic thread specs, a timer, Markdown tables.

Every benchmark that talks to a server opens it here, with `open_target`: a local Medplum server it starts, unless
MEDPLUM_BASE_URL, MEDPLUM_CLIENT_ID and MEDPLUM_CLIENT_SECRET are all set, and then that server's project. A
remote store cannot be emptied, so every mode of a run puts its own prefix (`Target.prefix(mode)`) into its
thread keys, identifiers and whatever else must be new; the local store is also emptied before each mode.
"""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from bundler.medplum.client import ClientCredentials, FhirClient
from bundler.medplum.doctor import doctor
from bundler.medplum.localserver import LocalServer
from bundler.testing.server import REMOTE_ENV, remote_from_env
from bundler.testing.strategies import sample_specs

__all__ = ["REMOTE_ENV", "Call", "CommandRun", "CountingTransport", "LatencyTransport", "Target", "best_of",
           "markdown_table", "open_target", "run_command", "synthetic_specs"]


def synthetic_specs(threads: int, messages_per_thread: int, *, seed: int = 1) -> list[dict[str, Any]]:
    """`threads` specs of `messages_per_thread` messages each, as plain data, reproducible by seed."""
    return sample_specs(threads, messages_per_thread, seed=seed, prefix="bench")


def best_of(repeat: int, func: Callable[[], Any]) -> float:
    """The shortest wall time of `repeat` runs of `func`, in seconds."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        func()
        best = min(best, time.perf_counter() - t0)
    return best


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


# --------------------------------------------------------------------------- the command, as a user runs it


@dataclass
class CommandRun:
    """One `thread-bundler ...` run in its own process: wall time, exit code, output, and peak resident memory:
    `peak_mb` of the largest process (the kernel's own figure, from wait4), `tree_peak_mb` of all its processes
    together (sampled every 20 ms, so a short spike can be missed; 0 when the run was too short to sample)."""

    args: list[str]
    seconds: float
    returncode: int
    stdout: str
    stderr: str
    peak_mb: float
    tree_peak_mb: float


PEAK_FILE_ENV = "THREAD_BUNDLER_BENCH_PEAK_FILE"
_LAUNCH = f"""
import atexit, os, resource, runpy, sys
def _peak():
    own = max(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
    reaped = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    with open(os.environ["{PEAK_FILE_ENV}"], "w") as f:
        f.write(str(max(own, reaped)))
atexit.register(_peak)
runpy.run_module("bundler", run_name="__main__", alter_sys=True)
"""
"""`python -m bundler` that writes its peak RSS (KiB) to the file PEAK_FILE_ENV names as it exits: its own VmHWM
(of its own memory map, made at exec) and its reaped children's. wait4's ru_maxrss cannot be used alone: Linux
starts a child's at its parent's RSS at the fork (`/bin/true` spawned by a 300 MB process reports 310 MB), so a
benchmark process that holds its data would be counted in the command's peak."""


def command_line() -> list[str]:
    """How to run the command installed beside this Python: `python -m bundler` (the console script's own code),
    through `_LAUNCH`, which tells its own peak memory."""
    return [sys.executable, "-c", _LAUNCH]


def run_command(args: list[str], *, env: dict[str, str] | None = None, cwd: str | Path | None = None,
                check: bool = True) -> CommandRun:
    """Run `thread-bundler ARGS` as a user does (a fresh process; `env` added to this one's environment) and
    measure it. `check`: a non-zero exit raises, with the command's stderr."""
    peak_file = Path(tempfile.mkstemp(prefix="bench-peak-")[1])
    full = {**os.environ, **(env or {}), PEAK_FILE_ENV: str(peak_file)}
    t0 = time.perf_counter()
    proc = subprocess.Popen(command_line() + args, env=full, cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    tree_peak = [0]
    done = threading.Event()

    def sample() -> None:  # the tree's RSS every 20 ms; the tree itself found again every 0.5 s (a walk of all of
        # /proc costs ~7 ms of CPU: every 20 ms it took a third of a core from the command it measured)
        tree = [proc.pid]
        for n in itertools.count():
            if done.wait(0.02):
                return
            if n % 25 == 0:
                tree = _tree([proc.pid])
            tree_peak[0] = max(tree_peak[0], _rss(tree))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = _communicate(proc)
    seconds = time.perf_counter() - t0
    done.set()
    sampler.join()
    peak = _waited_maxrss(proc)  # (at least the parent's RSS at the fork: used only if the command told none)
    told = peak_file.read_text().strip()
    peak_file.unlink()
    peak = int(told) if told.isdigit() else peak
    run = CommandRun(args, seconds, proc.returncode, out, err, peak / 1024, tree_peak[0] / 2**20)
    if check and run.returncode != 0:
        raise RuntimeError(f"thread-bundler {' '.join(args)} exited {run.returncode}:\n{err[-4000:]}")
    return run


def _communicate(proc: subprocess.Popen[str]) -> tuple[str, str]:
    """Output read while the process runs, without reaping it (wait4 below must be the one that does)."""
    out: list[str] = []
    err: list[str] = []
    readers = [threading.Thread(target=lambda s=s, b=b: b.append(s.read()), daemon=True)
               for s, b in ((proc.stdout, out), (proc.stderr, err))]
    for r in readers:
        r.start()
    for r in readers:
        r.join()
    return "".join(out), "".join(err)


def _waited_maxrss(proc: subprocess.Popen[str]) -> int:
    """Reap `proc` with wait4: its peak RSS in KiB (the largest of it and the children it reaped)."""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return int(usage.ru_maxrss)


def _tree(roots: list[int]) -> list[int]:
    """`roots` and all their descendants now (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (st := _stat(entry.name)) is not None:
            children.setdefault(int(st[1]), []).append(int(entry.name))
    found, todo = [], list(roots)
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def _rss(pids: list[int]) -> int:
    """Resident bytes of `pids` now (those still running)."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, ValueError):
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * resource.getpagesize()
    return total


# --------------------------------------------------------------------------- requests, counted and delayed


@dataclass
class Call:
    kind: str  # transaction, search, create, delete, read, token
    start: float
    end: float
    status: int
    created: int = 0  # entries answered 201 (transactions), 1 for a 201 create
    conditional: int = 0  # entries sent as conditional creates (ifNoneExist): a search each, in Medplum's quota
    gets: int = 0  # searches sent as GET entries of a transaction (the loader's check for copies)

    @property
    def sort(self) -> str:
        return "check" if self.kind == "transaction" and self.gets else self.kind


class LatencyTransport(httpx.HTTPTransport):
    """`--rtt-ms`: each request waits `delay` seconds before it is sent, as if the server were that far away."""

    def __init__(self, *, delay: float = 0.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.delay = delay

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if self.delay:
            time.sleep(self.delay)
        return super().handle_request(request)


class CountingTransport(LatencyTransport):
    """An httpx transport that records every request (kind, timing, status, entries created) and counts
    429s itself, so the figures do not rely on what the loader reports."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.calls: list[Call] = []
        self._lock = threading.Lock()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        kind = _kind(request)
        conditional = request.content.count(b'"ifNoneExist"') if kind == "transaction" else 0
        gets = request.content.count(b'"method":"GET"') if kind == "transaction" else 0
        start = time.perf_counter()
        response = super().handle_request(request)
        if kind == "transaction" and response.status_code == 200:
            response.read()  # httpx reads it next anyway; entries answered 201, counted without parsing the JSON
            created = response.content.count(b'"status":"201')
        else:
            created = int(kind == "create" and response.status_code == 201)
        call = Call(kind, start, time.perf_counter(), response.status_code, created, conditional, gets)
        with self._lock:
            self.calls.append(call)
        return response

    def count(self, kind: str | None = None, status: int | None = None) -> int:
        """Requests of `kind`: \"transaction\" counts those that write; \"check\" the transactions of GET entries
        (the loader's searches for copies another load made, `bundler.load.duplicates`)."""
        return sum(1 for c in self.calls if (kind is None or c.sort == kind) and (status is None or c.status == status))


def _kind(request: httpx.Request) -> str:
    path = request.url.path
    if path.endswith("/oauth2/token"):
        return "token"
    if request.method == "POST":
        return "transaction" if path.endswith("/fhir/R4/") or path.endswith("/fhir/R4") else "create"
    if request.method == "DELETE":
        return "delete"
    return "search" if request.url.query else "read"


# --------------------------------------------------------------------------- the server's processes


def _tcp_sockets() -> list[tuple[str, int, str, int, str, int]]:
    """This network namespace's TCP sockets: (local ip, port, remote ip, port, state, inode); state 0A is
    LISTEN, 01 ESTABLISHED."""
    out = []
    for name in ("tcp", "tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/net/{name}").read_text().splitlines()[1:]:
                cols = line.split()
                (local_ip, local_port), (remote_ip, remote_port) = (c.split(":") for c in cols[1:3])
                out.append((_ip(local_ip), int(local_port, 16), _ip(remote_ip), int(remote_port, 16), cols[3],
                            int(cols[9])))
    return out


def _ip(hex_ip: str) -> str:
    """An address as /proc/net/tcp writes it (the bytes of each 32-bit word in host order, little-endian here)."""
    raw = b"".join(bytes.fromhex(hex_ip[i:i + 8])[::-1] for i in range(0, len(hex_ip), 8))
    ip = ipaddress.ip_address(raw)
    return str(getattr(ip, "ipv4_mapped", None) or ip)


def _socket_owners() -> dict[int, int]:
    """Socket inode → the pid holding it (any of them), from every process's open files we may read."""
    owners: dict[int, int] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in (proc / "fd").iterdir():
                with contextlib.suppress(OSError):
                    link = os.readlink(fd)
                    if link.startswith("socket:["):
                        owners.setdefault(int(link[8:-1]), int(proc.name))
    return owners


def server_processes(base_url: str) -> list[int]:
    """The processes of a server on this machine: the one listening on `base_url`'s port, and those listening on
    the loopback ports it is connected to (a real Medplum's Postgres and Redis); [] for a server elsewhere or
    one we may not see. Each counts with its children (Postgres's backends), see `tree_cpu`."""
    url = urlsplit(base_url)
    port = url.port or (443 if url.scheme == "https" else 80)
    if url.hostname != "localhost" and not _loopback(url.hostname or ""):
        return []
    sockets = _tcp_sockets()
    owners = _socket_owners()
    listening: dict[int, set[int]] = {}  # port → pids listening on it
    for _, lport, _, _, state, inode in sockets:
        if state == "0A" and inode in owners:
            listening.setdefault(lport, set()).add(owners[inode])
    roots = listening.get(port, set()) - {os.getpid()}
    found = set(roots)
    for _, _, rip, rport, state, inode in sockets:  # what the server is connected to, on this machine
        if state == "01" and owners.get(inode) in roots and _loopback(rip):
            found |= listening.get(rport, set()) - roots
    return sorted(found)


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _stat(pid: str) -> list[str] | None:
    with contextlib.suppress(OSError, IndexError):
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return None


def tree_cpu(roots: list[int]) -> float:
    """CPU seconds of `roots` and every descendant alive now, with what their finished children took (cutime,
    cstime: a Postgres backend that ended is counted in its parent's)."""
    stats = {int(p.name): s for p in Path("/proc").iterdir() if p.name.isdigit() and (s := _stat(p.name))}
    children: dict[int, list[int]] = {}
    for pid, fields in stats.items():
        children.setdefault(int(fields[1]), []).append(pid)
    ticks = 0
    todo = [p for p in roots if p in stats]
    while todo:
        pid = todo.pop()
        ticks += sum(int(v) for v in stats[pid][11:15])  # utime, stime, cutime, cstime
        todo += children.get(pid, [])
    return ticks / os.sysconf("SC_CLK_TCK")


def _machine_cpu() -> float:
    """CPU seconds every process on the machine has used (all but idle and iowait)."""
    try:
        ticks = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        return (sum(ticks[:8]) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return float("nan")


# --------------------------------------------------------------------------- the target


@dataclass
class Target:
    """The server a benchmark measures: a local one it started (`server`), or the project the environment names."""

    base_url: str
    client_id: str
    client_secret: str = field(repr=False)
    server: LocalServer | None = None
    rtt: float = 0.0  # seconds added before every request (simulated network round trip)
    run: str = field(default_factory=lambda: "b" + uuid.uuid4().hex[:8])  # this run's tag, in every prefix
    _processes: list[int] | None = field(default=None, repr=False)

    @property
    def remote(self) -> bool:
        return self.server is None

    @property
    def fhir_base(self) -> str:
        return f"{self.base_url}fhir/R4/"

    def prefix(self, mode: str) -> str:
        """What a mode puts before its thread keys and identifiers: new on every run and mode, so a store that is
        not emptied (a remote one) holds nothing of them yet; a letter first, so it also starts an id."""
        return f"{self.run}-{mode}-"

    def reset(self) -> None:
        """Empty the local server's store; a remote one cannot be (the prefixes keep the modes apart)."""
        if self.server is not None:
            self.server.reset()

    def client(self, **options: Any) -> FhirClient:
        return FhirClient(self.base_url, ClientCredentials(self.client_id, self.client_secret), **options)

    def transport(self, limits: httpx.Limits, *, counting: bool = False) -> LatencyTransport:
        return (CountingTransport if counting else LatencyTransport)(limits=limits, delay=self.rtt)

    def token(self) -> str:
        form = {"grant_type": "client_credentials", "client_id": self.client_id, "client_secret": self.client_secret}
        response = httpx.post(f"{self.base_url}oauth2/token", data=form, timeout=30)
        response.raise_for_status()
        return str(response.json()["access_token"])

    def bare_client(self, token: str, connections: int) -> httpx.Client:
        limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
        return httpx.Client(base_url=self.fhir_base, timeout=60, transport=self.transport(limits),
                            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/fhir+json",
                                     "Accept": "application/fhir+json"})

    # ----------------------------------------------------------------------- CPU

    @property
    def processes(self) -> list[int]:
        """The server's processes on this machine (found once, by its port: see `server_processes`)."""
        if self._processes is None:
            self._processes = server_processes(self.base_url)
        return self._processes

    def cpu(self) -> tuple[float, float, float]:
        """CPU seconds used so far by this process (every thread), by the server's processes (nan when none is
        on this machine), and by the whole machine (to tell what other processes took meanwhile)."""
        me = resource.getrusage(resource.RUSAGE_SELF)
        server = tree_cpu(self.processes) if self.processes else float("nan")
        return me.ru_utime + me.ru_stime, server, _machine_cpu()

    def spent(self, before: tuple[float, float, float]) -> tuple[float, float, float]:
        """CPU seconds since `before` (a `cpu()`): this client, the server (nan: not seen), every other process."""
        client, server, machine = (a - b for a, b in zip(self.cpu(), before, strict=True))
        return client, server, machine - client - (server if server == server else 0.0)

    def cpu_note(self) -> str:
        """What the CPU columns count, for under a table."""
        names = []
        for pid in self.processes:
            with contextlib.suppress(OSError):
                names.append(f"{Path(f'/proc/{pid}/comm').read_text().strip()} ({pid})")
        server = (f"the server's processes with their children: {', '.join(names)}" if names else
                  "the server's processes (not on this machine: -)")
        shared = (" (a server others use too: what it does for them meanwhile counts here)" if names and self.remote
                  else "")
        return (f"CPU columns: share of one core used meanwhile by this client (all its threads), by {server}"
                f"{shared}, and by every other process; the machine has {os.cpu_count()} cores in all.")

    # ----------------------------------------------------------------------- what is measured

    def describe(self) -> str:
        """Where the requests go and what the project is, by `doctor`'s probes (atomic transactions, references
        that must exist): for the captions."""
        with self.client() as client:
            report = doctor(client)
        facts = {c.name: c.detail.split(":", 1)[0] for c in report.checks}
        kind = "strict" if facts.get("references must exist") == "yes" else "not strict (references unchecked)"
        atomic = "atomic" if report.atomic else "NOT atomic" if report.atomic is False else "atomicity unknown"
        where = "local Medplum server (fhir-router on Node)" if self.server else f"Medplum at {self.base_url}"
        return f"{where}, project {atomic}, {kind}"

    def load_average(self) -> str:
        with contextlib.suppress(OSError):
            return " ".join(Path("/proc/loadavg").read_text().split()[:3])
        return "?"


@contextlib.contextmanager
def open_target(*, check_references_on_write: bool = False, rtt: float = 0.0) -> Iterator[Target]:
    """The server the environment names (MEDPLUM_BASE_URL, _CLIENT_ID, _CLIENT_SECRET: all or none), else a local
    one started here with `check_references_on_write` and no quota, stopped at the end. The one place a benchmark
    chooses."""
    remote = remote_from_env()
    if remote is not None:
        yield Target(remote.base_url, remote.client_id, remote.client_secret, rtt=rtt)
        return
    server = LocalServer(quota=False, check_references_on_write=check_references_on_write).start()
    try:
        yield Target(server.base_url, server.client_id, server.client_secret, server, rtt=rtt)
    finally:
        server.stop()
