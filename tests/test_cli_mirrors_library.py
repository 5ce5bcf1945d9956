"""Each command a thin layer over one library call with the same options (sqlite-utils' rule): every option of
a command is a keyword argument of its call, by the same name, so a script gets what the command gets; the few
that are not are display or the connection (the client the call is given), listed here and in the table of
docs/reference/cli.md."""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner
from loadkit import client_for, write_specs

from bundler import parse_spec
from bundler.apps.demo import run_demo
from bundler.apps.show import show
from bundler.bundle_files import build_files
from bundler.check import validate_files
from bundler.cli import main
from bundler.errors import BundlerError
from bundler.export import export
from bundler.generator import generate
from bundler.load import LoadInterrupted, LoadReport, dedupe, load, verify
from bundler.medplum.auth import BearerToken
from bundler.medplum.client import FhirClient
from bundler.medplum.doctor import doctor
from bundler.medplum.localserver import serve
from bundler.migrate import combine, migrate
from bundler.migrate.mapping import load_mapping
from bundler.spec.participants import read_participants
from bundler.spec.schema import write_schema
from bundler.testing.strategies import sample_specs

CALLS: dict[str, Callable[..., Any]] = {
    "build": build_files, "validate": validate_files, "migrate": migrate, "report": combine, "load": load,
    "verify": verify, "export": export, "doctor": doctor, "generate": generate, "demo": run_demo, "server": serve,
    "schema": write_schema, "validate-participants": read_participants, "validate-mapping": load_mapping,
    "show": show, "dedupe": dedupe,
}
"""Every command's one library call."""

CONNECTION = {"base_url", "client_id", "client_secret", "token", "allow_insecure", "timeout"}
"""Options that make the FhirClient the call is given as `client` (not `server`'s: those are its own)."""

DISPLAY = {"progress", "format_", "json_", "help"}
"""Options about how the result is shown."""

DIFFERENT = {("migrate", "to"): "to=KIND, out=PATH", ("migrate", "load_"): 'to="load"'}
"""The options that are not one argument by the same name, and what they are: the whole list."""

LEGACY = Path(__file__).resolve().parent.parent / "fixtures" / "legacy"


def _arguments(name: str) -> set[str]:
    """The keyword arguments of a command's call (`migrate` also takes every argument of `load`)."""
    params = set(inspect.signature(CALLS[name]).parameters)
    return params | set(inspect.signature(load).parameters) if name == "migrate" else params


def _options(command: click.Command) -> list[click.Parameter]:
    return [p for p in command.params if isinstance(p, click.Option) and not p.hidden]


def test_every_command_has_one_library_call() -> None:
    assert set(main.commands) == set(CALLS)


@pytest.mark.parametrize("name", sorted(CALLS))
def test_every_option_is_an_argument_of_the_call_by_the_same_name(name: str) -> None:
    command = main.commands[name]
    server = name == "server"
    unmatched = {p.name for p in _options(command)
                 if p.name not in _arguments(name) and p.name not in DISPLAY and (server or p.name not in CONNECTION)}
    different = {option for command_name, option in DIFFERENT if command_name == name}
    assert unmatched - different == set()
    assert different <= {p.name for p in _options(command)}  # (the list names what is there)


def test_the_old_spellings_are_hidden_and_say_what_replaced_them() -> None:
    hidden = {(name, p.opts[0]) for name, c in main.commands.items() for p in c.params
              if isinstance(p, click.Option) and p.hidden}
    assert hidden == {("export", "--participants-file"), ("server", "--check-references")}
    result = CliRunner().invoke(main, ["export", "-o", "out", "--participants-file", "out/people.yaml",
                                       "--base-url", "http://127.0.0.1:9/", "--token", "t"])
    assert "warning: --participants-file is deprecated; use --participants-out" in result.stderr
    assert "participants file: out/people.yaml is inside out" in result.stderr and result.exit_code == 2


@pytest.mark.parametrize(("args", "references"), [([], True), (["--check-references"], True),
                                                  (["--check-references-on-write"], True),
                                                  (["--no-check-references-on-write"], False)])
