"""The loader against a real server (the local Medplum, or MEDPLUM_BASE_URL): exactly once, whatever happens."""

from __future__ import annotations

import collections
import gc
import itertools
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import weakref
from pathlib import Path
from typing import Any

import orjson
import pytest
from faultproxy import FaultProxy, Rule, throttled
from loadkit import (
    CHECK,
    assert_exactly_once,
    checks,
    cli,
    client_for,
    committed,
    copies,
    env,
    errors,
    load,
    specs_for,
    write_specs,
)

from bundler import DEFAULT_IDENTIFIER_SYSTEM, load_specs, parse_spec
from bundler.errors import BundlerError
from bundler.load import LoadWatcher, Outcome
from bundler.load.compare import diff_thread
from bundler.load.verify import read_thread, resolve_references, verify, verify_each
from bundler.medplum.client import ClientCredentials
from bundler.spec import ThreadSpec
from bundler.testing.strategies import sample_specs

REPO = Path(__file__).resolve().parent.parent
WALKTHROUGH = REPO / "fixtures/threads/homer-lab-results.yaml"


def walkthrough_for(project: Any) -> ThreadSpec:
    """The walkthrough thread with a key of this test's own, and its participants' identifiers too (a real Medplum
    keeps what every test created)."""
    (spec,) = load_specs([WALKTHROUGH])
    data = spec.to_data()
    data["thread"] = f"{project.prefix}-{spec.key}"
    for p in data["participants"].values():
        del p["reference"]  # (made from the identifier, which changes)
        p["create"]["identifier"][0]["value"] = f"{project.prefix}-{p['create']['identifier'][0]['value']}"
    return parse_spec(data)


def test_walkthrough_end_to_end(project: Any, tmp_path: Path) -> None:
    spec = walkthrough_for(project)
    with client_for(project) as client:
        report = load([spec], client, journal=tmp_path / "j.sqlite")
        [result] = report.threads
        assert result.outcome == Outcome.LOADED, result.error
        assert set(result.message_ids) == {"specimen-received", "homer-asks", "3"}
        messages = read_thread(client, result.header_id)  # type: ignore[arg-type]
        assert [m["payload"][0]["contentString"] for m in messages] == [m.text for m in spec.messages]
        assert messages[2]["inResponseTo"] == [{"reference": f"Communication/{result.message_ids['homer-asks']}"}]
        assert all(m["partOf"] == [{"reference": f"Communication/{result.header_id}"}] for m in messages)
        header = client.read(f"Communication/{result.header_id}")
        assert diff_thread(spec, [header, *messages], resolved=resolve_references(client, [spec])) == []
        [checked] = verify([spec], client)
        assert checked.ok and checked.messages == 3


@pytest.mark.volume  # (on a real Medplum: the project whose quota is lifted)
def test_a_thousand_threads_concurrently_each_exactly_once(project: Any, tmp_path: Path) -> None:
    specs = specs_for(project, 1000, 3)
    with client_for(project) as client:
        report = load(specs, client, journal=tmp_path / "j.sqlite", concurrency=8)
        assert report.counts() == {Outcome.LOADED: 1000}
        assert_exactly_once(client, specs, project)


def test_rerun_and_lost_journal_create_nothing_new(project: Any, tmp_path: Path) -> None:
    specs = specs_for(project, 40, 4)
    with client_for(project) as client:
        assert load(specs, client, journal=tmp_path / "j.sqlite").counts() == {Outcome.LOADED: 40}
        again = load(specs, client, journal=tmp_path / "j.sqlite")
        assert again.counts() == {Outcome.SKIPPED: 40}
        assert again.requests <= 2, "a finished load sends nothing (no probe either)"
        (tmp_path / "j.sqlite").unlink()
        fresh = load(specs, client, journal=tmp_path / "j.sqlite")
        assert fresh.counts() == {Outcome.EXISTING: 40}
        assert_exactly_once(client, specs, project)


def test_threads_too_big_for_one_request_are_cut_and_verified(project: Any, tmp_path: Path) -> None:
    specs = specs_for(project, 3, 30, seed=7)
    with client_for(project) as client:
        report = load(specs, client, journal=tmp_path / "j.sqlite", max_entries=7)
        assert report.counts() == {Outcome.LOADED: 3}
        assert all(t.requests == 5 for t in report.threads)  # 31 entries, 7 a request
        assert all(r.ok for r in verify(specs, client)), [r.differences for r in verify(specs, client)]
        # replies across parts point at server ids of earlier parts
        assert_exactly_once(client, specs, project)


