"""The command line as a newcomer reads it: every option has help, written the same way (a capital first, a full
stop or a [default] last), and what `--help` promises is true."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from bundler.check import SPEC_RULES
from bundler.cli import main


def _options(command: click.Command) -> list[click.Option]:
    return [p for p in command.params if isinstance(p, click.Option)]


def _badly_written(command: click.Command) -> list[str]:
    """`--name: help` of every option whose help is missing or not written the house way."""
    bad = []
    for option in _options(command):
        text = (option.help or "").strip()
        if not text or not text[0].isupper() or not text.endswith((".", "]")):
            bad.append(f"{option.opts[-1]}: {text!r}")
    return bad


@pytest.mark.parametrize("name", sorted(main.commands))
def test_every_option_has_help_written_the_house_way(name: str) -> None:
    assert _badly_written(main.commands[name]) == []


def test_demo_help_says_it_loads_six_threads() -> None:
    result = CliRunner().invoke(main, ["demo", "--help"])
    assert "six threads" in result.output and "the thread of" not in result.output


def test_every_command_shows_its_help() -> None:
    for name in main.commands:
        result = CliRunner().invoke(main, [name, "--help"])
        assert result.exit_code == 0 and "Usage:" in result.output, name


def test_a_command_imports_what_it_needs_not_every_command() -> None:
    """`thread-bundler load` starts without the migration's and the export's modules (they are imported when their
    command runs): a tenth of a second of every load's start, in a fresh interpreter as a user runs it."""
    code = ("import sys; from bundler.cli import main; main(['load', '--help'], standalone_mode=False); "
            "print('imported:', *sorted(sys.modules))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    usage, _, imported = run.stdout.rpartition("imported:")
    assert "Usage: " in usage and "bundler.load.loader" in imported.split()
    assert not [m for m in imported.split() if m.startswith(("bundler.migrate", "bundler.export", "jsonschema"))]
    assert main.commands["migrate"].name == "migrate"  # and still there when asked for


ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
DOCS = {path.relative_to(ROOT).as_posix(): path.read_text(encoding="utf-8")
        for path in sorted(ROOT.glob("docs/**/*.md"))}
"""README and the documentation site's pages (docs/), by path."""
CLI_PAGE = DOCS["docs/reference/cli.md"]


def test_the_command_line_page_has_a_row_for_every_command() -> None:
    """Every option is on the page through mkdocs-click (tests/test_docs.py builds it); the hand-written table
    says what each command is for, so a new command needs its row."""
    section = CLI_PAGE[:CLI_PAGE.index("## Every command and option")]
    rows = set(re.findall(r"^\| \[`([a-z-]+)[^`]*`\]\(#thread-bundler-\1\) \|", section, re.M))
    assert rows == set(main.commands)
    assert "::: mkdocs-click" in CLI_PAGE[CLI_PAGE.index("## Every command and option"):]


def test_the_docs_list_every_rule_code_for_invalid_bundles() -> None:
    guide = DOCS["docs/guides/test-your-bundle-code.md"]
    section = guide[guide.index("The rules `invalid_bundles(rule=...)`"):guide.index("Make thread keys unique")]
    assert "(../reference/rules.md)" in section  # the page generated from RULES (tests/test_docs.py holds it to them)
    assert all(f"`{code}`" in DOCS["docs/reference/spec-format.md"] for code in SPEC_RULES)  # where specs' checks are


def test_the_install_commands_quote_their_brackets() -> None:
    for text in (README, *DOCS.values()):
        assert re.findall(r"pip install [^'\n]*\[", text) == []


def test_readme_test_command_is_what_ci_runs() -> None:
    """CI runs `.ci/run`, which must run exactly README's command that sets up and passes the tests."""
    ci = [line for line in (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
          if line.startswith("python3 -m venv")]
    assert len(ci) == 1
    assert ci[0] in README.split("Set up and run the tests", 1)[1].split("```", 2)[1]
