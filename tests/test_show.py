"""`thread-bundler show`: a thread as the demo prints it, from its spec (nothing sent) or from the server by key."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from bundler.apps.show import show
from bundler.cli import main
from bundler.load import load
from bundler.medplum.client import ClientCredentials, FhirClient

THREADS = Path(__file__).resolve().parent.parent / "fixtures" / "threads"


def test_a_spec_is_shown_as_the_demo_shows_a_thread_without_a_server() -> None:
    result = CliRunner().invoke(main, ["show", str(THREADS / "homer-lab-results.yaml")])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == "━━ Lab results for Homer Simpson - April 10th ━━"
    assert "homer-lab-results-2024-04-10 (" in lines[1] and "· about Homer Simpson · 3 messages" in lines[1]
    assert "  2024-04-10T10:15:00.000Z  Dr. Alice Smith → Homer Simpson  ↩ Homer Simpson at 2024-04-10T10:05:00.000Z" \
        in lines


def test_a_draft_shows_no_none_for_its_time() -> None:
    out = io.StringIO()
    assert show([THREADS / "drafts-priorities.yaml"], out) >= 1
    assert "None" not in out.getvalue() and "(draft: not sent)" in out.getvalue()


def test_nothing_to_show_is_a_usage_error() -> None:
    result = CliRunner().invoke(main, ["show"])
    assert result.exit_code == 2 and "give spec files or folders" in result.output


def test_a_thread_is_read_back_from_the_server_by_key(project: Any, tmp_path: Path) -> None:
    spec = (THREADS / "homer-lab-results.yaml").read_text().replace("homer-lab-results-2024-04-10",
                                                                    f"{project.prefix}-homer")
    (tmp_path / "t.yaml").write_text(spec)
    t = project.target
    system = f"urn:test:{project.prefix}"
    with FhirClient(t.base_url, ClientCredentials(t.client_id, t.client_secret)) as client:
        assert load([tmp_path / "t.yaml"], client, identifier_system=system).ok
    env = {"MEDPLUM_BASE_URL": t.base_url, "MEDPLUM_CLIENT_ID": t.client_id, "MEDPLUM_CLIENT_SECRET": t.client_secret}
    result = CliRunner().invoke(main, ["show", "--key", f"{project.prefix}-homer", "--key", "nope",
                                       "--identifier-system", system], env=env)
    assert "━━ Lab results for Homer Simpson - April 10th ━━" in result.stdout
    assert f"{project.prefix}-homer · Communication/" in result.stdout and "3 messages" in result.stdout
    assert result.exit_code == 2 and "not on the server" in result.stderr and "nope" in result.stderr
