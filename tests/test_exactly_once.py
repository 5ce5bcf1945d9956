"""Exactly once under races, late requests, escaping and a flaky probe: no duplicates, each through the fault
proxy and counted on the server."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
from faultproxy import Event, FaultProxy, Rule
from loadkit import (
    CHECK,
    POST,
    LandedClock,
    assert_exactly_once,
    cli,
    client_for,
    copies,
    env,
    header_value,
    landed,
    load,
    specs_for,
    transactions,
    write_specs,
)

from bundler import parse_spec
from bundler.errors import BundlerError
from bundler.load.report import Outcome
from bundler.medplum.probe import PROBE_SYSTEM
from bundler.testing.strategies import sample_specs
from bundler.vocabulary import identifier_token


def probe_leftovers(project: Any) -> int:
    """Probe resources on the server (any tag)."""
    with client_for(project) as client:
        return len(client.search("Communication", {"identifier": f"{PROBE_SYSTEM}|", "_count": "1000"}))


# --- 1. two loaders on one journal ------------------------------------------------------------------


def test_a_second_loader_on_the_same_journal_refuses_at_once_or_waits(project: Any, tmp_path: Path) -> None:
    data = sample_specs(30, 2, prefix=project.prefix, seed=3)
    write_specs(tmp_path / "threads", data)
    journal = tmp_path / "j.sqlite"
    args = ["load", str(tmp_path / "threads"), "--journal", str(journal), "--no-progress"]
    with FaultProxy(project.target.base_url) as proxy:
        # the first loader's transactions are held at the proxy: it is surely running while the others start
        proxy.add(Rule("hold", method="POST", path=POST, body_contains=project.prefix, until=lambda log: False))
        environ = {**os.environ, **env(project), "MEDPLUM_BASE_URL": proxy.url}
        first = subprocess.Popen([sys.executable, "-m", "bundler", *args], env=environ, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
        try:
            assert proxy.wait(lambda log: bool(transactions(log, project.prefix)), timeout=60)
            logins = sum(1 for e in proxy.log if "oauth2/token" in e.path)
            (tmp_path / "link.sqlite").symlink_to(journal)  # the same journal by another name
            through_link = [*args[:3], str(tmp_path / "link.sqlite"), *args[4:]]
            second = cli(through_link, {**env(project), "MEDPLUM_BASE_URL": proxy.url})
            assert second.returncode == 2, second.stderr
            assert f"in use by another load (thread-bundler load: process {first.pid} on" in second.stderr
            assert f"link.sqlite (the file {journal.resolve()})" in second.stderr
            assert "--wait" in second.stderr and "Traceback" not in second.stderr
            assert sum(1 for e in proxy.log if "oauth2/token" in e.path) == logins, "the refused one sent nothing"
            third = subprocess.Popen([sys.executable, "-m", "bundler", *args, "--wait"], env=environ,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            assert third.stderr is not None
            waiting = ""
            while "waiting for it to finish" not in waiting:  # its own words, before the first is let go
                waiting = third.stderr.readline()
                assert waiting, "the waiting loader ended instead of waiting"
            assert f"process {first.pid}" in waiting
            proxy.release()
            assert first.wait(120) == 0
            out = third.communicate(timeout=120)[1]
            assert third.returncode == 0, out
            assert "skipped" in out and "30" in out  # it ran after the first, and found everything done
        finally:
            for proc in (first,):
                if proc.poll() is None:
                    proc.kill()
    with client_for(project) as client:
        assert_exactly_once(client, [parse_spec(d) for d in data], project)


# --- 2. requests that reach the server late ----------------------------------------------------------


def _delivered_before_search(log: list[Event], key: str) -> bool:
    """The late request landed before the loader searched for the thread's identifiers."""
    late = next(e for e in log if "late" in e.actions)
    search = next(e for e in log if e.method == "GET" and "identifier=" in e.path and key in e.path
                  and e.seq > late.seq)
    return late.delivered_after is not None and late.delivered_after < search.seq


