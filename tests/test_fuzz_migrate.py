"""Fuzzing migrate's readers of outside input: the mapping file, its participant table, and legacy exports (CSV and
JSON Lines), by the property of test_fuzz.py: a result or our own error (`SpecError`, problems at a line),
never another exception, within the limits of `fuzzing.bounded`.

For exports the result is a migration whose count holds (every row read is a message or a reject) and
whose bundles validate clean.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import yaml
from fuzzing import as_yaml, bounded, check_problems, encodable, fuzz_settings, mutated_bytes, mutated_tree, trees
from hypothesis import given, reject
from hypothesis import strategies as st

from bundler.check import validate
from bundler.errors import SpecError
from bundler.migrate import migrate
from bundler.migrate.mapping import load_mapping
from bundler.spec import load_specs

LEGACY = Path(__file__).resolve().parent.parent / "fixtures" / "legacy"
MAPPING = (LEGACY / "mapping.yaml").read_bytes()
PARTICIPANTS = (LEGACY / "participants.csv").read_bytes()
EXPORT = (LEGACY / "export.csv").read_bytes()
ROWS = list(csv.DictReader(io.StringIO(EXPORT.decode("utf-8"))))
JSONL_MAPPING = MAPPING.replace(b"format: csv", b"format: jsonl")


@pytest.fixture(scope="module")
def folder() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="fuzz-migrate-") as tmp:
        yield Path(tmp)


def read_mapping(folder: Path, mapping: bytes, participants: bytes = PARTICIPANTS) -> None:
    (folder / "mapping.yaml").write_bytes(mapping)
    (folder / "participants.csv").write_bytes(participants)
    with bounded():
        try:
            load_mapping(folder / "mapping.yaml")
        except SpecError as exc:
            files = {str(folder / "mapping.yaml"), str(folder / "participants.csv")}
            for file in {p.file for p in exc.problems}:
                assert file in files, exc.problems
                check_problems([p for p in exc.problems if p.file == file], file)


KNOWN_DEFECTS: tuple[str, ...] = ()
"""Migrate's defects the fuzzer found, each with a strict xfail below: an input that meets one is left out of
the fuzz run (hypothesis `reject`) until migrate is fixed; then its entry goes, and its input becomes a test at the
end of this file."""


def _meets_a_known_defect(exc: SpecError) -> bool:
    return any(d in str(p) for p in exc.problems for d in KNOWN_DEFECTS)


def run_migration(folder: Path, export: bytes, name: str, mapping: bytes,
                  participants: tuple[str, bytes] = ("participants.csv", PARTICIPANTS), *, fuzzing: bool = True
                  ) -> None:
    """Migrate `export` (file `name`): every row a message or a reject, every bundle clean, every spec readable;
    or SpecError at the export's, the mapping's or the table's lines."""
    try:
        _run_migration(folder, export, name, mapping, participants)
    except SpecError as exc:
        if fuzzing and _meets_a_known_defect(exc):
            reject()
        raise


def _run_migration(folder: Path, export: bytes, name: str, mapping: bytes, participants: tuple[str, bytes]) -> None:
    run = folder / "run"
    shutil.rmtree(run, ignore_errors=True)
    run.mkdir()
    (run / "mapping.yaml").write_bytes(mapping)
    (run / participants[0]).write_bytes(participants[1])
    (run / name).write_bytes(export)
    with bounded():
        try:
            summary = migrate([run / name], run / "mapping.yaml", to="ndjson", out=run / "out.ndjson", workers=1)
        except SpecError as exc:  # (an export without the mapping's columns is named in the mapping)
            if _meets_a_known_defect(exc):
                raise
            for file in {p.file for p in exc.problems}:
                assert file in (str(run / name), str(run / "mapping.yaml"), str(run / participants[0])), exc.problems
                check_problems([p for p in exc.problems if p.file == file], file)
            return
    assert summary.rows_read == summary.messages + summary.rejected + summary.rows_other_shards
    lines = (run / "out.ndjson").read_bytes().splitlines()
    assert sum(len(orjson.loads(line)["entry"]) - 1 for line in lines) == summary.messages
    for line in lines:
        issues = validate(orjson.loads(line), limits="none", structure=False)
        assert [i for i in issues if i.severity == "error"] == [], [str(i) for i in issues]
    rejects = [orjson.loads(line) for line in (run / "out.ndjson.rejects.jsonl").read_bytes().splitlines()]
    assert sum(r["severity"] == "reject" for r in rejects) == summary.rejected
    assert sum(r["severity"] == "warning" for r in rejects) == summary.warnings.total()
    with bounded():  # what migrate writes as specs, build and load read
        migrate([run / name], run / "mapping.yaml", to="specs", out=run / "specs", workers=1)
        if summary.threads:
            assert len(load_specs([run / "specs"])) == summary.threads


