"""The release as users get it: the sdist and the wheel built (`python -m build`: the wheel from the sdist, so the
sdist is complete), checked (`twine check --strict`), the wheel holding what runs at run time, and the wheel
installed into a clean venv and run from a folder with no source tree: `--version`, `validate` on the fixtures,
the pre-commit commands, and the example test file README points users at.

Marked `release`: it builds and installs (a minute or two; the dependencies come from the package index pip is
configured with). CI runs it with the rest; `pytest -m "not release"` leaves it out while working.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from bundler.versions import version_text

pytest.importorskip("build", reason="build is not installed (it is in the dev extra)")
pytest.importorskip("twine", reason="twine is not installed (it is in the dev extra)")

pytestmark = pytest.mark.release

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "fixtures"


def _run(*args: str | Path, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True, env=env)


def _ok(*args: str | Path, cwd: Path, env: dict[str, str] | None = None) -> str:
    result = _run(*args, cwd=cwd, env=env)
    assert result.returncode == 0, f"{args}: exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


@contextlib.contextmanager
def _once(tmp_path_factory: pytest.TempPathFactory, name: str) -> Iterator[tuple[Path, bool]]:
    """A folder all of this run's workers (pytest-xdist) share, held by one at a time: (folder, whether it is
    made already). Whoever finds it unmade makes it; the others then reuse it."""
    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent
    with open(shared / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        folder = shared / name
        done = folder / ".made"
        made = done.exists()
        if not made:
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
        yield folder, made
        done.touch()


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sdist and the wheel, built from this checkout (once a run)."""
    with _once(tmp_path_factory, "release-dist") as (out, made):
        if not made:
            _ok(sys.executable, "-m", "build", "--outdir", out, REPO, cwd=out)
    return out


@pytest.fixture(scope="module")
def wheel(dist: Path) -> Path:
    (found,) = dist.glob("thread_bundler-*.whl")
    return found


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, str]]:
    """A clean venv with the wheel (and its testing extra) installed, once a run; a folder of this test's own to run
    in, holding no source; the environment to run with (no PYTHONPATH: nothing of this checkout on sys.path)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONSTARTUP")}
    with _once(tmp_path_factory, "release-venv") as (root, made):
        if not made:
            _ok(sys.executable, "-m", "venv", root / "venv", cwd=root)
            _ok(root / "venv" / "bin" / "python", "-m", "pip", "install", "-q", f"{wheel}[testing]", cwd=root,
                env=env)
    env["PATH"] = f"{root / 'venv' / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return root / "venv" / "bin", tmp_path_factory.mktemp("work"), env


def test_twine_passes_the_sdist_and_the_wheel(dist: Path) -> None:
    files = sorted(dist.glob("thread_bundler-*"))
    assert sorted(f.suffix for f in files) == [".gz", ".whl"]
    out = _ok(sys.executable, "-m", "twine", "check", "--strict", *files, cwd=dist)
    assert out.count("PASSED") == 2


def test_the_wheel_holds_what_runs_at_run_time(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    for schema in (REPO / "schemas").glob("*.json"):
        assert f"bundler/schemas/{schema.name}" in names, schema.name
    server = {p.relative_to(REPO / "medplum-local").as_posix()
              for pattern in ("server.mjs", "lib/*.mjs", "package.json", "package-lock.json")
              for p in (REPO / "medplum-local").glob(pattern)}
    assert {n.removeprefix("bundler/medplum_local/") for n in names if n.startswith("bundler/medplum_local/")} == server
    assert {n for n in names if n.startswith("bundler/examples/") and n.endswith(".yaml")} == {
        f"bundler/examples/{p.name}" for p in (FIXTURES / "threads").glob("*.yaml")}
    assert "bundler/examples_participants/people.yaml" in names and "bundler/py.typed" in names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert not any("node_modules" in n or n.startswith(("tests/", "fixtures/")) for n in names)


def test_the_sdist_holds_the_license_the_changelog_and_the_hooks(dist: Path) -> None:
    import tarfile

    (sdist,) = dist.glob("thread_bundler-*.tar.gz")
    with tarfile.open(sdist) as archive:
        names = {n.split("/", 1)[1] for n in archive.getnames() if "/" in n}
    assert {"LICENSE", "CHANGELOG.md", ".pre-commit-hooks.yaml", "pyproject.toml", "README.md"} <= names
    assert not any("node_modules" in n for n in names)


def test_the_installed_wheel_runs_from_anywhere(venv: tuple[Path, Path, dict[str, str]]) -> None:
    bin_, work, env = venv
    where = _ok(bin_ / "python", "-c", "import bundler; print(bundler.__file__)", cwd=work, env=env).strip()
    assert "site-packages" in Path(where).parts and not Path(where).is_relative_to(REPO), where
    assert _ok(bin_ / "thread-bundler", "--version", cwd=work, env=env) == version_text() + "\n"
    shutil.copytree(FIXTURES / "threads", work / "threads")
    shutil.copy(FIXTURES / "participants" / "people.yaml", work / "people.yaml")
    out = _ok(bin_ / "thread-bundler", "validate", "threads", "--participants", "people.yaml", cwd=work, env=env)
    last = out.rstrip().splitlines()[-1]
    assert last.startswith("0 errors") and "threads in 5 files" in last, last
    shutil.copytree(FIXTURES / "bundles", work / "bundles")
    out = _ok(bin_ / "thread-bundler", "validate", "bundles", cwd=work, env=env)
    assert out.rstrip().splitlines()[-1].startswith("0 errors")
    broken = _run(bin_ / "thread-bundler", "validate", FIXTURES / "invalid" / "reply-to.yaml", cwd=work, env=env)
    assert broken.returncode == 2 and "reply-to.yaml:11:15: messages[1].reply_to" in broken.stderr
    assert "1 participants file: no problems" in _ok(bin_ / "thread-bundler", "validate-participants",
                                                     "people.yaml", cwd=work, env=env)
    shutil.copytree(FIXTURES / "sms-gateway", work / "sms")
    assert "1 mapping: no problems" in _ok(bin_ / "thread-bundler", "validate-mapping", "sms/mapping.yaml", cwd=work,
                                           env=env)


def test_the_example_test_file_passes_with_the_installed_wheel(venv: tuple[Path, Path, dict[str, str]]) -> None:
    """README's `examples/test_my_bundles.py`, copied alone and run with the venv's pytest: its plugin's local
    server is started from the wheel's own copy of the server's sources."""
    bin_, work, env = venv
    shutil.copy(REPO / "examples" / "test_my_bundles.py", work / "test_my_bundles.py")
    env = {k: v for k, v in env.items() if not k.startswith("MEDPLUM_")}  # (the local server, not a real one)
    out = _ok(bin_ / "python", "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_my_bundles.py", cwd=work,
              env=env)
    assert " passed" in out and "failed" not in out and "skipped" not in out