def test_a_request_landing_after_the_client_timed_out_is_found_not_resent(project: Any, tmp_path: Path) -> None:
    specs = specs_for(project, 3, 4)
    key = specs[1].key
    with FaultProxy(project.target.base_url) as proxy:
        # the client gives up (timeout), then the request reaches the server: a search right away finds nothing
        proxy.add(Rule("late", method="POST", path=POST, body_contains=header_value(key), times=1))
        with client_for(project, proxy.url, timeout=1, clock=LandedClock(landed(proxy))) as client:
            report = load(specs, client, journal=tmp_path / "j.sqlite", late_margin=3)
        assert report.ok, [(t.key, t.error) for t in report.threads]
        assert _delivered_before_search(proxy.log, key), "quarantined until the late request had landed"
        assert len(transactions(proxy.log, header_value(key))) == 1, "not sent again: it was found"
    with client_for(project) as client:
        assert_exactly_once(client, specs, project)


def test_a_gateway_504_while_the_request_is_still_on_its_way(project: Any, tmp_path: Path) -> None:
    specs = specs_for(project, 2, 3)
    key = specs[0].key
    with FaultProxy(project.target.base_url) as proxy:
        proxy.add(Rule("late", status=504, method="POST", path=POST, body_contains=header_value(key), times=1))
        with client_for(project, proxy.url, clock=LandedClock(landed(proxy))) as client:
            report = load(specs, client, journal=tmp_path / "j.sqlite", late_margin=2)
        assert report.ok
        assert _delivered_before_search(proxy.log, key)
    with client_for(project) as client:
        assert_exactly_once(client, specs, project)


def test_two_late_requests_with_atomic_off_still_once(project: Any, tmp_path: Path) -> None:
    specs = specs_for(project, 2, 3, seed=2)
    key = specs[0].key
    with FaultProxy(project.target.base_url) as proxy:
        late = proxy.add(Rule("late", method="POST", path=POST, body_contains=header_value(key), times=2))
        with client_for(project, proxy.url, timeout=1, clock=LandedClock(landed(proxy))) as client:
            report = load(specs, client, journal=tmp_path / "j.sqlite", atomic="off", late_margin=2,
                          max_entries=2)  # the thread in two parts: each part's request may be late
        assert report.ok
        assert late.fired >= 1
        assert all("delivered-late" in e.actions for e in proxy.log if "late" in e.actions)
    with client_for(project) as client:
        assert_exactly_once(client, specs, project)


def test_strict_mode_survives_a_request_of_any_lateness(project: Any, tmp_path: Path) -> None:
    specs = specs_for(project, 2, 10, seed=5)
    key = specs[0].key

    def resent_and_committed(log: list[Event]) -> bool:  # the twin of the late request is on the server
        return sum(1 for e in transactions(log, header_value(key)) if e.upstream_status == 200) >= 1

    with FaultProxy(project.target.base_url) as proxy:
        # the first request lands only after the loader sent it again and that one committed: no quarantine
        # could wait long enough for this
        proxy.add(Rule("late", method="POST", path=POST, body_contains=header_value(key), times=1,
                       until=resent_and_committed))
        with client_for(project, proxy.url, timeout=1) as client:
            report = load(specs, client, journal=tmp_path / "j.sqlite", exactly_once="strict",
                          late_margin=3600)  # never waited for in strict mode
            assert report.ok
            assert proxy.wait(lambda log: any("delivered-late" in e.actions for e in log), timeout=60)
            late = next(e for e in proxy.log if "delivered-late" in e.actions)
            assert late.upstream_status == 200  # it landed, and created nothing: its twin's identifiers matched
            bodies = [orjson.loads(e.body) for e in transactions(proxy.log, project.prefix)]
            assert all(len(b["entry"]) <= 8 and all("ifNoneExist" in x["request"] for x in b["entry"])
                       for b in bodies)
            assert_exactly_once(client, specs, project)


def test_a_request_landing_later_than_the_margin_is_reported_as_this_loads_own(project: Any, tmp_path: Path) -> None:
    """The default mode's limit: a request that lands after its quarantine's search (the server slower than
    --timeout plus --late-margin) is stored beside the one sent again. The check for copies finds both and
    says it was this load's own lost request, and what to do about it, not that another load ran."""
    specs = specs_for(project, 2, 3, seed=7)
    key = specs[0].key

    def resent_and_committed(log: list[Event]) -> bool:
        return any(e.upstream_status == 200 and "late" not in e.actions
                   for e in transactions(log, header_value(key)))

    with FaultProxy(project.target.base_url) as proxy:
        proxy.add(Rule("late", method="POST", path=POST, body_contains=header_value(key), times=1,
                       until=resent_and_committed))
        # the check for copies of that thread waits until the late request has landed (it would find them anyway
        # a moment later, in the next run's check: this makes it this run's)
        proxy.add(Rule("hold", method="POST", path=POST, body_contains=CHECK,
                       predicate=lambda e: key.encode() in e.body,
                       until=lambda log: any("delivered-late" in e.actions for e in log)))
        with client_for(project, proxy.url, timeout=1) as client:
            report = load(specs, client, journal=tmp_path / "j.sqlite", late_margin=0.2)
    [doubled] = [t for t in report.threads if t.outcome == Outcome.DUPLICATED]
    assert doubled.key == key and doubled.duplicates
    assert "this load lost the answer to 1 of its requests" in (doubled.error or "")
    assert "--exactly-once strict" in (doubled.error or "") and "another load" not in (doubled.error or "")
    assert [t.outcome for t in report.threads if t.key != key] == [Outcome.LOADED]


