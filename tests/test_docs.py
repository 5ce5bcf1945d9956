"""The documentation site: it builds with `mkdocs build --strict` (a broken link, a missing anchor, a command or
function that no longer exists fails the build), and each task guide runs as written against the local server.

A guide's ```bash blocks are what a reader types: they run here, in order, as one script (`set -eo pipefail`), in
an empty folder, with the local server's settings in the environment as Getting started puts them there. Blocks
fenced ```sh (starting a server, say) and ```console (what a command prints) are shown, not run.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
FENCE = re.compile(r"^```(\S*)[^\n]*\n(.*?)^```[ \t]*$", re.S | re.M)

GUIDES: dict[str, dict[str, Any]] = {
    "seed-a-project.md": {"check_references_on_write": True},
    "migrate-an-export.md": {"check_references_on_write": False},  # literal references to resources not created
    "test-your-bundle-code.md": {"check_references_on_write": False},  # generated literal references
    "export-and-copy.md": {"check_references_on_write": True},
}
"""Each task guide, and the local server's settings its page asks for (Getting started's server is strict)."""

SOURCED = re.compile(r"^\s*set -a; \. ~/(\S+\.env); set \+a", re.M)
"""A guide's block that loads a local server's settings file (`set -a; . ~/.cache/...env; set +a`): the other
project a guide copies into. The test starts a second local server and writes its settings there."""


def bash_blocks(text: str) -> list[tuple[int, str]]:
    """The ```bash blocks of a page's text: (line of the fence, code), in order."""
    return [(text.count("\n", 0, m.start()) + 1, m.group(2)) for m in FENCE.finditer(text) if m.group(1) == "bash"]


def guide_blocks(name: str) -> list[tuple[int, str]]:
    return bash_blocks((DOCS / "guides" / name).read_text(encoding="utf-8"))


def test_only_bash_blocks_are_run() -> None:
    page = "Text\n\n```bash\necho one\n```\n\n```console\n$ shown\n```\n\n```sh\nthread-bundler server &\n```\n"
    assert bash_blocks(page) == [(3, "echo one\n")]


def test_the_rules_page_is_written_from_the_registry() -> None:
    spec = importlib.util.spec_from_file_location("docs_rules_hook", DOCS / "_hooks" / "rules.py")
    assert spec is not None and spec.loader is not None
    hook = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hook)
    page = hook.on_page_markdown((DOCS / "reference" / "rules.md").read_text(encoding="utf-8"), page=None)
    assert hook.PLACEHOLDER not in page
    from bundler.check.issues import RULES
    for code, (severity, _) in RULES.items():
        assert re.search(rf"^\| `{re.escape(code)}` \| {severity} \|", page, re.M), code


def test_the_benchmark_charts_draw_their_tables() -> None:
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "charts.py"), "--check"], capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    page = (DOCS / "benchmarks.md").read_text(encoding="utf-8")
    assert page.count("<!-- chart: ") == page.count("](img/bench-") >= 5


@pytest.mark.parametrize("page", ["README.md", "docs/reference/spec-format.md"])
def test_the_example_shown_is_the_fixture_it_names(page: str) -> None:
    text = (ROOT / page).read_text(encoding="utf-8")
    shown = re.search(r"`fixtures/threads/homer-lab-results\.yaml` is the thread.*?```yaml\n(.*?)```", text, re.S)
    assert shown is not None
    assert shown.group(1) == (ROOT / "fixtures" / "threads" / "homer-lab-results.yaml").read_text(encoding="utf-8")


def test_every_task_guide_has_commands_to_run() -> None:
    for name in GUIDES:
        assert guide_blocks(name), f"{name} has no ```bash block: nothing of it would be tested"


def test_the_site_builds_strict(tmp_path: Path) -> None:
    pytest.importorskip("mkdocs", reason="the docs extra is not installed (pip install '.[docs]')")
    pytest.importorskip("material", reason="the docs extra is not installed (pip install '.[docs]')")
    run = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                         cwd=ROOT, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert run.returncode == 0, run.stderr[-4000:]
    site = tmp_path / "site"
    rules = (site / "reference" / "rules" / "index.html").read_text(encoding="utf-8")
    from bundler.check.issues import RULES
    missing = [code for code in RULES if f"<code>{code}</code>" not in rules]
    assert not missing, f"the rules page lacks {missing}"
    commands = (site / "reference" / "cli" / "index.html").read_text(encoding="utf-8")
    from bundler.cli import main
    assert all(f"thread-bundler {name}" in commands for name in main.commands), "a command is missing from the page"


def guide_env(project: Any, home: Path) -> dict[str, str]:
    t = project.target
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MEDPLUM_", "THREAD_BUNDLER_"))}
    env.update(HOME=str(home), PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
               MEDPLUM_BASE_URL=t.base_url, MEDPLUM_CLIENT_ID=t.client_id, MEDPLUM_CLIENT_SECRET=t.client_secret)
    return env


@pytest.mark.local_only
@pytest.mark.parametrize("guide", sorted(GUIDES))
def test_a_task_guide_runs_as_written(guide: str, project: Any, local_server: Any, tmp_path: Path) -> None:
    local_server.configure(**GUIDES[guide])  # (a real server is skipped: the guides' keys are fixed, as a reader's)
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    env = guide_env(project, home)
    blocks = guide_blocks(guide)
    second = None
    if sourced := {m.group(1) for _, code in blocks for m in SOURCED.finditer(code)}:
        from bundler.medplum.localserver import LocalServer
        second = LocalServer(port=0, check_references_on_write=True)
        second.start()
        for name in sourced:
            settings = home / name
            settings.parent.mkdir(parents=True, exist_ok=True)
            settings.write_text(f"MEDPLUM_BASE_URL={second.base_url}\nMEDPLUM_CLIENT_ID={second.client_id}\n"
                                f"MEDPLUM_CLIENT_SECRET={second.client_secret}\n")
    script = "set -eo pipefail\n" + "".join(
        f"echo '>>> {guide}:{line}' >&2\n{code}\n" for line, code in blocks)
    try:
        run = subprocess.run(["bash", "-c", script], cwd=work, env=env, capture_output=True, text=True, timeout=900)
    finally:
        if second is not None:
            second.stop()
    said = f"\n--- stdout\n{run.stdout[-3000:]}\n--- stderr\n{run.stderr[-5000:]}"
    assert run.returncode == 0, f"{guide} stopped (exit {run.returncode}) at the block above{said}"
    assert run.stderr.count(">>> ") == len(blocks), said
    assert "Traceback" not in run.stdout + run.stderr, said