def test_dry_run_plans_and_sends_nothing(project: Any, tmp_path: Path) -> None:
    specs = specs_for(project, 10, 5)
    with client_for(project) as client:
        load(specs[:4], client, journal=tmp_path / "other.sqlite")
        before = client.requests
        plan = load(specs, client, journal=tmp_path / "j.sqlite", dry_run=True, max_entries=4)
        assert plan.dry_run and plan.ok and plan.counts() == {Outcome.EXISTING: 4, Outcome.PLANNED: 6}
        assert plan.messages[Outcome.EXISTING] == 4 * 5  # the messages of threads that exist are counted
        assert plan.plan is not None
        # atomicity is not known (no probe: it would write): both plans. 6 entries a thread, 4 a request; not
        # atomic: the header alone, then conditional creates
        assert (plan.plan.requests, plan.plan.requests_not_atomic) == (6 * 2, 6 * 3)
        searches = 1 + 4  # the headers (one search), then each found thread read back
        assert plan.plan.searches == searches == client.requests - before
        assert plan.plan.points == 6 * 6 * 100 + 20 * searches
        assert plan.plan.points_not_atomic == 6 * 6 * 120 + 20 * searches  # a conditional create: search + write
        # the local server (quota off) sends no RateLimit header: time unknown; Medplum always sends one
        assert (plan.plan.seconds is None) == (project.server is not None)
        assert copies(client, specs[4:]).most_common(1)[0][1] == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.sqlite"], "a dry run writes no journal"


def test_lost_response_is_reconciled_not_resent(project: Any, tmp_path: Path) -> None:
    specs = specs_for(project, 1, 3)
    with FaultProxy(project.target.base_url, seed=1) as proxy:
        proxy.add(Rule("drop_after", method="POST", path=r"/fhir/R4/?$", body_contains='"Bundle"', nth=2, times=1))
        with client_for(project, proxy.url) as client:
            [result] = load(specs, client, journal=tmp_path / "j.sqlite", late_margin=0.2).threads
            assert result.outcome == Outcome.LOADED, result.error
            assert_exactly_once(client, specs, project)
        posts = [e for e in proxy.log if e.method == "POST" and e.path.rstrip("/").endswith("/fhir/R4")
                 and CHECK not in e.body]
        dropped = next(n for n, e in enumerate(proxy.log) if e.action == "drop-after")
        after = proxy.log[dropped + 1:]
        assert any(e.method == "GET" and "identifier=" in e.path for e in after), "searched before anything else"
        assert len(posts) == 2  # the probe, then the lost transaction: nothing re-sent once the search found it
        assert len(checks(proxy.log, project.prefix)) == 1  # then its entries, looked for copies of


@pytest.mark.parametrize("seed", [3, 11])
def test_faults_through_the_proxy_every_thread_exactly_once(project: Any, tmp_path: Path, seed: int) -> None:
    specs = specs_for(project, 60, 3, seed=seed)
    post = r"/fhir/R4/?$"
    with FaultProxy(project.target.base_url, seed=seed) as proxy:
        proxy.add(Rule("status", status=401, path=r"/fhir/R4/", nth=40, times=1))  # a token revoked mid-run
        proxy.add(throttled(retry_after=1, method="POST", path=post, every=9))
        proxy.add(Rule("status", status=503, method="POST", path=post, fraction=0.08))
        proxy.add(Rule("status", status=502, method="GET", fraction=0.05))
        proxy.add(Rule("drop_before", method="POST", path=post, fraction=0.05))
        proxy.add(Rule("drop_after", method="POST", path=post, fraction=0.08))
        proxy.add(Rule("delay_response", delay=2.5, method="POST", path=post, fraction=0.03))
        proxy.add(Rule("delay", delay=0.05, fraction=0.2))
        with client_for(project, proxy.url, timeout=1.5) as client:
            report = load(specs, client, journal=tmp_path / "j.sqlite", concurrency=6, late_margin=0.5)
            assert report.ok, [(t.key, t.outcome, t.error) for t in report.threads if not t.outcome.ok]
            fired = {a for e in proxy.log for a in e.actions}
            assert {"status 429", "status 503", "drop-after", "status 401"} <= fired
            assert isinstance(client.auth, ClientCredentials) and client.auth.logins == 2
            proxy.clear()
            again = load(specs, client, journal=tmp_path / "j.sqlite")  # the journal knows the proxy's URL
            assert again.counts() == {Outcome.SKIPPED: 60}
    with client_for(project) as client:
        assert_exactly_once(client, specs, project)


