"""What a release promises: `--version` names the Medplum versions it is tested against (read where they are
kept, not written twice), the old option names still work for one minor version and say so, and the license and
changelog ship."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner

from bundler.cli import main
from bundler.versions import OLD_NAMES_REMOVED_IN, local_medplum_packages, package_version, version_text
from bundler.vocabulary import REAL_MEDPLUM_VERSION

REPO = Path(__file__).resolve().parent.parent
KIT = Path(os.environ.get("REAL_MEDPLUM_KIT", REPO.parent / "shared" / "real-medplum"))
"""The kit as .ci/real-medplum finds it (REAL_MEDPLUM_KIT, else beside the clone)."""


def test_version_names_the_package_and_both_medplum_servers() -> None:
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0 and result.output == version_text() + "\n"
    first, second = result.output.splitlines()
    assert first == f"thread-bundler {package_version()}" and re.fullmatch(r"thread-bundler \d+\.\d+\.\d+.*", first)
    assert f"Medplum server {REAL_MEDPLUM_VERSION}" in second
    for name, version in local_medplum_packages().items():
        assert f"{name} {version}" in second


def test_the_local_server_s_versions_are_its_lock_file_s() -> None:
    lock = json.loads((REPO / "medplum-local" / "package-lock.json").read_text(encoding="utf-8"))
    manifest = json.loads((REPO / "medplum-local" / "package.json").read_text(encoding="utf-8"))
    packages = local_medplum_packages()
    assert set(packages) == {n for n in manifest["dependencies"] if n.startswith("@medplum/")} and packages
    for name, version in packages.items():
        assert version == lock["packages"][f"node_modules/{name}"]["version"] == manifest["dependencies"][name]


@pytest.mark.skipif(not KIT.is_dir(), reason="../shared/real-medplum is not beside the clone")
def test_the_real_server_s_version_is_the_kit_s() -> None:
    server = json.loads((KIT / "server" / "packages" / "server" / "package.json").read_text(encoding="utf-8"))
    assert server["name"] == "@medplum/server" and server["version"] == REAL_MEDPLUM_VERSION


# --- the old option names: hidden, warning, working, for one minor version ----------------------------------

OLD_NAMES = {
    ("export", "--participants-file"): ("--participants-out", "participants_out"),
    ("server", "--check-references"): ("--check-references-on-write", "check_references_on_write"),
}
"""Every old option name still accepted (CHANGELOG.md's Deprecated section): command, old -> new, argument."""

_CALLS = {"export": "bundler.cli.export.export", "server": "bundler.cli.server.serve"}
_ARGS = {"export": ["-o", "out", "--base-url", "http://127.0.0.1:9/", "--token", "t"], "server": ["--port", "0"]}
_VALUES = {"--participants-file": ["people.yaml"], "--check-references": []}


def test_the_old_names_are_the_hidden_options_and_the_changelog_lists_them() -> None:
    hidden = {(name, p.opts[0]) for name, c in main.commands.items() for p in c.params
              if isinstance(p, click.Option) and p.hidden}
    assert hidden == set(OLD_NAMES)
    changelog = (REPO / "CHANGELOG.md").read_text(encoding="utf-8")
    deprecated = changelog[changelog.index("### Deprecated"):].split("\n## ")[0]
    for (command, old), (new, _) in OLD_NAMES.items():
        assert f"`{command} {old}`" in deprecated and f"`{new}`" in deprecated, old
    assert OLD_NAMES_REMOVED_IN in deprecated


@pytest.mark.parametrize(("command", "old"), sorted(OLD_NAMES))
def test_an_old_name_still_works_and_warns(command: str, old: str, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    new, argument = OLD_NAMES[command, old]
    given: dict[str, Any] = {}

    def call(*args: Any, **kwargs: Any) -> Any:
        given.update(kwargs)
        raise SystemExit(0)

    monkeypatch.setattr(_CALLS[command], call)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, [command, *_ARGS[command], old, *_VALUES[old]])
    assert result.exit_code == 0, result.output
    assert result.stderr.splitlines()[0] == (f"warning: {old} is deprecated; use {new} ({old} will be removed in "
                                             f"{OLD_NAMES_REMOVED_IN})")
    expected = Path(*_VALUES[old]) if _VALUES[old] else True
    assert given[argument] == expected
    new_result = CliRunner().invoke(main, [command, *_ARGS[command], new, *_VALUES[old]])
    assert new_result.exit_code == 0 and "deprecated" not in new_result.stderr


def test_old_names_go_in_the_next_minor_version() -> None:
    """Kept for one minor version: when the package reaches OLD_NAMES_REMOVED_IN, remove them (and this test)."""
    def release(version: str) -> tuple[int, ...]:
        return tuple(int(part) for part in re.findall(r"\d+", version)[:3])

    assert release(package_version()) < release(OLD_NAMES_REMOVED_IN)
