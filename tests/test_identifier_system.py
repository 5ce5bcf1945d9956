"""One rule for the identifier system (vocabulary.identifier_system_problem), wherever one is given: the builder,
build_files, validate_files on specs, and every command's --identifier-system."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from bundler.build import build_bundle, build_bundles, bundle_bytes, check_identifier_system
from bundler.bundle_files import build_files
from bundler.check import validate_files
from bundler.cli import main
from bundler.errors import OptionError
from bundler.spec import load_specs

REPO = Path(__file__).resolve().parent.parent
WALKTHROUGH = REPO / "fixtures/threads/homer-lab-results.yaml"
BAD = ["a|b c", "x,y", "has space", "noscheme", "urn:a|b", "urn:a,b", "urn:a$b", "urn:a\\b", "urn:a b", "urn:a\nb",
       "", "urn:"]
GOOD = ["urn:thread-bundler:thread", "https://example.org/threads", "urn:example:threads", "http://x.org/a/b?c=d"]


@pytest.mark.parametrize("system", BAD)
def test_the_builder_refuses_an_unusable_identifier_system(system: str) -> None:
    (spec,) = load_specs([WALKTHROUGH])
    for build in (build_bundle, bundle_bytes):
        with pytest.raises(OptionError, match=r"identifier system: .*must be an absolute URI") as info:
            build(spec, identifier_system=system)
        assert isinstance(info.value, ValueError)  # a bad argument, and one of ours (BundlerError)
    with pytest.raises(OptionError):
        list(build_bundles([spec], identifier_system=system))
    with pytest.raises(OptionError):
        check_identifier_system(system)


@pytest.mark.parametrize("system", BAD)
def test_validate_and_build_files_refuse_it_before_reading_anything(system: str, tmp_path: Path) -> None:
    with pytest.raises(OptionError):
        validate_files([WALKTHROUGH], identifier_system=system)
    with pytest.raises(OptionError):
        build_files([WALKTHROUGH], out=tmp_path / "out", identifier_system=system)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("system", ["a|b c", "x,y", "has space", "noscheme"])
def test_the_command_line_refuses_it_as_a_usage_error(system: str, tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["build", str(WALKTHROUGH), "-o", str(tmp_path / "out"),
                                       "--identifier-system", system])
    assert result.exit_code == 2, result.output
    assert "Invalid value for '--identifier-system'" in result.output
    assert "must be an absolute URI with no whitespace" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "out").exists()


@pytest.mark.parametrize("system", GOOD)
def test_usable_systems_are_used_everywhere(system: str, tmp_path: Path) -> None:
    (spec,) = load_specs([WALKTHROUGH])
    bundle = build_bundle(spec, identifier_system=system)
    assert {e["resource"]["identifier"][0]["system"] for e in bundle["entry"]} == {system}
    report = validate_files([WALKTHROUGH], identifier_system=system, structure=False)
    assert report.errors == 0 and report.bundles == 2  # the thread, and its participants' conditional creates
    result = CliRunner().invoke(main, ["build", str(WALKTHROUGH), "--ndjson", "--identifier-system", system])
    assert result.exit_code == 0, result.output
    assert f'"system":"{system}"' in result.stdout
