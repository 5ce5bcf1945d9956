"""What the loader's tests share: a `load` that keeps results, clients, specs, counting on the server, the CLI."""

from __future__ import annotations

import collections
import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bundler import build_bundle, parse_spec
from bundler.load import LoadReport
from bundler.load import load as _load
from bundler.medplum.client import ClientCredentials, FhirClient
from bundler.medplum.clock import SystemClock
from bundler.spec import ThreadSpec
from bundler.testing.strategies import sample_specs
from bundler.vocabulary import rewrite_references

POST = r"/fhir/R4/?$"  # where transactions go


class LandedClock(SystemClock):
    """The system's clock, except that a wait of the loader's (a quarantine) ends as soon as `landed()` holds (the
    fault proxy delivered what it held back) and moves the clock on by as long as was asked: a quarantine test
    waits on the late request's landing, not on its margin in real seconds. (Backoffs and pacing sleep as usual.)"""

    def __init__(self, landed: Callable[[], bool], *, timeout: float = 60.0) -> None:
        self._landed, self._timeout, self._offset = landed, timeout, 0.0

    def time(self) -> float:
        return time.time() + self._offset

    def monotonic(self) -> float:
        return time.monotonic() + self._offset

    def wait(self, event: threading.Event, seconds: float) -> bool:
        deadline = time.monotonic() + self._timeout
        while not self._landed() and not event.is_set() and time.monotonic() < deadline:
            event.wait(0.02)
        self._offset += seconds
        return event.is_set()


def landed(proxy: Any) -> Callable[[], bool]:
    """Whether every request the proxy held back as late has been delivered."""
    def delivered() -> bool:
        late = [e for e in proxy.log if "late" in e.actions]
        return all("delivered-late" in e.actions for e in late)
    return delivered

def load(*args: Any, **kw: Any) -> LoadReport:
    """`load`, keeping every thread's result in the report (tests look at them)."""
    return _load(*args, keep_results=True, **kw)


def as_stored(spec: ThreadSpec) -> list[dict[str, Any]]:
    """The resources a server would hold for `spec`'s bundle: ids given, urns rewritten to them."""
    entries = [e for e in build_bundle(spec)["entry"] if e["resource"]["resourceType"] != "Binary"]
    ids = {e["fullUrl"]: f"{e['resource']['resourceType']}/{uuid.uuid4()}" for e in entries}
    out = []
    for e in entries:
        resource = rewrite_references(e["resource"], ids)
        resource["id"] = ids[e["fullUrl"]].split("/")[1]
        out.append(resource)
    return out


def client_for(project: Any, url: str | None = None, **kw: Any) -> FhirClient:
    t = project.target
    return FhirClient(url or t.base_url, ClientCredentials(t.client_id, t.client_secret), **kw)


def specs_for(project: Any, threads: int, messages: int, *, seed: int = 1) -> list[ThreadSpec]:
    return [parse_spec(s) for s in sample_specs(threads, messages, seed=seed, prefix=project.prefix)]


def copies(client: FhirClient, specs: list[ThreadSpec], *, whole_store: bool = False) -> collections.Counter[str]:
    """How many resources the server holds for each identifier of `specs` (0 when missing).

    `whole_store`: read every Communication instead of searching identifiers (the local server's
    store is emptied per test, and its identifier search is a slow scan)."""
    wanted = [e["resource"]["identifier"][0] for s in specs for e in build_bundle(s)["entry"]]
    values = [f"{i['system']}|{i['value']}" for i in wanted]
    counts: collections.Counter[str] = collections.Counter({v: 0 for v in values})
    searches = [{"_count": "1000"}] if whole_store else [
        {"identifier": ",".join(values[n:n + 50]), "_count": "1000"} for n in range(0, len(values), 50)]
    for params in searches:
        for resource in client.search("Communication", params):
            for ident in resource.get("identifier", ()):
                value = f"{ident['system']}|{ident['value']}"
                if value in counts:
                    counts[value] += 1
    return counts


def assert_exactly_once(client: FhirClient, specs: list[ThreadSpec], project: Any = None) -> None:
    counts = copies(client, specs, whole_store=project is not None and project.server is not None)
    wrong = {k: v for k, v in counts.items() if v != 1}
    assert not wrong, f"{len(wrong)} identifiers not exactly once, e.g. {list(wrong.items())[:5]}"


def cli(args: list[str], env: dict[str, str], **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bundler", *args], env={**os.environ, **env}, text=True,
                          capture_output=True, timeout=120, **kw)


def ctrl_c_reaches_it() -> None:
    """A `preexec_fn` that gives the child Ctrl-C as a terminal gives it: a test run in the background (`cmd &`
    from a script, `nohup`) passes SIGINT on ignored, and Python then never raises KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def env(project: Any, secret: str | None = None) -> dict[str, str]:
    t = project.target
    return {"MEDPLUM_BASE_URL": t.base_url, "MEDPLUM_CLIENT_ID": t.client_id,
            "MEDPLUM_CLIENT_SECRET": secret or t.client_secret}


def write_specs(folder: Path, specs: list[dict[str, Any]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for n in range(0, len(specs), 25):
        (folder / f"batch-{n:05d}.json").write_text(json.dumps(specs[n:n + 25]))


def committed(journal: Path) -> int:
    """Threads the journal holds as committed (0 before the killed run wrote its first row); read-only, so the
    test never creates the file itself."""
    if not journal.exists():
        return 0
    with contextlib.closing(sqlite3.connect(f"file:{journal}?mode=ro", uri=True)) as db:
        try:
            return int(db.execute("SELECT count(*) FROM threads WHERE state='committed'").fetchone()[0])
        except sqlite3.OperationalError:  # no such table yet
            return 0


def errors(run: subprocess.CompletedProcess[str]) -> int:
    """The error lines a command printed (besides its progress line), after checking there is no traceback."""
    assert "Traceback" not in run.stderr, run.stderr
    return sum(1 for line in run.stderr.splitlines() if line.startswith("error:"))




def transactions(log: list[Any], marker: str) -> list[Any]:
    """The proxy's events of transactions whose body holds `marker` (a thread key, a test's prefix); not the
    searches a load sends as a transaction of GET entries, to look for copies of what it sent (`checks`)."""
    return [e for e in log if e.method == "POST" and e.path.rstrip("/").endswith("/fhir/R4") and marker.encode()
            in e.body and CHECK not in e.body]


CHECK = b'"method":"GET"'


def checks(log: list[Any], marker: str) -> list[Any]:
    """The proxy's events of the searches for copies (`bundler.load.duplicates`) whose body holds `marker`."""
    return [e for e in log if e.method == "POST" and e.path.rstrip("/").endswith("/fhir/R4") and marker.encode()
            in e.body and CHECK in e.body]


def header_value(key: str) -> str:
    """What a transaction body holds for a thread's header identifier: matches that thread's requests only."""
    return f'"value":"{key}"'