@pytest.mark.local_only
def test_token_expiry_mid_run(project: Any, tmp_path: Path) -> None:
    project.configure(token_ttl_seconds=2)
    specs = specs_for(project, 60, 3)
    with FaultProxy(project.target.base_url) as proxy, client_for(project, proxy.url) as client:
        proxy.add(Rule("delay", delay=0.1))  # make the run outlive a couple of tokens
        report = load(specs, client, journal=tmp_path / "j.sqlite", concurrency=2)
        assert report.ok
        assert isinstance(client.auth, ClientCredentials) and client.auth.logins >= 2
        assert_exactly_once(client, specs, project)


def test_non_atomic_project_thread_failing_midway_is_partial(project: Any, tmp_path: Path) -> None:
    project.configure(transaction_bundles=False)
    data = sample_specs(1, 4, prefix=project.prefix)[0]
    data["messages"][2] = {"id": "m2", "sender": "p1", "sent": data["messages"][2]["sent"],
                           "attachments": [{"url": "has space", "contentType": "image/png"}]}
    spec = parse_spec(data, file="bad.yaml")
    with client_for(project) as client:
        off = load([spec], client, journal=tmp_path / "off.sqlite", atomic="off")
        [t] = off.threads
        assert t.outcome == Outcome.PARTIAL
        assert t.header_id and set(t.message_ids) == {"m0", "m1", "m3"}  # a batch tries every entry
        assert "non-atomically" in (t.error or "") and "Invalid url" in (t.error or "")
        assert t.error.startswith("bad.yaml")  # type: ignore[union-attr]
        with pytest.raises(Exception, match="non-atomically"):
            load([spec], client, journal=tmp_path / "req.sqlite", atomic="require")


def test_non_atomic_project_auto_uses_conditional_creates_and_completes_on_rerun(project: Any,
                                                                                  tmp_path: Path) -> None:
    project.configure(transaction_bundles=False)
    specs = specs_for(project, 5, 12)
    with FaultProxy(project.target.base_url, seed=5) as proxy:
        proxy.add(Rule("drop_before", method="POST", path=r"/fhir/R4/?$", nth=6))
        with client_for(project, proxy.url, max_attempts=1) as client:
            first = load(specs, client, journal=tmp_path / "j.sqlite", concurrency=1)
        bodies = [orjson.loads(e.body) for e in proxy.log if e.method == "POST" and e.body.startswith(b"{")]
    assert first.atomic is False
    loads = [b for b in bodies if b.get("type") == "transaction" and any(
        "ifNoneExist" in e["request"] for e in b["entry"])]
    assert loads and all(len(b["entry"]) <= 8 for b in loads)
    assert all(e["request"]["ifNoneExist"].startswith("identifier=") for b in loads for e in b["entry"])
    with client_for(project) as client:
        second = load(specs, client, journal=tmp_path / "j.sqlite")
        assert second.ok
        assert_exactly_once(client, specs, project)


@pytest.mark.local_only
def test_quota_paced_without_429(project: Any, tmp_path: Path) -> None:
    project.configure(quota={"enabled": True, "points": 6000, "windowSeconds": 2})
    specs = specs_for(project, 20, 4)
    with FaultProxy(project.target.base_url) as proxy, client_for(project, proxy.url) as client:
        report = load(specs, client, journal=tmp_path / "j.sqlite", concurrency=4)
        assert report.ok
        statuses = collections.Counter(e.upstream_status for e in proxy.log)
        assert statuses[429] == 0, statuses
        assert report.waited > 0


def test_auto_concurrency_loads_every_thread_exactly_once_and_says_where_it_settled(project: Any,
                                                                                    tmp_path: Path) -> None:
    """The default, `concurrency="auto"`: every thread loaded once; the report says what it settled at, within
    what the client has connections for."""
    specs = specs_for(project, 60, 3)
    with client_for(project, concurrency=6) as client:
        report = load(specs, client, journal=tmp_path / "j.sqlite")
        assert report.counts() == {Outcome.LOADED: 60}
        assert report.concurrency.startswith("auto: settled at ")
        assert 1 <= int(report.concurrency.split()[3].rstrip(";")) <= 6
        assert client.gate.most == 6, "the client's own gate is back once the load is over"
        assert_exactly_once(client, specs, project)


