"""What `load --dry-run`, `doctor`, Ctrl-C and the progress line say, through the command
line and the fault proxy, counted on the server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from faultproxy import Event, FaultProxy, Rule
from loadkit import (
    POST,
    assert_exactly_once,
    cli,
    client_for,
    committed,
    copies,
    ctrl_c_reaches_it,
    env,
    load,
    transactions,
    write_specs,
)

from bundler import load_specs, parse_spec
from bundler.load import Outcome
from bundler.load import load as load_counting
from bundler.testing.strategies import sample_specs

NPI = "http://hl7.org/fhir/sid/us-npi"


def _bad_reference_specs(folder: Path, prefix: str, value: str) -> Path:
    """Three threads whose practitioner is a conditional reference that matches nothing (one file)."""
    data = sample_specs(3, 2, prefix=prefix, seed=21)
    for d in data:
        d["participants"]["doc"] = {"reference": f"Practitioner?identifier={NPI}|{value}", "display": "Dr. Nobody"}
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "threads.json"
    path.write_text(json.dumps(data, indent=1))
    return path


def _line_of(path: Path, text: str) -> int:
    return next(n for n, line in enumerate(path.read_text().splitlines(), 1) if text in line)


# --- honest plans ----------------------------------------------------------------------------------------


def test_a_dry_run_exits_0_writes_nothing_and_says_the_time_is_unknown_without_a_header(project: Any,
                                                                                          tmp_path: Path) -> None:
    data = sample_specs(6, 3, prefix=project.prefix, seed=22)
    write_specs(tmp_path / "threads", data)
    with client_for(project) as client:
        load([parse_spec(d) for d in data[:2]], client, journal=tmp_path / "elsewhere" / "j.sqlite")
    run = cli(["load", str(tmp_path / "threads"), "--dry-run", "--journal", str(tmp_path / "j.sqlite")], env(project))
    assert run.returncode == 0, run.stderr
    plan = run.stderr.split("plan:", 1)[1].split("\n", 1)[0]
    if project.server is not None:  # the local server (quota off) sends no RateLimit header
        assert "time unknown: the server sends no RateLimit header" in run.stderr
        assert "about" not in plan
    else:  # Medplum sends one with every answer
        assert "at the server's quota" in plan and "time unknown" not in run.stderr
    existing = next(line for line in run.stderr.splitlines() if line.startswith("existing"))
    assert existing.split() == ["existing", "2", "6"], "the messages of threads that exist are counted"
    assert "nothing was sent, no journal written" in run.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["elsewhere", "threads"]
    with client_for(project) as client:  # the two loaded before, once; nothing of the others
        counts = copies(client, [parse_spec(d) for d in data], whole_store=project.server is not None)
    assert sorted(set(counts.values())) == [0, 1] and sum(counts.values()) == 2 * 4


@pytest.mark.local_only
def test_a_dry_run_times_the_plan_by_the_servers_quota_header(project: Any, tmp_path: Path) -> None:
    project.configure(quota={"enabled": True, "points": 6000, "windowSeconds": 60})
    write_specs(tmp_path / "threads", sample_specs(10, 4, prefix=project.prefix))
    run = cli(["load", str(tmp_path / "threads"), "--dry-run", "--atomic", "off"], env(project))
    assert run.returncode == 0, run.stderr
    # 10 threads × 5 entries × 100 points + 1 search, at the quota's pace of about 100 points a second
    assert "plan: 10 transaction requests, 5,020 quota points; about 0:5" in run.stderr


def test_the_dry_run_plan_for_a_project_that_is_not_atomic_is_what_the_load_then_sends(project: Any,
                                                                                      tmp_path: Path) -> None:
    project.configure(transaction_bundles=False)
    specs = [parse_spec(d) for d in sample_specs(5, 12, prefix=project.prefix, seed=23)]
    with FaultProxy(project.target.base_url) as proxy, client_for(project, proxy.url) as client:
        plan = load_counting(specs, client, journal=tmp_path / "j.sqlite", dry_run=True).plan
        assert plan is not None and plan.requests == 5 and plan.requests_not_atomic == 5 * 3
        proxy.clear(log=True)
        report = load(specs, client, journal=tmp_path / "j.sqlite")
        assert report.ok and report.atomic is False
        assert len(transactions(proxy.log, project.prefix)) == plan.requests_not_atomic  # header, 8, 4
        # the journal now knows: the next plan is one plan
        again = load_counting(specs, client, journal=tmp_path / "j.sqlite", dry_run=True)
        assert again.plan is not None and again.plan.requests_not_atomic is None


@pytest.mark.parametrize("value", ["1234567893", "+1-312-555-0199,x&y"], ids=["plain", "encoded"])
def test_a_conditional_reference_matching_nothing_is_found_by_the_dry_run_at_the_participants_line(
        project: Any, tmp_path: Path, value: str) -> None:
    """(The server quotes a reference it could not resolve as it was sent, percent-encoded: found all the same.)"""
    escaped = value.replace(",", "\\,")  # (as a spec writes it)
    value = f"{escaped}-{project.prefix}"  # this test's own: the fixtures create NPI 1234567893, and a real server
    # keeps what every test loads
    path = _bad_reference_specs(tmp_path / "threads", project.prefix, value)
    line = _line_of(path, json.dumps(value)[1:-1])
    with FaultProxy(project.target.base_url) as proxy:
        run = cli(["load", str(path), "--dry-run"], {**env(project), "MEDPLUM_BASE_URL": proxy.url})
        lookups = [e for e in proxy.log if e.method == "GET" and "Practitioner" in e.path]
    assert run.returncode == 1, run.stderr
    assert f"{path}:{line}: participants.doc: Practitioner?identifier={NPI}|{value} matches nothing on the " \
           "server" in run.stderr
    assert len(lookups) == 1, "each distinct conditional reference is resolved once"
    real = cli(["load", str(path), "--journal", str(tmp_path / "j.sqlite")], env(project))
    assert real.returncode == 1
    assert f"{path}:{line}: participants.doc: " in real.stderr  # the server's refusal, at the same line
    assert "+" not in value or "%2B1-312-555-0199" in real.stderr, real.stderr  # (quoted as sent)
    with client_for(project) as client:
        assert all(n == 0 for n in _copies(client, path).values())


def _copies(client: Any, path: Path) -> dict[str, int]:
    return dict(copies(client, load_specs([path])))


# --- doctor -----------------------------------------------------------------------------------------------


def test_doctor_asks_one_search_and_exits_by_its_table(project: Any, tmp_path: Path) -> None:
    with client_for(project) as client:
        load([parse_spec(d) for d in sample_specs(30, 1, prefix=project.prefix)], client,
             journal=tmp_path / "j.sqlite")
    with FaultProxy(project.target.base_url) as proxy:
        run = cli(["doctor", "--format", "json"], {**env(project), "MEDPLUM_BASE_URL": proxy.url})
        searches = [e for e in proxy.log if e.method == "GET" and "identifier=" not in e.path]
    assert run.returncode == 0, run.stdout + run.stderr
    assert len(searches) == 1, [e.path for e in searches]  # not a page per Communication
    report = json.loads(run.stdout)
    statuses = {c["name"]: c["status"] for c in report["checks"]}
    with client_for(project) as client:  # the probes left nothing; the threads are as they were
        assert client.search("Communication", {"identifier": "urn:thread-bundler:doctor|", "_count": "10"}) == []
    assert statuses["atomic transactions"] == "ok" and statuses["clean up"] == "ok"
    assert statuses["references must exist"] == "ok"
    forbidden = ('{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"forbidden",'
                 '"details":{"text":"Forbidden"}}]}')
    with FaultProxy(project.target.base_url) as proxy:
        proxy.add(Rule("status", status=403, method="POST", path=POST, body=forbidden,
                       headers={"Content-Type": "application/fhir+json"}))
        denied = cli(["doctor"], {**env(project), "MEDPLUM_BASE_URL": proxy.url})
    assert denied.returncode == 1 and "FAIL" in denied.stdout and "create Communication" in denied.stdout
    wrong = cli(["doctor"], env(project, "wrong-secret"))
    assert wrong.returncode == 1 and "login" in wrong.stdout and "FAIL" in wrong.stdout


def test_doctor_warns_about_a_non_atomic_project_and_tells_whether_references_must_exist(project: Any) -> None:
    project.configure(transaction_bundles=False, check_references_on_write=True)
    run = cli(["doctor"], env(project))
    assert run.returncode == 0, run.stdout  # a warning: `load --atomic auto` handles it
    rows = {line.split("  ")[0]: line for line in run.stdout.splitlines()}
    assert "WARN" in rows["atomic transactions"] and "--atomic auto" in rows["atomic transactions"]
    assert "yes: every reference must point at an existing resource" in rows["references must exist"]
    project.configure(transaction_bundles=True, check_references_on_write=False)
    again = cli(["doctor"], env(project))
    assert "no: a reference to a missing resource is stored" in again.stdout and "WARN" not in again.stdout


# --- Ctrl-C --------------------------------------------------------------------------------------------


def test_ctrl_c_prints_the_summary_so_far_writes_the_partial_report_and_resumes(project: Any,
                                                                                  tmp_path: Path) -> None:
    data = sample_specs(40, 2, prefix=project.prefix, seed=24)
    write_specs(tmp_path / "threads", data)
    journal, report = tmp_path / "j.sqlite", tmp_path / "report.json"
    args = ["load", str(tmp_path / "threads"), "--journal", str(journal), "--report", str(report), "--no-progress",
            "--concurrency", "2"]
    with FaultProxy(project.target.base_url) as proxy:
        # the 12th transaction is held: Ctrl-C arrives while it is in flight, after others committed
        proxy.add(Rule("hold", method="POST", path=POST, body_contains=project.prefix, nth=12,
                       until=lambda log: False))
        environ = {**os.environ, **env(project), "MEDPLUM_BASE_URL": proxy.url}
        proc = subprocess.Popen([sys.executable, "-m", "bundler", *args], env=environ, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, preexec_fn=ctrl_c_reaches_it)

        def held_and_committed(log: list[Event]) -> bool:
            return any(e.actions == ["hold"] for e in log) and committed(journal) >= 5

        assert proxy.wait(held_and_committed, timeout=60)
        proc.send_signal(signal.SIGINT)
        proxy.release()
        _, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 130, stderr
        partial = json.loads(report.read_text())
        done = sum(partial["counts"].values())
        assert partial["interrupted"] is True and partial["ok"] is False
        assert len(partial["threads"]) == done and 5 <= done < 40
        assert f"interrupted: {done} of 40 threads in; run the same command again to resume" in stderr
        assert "Traceback" not in stderr
        resumed = cli(args, {**env(project), "MEDPLUM_BASE_URL": proxy.url})
        assert resumed.returncode == 0, resumed.stderr
        final = json.loads(report.read_text())
        assert final["counts"].get("skipped", 0) >= done and sum(final["counts"].values()) == 40
    with client_for(project) as client:
        assert_exactly_once(client, [parse_spec(d) for d in data], project)


# --- memory: counts, not results -------------------------------------------------------------------


def test_the_report_keeps_counts_and_results_are_streamed(project: Any, tmp_path: Path) -> None:
    specs = [parse_spec(d) for d in sample_specs(12, 2, prefix=project.prefix, seed=25)]
    seen: list[Any] = []
    from bundler.load import LoadWatcher

    with client_for(project) as client:
        report = load_counting(specs, client, journal=tmp_path / "j.sqlite",
                               watcher=LoadWatcher(on_thread=lambda r, n: seen.append(r)))
        assert report.threads == [] and report.counts() == {Outcome.LOADED: 12}
        assert report.messages[Outcome.LOADED] == 24 and len(seen) == 12
        assert {r.key for r in seen} == {s.key for s in specs} and all(len(r.message_ids) == 2 for r in seen)
        assert_exactly_once(client, specs, project)


# --- the progress line comes first ---------------------------------------------------------------------


def test_the_progress_line_appears_before_the_first_search(project: Any, tmp_path: Path) -> None:
    write_specs(tmp_path / "threads", sample_specs(8, 2, prefix=project.prefix, seed=26))
    args = ["load", str(tmp_path / "threads"), "--journal", str(tmp_path / "j.sqlite"), "--no-progress"]
    with FaultProxy(project.target.base_url) as proxy:
        proxy.add(Rule("hold", method="GET", nth=1, until=lambda log: False))  # the first search waits
        environ = {**os.environ, **env(project), "MEDPLUM_BASE_URL": proxy.url}
        proc = subprocess.Popen([sys.executable, "-m", "bundler", *args], env=environ, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        assert proc.stderr is not None
        assert proxy.wait(lambda log: any(e.method == "GET" for e in log), timeout=60)
        first = proc.stderr.readline()  # already there while the first search is held
        assert first.startswith("loading 0/8 threads · 0/16 messages"), first
        proxy.release()
        rest = proc.communicate(timeout=120)[1]
        assert proc.returncode == 0, rest
    with client_for(project) as client:
        assert_exactly_once(client, [parse_spec(d) for d in sample_specs(8, 2, prefix=project.prefix, seed=26)],
                            project)


# --- --concurrency -----------------------------------------------------------------------------------


def test_concurrency_auto_is_the_default_and_the_summary_says_where_it_settled(project: Any, tmp_path: Path) -> None:
    data = sample_specs(12, 2, prefix=project.prefix, seed=31)
    write_specs(tmp_path / "threads", data)
    run = cli(["load", str(tmp_path / "threads"), "--journal", str(tmp_path / "j.sqlite"), "--no-progress",
               "--format", "json"], env(project))
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["concurrency"].startswith("auto: settled at ")
    assert "; concurrency auto: settled at " in run.stderr
    fixed = cli(["load", str(tmp_path / "threads"), "--journal", str(tmp_path / "k.sqlite"), "--no-progress",
                 "--concurrency", "3"], env(project))
    assert fixed.returncode == 0, fixed.stderr
    assert "; concurrency 3" in fixed.stderr
    for wrong in ("0", "fast", "65"):
        bad = cli(["load", str(tmp_path / "threads"), "--concurrency", wrong], env(project))
        assert bad.returncode == 2 and "neither auto nor a number of 1-64" in bad.stderr, bad.stderr
        assert "Traceback" not in bad.stderr
