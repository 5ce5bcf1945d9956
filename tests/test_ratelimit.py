"""Pacing by Medplum's RateLimit header, on a fake clock."""

from __future__ import annotations

import itertools
import threading

import pytest

from bundler.medplum.ratelimit import Gate, Limit, Pacer, parse_ratelimit


class FakeTime:
    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


@pytest.fixture
def t() -> FakeTime:
    return FakeTime()


def pacer(t: FakeTime) -> Pacer:
    return Pacer(clock=t.clock, sleep=t.sleep)


def test_parse_one_line_two_lines_and_junk() -> None:
    one = parse_ratelimit(['"requests";r=59998;t=32, "fhirInteractions";r=49980;t=60'])
    two = parse_ratelimit(['"requests";r=59998;t=32', '"fhirInteractions";r=49980;t=60'])
    assert one == two == {"requests": Limit("requests", 59998, 32), "fhirInteractions": Limit("fhirInteractions",
                                                                                              49980, 60)}
    assert parse_ratelimit(["garbage", '"x";r=1']) == {}


def test_no_header_no_pacing(t: FakeTime) -> None:
    p = pacer(t)
    for _ in range(100):
        assert p.wait(1100) == 0
    assert not p.active and t.slept == []


def test_spends_what_is_left_evenly_over_the_window(t: FakeTime) -> None:
    p = pacer(t)
    p.update({"fhirInteractions": Limit("fhirInteractions", 5000, 10.5)})  # 5000 points over ~10 s
    starts = []
    for _ in range(5):
        p.wait(1000)
        starts.append(t.now)
        p.done(1000)
    gaps = [round(b - a, 3) for a, b in itertools.pairwise(starts)]
    assert gaps == [2.0, 2.0, 2.0, 2.0]  # 1000 points at 500 points/s


def test_a_request_larger_than_what_is_left_waits_for_the_next_window(t: FakeTime) -> None:
    p = pacer(t)
    p.update({"fhirInteractions": Limit("fhirInteractions", 50_000, 60)})
    p.update({"fhirInteractions": Limit("fhirInteractions", 240, 2)})  # almost spent, renews in ~1.5 s
    slept = p.wait(1100)
    assert 1.4 <= slept <= 1.6  # not 1100/240 s, and not a 429


def test_points_in_flight_count_against_what_is_left(t: FakeTime) -> None:
    p = pacer(t)
    p.update({"fhirInteractions": Limit("fhirInteractions", 50_000, 60)})
    p.update({"fhirInteractions": Limit("fhirInteractions", 2000, 30.5)})
    p.wait(1100)  # in flight, not answered
    before = t.now
    p.wait(1100)  # 2000 - 1100 < 1100: must wait for the window
    assert t.now - before >= 29.9


def test_a_request_bigger_than_any_window_is_not_held_forever(t: FakeTime) -> None:
    p = pacer(t)
    p.update({"fhirInteractions": Limit("fhirInteractions", 3000, 10.5)})
    slept = p.wait(100_000)
    assert slept == 0


def test_a_429_or_a_spent_policy_blocks_everyone_until_reset(t: FakeTime) -> None:
    p = pacer(t)
    p.blocked(3)
    assert p.wait(100) == pytest.approx(3)
    p.update({"requests": Limit("requests", 0, 4), "fhirInteractions": Limit("fhirInteractions", 9000, 60)})
    assert p.wait(100) >= 4
    assert p.waited >= 7


def test_seconds_for_uses_the_server_rate_or_medplums_default(t: FakeTime) -> None:
    p = pacer(t)
    assert p.seconds_for(50_000) == pytest.approx(60)
    p.update({"fhirInteractions": Limit("fhirInteractions", 1000, 10.5)})
    assert p.seconds_for(1000) == pytest.approx(10)


def test_the_gate_halves_at_each_serialization_failure_and_recovers_slowly() -> None:
    gate = Gate(8)
    for _ in range(3):
        gate.enter()
    assert gate.inside == 3
    gate.leave(conflict=True)
    gate.leave(conflict=True)
    assert int(gate.limit) == 2 and gate.inside == 1
    gate.leave(conflict=True)
    gate.enter()
    gate.leave(conflict=True)
    assert gate.limit == 1.0, "never below one"
    successes = 0
    while int(gate.limit) < 2:
        gate.enter()
        gate.leave(conflict=False)
        successes += 1
    assert Gate.RECOVERY < successes <= 2 * Gate.RECOVERY, "one more after RECOVERY x as many successes as let in"
    for _ in range(1000):
        gate.enter()
        gate.leave(conflict=False)
    assert gate.limit == 8.0, "never above every worker's"


def test_the_gate_lets_in_no_more_than_its_limit() -> None:
    gate = Gate(2)
    gate.enter()
    gate.leave(conflict=True)  # (limit 1)
    gate.enter()
    entered = threading.Event()
    second = threading.Thread(target=lambda: (gate.enter(), entered.set()))
    second.start()
    with gate._cond:  # the second is waiting for the first to leave
        assert gate._cond.wait_for(lambda: len(gate._cond._waiters) == 1, timeout=10)  # type: ignore[attr-defined]
    assert not entered.is_set() and gate.inside == 1
    gate.leave(conflict=False)
    assert entered.wait(10) and gate.inside == 1
    second.join()
