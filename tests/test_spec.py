"""Reading specs: every bad input gets every problem, with file, line, column and field path."""

from __future__ import annotations

import json
import random
from pathlib import Path

import jsonschema
import pytest
from click.testing import CliRunner

from bundler import assets
from bundler.cli import main
from bundler.errors import SpecError
from bundler.spec import load_specs, parse_spec

REPO = Path(__file__).resolve().parent.parent
INVALID = REPO / "fixtures" / "invalid"
CASES = sorted(p for p in INVALID.iterdir() if p.suffix != ".expected")


@pytest.fixture(autouse=True)
def _in_repo(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)


@pytest.mark.parametrize("case", CASES, ids=lambda p: p.name)
def test_invalid_fixture_gives_its_expected_messages(case: Path) -> None:
    expected = case.with_suffix(".expected").read_text().splitlines() if case.is_file() else \
        (INVALID / f"{case.name}.expected").read_text().splitlines()
    with pytest.raises(SpecError) as info:
        load_specs([case.relative_to(REPO)])
    assert [str(p) for p in info.value.problems] == expected
    assert all(p.file.startswith("fixtures/invalid/") for p in info.value.problems)


@pytest.mark.parametrize("case", CASES, ids=lambda p: p.name)
def test_cli_build_refuses_invalid_input_with_exit_2_and_writes_nothing(case: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["build", str(case.relative_to(REPO)), "fixtures/threads", "-o", str(out)])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert "nothing written" in result.stderr
    assert not out.exists()


def test_missing_path_is_named() -> None:
    with pytest.raises(SpecError) as info:
        load_specs(["fixtures/threads/no-such-thread.yaml", "fixtures/threads"])
    assert [str(p) for p in info.value.problems] == ["fixtures/threads/no-such-thread.yaml: no such file or folder"]


def test_yaml_values_are_not_reinterpreted() -> None:
    spec = parse_spec({"thread": 12, "topic": "t", "participants": {"a": {"reference": "Patient/1"}}})
    assert spec.key == "12"
    text = """
thread: keep-values
topic: yes
participants: {a: {reference: Patient/1}, 007: {reference: Patient/7}}
messages:
  - {id: 007, sender: a, sent: 2024-04-10T10:00:00.123456789+05:30, text: no}
  - {id: 1.50, sender: 007, sent: 2024-04-10T10:00:00Z, text: "1:30", reply_to: 007}
"""
    from bundler.spec import check_document
    from bundler.spec.source import parse_text

    docs, problems = parse_text(text, "x.yaml")
    assert problems == []
    spec, problems = check_document(docs[0])
    assert problems == [] and spec is not None
    assert spec.topic == "yes"
    assert list(spec.participants) == ["a", "007"]
    first, second = spec.messages
    assert (first.id, first.sent, first.text) == ("007", "2024-04-10T10:00:00.123456789+05:30", "no")
    assert (second.id, second.sender, second.text, second.reply_to) == ("1.50", "007", "1:30", "007")


def test_json_array_holds_several_threads_with_positions(tmp_path: Path) -> None:
    threads = [{"thread": f"t{i}", "topic": "x", "participants": {"a": {"reference": "Patient/1"}}} for i in range(3)]
    threads[2]["participants"]["a"]["reference"] = "nope"
    path = tmp_path / "many.json"
    path.write_text(json.dumps(threads, indent=2))
    with pytest.raises(SpecError) as info:
        load_specs([path])
    (problem,) = info.value.problems
    assert problem.path == "[3].participants.a.reference"  # list positions count from 1
    assert path.read_text().splitlines()[problem.line - 1].strip().startswith('"reference": "nope"')


def test_every_problem_in_every_file_is_reported_at_once() -> None:
    with pytest.raises(SpecError) as info:
        load_specs([INVALID / "unknown-alias.yaml", INVALID / "reply-to.yaml"])
    assert len(info.value.problems) == 5
    assert len({p.file for p in info.value.problems}) == 2


def test_stdin_is_read_with_dash() -> None:
    text = (REPO / "fixtures/threads/homer-lab-results.yaml").read_text()
    result = CliRunner().invoke(main, ["build", "-", "--ndjson"], input=text)
    assert result.exit_code == 0, result.output
    bundle = json.loads(result.stdout.splitlines()[0])
    assert len(bundle["entry"]) == 4