def test_the_server_s_old_flag_still_sets_its_argument(args: list[str], references: bool,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import bundler.cli.server as server

    given: dict[str, Any] = {}
    monkeypatch.setattr(server, "serve", lambda **kw: given.update(kw))
    result = CliRunner().invoke(main, ["server", *args, "--port", "0"])
    assert result.exit_code == 0, result.output
    assert given["check_references_on_write"] is references and given["port"] == 0
    assert ("deprecated" in result.stderr) == (args == ["--check-references"])


CLI_PAGE = (Path(__file__).resolve().parent.parent / "docs" / "reference" / "cli.md").read_text(encoding="utf-8")


def test_the_docs_table_names_every_command_with_its_call() -> None:
    section = CLI_PAGE[CLI_PAGE.index("## The command line and the library"):]
    section = section[:section.index("\n## ")]
    for name, call in CALLS.items():
        row = re.search(rf"^\| `{name}` \| `([^`]+)`", section, re.M)
        assert row is not None, name
        assert row.group(1).endswith(f"{call.__name__}(...)"), (name, row.group(1))
    for (name, option), what in DIFFERENT.items():
        assert what in section, (name, option)


# --- what a script gets -------------------------------------------------------------------------------------


def test_given_specs_a_load_needs_a_journal_and_no_file_options(tmp_path: Path) -> None:
    specs = [parse_spec(d) for d in sample_specs(1, 1, seed=3)]
    with FhirClient("http://127.0.0.1:9/", BearerToken("t")) as nowhere:  # (nothing is sent: refused first)
        with pytest.raises(BundlerError, match="journal= is needed"):
            load(specs, nowhere)
        with pytest.raises(BundlerError, match="participants= and allow_outside_files= are for reading spec files"):
            load(specs, nowhere, journal=tmp_path / "j.sqlite", participants=tmp_path / "people.yaml")


def test_load_and_verify_take_the_paths_the_command_takes(project: Any, tmp_path: Path) -> None:
    data = sample_specs(3, 2, prefix=project.prefix, seed=31)
    write_specs(tmp_path / "threads", data)
    seen: list[str] = []
    with client_for(project) as client:
        from bundler.load import LoadWatcher

        report = load([tmp_path / "threads"], client, report=tmp_path / "loaded.json", read_model="tasks",
                      watcher=LoadWatcher(on_thread=lambda result, n: seen.append(result.key)))
        assert report.ok and sum(report.counts().values()) == 3 and len(seen) == 3
        assert (tmp_path / "threads.journal.sqlite").is_file()  # the command's default journal
        written = json.loads((tmp_path / "loaded.json").read_text())
        assert written["ok"] is True and sorted(t["key"] for t in written["threads"]) == sorted(seen)
        results = verify(str(tmp_path / "threads"), client, read_model="tasks")
        assert [r.key for r in results if not r.ok] == [] and len(results) == 3


def test_a_ctrl_c_finishes_the_report_file_and_says_how_far_it_got(tmp_path: Path) -> None:
    """LoadInterrupted (from the watcher, as a signal would raise it in the calling thread) leaves the partial
    report in place, and its message is the one the command prints."""
    import bundler.load.loader as loader

    report = LoadReport(total=5)
    report.interrupted = True

    def interrupted(*args: Any, **kw: Any) -> LoadReport:
        raise LoadInterrupted(report, kw["journal"])

    original = loader._load
    loader._load = interrupted  # type: ignore[assignment]
    try:
        with FhirClient("http://127.0.0.1:9/", BearerToken("t")) as nowhere, \
                pytest.raises(LoadInterrupted, match=r"^interrupted: 0 of 5 threads in$") as caught:
            load([parse_spec(d) for d in sample_specs(1, 1, seed=3)], nowhere, journal=tmp_path / "j.sqlite",
                 report=tmp_path / "r.json")
    finally:
        loader._load = original  # type: ignore[assignment]
    assert caught.value.journal == tmp_path / "j.sqlite"
    partial = json.loads((tmp_path / "r.json").read_text())
    assert partial["interrupted"] is True and partial["threads"] == []


def test_migrate_takes_read_model_and_summary_and_leaves_the_mapping_alone(tmp_path: Path) -> None:
    from bundler.migrate import load_mapping

    mapping = load_mapping(LEGACY / "mapping.yaml")
    before = mapping.read_model
    done = migrate([LEGACY / "export.csv"], mapping, to="specs", out=tmp_path / "specs", read_model="tasks",
                   summary=tmp_path / "summary.json", workers=1)
    assert mapping.read_model == before  # (the caller's mapping is not changed)
    assert done.rejects_file == tmp_path / "specs.rejects.jsonl" and done.rejects_file.is_file()
    assert json.loads((tmp_path / "summary.json").read_text())["messages"] == done.messages > 0
    texts = [p.read_text() for p in (tmp_path / "specs").glob("*.yaml")]
    assert texts and all("read_model: tasks" in t for t in texts)
    with pytest.raises(BundlerError, match="give out= to write specs or ndjson"):
        migrate([LEGACY / "export.csv"], mapping, to="specs")
    with pytest.raises(BundlerError, match="update: options of to='load' only"):
        migrate([LEGACY / "export.csv"], mapping, to="specs", out=tmp_path / "x", update=True)