@pytest.mark.local_only
def test_auto_concurrency_under_a_quota_draws_no_429(project: Any, tmp_path: Path) -> None:
    """With the server's quota on, `auto` neither raises what is in flight past what the quota pays for nor draws
    429s: the pacer spends the quota evenly and the controller stays within it."""
    project.configure(quota={"enabled": True, "points": 6000, "windowSeconds": 2})
    specs = specs_for(project, 24, 4)
    with FaultProxy(project.target.base_url) as proxy, client_for(project, proxy.url) as client:
        report = load(specs, client, journal=tmp_path / "j.sqlite", concurrency="auto")
        assert report.ok
        statuses = collections.Counter(e.upstream_status for e in proxy.log)
        assert statuses[429] == 0, statuses
        assert report.waited > 0
        assert "backed off" not in report.concurrency


def test_concurrency_must_be_auto_or_a_number(project: Any, tmp_path: Path) -> None:
    with client_for(project) as client:
        for wrong in (0, "4", True, "fast"):
            with pytest.raises(BundlerError, match="concurrency must be"):
                load(specs_for(project, 1, 1), client, journal=tmp_path / "j.sqlite", concurrency=wrong)


@pytest.mark.volume  # (on a real Medplum: the project whose quota is lifted)
def test_killed_at_random_points_then_resumed_every_thread_exactly_once(project: Any, tmp_path: Path) -> None:
    data = sample_specs(150, 6, prefix=project.prefix, seed=4)
    write_specs(tmp_path / "threads", data)
    journal = tmp_path / "j.sqlite"
    rng = random.Random(20261125)
    committed_after_kill = []

    def transactions(log: list[Any]) -> int:  # the loader's own, not the atomicity probe's
        return sum(1 for e in log if e.method == "POST" and project.prefix.encode() in e.body)

    with FaultProxy(project.target.base_url) as proxy:
        proxy.add(Rule("delay", delay=0.01, method="POST"))  # the kill lands while requests are in flight
        # a killed run's requests in flight are searched for by the next run only once they can no longer land:
        # --timeout + --late-margin after they were sent (short here, so the test does not wait for long)
        args = ["load", str(tmp_path / "threads"), "--journal", str(journal), "--max-entries", "3",
                "--concurrency", "2", "--no-progress", "--timeout", "3", "--late-margin", "0.5"]
        environ = {**os.environ, **env(project), "MEDPLUM_BASE_URL": proxy.url}
        for _ in range(22):  # 450 transactions in all (3 a thread)
            # each run is killed on observed progress: after 4 to 24 more of its transactions reached the proxy
            # and once the journal holds more committed threads than at the last kill
            until, last = transactions(proxy.log) + rng.randint(4, 24), committed(journal)
            proc = subprocess.Popen([sys.executable, "-m", "bundler", *args], env=environ, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)

            def progressed(log: list[Any], until: int = until, last: int = last) -> bool:
                return transactions(log) >= until and committed(journal) > last

            while not proxy.wait(progressed, timeout=1) and proc.poll() is None:
                pass
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            committed_after_kill.append(committed(journal))
        final = cli([*args, "--report", str(tmp_path / "report.json")], {**env(project), "MEDPLUM_BASE_URL":
                                                                             proxy.url})
    assert final.returncode == 0, final.stderr
    # the kills really landed mid-load, many times, each after more threads had committed than the last
    interrupted = [n for n in committed_after_kill if 0 < n < 150]
    assert len(interrupted) >= 10, committed_after_kill
    assert all(a < b for a, b in itertools.pairwise(interrupted)), committed_after_kill
    report = json.loads((tmp_path / "report.json").read_text())
    assert sum(report["counts"].values()) == 150 and report["counts"].get("skipped", 0) > 0
    with client_for(project) as client:
        assert_exactly_once(client, [parse_spec(d) for d in data], project)


