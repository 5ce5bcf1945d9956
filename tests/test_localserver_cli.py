"""`thread-bundler server` (and `python -m bundler.medplum.localserver`, the same) by hand: its settings, the
secret too, are in a file only the user can read while it runs (the secret of a running server, without a
restart), and never on its output."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.parametrize("command", [["bundler", "server"], ["bundler.medplum.localserver"]],
                         ids=["thread-bundler server", "python -m bundler.medplum.localserver"])
def test_a_running_server_s_secret_is_in_a_private_file_not_on_its_output(tmp_path: Path, command: list[str]) -> None:
    env = {**os.environ, "MEDPLUM_LOCAL_CLIENT_SECRET": "s3cret-for-this-test"}
    settings = tmp_path / "server.env"
    proc = subprocess.Popen([sys.executable, "-m", *command, "--port", "0", "--env-file", str(settings)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        lines = []
        while not lines or not lines[-1].startswith("Ctrl-C"):  # (each line is read as it comes: no sleeping)
            line = proc.stdout.readline()
            assert line, proc.stderr.read() if proc.stderr else ""
            lines.append(line)
        base_url = lines[0].strip().removeprefix("MEDPLUM_BASE_URL=")
        assert f"client secret:    in {settings}" in "".join(lines)
        assert f"other shells:     set -a; . {settings}; set +a" in "".join(lines)
        assert "project:          strict: references must exist" in "".join(lines)  # as the demo runs it
        assert "s3cret-for-this-test" not in "".join(lines)
        assert stat.S_IMODE(settings.stat().st_mode) == 0o600
        assert settings.read_text().splitlines() == [f"MEDPLUM_BASE_URL={base_url}",
                                                     "MEDPLUM_CLIENT_ID=thread-bundler-local",
                                                     "MEDPLUM_CLIENT_SECRET=s3cret-for-this-test"]
    finally:
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0
    assert f"stopped: the local Medplum server at {base_url}; {settings} removed" in rest
    assert not settings.exists()  # gone with the server


def test_the_default_settings_file_does_not_depend_on_the_port() -> None:
    from bundler.medplum.localserver import default_env_file

    assert default_env_file().name == "local-server.env"