# --- the mapping and its participant table ---------------------------------------------------------------------


@fuzz_settings()
@given(raw=mutated_bytes(MAPPING))
def test_mutated_mapping(folder: Path, raw: bytes) -> None:
    read_mapping(folder, raw)


@fuzz_settings()
@given(data=mutated_tree(yaml.safe_load(MAPPING)))
def test_mapping_with_random_grafts(folder: Path, data: object) -> None:
    read_mapping(folder, encodable(as_yaml(data)))


@fuzz_settings()
@given(raw=st.binary(max_size=300))
def test_random_bytes_as_a_mapping(folder: Path, raw: bytes) -> None:
    read_mapping(folder, raw)


@fuzz_settings()
@given(raw=mutated_bytes(PARTICIPANTS))
def test_mutated_participant_table(folder: Path, raw: bytes) -> None:
    read_mapping(folder, MAPPING, raw)


YAML_TABLE = {row["id"]: {"reference": row["reference"], "display": row["display"]} if row["display"] else
              row["reference"] for row in csv.DictReader(io.StringIO(PARTICIPANTS.decode("utf-8")))}


@fuzz_settings()
@given(data=mutated_tree(YAML_TABLE))
def test_yaml_participant_table_with_random_grafts(folder: Path, data: object) -> None:
    run_migration(folder, EXPORT, "export.csv", MAPPING.replace(b"participants.csv", b"participants.yaml"),
                  ("participants.yaml", encodable(as_yaml(data))))


# --- legacy exports ----------------------------------------------------------------------------------------------


@fuzz_settings()
@given(raw=mutated_bytes(EXPORT, max_edits=4))
def test_mutated_csv_export(folder: Path, raw: bytes) -> None:
    run_migration(folder, raw, "export.csv", MAPPING)


@fuzz_settings()
@given(rows=st.lists(st.sampled_from(ROWS).flatmap(mutated_tree) | trees(), min_size=1, max_size=6))
def test_jsonl_export_with_random_grafts(folder: Path, rows: list[object]) -> None:
    text = "\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n"
    run_migration(folder, encodable(text), "export.jsonl", JSONL_MAPPING)


# --- inputs the fuzzer found: each migrates ---------------------------------------------------------------------


def test_a_conversation_id_that_starts_with_a_dot(folder: Path) -> None:
    """Sanitised (a thread key may not start with '.': its file would be hidden), not a SpecError about <spec>."""
    run_migration(folder, EXPORT.replace(b"C-1002", b".hidden"), "export.csv", MAPPING, fuzzing=False)


def test_conversation_ids_that_differ_only_in_case(folder: Path) -> None:
    """The first in code point order keeps its key, the other is sanitised: two files on any file system."""
    run_migration(folder, EXPORT.replace(b"C-1002", b"case-x").replace(b"C-1003", b"CASE-X"), "export.csv", MAPPING,
                  fuzzing=False)


def test_a_display_in_the_yaml_table_that_is_not_text(folder: Path) -> None:
    """A problem at the table's line (run_migration checks that a SpecError names the table), not at <spec>."""
    table = {**YAML_TABLE, "dr.alice": {"reference": "Practitioner/1", "display": True}}
    run_migration(folder, EXPORT, "export.csv", MAPPING.replace(b"participants.csv", b"participants.yaml"),
                  ("participants.yaml", encodable(as_yaml(table))), fuzzing=False)