def test_bad_identifier_system_is_a_usage_error() -> None:
    result = CliRunner().invoke(main, ["build", "fixtures/threads", "--identifier-system", "has space"])
    assert result.exit_code == 2
    assert "absolute URI" in result.output


def test_the_schema_is_a_valid_2020_12_schema() -> None:
    schema = assets.schema("thread-spec.schema.json")
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$schema"].endswith("2020-12/schema")


@pytest.mark.parametrize("name, text", [
    ("big.yaml", "thread: t\ntopic: " + "9" * 5000 + "\nparticipants: {a: {reference: Patient/1}}\n"),
    ("big.json", '{"thread": "t", "topic": ' + "9" * 5000 + ', "participants": {"a": {"reference": "Patient/1"}}}'),
])
def test_a_number_too_long_for_python_is_a_problem_not_a_traceback(tmp_path: Path, name: str, text: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(SpecError) as info:
        load_specs([path])
    first = info.value.problems[0]
    assert (first.line, first.column) == ((2, 8) if name.endswith(".yaml") else (1, 26))
    assert first.message == "a number with 5000 digits is too long to read (quote it if it is text)"
    result = CliRunner().invoke(main, ["build", str(path)])
    assert result.exit_code == 2 and "Traceback" not in result.output


def test_json_lines_give_the_positions_a_table_of_line_starts_gives_in_any_order() -> None:
    from bundler.spec.source import _Lines

    rng = random.Random(20)
    text = "".join(rng.choice("ab\n") for _ in range(2000))
    starts = [0] + [i + 1 for i, c in enumerate(text) if c == "\n"]

    def expected(offset: int) -> tuple[int, int]:
        line = max(n for n, start in enumerate(starts, 1) if start <= offset)
        return (line, offset - starts[line - 1] + 1)

    lines = _Lines(text)  # (constant memory: it counts from the offset asked before)
    offsets = sorted(rng.randrange(len(text)) for _ in range(300)) + [rng.randrange(len(text)) for _ in range(300)]
    assert [lines.at(o) for o in offsets] == [expected(o) for o in offsets]


def test_json_positions_after_a_long_string_full_of_escapes_are_exact() -> None:
    from bundler.spec.source import parse_json

    text = '{\n  "text": "' + 'a\\"b\\\\c\\n' * 200_000 + '",\n  "topic": 7\n}'
    (doc,), problems = parse_json(text, "t.json")
    assert problems == []
    assert doc.data["text"] == 'a"b\\c\n' * 200_000
    assert doc.position(("topic",)) == (3, 12)


def test_a_json_files_threads_are_placed_by_the_read_and_the_rest_only_when_a_problem_asks() -> None:
    from bundler.spec.source import parse_json, split_threads

    rng = random.Random(7)
    for _ in range(50):
        items = [{"thread": f"t{i}", "messages": [{"text": "a\nb", "n": [1, {"x": None}]}] * rng.randrange(3)}
                 for i in range(rng.randrange(6))]
        pad = lambda: "".join(rng.choice(" \t\r\n") for _ in range(rng.randrange(4)))  # noqa: E731
        text = pad() + "[" + pad() + ("," + pad()).join(pad() + json.dumps(t, indent=rng.choice([None, 2])) + pad()
                                                        for t in items) + pad() + "]" + pad()
        (lazy,), problems = parse_json(text, "t.json", positions=False)
        (exact,), _ = parse_json(text, "t.json")
        assert problems == [] and lazy.data == exact.data == items
        threads = list(split_threads([lazy]))
        assert [t.position(()) for t in threads] == [exact.position((i,)) for i in range(len(items))]
        assert lazy.position(()) == exact.position(())
        assert not lazy.locate.__self__.scanned  # type: ignore[union-attr]  # (a thread's line needs no scan)
        assert lazy.locate.__self__.doc.data is None  # type: ignore[union-attr]  # (what a spec keeps: not the file)
        if items and items[0]["messages"]:
            assert threads[0].position(("messages", 0, "n", 1)) == exact.position((0, "messages", 0, "n", 1))
