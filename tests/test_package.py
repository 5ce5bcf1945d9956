"""The package as users get it: its run-time files ship inside it, and the demo works from it."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

import bundler
from bundler import assets
from bundler.apps.demo import run_demo

REPO = Path(__file__).resolve().parent.parent


def test_runtime_files_are_found() -> None:
    assert assets.schema("thread-spec.schema.json")["title"] == "thread-bundler thread spec"
    assert (assets.asset_dir("medplum-local") / "server.mjs").is_file()
    assert (assets.asset_dir("medplum-local") / "package-lock.json").is_file()
    assert any(assets.asset_dir("examples").glob("*.yaml"))


@pytest.mark.skipif(not os.environ.get("CI"), reason="CI installs the wheel; a developer may use -e")
def test_ci_tests_the_installed_wheel_not_the_source_tree() -> None:
    here = Path(bundler.__file__).resolve()
    assert "site-packages" in here.parts and REPO / "bundler" not in here.parents, f"imported from {here}"
    assert (here.parent / "schemas" / "thread-spec.schema.json").is_file()
    assert (here.parent / "medplum_local" / "server.mjs").is_file()
    assert not (here.parent / "medplum_local" / "node_modules").exists()


def test_the_package_is_typed_for_its_users() -> None:
    """PEP 561: `py.typed` ships in the package (in the wheel when CI installs it), so a user's mypy sees our hints."""
    assert (Path(bundler.__file__).resolve().parent / "py.typed").is_file()


def test_demo_loads_reads_back_and_shows_the_walkthrough() -> None:
    out, note = io.StringIO(), io.StringIO()
    report, results = run_demo(None, out, note=note)
    text = out.getvalue()
    assert report.counts() == {"loaded": len(results)} and all(r.ok for r in results)
    assert "━━ Lab results for Homer Simpson - April 10th ━━" in text
    assert text.index("Hi Homer") < text.index("Thanks —") < text.index("Yes — we expect")
    assert "↩ Homer Simpson at 2024-04-10T10:05:00.000Z" in text
    assert "matches its spec field by field" in text
    assert note.getvalue().startswith("built and validated 10 threads; starting a local Medplum server\n")
    assert "strict: references must exist" in note.getvalue()
    assert "participants: 16 created, 0 existing" in note.getvalue()  # every fixture's and generated cast, once
    assert "📎 files/sports-form.png (bart-school-form-2024-09) read back from Binary/" in text
    assert "bytes, identical to the file" in text
    assert "install" not in note.getvalue()  # the note of a first run is the installer's, and only when it installs
    assert "None" not in text and "(draft: not sent)  Moe Szyslak →" in text  # a draft's time
    assert "\ndemo: 10 threads (30 messages) loaded into a strict, empty Medplum server and read back: all match " \
           "their specs; participants: 16 created, 0 existing\n" in text
    assert text.rstrip().splitlines()[-1].startswith("  thread-bundler show threads/")  # and where to go next
