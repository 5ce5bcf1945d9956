"""Every bad input a user or an attacker has given us, in one table: the files, the command, the exit status
and the fragments of the message it must print. The next one is one line to add.

Each case runs the real command line (`thread-bundler ...`) in a fresh folder, in a subprocess with a time
limit, so a hang or a crash fails the case instead of the run; the output must never hold a traceback.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

WALKTHROUGH = (Path(__file__).resolve().parent.parent / "fixtures" / "threads" / "homer-lab-results.yaml").read_text()


def _bundle(**changes: object) -> str:
    """A small valid Bundle (the walkthrough's header and one message) with `changes` to its message."""
    message = {"resourceType": "Communication", "status": "in-progress",
               "partOf": [{"reference": "urn:uuid:11111111-1111-4111-8111-111111111111"}],
               "sent": "2024-04-10T10:00:00Z", "sender": {"reference": "Patient/1"},
               "payload": [{"contentString": "hi"}], **changes}
    header = {"resourceType": "Communication", "status": "in-progress", "topic": {"text": "t"},
              "recipient": [{"reference": "Patient/1"}]}
    return json.dumps({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:11111111-1111-4111-8111-111111111111", "resource": header,
         "request": {"method": "POST", "url": "Communication"}},
        {"fullUrl": "urn:uuid:22222222-2222-4222-8222-222222222222", "resource": message,
         "request": {"method": "POST", "url": "Communication"}}]})


@dataclass(frozen=True)
class Case:
    files: dict[str, str | bytes]
    argv: list[str]
    exit: int
    says: list[str] = field(default_factory=list)


CASES: dict[str, Case] = {
    "ndjson: every bad line reported": Case(
        {"b.ndjson": '{"resourceType": "Bundle"\n' + _bundle() + "\nnot json\n"}, ["validate", "b.ndjson"], 2,
        ["b.ndjson:1:", "b.ndjson:3:1: not JSON"]),
    "status bogus": Case({"b.json": _bundle(status="bogus")}, ["validate", "b.json"], 1,
                         ["error[fhir.code]", "'bogus' is not a Communication.status code"]),
    "priority high": Case({"b.json": _bundle(priority="high")}, ["validate", "b.json"], 1, ["error[fhir.code]"]),
    "contentType without a slash": Case(
        {"b.json": _bundle(payload=[{"contentAttachment": {"url": "Binary/1", "contentType": "png"}}])},
        ["validate", "b.json"], 1, ["error[fhir.code]", "MIME type"]),
    "base64 with excess padding": Case(
        {"b.json": _bundle(payload=[{"contentAttachment": {"contentType": "text/plain", "data": "QUJD="}}])},
        ["validate", "b.json"], 1, ["error[fhir.base64]", "'QUJD=' is not base64"]),
    "entry is an object": Case(
        {"b.json": json.dumps({"resourceType": "Bundle", "type": "transaction", "entry": {"fullUrl": "x"}})},
        ["validate", "b.json"], 1, ["Bundle.entry: must be a list of entries, got an object"]),
    "entry is a string": Case(
        {"b.json": json.dumps({"resourceType": "Bundle", "type": "transaction", "entry": "x"})},
        ["validate", "b.json"], 1, ["must be a list of entries, got a string"]),
    "reply sent before its question": Case(
        {"t.yaml": WALKTHROUGH.replace("    sent: 2024-04-10T10:15:00.000Z", "    sent: 2024-04-10T10:01:00.000Z")},
        ["validate", "t.yaml"], 0, ["warning[thread.reply-order]", "before the message it answers", "entry 3 (line 18)",
                                  "(entry 2: line 14)"]),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(name: str, tmp_path: Path) -> None:
    case = CASES[name]
    for file, content in case.files.items():
        path = tmp_path / file
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}
    done = subprocess.run([sys.executable, "-m", "bundler", *case.argv], capture_output=True, text=True,
                          cwd=tmp_path, env=env, timeout=60)
    output = done.stdout + done.stderr
    assert "Traceback" not in output, output
    assert done.returncode == case.exit, output
    for fragment in case.says:
        assert fragment in output, f"{fragment!r} not in:\n{output}"