def test_cli_errors_are_one_line_and_exit_2(project: Any, tmp_path: Path) -> None:
    threads = str(WALKTHROUGH)
    wrong = cli(["load", threads, "--journal", str(tmp_path / "a.sqlite")], env(project, "wrong-secret-123"))
    assert wrong.returncode == 2 and "login refused" in wrong.stderr and errors(wrong) == 1
    gone = cli(["load", threads, "--journal", str(tmp_path / "b.sqlite")],
                {**env(project), "MEDPLUM_BASE_URL": "http://127.0.0.1:9/"})
    assert gone.returncode == 2 and "cannot reach" in gone.stderr and "connection refused" in gone.stderr
    assert errors(gone) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [], "a failed login or an unreachable server: no journal"
    forbidden = b'{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"forbidden",' \
                b'"details":{"text":"Forbidden"}}]}'
    with FaultProxy(project.target.base_url) as proxy:
        proxy.add(Rule("status", status=403, path=r"/fhir/R4/", body=forbidden,
                       headers={"Content-Type": "application/fhir+json"}))
        denied = cli(["load", threads, "--journal", str(tmp_path / "c.sqlite")],
                      {**env(project), "MEDPLUM_BASE_URL": proxy.url})
    assert denied.returncode == 2 and "forbidden (HTTP 403)" in denied.stderr and errors(denied) == 1
    insecure = cli(["load", threads], {**env(project), "MEDPLUM_BASE_URL": "http://example.org/"})
    assert insecure.returncode == 2 and "--allow-insecure" in insecure.stderr


def test_secrets_never_appear_in_any_output(project: Any, tmp_path: Path) -> None:
    secret = project.target.client_secret
    spec_dir = tmp_path / "threads"
    data = sample_specs(5, 2, prefix=project.prefix)
    data[4]["messages"][1]["attachments"] = [{"url": "bad url"}]
    write_specs(spec_dir, data)
    runs = [
        cli(["load", str(spec_dir), "--report", str(tmp_path / "r.json")], env(project)),
        cli(["load", str(spec_dir), "--dry-run"], env(project)),
        cli(["verify", str(spec_dir), "--format", "json"], env(project)),
        cli(["doctor"], env(project)),
        cli(["load", str(spec_dir)], env(project, secret + "-not")),
    ]
    with client_for(project) as client:
        token = client.auth.token()
    outputs = [r.stdout + r.stderr for r in runs]
    files = [p.read_bytes().decode(errors="replace") for p in tmp_path.rglob("*") if p.is_file()]
    for text in outputs + files:
        assert secret not in text
        assert "eyJ" not in text  # no JWT (our tokens are) in any output, journal or report
    assert token not in "".join(outputs + files)
    assert (runs[0].returncode == 1 and "failed" in runs[0].stderr) or "partial" in runs[0].stderr


def test_identifier_system_is_part_of_the_journal_target(project: Any, tmp_path: Path) -> None:
    specs = specs_for(project, 2, 1)
    with client_for(project) as client:
        load(specs, client, journal=tmp_path / "j.sqlite")
        other = load(specs, client, journal=tmp_path / "j.sqlite", identifier_system="https://example.org/t")
        assert other.counts() == {Outcome.LOADED: 2}
        assert load(specs, client, journal=tmp_path / "j.sqlite").counts() == {Outcome.SKIPPED: 2}


def test_failed_thread_names_spec_line_and_outcome(project: Any, tmp_path: Path) -> None:
    data = sample_specs(2, 3, prefix=project.prefix)
    data[1]["messages"][1]["attachments"] = [{"url": "has space"}]
    spec_file = tmp_path / "t.json"
    spec_file.write_text(json.dumps(data, indent=1))
    specs = load_specs([spec_file])
    with client_for(project) as client:
        report = load(specs, client, journal=tmp_path / "j.sqlite")
        good, bad = report.threads  # (kept results come in input order)
        assert good.outcome == Outcome.LOADED and bad.outcome == Outcome.FAILED
        line = next(n for n, text in enumerate(spec_file.read_text().splitlines(), 1) if "has space" in text)
        assert bad.error and bad.error.startswith(f"{spec_file}:")
        assert int(bad.error.split(":")[1]) <= line
        assert "Invalid url" in bad.error
    assert DEFAULT_IDENTIFIER_SYSTEM  # the default system is what the journal target used


