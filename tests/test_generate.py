"""`generate`: the same seed writes the same bytes; every generated thread validates clean and loads into a
strict project (checkReferencesOnWrite), its cast created on demand."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from loadkit import cli, client_for, load

from bundler import generate, load_specs
from bundler.check import validate_files
from bundler.errors import OptionError
from bundler.load.verify import verify


def contents(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_the_same_seed_writes_the_same_bytes(tmp_path: Path) -> None:
    for name in ("a", "b"):
        run = cli(["generate", "--threads", "200", "--seed", "1", "-o", str(tmp_path / name)], {})
        assert run.returncode == 0, run.stderr
    a, b = contents(tmp_path / "a"), contents(tmp_path / "b")
    assert a == b and len([n for n in a if n.endswith(".yaml")]) == 201  # 200 threads, the participants file
    assert any(not n.endswith(".yaml") for n in a), "the odd attachment file"
    other = generate(200, out=tmp_path / "c", seed=2)
    assert contents(tmp_path / "c") != a and other.threads == 200


def test_generated_threads_look_like_an_inbox(tmp_path: Path) -> None:
    summary = generate(200, out=tmp_path, seed=1, messages=(2, 6))
    specs = load_specs([tmp_path / "threads"], participants=summary.participants)
    assert len(specs) == 200 and all(2 <= len(s.messages) <= 6 for s in specs)
    assert sum(len(s.messages) for s in specs) == summary.messages
    statuses = {s.status for s in specs}
    assert statuses == {"completed", "in-progress"}
    categories = {c.code for s in specs for c in s.category}
    assert {"notification", "instruction", "reminder", "alert"} <= categories
    kinds = {p.reference.split("?")[0] for s in specs for p in s.participants.values()}
    assert kinds == {"Patient", "Practitioner", "CareTeam"}
    assert all(p.create is not None for s in specs for p in s.participants.values())
    hours = {int(m.sent[11:13]) for s in specs for m in s.messages}
    assert hours <= set(range(8, 18))  # working hours, in each clinic's own time zone
    assert len({m.sent[19:] for s in specs for m in s.messages}) >= 4  # several time zones
    assert any(m.reply_to for s in specs for m in s.messages)
    assert len({m.text for s in specs for m in s.messages}) >= 60
    people = yaml.safe_load((tmp_path / "participants.yaml").read_text())["participants"]
    assert len({p["create"]["identifier"][0]["value"] for p in people.values()}) == len(people)


def test_every_generated_thread_validates_clean_and_loads_into_a_strict_project(project: Any, tmp_path: Path
                                                                              ) -> None:
    if project.server is not None:
        project.configure(check_references_on_write=True)
    summary = generate(200, out=tmp_path / "seed", seed=1, prefix=project.prefix)
    report = validate_files([tmp_path / "seed" / "threads"], participants=summary.participants)
    assert (report.errors, report.warnings) == (0, 0)
    assert report.bundles > 200  # the threads, and the participants' conditional creates
    specs = load_specs([tmp_path / "seed" / "threads"], participants=summary.participants)
    with client_for(project) as client:
        loaded = load(specs, client, journal=tmp_path / "j.sqlite")
        assert loaded.ok, [t.error for t in loaded.threads if t.error][:3]
        assert loaded.participants.created == len(yaml.safe_load(summary.participants.read_text())["participants"])
        assert all(r.ok for r in verify(specs, client))


def test_generate_draws_its_cast_from_a_participants_file(tmp_path: Path) -> None:
    people = {"participants": {
        "pat": {"display": "Pat", "create": {"resourceType": "Patient",
                                             "identifier": [{"system": "https://x.org/mrn", "value": "1"}]}},
        "doc": {"reference": "Practitioner/9f1f3a54-8e0b-4c47-9a51-2f1e6b0c5d11", "display": "Doc"}}}
    (tmp_path / "people.yaml").write_text(yaml.safe_dump(people))
    summary = generate(10, out=tmp_path / "out", seed=3, participants=tmp_path / "people.yaml")
    assert summary.participants == tmp_path / "people.yaml" and not (tmp_path / "out" / "participants.yaml").exists()
    specs = load_specs([tmp_path / "out" / "threads"], participants=tmp_path / "people.yaml")
    assert {a for s in specs for a in s.participants} == {"pat", "doc"}


@pytest.mark.parametrize("prefix", ["../../x", ".hidden", "a b", "x/y", "é", "a" * 123])
def test_a_prefix_that_makes_keys_the_grammar_refuses_writes_nothing(tmp_path: Path, prefix: str) -> None:
    with pytest.raises(OptionError, match=r"thread keys are <prefix>-<number>, and .* must be 1-128 letters"):
        generate(3, out=tmp_path / "out", prefix=prefix)
    run = cli(["generate", "--threads", "3", "--prefix", prefix, "-o", "out/seed"], {}, cwd=tmp_path)
    assert run.returncode == 2 and "error: prefix " in run.stderr and "Traceback" not in run.stderr, run.stderr
    assert list(tmp_path.rglob("*")) == []  # not inside -o, not beside it


def test_any_prefix_the_grammar_takes_makes_threads_that_validate(tmp_path: Path) -> None:
    longest = "p:" + "a" * (128 - len("p:-00012"))  # the 12th thread's key is 128 characters
    for n, prefix in enumerate(["seed.2:x_y", longest]):
        summary = generate(12, out=tmp_path / str(n), seed=1, prefix=prefix)
        specs = load_specs([tmp_path / str(n) / "threads"], participants=summary.participants)
        assert max(len(s.key) for s in specs) == len(prefix) + 6 and all(s.key.startswith(prefix) for s in specs)
        report = validate_files([tmp_path / str(n) / "threads"], participants=summary.participants, structure=False)
        assert report.errors == 0
