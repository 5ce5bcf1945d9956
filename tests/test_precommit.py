"""The pre-commit hooks as a team gets them: `pre-commit try-repo` installs this repository into its own venv and
runs a hook on a scratch git repository with one good and one broken file of its kind.

try-repo takes the repository's HEAD (and only staged or tracked changes), so the test snapshots this checkout's
files (tracked and new, not ignored) into a repository of its own first: it tests the code as it is on disk.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytest.importorskip("pre_commit", reason="pre-commit is not installed (it is in the dev extra)")

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "fixtures"
GIT = ["git", "-c", "user.name=test", "-c", "user.email=test@example.invalid", "-c", "init.defaultBranch=main",
       "-c", "commit.gpgsign=false"]

BROKEN_SPEC = """\
thread: broken-thread
topic: A reply to nothing
participants:
  homer: {reference: Patient/123, display: Homer Simpson}
messages:
  - {id: first, sender: homer, sent: 2024-04-10T10:00:00Z, text: Hello}
  - {sender: homer, sent: 2024-04-10T10:05:00Z, text: Hello again, reply_to: nowhere}
"""
BROKEN_PARTICIPANTS = "participants:\n  homer: {display: Homer Simpson}\n  bart: {reference: not a reference}\n"
BROKEN_MAPPING = "input: {format: csv}\nthread: {id: {column: conversation}}\nmessage: {text: {colum: body}}\n"


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run([*GIT, *args], cwd=cwd, check=True, capture_output=True, text=True).stdout


@pytest.fixture(scope="module")
def hooks_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This checkout as a committed git repository of its own."""
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("needs git and a git checkout of thread-bundler")
    files = _git(REPO, "ls-files", "-z", "--cached", "--others", "--exclude-standard").split("\0")
    snapshot = tmp_path_factory.mktemp("hooks-repo")
    for name in filter(None, files):
        source = REPO / name
        if source.is_file():  # (a file deleted but not yet committed is listed and absent)
            (snapshot / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, snapshot / name)
    _git(snapshot, "init", "-q")
    _git(snapshot, "add", "-A")
    _git(snapshot, "commit", "-q", "-m", "snapshot")
    return snapshot


def _scratch(work: Path, files: dict[str, str]) -> None:
    """A scratch git repository holding `files` (path: text), committed."""
    for name, text in files.items():
        (work / name).parent.mkdir(parents=True, exist_ok=True)
        (work / name).write_text(text, encoding="utf-8")
    _git(work, "init", "-q")
    _git(work, "add", "-A")
    _git(work, "commit", "-q", "-m", "specs")


def _try_repo(hooks_repo: Path, work: Path, *args: str) -> tuple[int, str]:
    """`pre-commit try-repo <hooks_repo> ARGS` in `work`: its exit status and output. (Each run installs the
    hooks' package into a venv of its own, from the repository: about a minute.)"""
    result = subprocess.run([sys.executable, "-m", "pre_commit", "try-repo", str(hooks_repo), *args,
                             "--color", "never"], cwd=work, capture_output=True, text=True)
    return result.returncode, result.stdout + result.stderr


def _section(out: str, name: str) -> str:
    """One hook's part of pre-commit's output: its status line and what it printed."""
    start = out.index(name)
    ends = [i for i in (out.find(f"\n{other}", start + 1) for other in HOOK_NAMES.values()) if i > 0]
    return out[start:min(ends, default=len(out))]


HOOK_NAMES = {"thread-bundler-validate": "thread-bundler validate (thread specs)",
              "thread-bundler-participants": "thread-bundler validate-participants (participants files)",
              "thread-bundler-mapping": "thread-bundler validate-mapping (migration mappings)"}


def test_the_manifest_names_the_commands_that_exist() -> None:
    from click.testing import CliRunner

    from bundler.cli import main

    hooks = yaml.safe_load((REPO / ".pre-commit-hooks.yaml").read_text(encoding="utf-8"))
    assert {h["id"]: h["name"] for h in hooks} == HOOK_NAMES
    for hook in hooks:
        program, command = hook["entry"].split()
        assert program == "thread-bundler" and command in main.commands, hook
        assert hook["language"] == "python" and hook["files"], hook
        assert CliRunner().invoke(main, [command, "--help"]).exit_code == 0


def test_every_hook_names_the_broken_file_s_line_and_not_the_good_one(hooks_repo: Path, tmp_path: Path) -> None:
    _scratch(tmp_path, {
        "threads/good.yaml": (FIXTURES / "threads" / "homer-lab-results.yaml").read_text(encoding="utf-8"),
        "threads/broken.yaml": BROKEN_SPEC,
        "notes/other.yaml": "not: [a, spec",  # (no hook's files: pattern takes it)
        "seed/people.yaml": (FIXTURES / "participants" / "people.yaml").read_text(encoding="utf-8"),
        "seed/participants.yaml": BROKEN_PARTICIPANTS,
        "sms/mapping.yaml": (FIXTURES / "sms-gateway" / "mapping.yaml").read_text(encoding="utf-8"),
        "sms/lines.csv": (FIXTURES / "sms-gateway" / "lines.csv").read_text(encoding="utf-8"),
        "chat/mapping.yaml": BROKEN_MAPPING,
    })
    status, out = _try_repo(hooks_repo, tmp_path, "--all-files")
    assert status == 1, out
    specs = _section(out, HOOK_NAMES["thread-bundler-validate"])
    assert re.match(r"thread-bundler validate \(thread specs\)\.+Failed", specs), out
    assert "threads/broken.yaml:7:78: messages[2].reply_to: no message with id 'nowhere'" in specs
    assert "good.yaml" not in specs and "other.yaml" not in out
    people = _section(out, HOOK_NAMES["thread-bundler-participants"])
    assert re.match(r"thread-bundler validate-participants \(participants files\)\.+Failed", people), out
    assert "seed/participants.yaml:2:10: participants.homer: needs a reference" in people
    assert "seed/participants.yaml:3:21: participants.bart.reference: 'not a reference' must be" in people
    assert "people.yaml" not in people
    mappings = _section(out, HOOK_NAMES["thread-bundler-mapping"])
    assert re.match(r"thread-bundler validate-mapping \(migration mappings\)\.+Failed", mappings), out
    assert "chat/mapping.yaml:3:17: message.text: missing required field 'column'" in mappings
    assert "sms/mapping.yaml" not in mappings


def test_the_spec_hook_passes_a_good_spec(hooks_repo: Path, tmp_path: Path) -> None:
    _scratch(tmp_path, {
        "threads/good.yaml": (FIXTURES / "threads" / "homer-lab-results.yaml").read_text(encoding="utf-8"),
        "threads/broken.yaml": BROKEN_SPEC,
    })
    status, out = _try_repo(hooks_repo, tmp_path, "thread-bundler-validate", "--files", "threads/good.yaml")
    assert status == 0, out
    assert re.search(r"thread-bundler validate \(thread specs\)\.+Passed", out), out
