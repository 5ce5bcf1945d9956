"""The exactly-once state machine (`bundler.load.machine`) on an in-memory server (`inmemory.MemoryServer`, through
the client's `transport=`) and a fake clock: lost answers, late requests, 429 and rollbacks inside a batch's 200,
serialization failures, quarantine within a run and across runs. Every wait is on the fake clock: a quarantine of
a minute passes at once, and `clock.slept` says how long the load would have waited."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from inmemory import Conflict, Fault, Inside, Late, Lost, MemoryServer
from loadkit import load

from bundler import parse_spec
from bundler.load.machine import MAX_LOST, MAX_ROLLED_BACK
from bundler.load.report import LoadReport, Outcome
from bundler.medplum.answer import EntryAnswer, Location, TransactionAnswer, blamed_entry
from bundler.medplum.clock import FakeClock
from bundler.spec.model import ThreadSpec
from bundler.testing.strategies import sample_specs

SYSTEM = "urn:test:memory"
MARGIN = 30.0  # --late-margin: a plain request whose answer was lost is searched for this long after


def specs(threads: int = 1, messages: int = 2, seed: int = 1) -> list[ThreadSpec]:
    return [parse_spec(s) for s in sample_specs(threads, messages, seed=seed, prefix="mem")]


def values(spec: ThreadSpec) -> list[str]:
    return [spec.key, *(f"{spec.key}/{m.id}" for m in spec.messages)]


def assert_once(server: MemoryServer, threads: list[ThreadSpec]) -> None:
    copies = server.copies()
    for spec in threads:
        assert [copies.get(v, 0) for v in values(spec)] == [1] * len(values(spec)), spec.key


def run(server: MemoryServer, threads: list[ThreadSpec], journal: Path, *, is_atomic: bool = True,
        **kw: Any) -> LoadReport:
    with server.client() as client:
        return load(threads, client, journal=journal, identifier_system=SYSTEM, late_margin=MARGIN,
                    is_atomic=is_atomic, **kw)


# --- the seam: a transaction's answer, typed ------------------------------------------------------------------


def test_a_transaction_answer_is_parsed_once_into_typed_entries() -> None:
    answer = TransactionAnswer({"resourceType": "Bundle", "entry": [
        {"response": {"status": "201 Created", "location": "Communication/a1/_history/3"}},
        {"response": {"status": "200", "location": "https://x.example/fhir/R4/Patient/p-2"},
         "resource": {"resourceType": "Patient", "id": "p-2", "meta": {"versionId": "7"}}},
        {"response": {"status": "429 Too Many Requests"}},
        {"response": {"status": "409 Conflict", "outcome": {"resourceType": "OperationOutcome", "issue": [
            {"code": "conflict", "details": {"coding": [{"code": "40001"}], "text": "rolled back"}}]}}},
        {"response": {"status": "400 Bad Request", "location": "not a reference", "outcome": {
            "resourceType": "OperationOutcome", "issue": [{"code": "invalid", "diagnostics": "bad",
                                                           "expression": ["Bundle.entry[4].resource"]}]}}},
    ]})
    created, found, throttled, rolled, refused = answer.entries
    assert (created.status, created.ok, created.id) == (201, True, "a1")
    assert created.location == Location("Communication", "a1", "3")
    assert (found.status, found.reference, found.version, found.location) == (200, "Patient/p-2", "7",
                                                                                Location("Patient", "p-2", None))
    assert throttled.throttled and not throttled.ok and not throttled.rolled_back
    assert rolled.rolled_back and rolled.code == "409" and rolled.outcome_text == "rolled back"
    assert (refused.status, refused.location, refused.id, refused.outcome_text) == (
        400, None, None, "bad (Bundle.entry[4].resource)")
    assert blamed_entry(refused.outcome, below=5) == 4 and blamed_entry(refused.outcome, below=4) is None
    assert answer["entry"][0]["response"]["status"] == "201 Created"  # the Bundle itself, as sent
    assert EntryAnswer.parse({}).status is None and EntryAnswer.parse({"response": {"status": "abc"}}).status is None


# --- the state machine --------------------------------------------------------------------------------------


def test_a_fresh_load_sends_each_thread_once_and_waits_for_nothing(tmp_path: Path) -> None:
    server = MemoryServer()
    threads = specs(3)
    report = run(server, threads, tmp_path / "j.sqlite")
    assert [r.outcome for r in report.threads] == [Outcome.LOADED] * 3
    assert server.applied == 3 and server.clock.slept == 0
    assert_once(server, threads)


def test_an_answer_lost_after_the_request_was_applied_is_found_after_the_quarantine_not_resent(
        tmp_path: Path) -> None:
    server = MemoryServer(faults=[Lost()])
    threads = specs()
    report = run(server, threads, tmp_path / "j.sqlite")
    (result,) = report.threads
    assert result.outcome == Outcome.LOADED, result.error
    assert server.applied == 1, "reconciled by search, not sent again"
    assert server.clock.slept >= MARGIN, "searched only once it could no longer land (the margin after the loss)"
    assert_once(server, threads)


def test_a_late_request_that_lands_inside_the_quarantine_is_found_not_resent(tmp_path: Path) -> None:
    server = MemoryServer(faults=[Late(after=MARGIN - 1)])  # lands just before the quarantine ends
    threads = specs()
    report = run(server, threads, tmp_path / "j.sqlite")
    (result,) = report.threads
    assert result.outcome == Outcome.LOADED, result.error
    assert server.applied == 1 and not server.late
    assert_once(server, threads)


def test_a_request_that_never_lands_is_sent_again_after_the_quarantine(tmp_path: Path) -> None:
    server = MemoryServer(faults=[Late(after=None)])
    threads = specs()
    report = run(server, threads, tmp_path / "j.sqlite")
    assert report.threads[0].outcome == Outcome.LOADED
    assert server.applied == 1
    assert_once(server, threads)


def test_a_quarantined_thread_holds_no_worker(tmp_path: Path) -> None:
    """One worker: while the first thread waits out its quarantine, the others are sent."""
    server = MemoryServer(faults=[Late(after=5)])
    threads = specs(3)
    report = run(server, threads, tmp_path / "j.sqlite", concurrency=1, window=2)
    assert all(r.outcome == Outcome.LOADED for r in report.threads)
    searches = [n for n, (method, path) in enumerate(server.log) if method == "GET" and path == "Communication"]
    posts = [n for n, (method, path) in enumerate(server.log) if method == "POST"]
    assert len([n for n in posts if n < searches[-1]]) >= 3, "the other threads went on during the quarantine"
    assert_once(server, threads)


def test_answers_lost_beyond_max_lost_leave_the_thread_sent_and_the_next_run_resumes_it(tmp_path: Path) -> None:
    never: list[Fault | None] = [Late(after=None)] * (MAX_LOST + 1)
    server = MemoryServer(faults=never)
    threads = specs()
    first = run(server, threads, tmp_path / "j.sqlite")
    (result,) = first.threads
    assert result.outcome == Outcome.FAILED and "kept getting lost" in (result.error or "")
    assert server.applied == 0
    waited = server.clock.slept
    second = run(server, threads, tmp_path / "j.sqlite")
    assert second.threads[0].outcome == Outcome.LOADED
    assert server.applied == 1
    assert server.clock.slept >= waited, "the second run quarantined what the first left in flight"
    assert_once(server, threads)


def test_a_request_in_flight_when_a_run_ended_lands_later_and_the_next_run_finds_it(tmp_path: Path) -> None:
    lost: list[Fault | None] = [*[Late(after=None)] * MAX_LOST, Late(after=20)]
    server = MemoryServer(faults=lost)
    threads = specs()
    first = run(server, threads, tmp_path / "j.sqlite")
    assert first.threads[0].outcome == Outcome.FAILED
    second = run(server, threads, tmp_path / "j.sqlite")
    assert second.threads[0].outcome == Outcome.RESUMED
    assert server.applied == 1, "found by search once it could land no more, not sent again"
    assert_once(server, threads)


def test_a_serialization_failure_is_sent_again_after_a_backoff(tmp_path: Path) -> None:
    server = MemoryServer(faults=[Conflict(), Conflict()])
    threads = specs()
    with server.client() as client:
        report = load(threads, client, journal=tmp_path / "j.sqlite", identifier_system=SYSTEM, is_atomic=True)
        assert client.serialization_retries == 2
    assert report.threads[0].outcome == Outcome.LOADED
    assert server.applied == 1
    assert_once(server, threads)


@pytest.mark.parametrize("first", [1, 2])
def test_429_inside_a_batchs_200_is_sent_again_and_every_worker_backs_off(tmp_path: Path, first: int) -> None:
    """A project without atomic transactions: a batch stops at the quota, later entries answered 429."""
    server = MemoryServer(faults=[None, Inside(first, 429)])  # (the header goes alone first)
    threads = specs(1, 3)
    report = run(server, threads, tmp_path / "j.sqlite", is_atomic=False)
    (result,) = report.threads
    assert result.outcome == Outcome.LOADED, result.error
    assert server.clock.slept >= 1.0, "the pacer held every worker back (on the fake clock)"
    assert_once(server, threads)


def test_entries_a_batch_rolled_back_are_sent_again_then_given_up(tmp_path: Path) -> None:
    server = MemoryServer(faults=[None, Inside(0, 409)])
    threads = specs(1, 2)
    report = run(server, threads, tmp_path / "j.sqlite", is_atomic=False)
    assert report.threads[0].outcome == Outcome.LOADED
    assert_once(server, threads)

    stubborn = MemoryServer(faults=[None, *[Inside(0, 409)] * (MAX_ROLLED_BACK + 1)])
    report = run(stubborn, specs(1, 2, seed=2), tmp_path / "j2.sqlite", is_atomic=False)
    (result,) = report.threads
    assert result.outcome == Outcome.PARTIAL and "HTTP 409: could not serialize access" in (result.error or "")


def test_a_lost_answer_to_a_conditional_request_is_sent_again_at_once(tmp_path: Path) -> None:
    server = MemoryServer(faults=[None, Lost()])
    threads = specs(1, 2)
    report = run(server, threads, tmp_path / "j.sqlite", is_atomic=False)
    assert report.threads[0].outcome == Outcome.LOADED
    assert server.applied == 3, "sent again: its conditional creates found what the lost one stored"
    assert server.clock.slept < MARGIN, "no quarantine"
    assert_once(server, threads)


def test_a_refused_entry_fails_the_thread_at_the_line_of_what_it_blames(tmp_path: Path) -> None:
    server = MemoryServer(faults=[Inside(1, 400)])
    threads = specs(1, 2)
    report = run(server, threads, tmp_path / "j.sqlite")
    (result,) = report.threads
    assert result.outcome == Outcome.PARTIAL
    assert "HTTP 400: refused here" in (result.error or "")
    assert "non-atomically: 1 of 3 entries were committed" in (result.error or "")


def test_the_fake_clock_moves_only_when_waited_on() -> None:
    clock = FakeClock(100.0)
    assert clock.time() == clock.monotonic() == 100.0
    clock.sleep(2.5)
    assert (clock.time(), clock.slept) == (102.5, 2.5)