def test_a_request_in_flight_when_the_loader_was_killed_lands_later_and_is_found(project: Any,
                                                                                   tmp_path: Path) -> None:
    data = sample_specs(4, 3, prefix=project.prefix, seed=8)
    write_specs(tmp_path / "threads", data)
    key = data[2]["thread"]
    args = ["load", str(tmp_path / "threads"), "--journal", str(tmp_path / "j.sqlite"), "--no-progress",
            "--concurrency", "1", "--timeout", "2", "--late-margin", "1"]
    killed = [False]

    def next_run_started(log: list[Event]) -> bool:  # the killed loader is dead and the next one logged in
        return killed[0] and sum(1 for e in log if "oauth2/token" in e.path) >= 2

    with FaultProxy(project.target.base_url) as proxy:
        environ = {**os.environ, **env(project), "MEDPLUM_BASE_URL": proxy.url}
        held = proxy.add(Rule("hold", method="POST", path=POST, body_contains=header_value(key), times=1,
                              until=next_run_started))
        proc = subprocess.Popen([sys.executable, "-m", "bundler", *args], env=environ, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        assert proxy.wait(lambda log: bool(transactions(log, header_value(key))), timeout=60)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        killed[0] = True
        rerun = cli(args, {**env(project), "MEDPLUM_BASE_URL": proxy.url})
        assert rerun.returncode == 0, rerun.stderr
        assert held.fired == 1
        [landed] = [e for e in proxy.log if e.actions[-1:] == ["hold"]]
        assert landed.upstream_status == 200  # it reached the server while the next run was going on
    with client_for(project) as client:
        assert_exactly_once(client, [parse_spec(d) for d in data], project)


# --- 3. identifiers that need escaping ---------------------------------------------------------------


def test_identifier_values_with_search_characters_are_escaped(project: Any) -> None:
    system = f"https://example.org/{project.prefix}"
    values = [f"{project.prefix}-a,b", f"{project.prefix}-c$d", f"{project.prefix}-e\\f", f"{project.prefix}-plain"]
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": {"resourceType": "Communication", "status": "completed",
                      "identifier": [{"system": system, "value": v}]},
         "request": {"method": "POST", "url": "Communication"}} for v in values]}
    with client_for(project) as client:
        client.transaction(orjson.dumps(bundle), entries=len(values))
        found = client.find_identifiers("Communication", [f"{system}|{v}" for v in values])
        assert sorted(found) == sorted(f"{system}|{v}" for v in values)
        for v in values:  # each exactly once on the server, found by its escaped token alone
            assert len(client.search("Communication", {"identifier": identifier_token(system, v)})) == 1
        unescaped = client.search("Communication", {"identifier": f"{system}|{values[0]}"})
        assert unescaped == [], "the search syntax splits an unescaped ',': the escaped token is the one that finds it"


@pytest.mark.parametrize("system", ["urn:x,y", "https://example.org/a|b", "not a uri", "urn:back\\slash"])
def test_load_refuses_an_identifier_system_that_is_not_a_usable_uri(project: Any, tmp_path: Path,
                                                                    system: str) -> None:
    specs = specs_for(project, 2, 1)
    with FaultProxy(project.target.base_url) as proxy, client_for(project, proxy.url) as client:
        with pytest.raises(BundlerError, match=r"identifier system .* absolute URI .*nothing sent"):
            load(specs, client, journal=tmp_path / "j.sqlite", identifier_system=system)
        assert proxy.log == []
    assert list(tmp_path.iterdir()) == []
    with client_for(project) as client:
        assert set(copies(client, specs, whole_store=project.server is not None).values()) == {0}
    run = cli(["load", "-", "--journal", str(tmp_path / "k.sqlite"), "--identifier-system", system], env(project),
              input="[]")
    assert run.returncode == 2 and "Traceback" not in run.stderr and re.search("identifier.system", run.stderr)


