"""What a release promises: `--version` names the Medplum versions it is tested against (read where they are
kept, not written twice), the old option names still work for one minor version and say so, and the license and
changelog ship."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from bundler.cli import main
from bundler.versions import local_medplum_packages, package_version, version_text
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
