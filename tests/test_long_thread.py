"""A thread of many messages is checked, built and written a part at a time: the same issues and the same bytes as
its whole bundle gives, with only a window of its entries built at a time."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings

from bundler import DEFAULT_IDENTIFIER_SYSTEM, parse_spec
from bundler.build import BuiltEntries, build_bundle
from bundler.check.validate import spec_origin, validate, validate_built
from bundler.spec import load_specs
from bundler.testing.strategies import sample_specs, thread_specs

SYSTEM = DEFAULT_IDENTIFIER_SYSTEM
FIXTURES = Path(__file__).parent.parent / "fixtures"


def _whole(spec: Any, **options: Any) -> list[Any]:
    return validate(build_bundle(spec), origin=spec_origin(spec), **options)


def _fixture_specs() -> list[Any]:
    return load_specs([FIXTURES / "threads"], participants=FIXTURES / "participants" / "people.yaml")


def test_the_built_entries_are_the_bundle_for_every_fixture() -> None:
    for spec in _fixture_specs():
        entries = BuiltEntries(spec, SYSTEM)
        assert list(entries) == build_bundle(spec)["entry"]
        assert [entries.url_of(n) for n in range(len(entries))] == [e["fullUrl"] for e in entries]
        assert entries[-1] == entries[len(entries) - 1]


@settings(max_examples=60, deadline=None)
@given(thread_specs(min_messages=3, max_messages=12, drafts=True))
def test_checked_in_windows_a_thread_has_the_issues_of_its_whole_bundle(data: dict[str, Any]) -> None:
    spec = parse_spec(data)
    entries = BuiltEntries(spec, SYSTEM)
    assert list(entries) == build_bundle(spec)["entry"]
    assert validate_built(entries, window=1, structure=False) == _whole(spec, structure=False)


@pytest.mark.parametrize("limits", ["medplum", "none"])
def test_fixtures_checked_in_windows_have_the_issues_of_their_whole_bundles(limits: str) -> None:
    for spec in _fixture_specs():
        assert validate_built(BuiltEntries(spec, SYSTEM), window=1, limits=limits) == _whole(spec, limits=limits)


@pytest.mark.parametrize(("large", "code"), [(range(40), "limit.body-size"), (range(17, 18), "limit.entry-size")])
def test_windows_renumber_what_they_find_into_the_whole_bundle(large: range, code: str) -> None:
    """A bundle over the body limit (added up entry by entry: 40 messages of 40 kB), or one message too large for
    any request: found where the whole bundle finds them, at the same entry, however the windows fall."""
    [data] = sample_specs(1, 40, seed=3)
    for n in large:
        data["messages"][n]["text"] = "y" * (40_000 if len(large) > 1 else 1_100_000)
    spec = parse_spec(data)
    whole = _whole(spec, structure=False)
    assert [i.code for i in whole] == [code]
    for window in (1, 3, 7):
        assert validate_built(BuiltEntries(spec, SYSTEM), window=window, structure=False) == whole


class _Counting(BuiltEntries):
    """BuiltEntries that count the entries alive (built and not yet let go)."""

    alive = 0
    most = 0

    def _counted(self, entry: dict[str, Any]) -> dict[str, Any]:
        import weakref

        cls = type(self)
        cls.alive += 1
        cls.most = max(cls.most, cls.alive)
        holder = _Entry(entry)
        weakref.finalize(holder, cls._gone)
        return holder

    @classmethod
    def _gone(cls) -> None:
        cls.alive -= 1

    def message(self, i: int) -> dict[str, Any]:
        return self._counted(super().message(i))


class _Entry(dict):  # type: ignore[type-arg]
    """A dict that can be weakly referenced."""


def test_a_long_thread_is_checked_with_a_window_of_its_entries_alive(monkeypatch: pytest.MonkeyPatch) -> None:
    [data] = sample_specs(1, 300, seed=5)
    spec = parse_spec(data)
    _Counting.alive = _Counting.most = 0
    issues = validate_built(_Counting(spec, SYSTEM), window=20, structure=False)
    assert issues == _whole(spec, structure=False)
    assert _Counting.alive == 0
    assert 20 <= _Counting.most <= 2 * 20  # a window and the messages it answers: not the 300 messages


def test_validate_files_checks_a_long_thread_in_windows(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from bundler.check.files import validate_files
    from bundler.spec.dump import dump_yaml

    monkeypatch.setattr("bundler.check.files.WINDOW", 10)
    [data] = sample_specs(1, 60, seed=7)
    (tmp_path / "t.yaml").write_bytes(dump_yaml(data))
    seen: list[int] = []
    def spy(entries: BuiltEntries, **kw: Any) -> Any:
        seen.append(len(entries.spec.messages))
        return validate_built(entries, window=10, **kw)

    monkeypatch.setattr("bundler.check.files.validate_built", spy)
    report = validate_files([tmp_path])
    assert seen == [60]
    assert report.bundles == 1
    spec = parse_spec(data)
    assert [i.text for i in report.issues] == [i.text for i in _whole(spec)]


@pytest.mark.parametrize("ndjson", [False, True])
def test_a_long_thread_is_written_an_entry_at_a_time_in_the_same_bytes(monkeypatch: pytest.MonkeyPatch,
                                                                        tmp_path: Path, ndjson: bool) -> None:
    from bundler.bundle_files import build_files
    from bundler.spec.dump import dump_yaml

    specs = tmp_path / "specs"
    specs.mkdir()
    for n, data in enumerate(sample_specs(3, 25, seed=11)):
        data["messages"][3]["text"] = "a line\nbreak, a tab\t, quotes \" and ünïcödé ✓"
        (specs / f"t{n}.yaml").write_bytes(dump_yaml(data))
    (specs / "care.yaml").write_bytes((FIXTURES / "threads" / "care-team-tasks.yaml").read_bytes())
    people = FIXTURES / "participants" / "people.yaml"

    def built(out: Path) -> dict[str, bytes]:
        build_files([specs], out=out, ndjson=ndjson, participants=people)
        return {p.name: p.read_bytes() for p in ([out] if ndjson else sorted(out.iterdir()))}

    whole = built(tmp_path / ("whole.ndjson" if ndjson else "whole"))
    streamed: list[str] = []
    monkeypatch.setattr("bundler.bundle_files.WINDOW", 1)  # every thread of more than 2 messages: a window at a time
    monkeypatch.setattr("bundler.bundle_files.validate_built",
                        lambda entries, **kw: streamed.append(entries.spec.key) or validate_built(entries, **kw))
    parts = built(tmp_path / ("parts.ndjson" if ndjson else "parts"))
    assert len(streamed) == 4
    assert list(parts.values()) == list(whole.values())


def _long_spec(read_model: str | None) -> Any:
    [data] = sample_specs(1, 60, seed=13, prefix="long")
    if read_model is not None:
        data["read_model"] = read_model
        read = data["messages"][5]
        read["read_by"] = {next(a for a in data["participants"] if a != read["sender"]): "2035-01-02T00:00:00Z"}
    return parse_spec(data)


@pytest.mark.parametrize("read_model", [None, "header-extension", "tasks"])
def test_a_long_thread_to_load_is_what_its_bytes_would_give(monkeypatch: pytest.MonkeyPatch,
                                                            read_model: str | None) -> None:
    from bundler.load.thread import Thread

    spec = _long_spec(read_model)
    short = Thread(spec, SYSTEM)
    monkeypatch.setattr("bundler.load.thread.LONG_THREAD", 10)
    long = Thread(spec, SYSTEM)
    assert long._body is None and short._body is not None
    assert long.body == short.body
    assert (long.fingerprint, long.length, list(long.hashes), list(long.sizes)) == (
        short.fingerprint, short.length, list(short.hashes), list(short.sizes))
    assert list(long.identifiers) == [long.identifiers[n] for n in range(len(long.urls))] == \
        [f"{SYSTEM}|{v}" for v in long.values] and long.hashes[-1] == short.hashes[-1]
    assert list(long.bundle["entry"]) == list(short.bundle["entry"])


@pytest.mark.wire
@pytest.mark.local_only
def test_a_long_thread_loads_in_parts_built_when_sent(monkeypatch: pytest.MonkeyPatch, project: Any,
                                                      tmp_path: Path) -> None:
    from loadkit import client_for, load

    from bundler.load.verify import verify

    [data] = sample_specs(1, 130, seed=17, prefix=project.prefix)
    data["read_model"] = "header-extension"
    read = data["messages"][100]
    read["read_by"] = {next(a for a in data["participants"] if a != read["sender"]): "2035-01-02T00:00:00Z"}
    spec = parse_spec(data)
    monkeypatch.setattr("bundler.load.thread.LONG_THREAD", 10)
    built: list[int] = []
    real = BuiltEntries.message
    monkeypatch.setattr(BuiltEntries, "message", lambda self, i: built.append(i) or real(self, i))
    with client_for(project) as client:
        report = load([spec], client, journal=tmp_path / "j.sqlite", max_bytes=20_000)
        [result] = report.threads
        assert result.outcome.value == "loaded", result.error
        assert result.requests > 3  # in parts
        assert sorted(set(built)) == list(range(130))  # each message built for the pass and again for its part
        [checked] = verify([spec], client)
        assert checked.ok and checked.messages == 130
        again = load([spec], client, journal=tmp_path / "j.sqlite", max_bytes=20_000)
        assert [t.outcome.value for t in again.threads] == ["skipped"]


def test_export_compares_a_thread_with_its_entries_built_one_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    import weakref

    from loadkit import as_stored

    from bundler.export.shape import shape_thread

    [data] = sample_specs(1, 80, seed=19, prefix="exp")
    spec = parse_spec(data)
    stored = as_stored(spec)
    alive, most = [0], [0]

    def gone() -> None:
        alive[0] -= 1

    real = BuiltEntries.message

    def counted(self: BuiltEntries, i: int) -> dict[str, Any]:
        entry = _Entry(real(self, i))
        alive[0] += 1
        most[0] = max(most[0], alive[0])
        weakref.finalize(entry, gone)
        return entry

    monkeypatch.setattr(BuiltEntries, "message", counted)
    shaped = shape_thread(stored[0], stored[1:], identifier_system=SYSTEM)
    assert shaped.spec is not None and shaped.problems == []
    assert len(shaped.spec.messages) == 80
    assert 1 <= most[0] <= 2  # compared an entry at a time, not the 80 built first