def test_an_unfinished_thread_whose_spec_changed_gets_every_entry_of_the_new_spec(project: Any,
                                                                                   tmp_path: Path) -> None:
    # "as many ids as entries" is not "all entries on the server": a row left `sent` by an interrupted run, holding
    # the id of a message the edited spec no longer has, must not make the loader commit the edited thread without
    # its new message
    data = sample_specs(1, 3, prefix=project.prefix)[0]
    journal = tmp_path / "j.sqlite"
    with client_for(project) as client:
        [first] = load([parse_spec(data)], client, journal=journal).threads
        assert first.outcome == Outcome.LOADED
        with sqlite3.connect(journal) as db:  # as if the run had been killed before its last part committed
            db.execute("UPDATE threads SET state='sent'")
        data["messages"][2] = {**data["messages"][2], "id": "new-message"}  # one message replaced by another
        edited = parse_spec(data)
        [result] = load([edited], client, journal=journal).threads
        assert result.outcome == Outcome.RESUMED and result.created == 1, result
        assert "new-message" in result.message_ids
        [checked] = verify([edited], client)
        assert checked.differences == [f"Communication/{first.message_ids['m2']}: on the server in this thread "
                                       f"but not in the spec (identifier {edited.key}/m2)"]


def test_a_stream_of_threads_is_loaded_a_window_at_a_time(project: Any, tmp_path: Path) -> None:
    specs = specs_for(project, 23, 2)
    pulled: list[str] = []

    def stream() -> Any:
        for spec in specs:
            pulled.append(spec.key)
            yield spec

    with client_for(project) as client:
        seen: list[str] = []
        progress_calls: list[tuple[str, int]] = []
        watcher = LoadWatcher(on_thread=lambda r, n: (seen.append(r.key), progress_calls.append((r.outcome, n))))
        report = load(stream(), client, journal=tmp_path / "j.sqlite", window=5, watcher=watcher)
        assert [t.key for t in report.threads] == [s.key for s in specs]  # kept results: in input order
        assert report.counts() == {Outcome.LOADED: 23} and sorted(seen) == sorted(pulled)
        assert all(n == 2 for _, n in progress_calls)
        assert_exactly_once(client, specs, project)


class Pulled:
    """A stream of specs made as they are pulled (nothing else holds them), which notes, as each window's first spec
    is pulled, how many specs of the windows before are still held: by the loader, or whoever read it."""

    def __init__(self, data: list[dict[str, Any]], window: int) -> None:
        self.data, self.window = data, window
        self.refs: list[weakref.ref[Any]] = []
        self.held: list[int] = []  # at the start of each window after the first

    def __iter__(self) -> Any:
        for n, item in enumerate(self.data):
            if n and n % self.window == 0:
                gc.collect()
                self.held.append(sum(ref() is not None for ref in self.refs))
            spec = parse_spec(item)
            self.refs.append(weakref.ref(spec))
            yield spec
            del spec


def test_a_window_of_threads_is_let_go_before_the_next_is_read(project: Any, tmp_path: Path) -> None:
    """`load` holds one window of specs at a time (what keeps its memory flat on a folder of any size): the last
    window's specs, and the spec file's data they point at, are let go before the next window is read."""
    stream = Pulled(sample_specs(12, 2, seed=7, prefix=project.prefix), window=4)
    with client_for(project) as client:
        report = load(stream, client, journal=tmp_path / "j.sqlite", window=4)
    assert report.counts() == {Outcome.LOADED: 12}
    assert stream.held == [0, 0]


def test_verify_lets_a_window_go_before_reading_the_next(project: Any) -> None:
    stream = Pulled(sample_specs(12, 2, seed=8, prefix=project.prefix), window=4)
    with client_for(project) as client:
        results = list(verify_each(stream, client, window=4))
    assert [r.differences for r in results] == [["not on the server (no header with its identifier)"]] * 12
    assert stream.held == [0, 0]


def test_verify_reports_what_changed_on_the_server(project: Any, tmp_path: Path) -> None:
    spec = walkthrough_for(project)
    with client_for(project) as client:
        [loaded] = load([spec], client, journal=tmp_path / "j.sqlite").threads
        message_id = loaded.message_ids["homer-asks"]
        changed = client.read(f"Communication/{message_id}")
        changed["payload"] = [{"contentString": "Edited on the server"}]
        changed["status"] = "completed"
        resp = client.http.put(f"{client.fhir_base}Communication/{message_id}", content=orjson.dumps(changed),
                               headers={"Content-Type": "application/fhir+json"})  # the client's auth
        assert resp.status_code == 200, resp.text
        [result] = verify([spec], client)
        assert not result.ok
        assert sorted(result.differences) == [
            "messages[2] (homer-asks).payload[0].contentString: expected 'Thanks — will the results be ready by the "
            "end of the week?', got 'Edited on the server'",
            "messages[2] (homer-asks).status: expected 'in-progress', got 'completed'"]