# --- 4. the atomicity probe under faults -------------------------------------------------------------


def test_a_lost_probe_answer_is_retried_not_fatal(project: Any, tmp_path: Path) -> None:
    specs = specs_for(project, 3, 2)
    with FaultProxy(project.target.base_url) as proxy:
        proxy.add(Rule("status", status=503, method="POST", path=POST, body_contains=PROBE_SYSTEM, nth=1))
        proxy.add(Rule("drop_before", method="POST", path=POST, body_contains=PROBE_SYSTEM, nth=2))
        with client_for(project, proxy.url) as client:
            report = load(specs, client, journal=tmp_path / "j.sqlite")
        assert report.ok and report.atomic is True
        assert [e.action for e in proxy.log if PROBE_SYSTEM.encode() in e.body][:3] == [
            "status 503", "drop-before", "forwarded"]
    assert probe_leftovers(project) == 0
    with client_for(project) as client:
        assert_exactly_once(client, specs, project)


def test_a_probe_whose_answer_is_lost_on_a_non_atomic_project_is_reconciled_and_cleaned(project: Any,
                                                                                         tmp_path: Path) -> None:
    project.configure(transaction_bundles=False)
    specs = specs_for(project, 3, 2)
    with FaultProxy(project.target.base_url) as proxy:
        # processed (its first entry kept, as a batch does), the answer lost
        proxy.add(Rule("drop_after", method="POST", path=POST, body_contains=PROBE_SYSTEM, nth=1))
        with client_for(project, proxy.url) as client:
            # the lost probe is removed again at the end, once it can no longer land (a short margin here)
            report = load(specs, client, journal=tmp_path / "j.sqlite", late_margin=0.5)
        assert report.ok and report.atomic is False
        assert sum(1 for e in proxy.log if PROBE_SYSTEM.encode() in e.body) == 1, "found, so not probed again"
    assert probe_leftovers(project) == 0
    with client_for(project) as client:
        assert_exactly_once(client, specs, project)


@pytest.mark.parametrize("seed", range(6))
def test_random_faults_around_the_probe_never_abort_the_load(project: Any, tmp_path: Path, seed: int) -> None:
    specs = specs_for(project, 2, 2, seed=seed)
    with FaultProxy(project.target.base_url, seed=seed) as proxy:
        probe: dict[str, Any] = {"body_contains": PROBE_SYSTEM, "method": "POST", "path": POST}
        proxy.add(Rule("status", status=503, fraction=0.3, **probe))
        proxy.add(Rule("drop_after", fraction=0.3, **probe))
        proxy.add(Rule("drop_before", fraction=0.3, **probe))
        proxy.add(Rule("status", status=502, method="GET", path=PROBE_SYSTEM.replace(":", "%3A"), fraction=0.3))
        with client_for(project, proxy.url, timeout=5) as client:
            report = load(specs, client, journal=tmp_path / "j.sqlite")
        assert report.ok and report.atomic is True
    assert probe_leftovers(project) == 0
    with client_for(project) as client:
        assert_exactly_once(client, specs, project)


def test_a_quarantined_thread_holds_no_worker_and_no_window(project: Any, tmp_path: Path) -> None:
    specs = specs_for(project, 8, 2, seed=9)
    key = specs[0].key
    with FaultProxy(project.target.base_url) as proxy:
        proxy.add(Rule("late", method="POST", path=POST, body_contains=header_value(key), times=1))
        with client_for(project, proxy.url, timeout=1, clock=LandedClock(landed(proxy))) as client:
            # a margin no other window outlasts on a busy machine (at 3 s, the six threads after it sometimes did, and
            # the thread was due again before they were sent); the loader's wait for it ends once the late request
            # lands (LandedClock), so the test takes no longer
            report = load(specs, client, journal=tmp_path / "j.sqlite", late_margin=60, window=2, concurrency=1)
        assert report.ok
        search = next(e for e in proxy.log if e.method == "GET" and "identifier=" in e.path and key in e.path
                      and e.seq > transactions(proxy.log, header_value(key))[0].seq)
        later = [transactions(proxy.log, header_value(s.key))[0].seq for s in specs[2:]]
        assert max(later) < search.seq, "the other windows went on while the thread waited"
    with client_for(project) as client:
        assert_exactly_once(client, specs, project)
