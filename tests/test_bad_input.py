"""Every bad input a user or an attacker has given us, in one table: the files, the command, the exit status
and the fragments of the message it must print. The next one is one line to add.

Each case runs the real command line (`thread-bundler ...`, or another module with `module=`) in a fresh
folder, in a subprocess under hard limits: a wall-clock timeout, CPU seconds and data memory
(`resource.setrlimit` in the child), so a hang, a crash or a memory blow-up fails the case instead of the
run. The output must never hold a traceback, and a failing command must leave no file behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from bundler.spec import load_specs
from bundler.vocabulary import MAX_ATTACHMENT_FILE_BYTES

REPO = Path(__file__).resolve().parent.parent
WALKTHROUGH_FILE = REPO / "fixtures" / "threads" / "homer-lab-results.yaml"
WALKTHROUGH = WALKTHROUGH_FILE.read_text()
"""Medplum's walkthrough thread, as YAML: three messages, the third (line 18) replying to the second."""
WALKTHROUGH_JSON = load_specs([WALKTHROUGH_FILE])[0].to_data()
"""The same thread as plain data, to write as JSON (with changes)."""


def _json(**changes: object) -> str:
    """The walkthrough as a JSON spec, with `changes` to its top-level fields."""
    return json.dumps({**WALKTHROUGH_JSON, **changes}, indent=2)


def _spec(key: str, *extra: str, message: str = "") -> str:
    """A small YAML spec: thread `key`, one participant, one message (with `message` added to it)."""
    return "\n".join([f"thread: {key}", "topic: t", "participants: {a: {reference: Patient/1}}", "messages:",
                      f"  - {{sender: a, sent: 2024-01-01T00:00:00Z, text: hi{message}}}", *extra, ""])


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


def _patient(born: str) -> str:
    """A participant's `create` in YAML flow style: a Patient with MRN 1 (`https://x.org/mrn|1`), born then."""
    return f"{{resourceType: Patient, identifier: [{{system: 'https://x.org/mrn', value: '1'}}], birthDate: '{born}'}}"


def _group(message: str = "", *, model: str | None = None) -> str:
    """A YAML spec of three participants (a sends to b and c), `message` added to its one message."""
    return "\n".join(["thread: g", "topic: t", *([f"read_model: {model}"] if model else []),
                      "participants: {a: {reference: Patient/1}, b: {reference: Practitioner/2}, "
                      "c: {reference: Practitioner/3}}", "messages:",
                      f"  - {{sender: a, sent: 2024-01-01T00:00:00Z, text: hi{', ' + message if message else ''}}}",
                      ""])


def _text(raw: str) -> str:
    """The small Bundle with its message's text replaced by `raw` JSON (NaN, a number, nested lists)."""
    return _bundle().replace('"hi"', raw)


ALIAS_BOMB = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n' + "".join(
    f"{name}: &{name} [{', '.join(['*' + inner] * 9)}]\n" for inner, name in zip("abcdefgh", "bcdefghi", strict=True))
"""Billion laughs: nine anchors of nine aliases each, 387 million strings once expanded."""
DEEP = "[" * 100_000 + "]" * 100_000
DIGITS = "1" * 5000
WALKTHROUGH_WITH_BOMB = WALKTHROUGH + "x-data:\n" + "".join(f"  {line}\n" for line in ALIAS_BOMB.splitlines())
BIG = _spec("big", "  - {sender: a, sent: 2024-01-01T00:01:00Z, text: " + "y" * 600_000 + "}").replace(
    "text: hi", "text: " + "x" * 600_000)
"""A thread over Medplum's 1 MB body limit in two messages, each of which fits a request of its own."""
CROWD = "".join(["thread: crowd\ntopic: t\nparticipants:\n",
                 *(f"  p{n}: {{reference: Practitioner/doctor-{n:06d}, display: Doctor Number {n}}}\n"
                   for n in range(20_000)),
                 "messages:\n  - {sender: p0, sent: 2024-01-01T00:00:00Z, text: hi, recipient: [p1]}\n"])
"""A thread of 20,000 participants: its header, which lists them all, is larger than any request."""
HOSTILE = {"memory_mb": 100, "cpu_seconds": 5}
"""The limits of input built to exhaust us: refused fast and small, as the issue asks (under 1 s and 100 MB)."""


@contextlib.contextmanager
def _port_in_use(folder: Path) -> Iterator[dict[str, str]]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield {"port": str(s.getsockname()[1])}


@contextlib.contextmanager
def _hard_link(folder: Path) -> Iterator[dict[str, str]]:
    os.link(folder / "j.sqlite", folder / "copy.sqlite")
    yield {}


@contextlib.contextmanager
def _symlink_loop(folder: Path) -> Iterator[dict[str, str]]:
    (folder / "a.sqlite").symlink_to(folder / "b.sqlite")
    (folder / "b.sqlite").symlink_to(folder / "a.sqlite")
    yield {}


NOWHERE = {"MEDPLUM_BASE_URL": "http://127.0.0.1:9/", "MEDPLUM_CLIENT_ID": "id", "MEDPLUM_CLIENT_SECRET": "s3cret"}
"""A server no load case reaches: the journal is refused before anything is sent."""


@contextlib.contextmanager
def _read_only(folder: Path) -> Iterator[dict[str, str]]:
    (folder / "out").chmod(0o555)
    try:
        yield {}
    finally:
        (folder / "out").chmod(0o755)


Maker = Callable[[Path], None]
"""Makes the file at a path itself: a named pipe, a link, a sparse or a large file (built when the case runs)."""


def _fifo(path: Path) -> None:
    os.mkfifo(path)


def _link(target: str) -> Maker:
    return lambda path: path.symlink_to(target)


def _sparse(size: int) -> Maker:
    """A file of `size` bytes that takes no disk (and no time) to make: a hole."""
    def make(path: Path) -> None:
        with path.open("wb") as f:
            f.truncate(size)

    return make


def _large_json_spec(characters: int) -> Maker:
    """A JSON spec whose one message's text is `characters` long: lines of words, each line break an escape."""
    def make(path: Path) -> None:
        line = "The quick brown fox jumps over the lazy dog \"ok\" 12345\n"
        text = line * (characters // len(line) + 1)
        message = {"sender": "alice", "sent": "2024-04-10T10:00:00Z", "text": text[:characters]}
        path.write_text(_json(messages=[message]))

    return make


@dataclass(frozen=True)
class Case:
    files: dict[str, str | bytes | Maker | None]
    """Files to make (None: an empty folder; a function: it makes the file at the path it is given)."""
    argv: list[str]
    """Arguments of `python -m <module>`; `{name}` is filled from what `setup` yields."""
    exit: int
    says: list[str] = field(default_factory=list)
    """Fragments the output must hold."""
    never: list[str] = field(default_factory=list)
    """Fragments the output must not hold (a traceback never, in any case)."""
    creates: list[str] | None = None
    """The files the command writes (default: none when it fails, not checked when it succeeds)."""
    before: list[list[str]] = field(default_factory=list)
    """Commands to run first (each must succeed)."""
    setup: Callable[[Path], contextlib.AbstractContextManager[dict[str, str]]] | None = None
    env: dict[str, str] = field(default_factory=dict)
    """Environment changes; `{tmp}` is the case's folder."""
    module: str = "bundler"
    memory_mb: int = 400
    cpu_seconds: int = 60
    as_root: bool = True
    """Whether the case means anything when run as root (file permissions do not stop root)."""


CASES: dict[str, Case] = {
    # --- hangs and crashes: each a clear message naming the file, fast and small ---------------------------
    "YAML alias bomb: build": Case({"bomb.yaml": ALIAS_BOMB}, ["build", "bomb.yaml", "-o", "out"], 2,
                                   ["bomb.yaml:5:1: e: the aliases (*name)", "repeat more than 10,000 values"],
                                   **HOSTILE),
    "YAML alias bomb: validate": Case({"bomb.yaml": ALIAS_BOMB}, ["validate", "bomb.yaml"], 2,
                                      ["bomb.yaml:5:1:", "alias bomb"], **HOSTILE),
    "YAML alias bomb inside a valid thread": Case({"t.yaml": WALKTHROUGH_WITH_BOMB}, ["build", "t.yaml", "-o", "out"],
                                                  2, ["t.yaml:27:3: x-data.e:", "alias bomb"], **HOSTILE),
    "YAML alias bomb inside a valid thread: validate": Case({"t.yaml": WALKTHROUGH_WITH_BOMB}, ["validate", "t.yaml"],
                                                            2, ["t.yaml:27:3:", "alias bomb"], **HOSTILE),
    "JSON spec nested 100,000 deep: build": Case({"t.json": DEEP}, ["build", "t.json", "-o", "out"], 2,
                                                 ["t.json:1:101: nested more than 100 levels deep"], **HOSTILE),
    "JSON spec nested 100,000 deep: validate": Case({"t.json": DEEP}, ["validate", "t.json"], 2,
                                                    ["t.json:1:101: nested more than 100 levels deep"], **HOSTILE),
    "Bundle JSON nested 100,000 deep": Case({"b.json": _text(DEEP)}, ["validate", "b.json"], 2,
                                            ["b.json:1:", "nested more than 100 levels deep"], **HOSTILE),
    "Bundle NDJSON line nested 100,000 deep": Case({"b.ndjson": _text(DEEP) + "\n"}, ["validate", "b.ndjson"], 2,
                                                   ["b.ndjson:1:", "nested more than 100 levels deep"], **HOSTILE),
    "Bundle nested 900 deep (orjson reads it, then could not write it)": Case(
        {"b.json": _text("[" * 900 + "1" + "]" * 900)}, ["validate", "b.json"], 2,
        ["b.json:1:", "nested more than 100 levels deep"], **HOSTILE),
    "a 20 MB JSON spec: validate, in bounded memory": Case(
        {"t.json": _large_json_spec(20_000_000)}, ["validate", "t.json"], 1,
        ["t.json", "error[limit.entry-size] Bundle.entry[1]: this entry is 21,091,572 bytes in a request",
         "1 error, 0 warnings"]),
    "a 20 MB JSON spec: build, in bounded memory": Case(
        {"t.json": _large_json_spec(20_000_000)}, ["build", "t.json", "-o", "out"], 2,
        ["t.json:56: Bundle.entry[1]: [limit.entry-size] this entry is 21,091,572 bytes", "nothing written"]),
    "JSON spec nested 100,000 deep after a 2 MB text": Case(
        {"t.json": '{"topic": "' + "x" * 2_000_000 + '", "x": ' + DEEP + "}"}, ["build", "t.json"], 2,
        ["t.json:1:2000119: nested more than 100 levels deep"], **HOSTILE),
    "YAML spec nested 100,000 deep": Case({"t.yaml": DEEP}, ["build", "t.yaml"], 2,
                                          ["t.yaml:1:", "YAML syntax error: nested too deeply"], **HOSTILE),
    "5,000-digit integer: YAML spec": Case({"t.yaml": _spec("k", f"sent: {DIGITS}")}, ["build", "t.yaml"], 2,
                                           ["t.yaml:6:7: sent: a number with 5000 digits is too long to read"]),
    "5,000-digit integer: JSON spec": Case({"t.json": _json(topic=0).replace('"topic": 0', f'"topic": {DIGITS}')},
                                           ["build", "t.json"], 2, ["t.json:3:12: topic: a number with 5000 digits"]),
    "5,000-digit integer: Bundle JSON": Case({"b.json": _text(DIGITS)}, ["validate", "b.json"], 2,
                                             ["b.json:1:625: entry[2].resource.payload[1].contentString: a number "
                                              "with 5000 digits is too long to read"]),
    "5,000-digit integer: Bundle NDJSON": Case({"b.ndjson": _text(DIGITS) + "\n"}, ["validate", "b.ndjson"], 2,
                                               ["b.ndjson:1:625:", "a number with 5000 digits"]),
    "5,000-digit integer: Bundle YAML": Case({"b.yaml": f"resourceType: Bundle\ntype: transaction\nentry: {DIGITS}\n"},
                                             ["validate", "b.yaml"], 2, ["b.yaml:3:8: entry: a number with 5000"]),
    "NaN in a JSON spec": Case({"t.json": _json(topic=0).replace('"topic": 0', '"topic": NaN')},
                               ["build", "t.json", "-o", "out"], 2, ["t.json:3:12: topic: NaN is not JSON"]),
    "Infinity in a JSON spec": Case({"t.json": _json(topic=0).replace('"topic": 0', '"topic": Infinity')},
                                    ["validate", "t.json"], 2, ["t.json:3:12: topic: Infinity is not JSON"]),
    "-Infinity in a Bundle": Case({"b.json": _text("-Infinity")}, ["validate", "b.json"], 2,
                                  ["b.json:1:625:", "-Infinity is not JSON: JSON numbers are finite"]),
    "NaN in an NDJSON line": Case({"b.ndjson": _bundle() + "\n" + _text("NaN") + "\n"}, ["validate", "b.ndjson"], 2,
                                  ["b.ndjson:2:625:", "NaN is not JSON"], never=["b.ndjson:1:"]),
    "a number read as infinity": Case({"b.json": _text("1e400")}, ["validate", "b.json"], 2,
                                      ["b.json:1:625:", "'1e400' is too large for a number"]),
    "half a surrogate pair in a JSON spec": Case(
        {"t.json": _json(topic="x").replace('"topic": "x"', '"topic": "\\ud800"')}, ["build", "t.json"], 2,
        ["t.json:3:12: topic: an escape \\uD800-\\uDFFF that is half of a UTF-16 surrogate pair"]),
    "integer beyond 64 bits in a Bundle (orjson cannot write it)": Case(
        {"b.json": _bundle(extension=[{"url": "https://example.org/x", "valueDecimal": 10**30}])},
        ["validate", "b.json", "--no-structure"], 0, ["0 errors"]),
    "YAML tag that the value does not fit": Case({"t.yaml": _spec("!!int abc")}, ["build", "t.yaml"], 2,
                                                 ["t.yaml:1:9: thread: 'abc' is not a decimal integer, as its tag "
                                                  "!!int says"]),
    "YAML tag that would change a value": Case({"t.yaml": _spec("k", "status: !!bool maybe")}, ["build", "t.yaml"], 2,
                                               ["t.yaml:6:9: status: 'maybe' is not a boolean"]),
    "YAML tag of another application": Case({"t.yaml": _spec("k", "subject: !python/object:os.system ls")},
                                            ["build", "t.yaml"], 2, ["the YAML tag !python/object:os.system is not "
                                                                     "used in these files"]),
    # --- silent acceptance of what is wrong ----------------------------------------------------------------
    "thread status bogus": Case({"t.yaml": _spec("k", "status: bogus")}, ["build", "t.yaml"], 2,
                                ["t.yaml:6:9: status: 'bogus' must be a Communication status"]),
    "message status bogus": Case({"t.yaml": _spec("k", message=", status: bogus")}, ["validate", "t.yaml"], 2,
                                 ["t.yaml:5:", "messages[1].status: 'bogus' must be a Communication status"]),
    "Bundle status bogus": Case({"b.json": _bundle(status="bogus")}, ["validate", "b.json"], 1,
                                ["error[fhir.code]", "'bogus' is not a Communication.status code"]),
    "Bundle priority high": Case({"b.json": _bundle(priority="high")}, ["validate", "b.json"], 1, ["error[fhir.code]"]),
    "Bundle contentType without a slash": Case(
        {"b.json": _bundle(payload=[{"contentAttachment": {"url": "Binary/1", "contentType": "png"}}])},
        ["validate", "b.json"], 1, ["error[fhir.code]", "MIME type"]),
    "spec contentType without a slash": Case(
        {"t.yaml": _spec("k", message=", attachments: [{url: Binary/1, contentType: png}]")}, ["build", "t.yaml"], 2,
        ["'png' must be a MIME type"]),
    "thread key with a trailing newline": Case({"t.json": _json(thread="abc\n")}, ["build", "t.json"], 2,
                                               ["t.json:2:13: thread: 'abc\\n' must be 1-128 letters"]),
    "message id with a trailing newline": Case(
        {"t.json": _json().replace('"id": "homer-asks"', '"id": "homer-asks\\n"')}, ["validate", "t.json"], 2,
        ["messages[2].id: 'homer-asks\\n' must be 1-128 letters"]),
    "integer thread key of 300 digits": Case({"t.yaml": _spec("1" * 300)}, ["validate", "t.yaml"], 2,
                                             ["t.yaml:1:9: thread: '" + "1" * 60 + "'... (300 characters) must be "
                                              "1-128 letters"]),
    "integer thread key of 300 digits: build": Case({"t.yaml": _spec("1" * 300)}, ["build", "t.yaml", "-o", "out"], 2,
                                                    ["(300 characters) must be 1-128"], never=["File name too long"]),
    "thread key '.'": Case({"t.yaml": _spec("'.'")}, ["build", "t.yaml", "-o", "out"], 2,
                           ["thread: '.' must not start with '.': its bundle file, <key>.json, would be hidden"]),
    "thread key '..'": Case({"t.yaml": _spec("'..'")}, ["build", "t.yaml", "-o", "out"], 2, ["'..' must not start"]),
    "thread key '...'": Case({"t.yaml": _spec("'...'")}, ["validate", "t.yaml"], 2, ["'...' must not start"]),
    "thread keys that differ only in case": Case(
        {"a.yaml": _spec("Case-A"), "b.yaml": _spec("case-a")}, ["build", "a.yaml", "b.yaml", "-o", "out"], 2,
        ["b.yaml:1:9: thread: thread key 'case-a' differs only in case from 'Case-A' (a.yaml:1)"]),
    "thread keys that differ only in case: validate": Case(
        {"a.yaml": _spec("Case-A"), "b.yaml": _spec("case-a")}, ["validate", "a.yaml", "b.yaml"], 2,
        ["differs only in case"]),
    "the same thread key twice: validate, as build": Case(
        {"a.yaml": _spec("same"), "b.yaml": _spec("same")}, ["validate", "."], 2,
        ["b.yaml:1:9: thread: thread key 'same' is already used by a.yaml:1"]),
    "one good and one bad thread: nothing written": Case(
        {"in/a.yaml": _spec("a"), "in/b.yaml": _spec("b", "status: open")}, ["build", "in", "-o", "out"], 2,
        ["in/b.yaml:6:9: status:", "nothing written"]),
    "a later bundle cannot be written: nothing written": Case(
        {"in/a.yaml": _spec("a"), "in/b.yaml": _spec("b"), "out/b.json": None}, ["build", "in", "-o", "out"], 2,
        ["error: out/b.json: a folder has the name of this file"]),
    "duplicate keys in a Bundle": Case({"b.json": _bundle()[:-1] + ', "type": "batch"}'}, ["validate", "b.json"], 2,
                                       ["b.json:1:691: type: duplicate key 'type'"]),
    "duplicate keys in an NDJSON line": Case({"b.ndjson": _bundle()[:-1] + ', "type": "batch"}\n'},
                                             ["validate", "b.ndjson"], 2, ["b.ndjson:1:691: type: duplicate key"]),
    "entry is an object": Case(
        {"b.json": json.dumps({"resourceType": "Bundle", "type": "transaction", "entry": {"fullUrl": "x"}})},
        ["validate", "b.json"], 1, ["Bundle.entry: must be a list of entries, got an object"]),
    "entry is a string": Case(
        {"b.json": json.dumps({"resourceType": "Bundle", "type": "transaction", "entry": "x"})},
        ["validate", "b.json"], 1, ["must be a list of entries, got a string"]),
    "base64 with excess padding": Case(
        {"b.json": _bundle(payload=[{"contentAttachment": {"contentType": "text/plain", "data": "QUJD="}}])},
        ["validate", "b.json"], 1, ["error[fhir.base64]", "'QUJD=' is not base64"]),
    "NDJSON: every bad line reported": Case(
        {"b.ndjson": '{"resourceType": "Bundle"\n' + _bundle() + "\nnot json\n"}, ["validate", "b.ndjson"], 2,
        ["b.ndjson:1:", "b.ndjson:3:1: not JSON"]),
    "reply sent before its question": Case(
        {"t.yaml": WALKTHROUGH.replace("    sent: 2024-04-10T10:15:00.000Z", "    sent: 2024-04-10T10:01:00.000Z")},
        ["validate", "t.yaml"], 0, ["warning[thread.reply-order]", "before the message it answers",
                                    "entry 3 (line 18)", "(entry 2: line 14)"]),
    "a bundle over 1 MB: build warns, as validate does": Case(
        {"t.yaml": BIG}, ["build", "t.yaml", "-o", "out"], 0,
        ["t.yaml:1: warning[limit.body-size]", "`thread-bundler load` cuts it into parts that fit",
         "built 1 thread (2 messages) → out; 1 warning"], creates=["out/big.json"]),
    "a bundle over 1 MB: validate warns": Case(
        {"t.yaml": BIG}, ["validate", "t.yaml"], 0,
        ["warning[limit.body-size]", "`thread-bundler load` cuts it into parts that fit"]),
    "a message too large for any request: validate says it cannot be sent, at its line": Case(
        {"t.yaml": _spec("big").replace("text: hi", "text: " + "x" * 1_100_000)}, ["validate", "t.yaml"], 1,
        ["t.yaml\n  entry 1 (line 5):\n    error[limit.entry-size] Bundle.entry[1]: this entry is 1,100,",
         "`thread-bundler load` sends at most 1,000,000 bytes a request", "so it cannot be sent"],
        never=["limit.body-size", "cuts it into parts that fit"]),
    "a message too large for any request: build refuses it, as validate does": Case(
        {"t.yaml": _spec("big").replace("text: hi", "text: " + "x" * 1_100_000)}, ["build", "t.yaml", "-o", "out"], 2,
        ["t.yaml:5: Bundle.entry[1]: [limit.entry-size] this entry is 1,100,", "so it cannot be sent",
         "nothing written"]),
    "a header too large for any request (20,000 participants): validate says so at the thread's line": Case(
        {"t.yaml": CROWD}, ["validate", "t.yaml", "--no-structure"], 1,
        ["entry 0 (line 1):\n    error[limit.entry-size] Bundle.entry[0]: this entry is 1,489,188 bytes",
         "most of it is its 20,000 recipients"], never=["limit.body-size"]),
    "a header too large for any request (20,000 participants): build refuses it": Case(
        {"t.yaml": CROWD}, ["build", "t.yaml", "-o", "out"], 2,
        ["t.yaml:1: Bundle.entry[0]: [limit.entry-size] this entry is 1,489,188 bytes", "nothing written"]),
    "build on a folder skips hidden files and folders": Case(
        {"in/t.yaml": WALKTHROUGH, "in/.draft.yaml": "junk: [", "in/.git/x.json": "{"}, ["build", "in", "-o", "out"],
        0, ["built 1 thread"], creates=["out/homer-lab-results-2024-04-10.json"]),
    "build on a folder with the Bundles it wrote": Case(
        {"in/t.yaml": WALKTHROUGH}, ["build", "in", "-o", "in"], 2,
        ["in/homer-lab-results-2024-04-10.json:1:1: this is a FHIR Bundle, not a thread spec", "1 problem"],
        never=["unknown field"], before=[["build", "in", "-o", "in"]]),
    "validate: an identifier system that is no absolute URI": Case(
        {"t.yaml": WALKTHROUGH}, ["validate", "t.yaml", "--identifier-system", "threads"], 2,
        ["Invalid value for '--identifier-system'", "must be an absolute URI"]),
    "build on a Bundle": Case({"b.json": _bundle()}, ["build", "b.json"], 2,
                              ["b.json:1:1: this is a FHIR Bundle, not a thread spec (`validate` checks Bundles"]),
    # --- participants created when missing, the participants file -----------------------------------------
    "create of a type no Communication may reference": Case(
        {"t.yaml": _spec("c").replace("{a: {reference: Patient/1}}", "{a: {create: {resourceType: Observation, "
                                      "identifier: [{system: 'https://x.org/id', value: '1'}]}}}")},
        ["build", "t.yaml"], 2, ["t.yaml:3:", "participants.a.create: resourceType 'Observation'",
                                 "FHIR R4 does not allow"], never=["missing required field"]),
    "create without an identifier": Case(
        {"t.yaml": _spec("c").replace("{a: {reference: Patient/1}}", "{a: {create: {resourceType: Patient}}}")},
        ["validate", "t.yaml"], 2, ["t.yaml:3:", "participants.a.create: needs an identifier"]),
    "create with an id": Case(
        {"t.yaml": _spec("c").replace("{a: {reference: Patient/1}}", "{a: {create: {resourceType: Patient, id: x, "
                                      "identifier: [{system: 'https://x.org/id', value: '1'}]}}}")},
        ["build", "t.yaml"], 2, ["participants.a.create: must not give id: the server sets it"]),
    "create with an identifier a search cannot carry": Case(
        {"t.yaml": _spec("c").replace("{a: {reference: Patient/1}}", "{a: {create: {resourceType: Patient, "
                                      "identifier: [{system: 'https://x.org/id', value: 'a b'}]}}}")},
        ["build", "t.yaml"], 2, ["participants.a.create: identifier[0].value: must be text without spaces"]),
    "reference and create that disagree": Case(
        {"t.yaml": _spec("c").replace("{a: {reference: Patient/1}}", "{a: {reference: Patient/1, create: {resourceType:"
                                      " Patient, identifier: [{system: 'https://x.org/id', value: '1'}]}}}")},
        ["build", "t.yaml"], 2, ["participants.a: reference 'Patient/1' does not match create",
                                 "'Patient?identifier=https://x.org/id|1' (leave reference out)"]),
    "neither reference nor create": Case(
        {"t.yaml": _spec("c").replace("{a: {reference: Patient/1}}", "{a: {display: A}}")},
        ["build", "t.yaml"], 2, ["participants.a: needs a reference", "or create"]),
    "create the server would refuse: validate says where": Case(
        {"t.yaml": _spec("c").replace("{a: {reference: Patient/1}}", "{a: {create: {resourceType: Patient, birthDate:"
                                      " soon, identifier: [{system: 'https://x.org/id', value: '1'}]}}}")},
        ["validate", "t.yaml"], 1, ["t.yaml", "(line 3)", "error[fhir.structure]", "birthDate"]),
    "participants file: an alias in neither": Case(
        {"p.yaml": "participants:\n  a: {reference: Patient/1}\n",
         "t.yaml": _spec("c").replace("participants: {a: {reference: Patient/1}}\n", "")
                             .replace("text: hi", "text: hi, recipient: [b]")},
        ["build", "t.yaml", "--participants", "p.yaml"], 2,
        ["t.yaml:4:", "'b' is not a participant of the thread nor of p.yaml (known: a)"]),
    "participants file: no participant of its own, and an alias in neither": Case(
        {"p.yaml": "participants:\n  a: {reference: Patient/1}\n",
         "t.yaml": _spec("c").replace("participants: {a: {reference: Patient/1}}\n", "")
                             .replace("sender: a", "sender: bart")},
        ["build", "t.yaml", "--participants", "p.yaml"], 2,
        ["t.yaml:4:14: messages[1].sender: 'bart' is not a participant of the thread nor of p.yaml (known: a)"],
        never=["missing required field", "needs at least one participant"]),
    "participants file: participants {} of its own, and an alias in neither": Case(
        {"p.yaml": "participants:\n  a: {reference: Patient/1}\n",
         "t.yaml": _spec("c").replace("{a: {reference: Patient/1}}", "{}").replace("sender: a", "sender: bart")},
        ["validate", "t.yaml", "--participants", "p.yaml"], 2,
        ["t.yaml:5:14: messages[1].sender: 'bart' is not a participant of the thread nor of p.yaml (known: a)"],
        never=["needs at least one participant"]),
    "one identifier, two creates: in one spec": Case(
        {"t.yaml": _spec("c").replace("{a: {reference: Patient/1}}", "\n  a: {create: " + _patient("1956-05-12")
                                      + "}\n  b: {create: " + _patient("1956-05-13") + "}")},
        ["build", "t.yaml", "-o", "out"], 2,
        ["t.yaml:5:15: participants.b.create: creates Patient?identifier=https://x.org/mrn|1 differently from "
         "participants.a at t.yaml:4 (the same first identifier, another create): `load` creates it once",
         "nothing written"]),
    "one identifier, two creates: in two specs": Case(
        {"a.yaml": _spec("a").replace("{a: {reference: Patient/1}}", "{a: {create: " + _patient("1956-05-12") + "}}"),
         "b.yaml": _spec("b").replace("{a: {reference: Patient/1}}", "{a: {create: " + _patient("1956-05-13") + "}}")},
        ["validate", "a.yaml", "b.yaml"], 2,
        ["b.yaml:3:", "participants.a.create: creates Patient?identifier=https://x.org/mrn|1 differently from "
         "participants.a at a.yaml:3"]),
    "one identifier, two creates: a spec and the participants file": Case(
        {"p.yaml": "participants:\n  homer: {create: " + _patient("1956-05-12") + "}\n",
         "t.yaml": _spec("c").replace("{a: {reference: Patient/1}}", "{a: {create: " + _patient("1956-05-13") + "}}")},
        ["load", "t.yaml", "--participants", "p.yaml", "--base-url", "http://127.0.0.1:9/", "--token", "t"], 2,
        ["t.yaml:3:", "participants.a.create: creates Patient?identifier=https://x.org/mrn|1 differently from "
         "participants.homer at p.yaml:2", "nothing sent"]),
    "one identifier, two creates: in the participants file": Case(
        {"p.yaml": "participants:\n  homer: {create: " + _patient("1956-05-12") + "}\n  h2: {create: "
                   + _patient("1956-05-13") + "}\n", "t.yaml": _spec("c")},
        ["generate", "--threads", "2", "--participants", "p.yaml", "-o", "out"], 2,
        ["p.yaml:3:", "participants.h2.create: creates Patient?identifier=https://x.org/mrn|1 differently from "
         "participants.homer at p.yaml:2"]),
    "no participants and no participants file": Case(
        {"t.yaml": _spec("c").replace("participants: {a: {reference: Patient/1}}\n", "")},
        ["build", "t.yaml"], 2,
        ["t.yaml:1:1: missing required field 'participants'", "or give a participants file (--participants FILE"]),
    "participants file: not one": Case(
        {"p.yaml": "thread: x\n", "t.yaml": _spec("c")}, ["build", "t.yaml", "--participants", "p.yaml"], 2,
        ["p.yaml:1:1: expected a participants file: a mapping with one key, participants"]),
    "participants file: a bad entry, at its line": Case(
        {"p.yaml": "participants:\n  a: {reference: Patient/1}\n  b: {reference: Location/1}\n",
         "t.yaml": _spec("c")},
        ["build", "t.yaml", "--participants", "p.yaml"], 2,
        ["p.yaml:3:", "participants.b.reference", "nothing written"]),
    "participants file: missing": Case(
        {"t.yaml": _spec("c")}, ["validate", "t.yaml", "--participants", "people.yaml"], 2,
        ["people.yaml: cannot read"]),
    "validate-participants: every problem of every file, at its line": Case(
        {"p.yaml": "participants:\n  a: {reference: Patient/1}\n  b: {reference: Location/1}\n",
         "q.yaml": "thread: x\n", "ok.yaml": "participants:\n  a: {reference: Patient/1}\n"},
        ["validate-participants", "ok.yaml", "p.yaml", "q.yaml"], 2,
        ["p.yaml:3:", "participants.b.reference", "q.yaml:1:1: expected a participants file",
         "2 problems in 2 files"], never=["ok.yaml"]),
    "validate-participants: missing": Case(
        {}, ["validate-participants", "people.yaml"], 2, ["people.yaml: cannot read"]),
    "validate-mapping: every problem, at its line": Case(
        {"m.yaml": "thread: {id: conversation}\nmessage: {id: id, sender: from, text: {colum: body}}\n"},
        ["validate-mapping", "m.yaml"], 2,
        ["m.yaml:1:1: missing required field 'participants'", "m.yaml:2:", "message.text"]),
    "validate-mapping: missing": Case(
        {}, ["validate-mapping", "m.yaml"], 2, ["m.yaml: cannot read the mapping"]),
    "attachment file missing": Case(
        {"t.yaml": _spec("f", message=", attachments: [{file: scans/knee.png}]")}, ["build", "t.yaml", "-o", "out"], 2,
        ["t.yaml:5:", "messages[1].attachments[1].file: cannot read 'scans/knee.png'", "nothing written"]),
    "attachment file a folder": Case(
        {"t.yaml": _spec("f", message=", attachments: [{file: scans}]"), "scans": None}, ["validate", "t.yaml"], 2,
        ["messages[1].attachments[1].file: 'scans' is a folder, not a file"]),
    # --- what a spec can make us read: regular files only, bounded, from its own folder -------------------
    "attachment file: a named pipe (opening it must not wait for a writer)": Case(
        {"t.yaml": _spec("f", message=", attachments: [{file: pipe}]"), "pipe": _fifo},
        ["build", "t.yaml", "-o", "out"], 2,
        ["t.yaml:5:", "messages[1].attachments[1].file: 'pipe' is a named pipe (FIFO), not a regular file",
         "nothing written"], **HOSTILE),
    "attachment file over the cap (refused by its size, never read)": Case(
        {"t.yaml": _spec("f", message=", attachments: [{file: big.bin}]"),
         "big.bin": _sparse(MAX_ATTACHMENT_FILE_BYTES + 1)}, ["build", "t.yaml", "-o", "out"], 2,
        [f"messages[1].attachments[1].file: 'big.bin' is {MAX_ATTACHMENT_FILE_BYTES + 1:,} bytes: a file attachment "
         f"may have at most {MAX_ATTACHMENT_FILE_BYTES:,} (MAX_ATTACHMENT_FILE_BYTES)"], **HOSTILE),
    "attachment file: /dev/zero, outside files allowed (never read)": Case(
        {"t.yaml": _spec("f", message=", attachments: [{file: /dev/zero}]")},
        ["validate", "t.yaml", "--allow-outside-files"], 2,
        ["messages[1].attachments[1].file: '/dev/zero' is a character device, not a regular file"], **HOSTILE),
    "attachment file: an absolute path": Case(
        {"t.yaml": _spec("f", message=", attachments: [{file: /etc/hostname}]")}, ["build", "t.yaml", "-o", "out"], 2,
        ["t.yaml:5:", "messages[1].attachments[1].file: '/etc/hostname' is outside the spec's folder (.): a spec "
         "attaches files from its own folder only; allow it with --allow-outside-files"]),
    "attachment file: '..' out of the spec's folder: load": Case(
        {"in/t.yaml": _spec("f", message=", attachments: [{file: ../secret.txt}]"), "secret.txt": "secret"},
        ["load", "in", "--base-url", "http://127.0.0.1:9/", "--token", "t"], 2,
        ["in/t.yaml:5:", "'../secret.txt' is outside the spec's folder (in)", "--allow-outside-files",
         "nothing sent"]),
    "attachment file: '..' out of the spec's folder: verify": Case(
        {"in/t.yaml": _spec("f", message=", attachments: [{file: ../secret.txt}]"), "secret.txt": "secret"},
        ["verify", "in", "--base-url", "http://127.0.0.1:9/", "--token", "t"], 2,
        ["in/t.yaml:5:", "'../secret.txt' is outside the spec's folder (in)"]),
    "attachment file: '..' out of the spec's folder: demo": Case(
        {"in/t.yaml": _spec("f", message=", attachments: [{file: ../secret.txt}]"), "secret.txt": "secret"},
        ["demo", "in"], 2, ["in/t.yaml:5:", "'../secret.txt' is outside the spec's folder (in)"]),
    "attachment file: a link in the spec's folder that leads out": Case(
        {"t.yaml": _spec("f", message=", attachments: [{file: scan.png}]"), "scan.png": _link("/etc/hostname")},
        ["validate", "t.yaml"], 2, ["messages[1].attachments[1].file: 'scan.png' is a link to /etc/hostname, "
                                    "outside the spec's folder (.)"]),
    "attachment file outside the spec's folder, allowed": Case(
        {"in/t.yaml": _spec("f", message=", attachments: [{file: ../secret.txt}]"), "secret.txt": "secret"},
        ["build", "in", "-o", "out", "--allow-outside-files"], 0, ["built 1 thread"], creates=["out/f.json"]),
    "attachment file through '..' that stays inside the spec's folder": Case(
        {"in/t.yaml": _spec("f", message=", attachments: [{file: scans/../a.txt}]"), "in/a.txt": "a",
         "in/scans": None}, ["build", "in", "-o", "out"], 0, ["built 1 thread"], creates=["out/f.json"]),
    "participants file: a named pipe": Case(
        {"t.yaml": _spec("c"), "p.yaml": _fifo}, ["build", "t.yaml", "--participants", "p.yaml"], 2,
        ["p.yaml: not read: it is a named pipe (FIFO), not a regular file"], **HOSTILE),
    "attachment with a hash that is not its file's": Case(
        {"t.yaml": _spec("f", message=", attachments: [{file: a.txt, hash: abc}]"), "a.txt": "hello"},
        ["build", "t.yaml"], 2, ["messages[1].attachments[1].hash: 'abc' is not the hash of 'a.txt'",
                                 "leave it out, it is filled in"]),
    "attachment with both url and file": Case(
        {"t.yaml": _spec("f", message=", attachments: [{file: a.txt, url: Binary/1}]"), "a.txt": "hello"},
        ["build", "t.yaml"], 2, ["messages[1].attachments[1]: needs url (where the content is) or file (a file to "
                                 "attach), not both"]),
    "generate: a message range upside down": Case(
        {}, ["generate", "--threads", "3", "--messages", "5..2", "-o", "out"], 2, ["'5..2': need 1 <= MIN <= MAX"]),
    "generate: a message range that is not one": Case(
        {}, ["generate", "--threads", "3", "--messages", "two", "-o", "out"], 2, ["'two' is not MIN..MAX"]),
    "generate: a --prefix that climbs out of the folder": Case(
        {"in": None}, ["generate", "--threads", "3", "--prefix", "../../x", "-o", "in/out"], 2,
        ["error: prefix '../../x': thread keys are <prefix>-<number>, and '../../x-00003' must be 1-128 letters, "
         "digits, '.', '_', '-' or ':', and not start with '.'"]),
    "generate: a --prefix that makes hidden files": Case(
        {}, ["generate", "--threads", "3", "--prefix", ".seed", "-o", "out"], 2,
        ["error: prefix '.seed': thread keys are <prefix>-<number>", "not start with '.'"]),
    "generate: a participants file without a patient": Case(
        {"p.yaml": "participants:\n  a: {reference: Practitioner/1}\n"},
        ["generate", "--threads", "3", "--participants", "p.yaml", "-o", "out"], 2,
        ["p.yaml: generating threads needs at least one Patient", "found 0 and 1"]),
    "generate: a participants file with errors, at their lines": Case(
        {"p.yaml": "participants:\n  a: {reference: Patient/1}\n  b: {create: {resourceType: Patient}}\n"},
        ["generate", "--threads", "3", "--participants", "p.yaml", "-o", "out"], 2,
        ["p.yaml:3:", "participants.b.create: needs an identifier"]),
    # --- clear messages ------------------------------------------------------------------------------------
    "UTF-16 with a byte order mark": Case({"t.yaml": WALKTHROUGH.encode("utf-16")}, ["build", "t.yaml"], 2,
                                          ["t.yaml: this is UTF-16 (little-endian) text: save it as UTF-8"],
                                          never=["NUL"]),
    "UTF-16 big-endian without one": Case({"t.json": _json().encode("utf-16-be")}, ["validate", "t.json"], 2,
                                          ["t.json: this is UTF-16 (big-endian) text: save it as UTF-8"]),
    "Latin-1": Case({"t.yaml": WALKTHROUGH.replace("—", "é").encode("latin-1")}, ["build", "t.yaml"], 2,
                    ["t.yaml:13:", "not UTF-8 text (byte 0xe9 at offset", "save it as UTF-8"]),
    "a control character in YAML": Case({"t.yaml": _spec("k", "topic: a\x07b")}, ["build", "t.yaml"], 2,
                                        ["t.yaml:6:9: the character U+0007 is not allowed in YAML"]),
    "a read-only output folder": Case({"t.yaml": WALKTHROUGH, "out": None}, ["build", "t.yaml", "-o", "out"], 2,
                                      ["error: out: Permission denied"], never=[".thread-bundler-"],
                                      setup=_read_only, as_root=False),
    "an output folder that is a file": Case({"t.yaml": WALKTHROUGH, "out": "x"}, ["build", "t.yaml", "-o", "out"], 2,
                                            ["error: out: exists and is not a folder"], creates=[]),
    "a list item indented wrong": Case(
        {"t.yaml": WALKTHROUGH.replace("    sent: 2024-04-10T10:15", "   sent: 2024-04-10T10:15")},
        ["build", "t.yaml"], 2, ["t.yaml:19:4: YAML syntax error: this line is not indented like the items of the "
                                 "list that starts on line 10"], never=["did not find expected"]),
    "a key indented wrong": Case({"t.yaml": WALKTHROUGH.replace("  - id: homer-asks", " - id: homer-asks")},
                                 ["build", "t.yaml"], 2, ["t.yaml:14:2: YAML syntax error: this line is not indented "
                                                          "like the keys of the mapping that starts on line 1"]),
    "a tab for indentation": Case({"t.yaml": WALKTHROUGH.replace("  homer: {", "\thomer: {")}, ["build", "t.yaml"], 2,
                                  ["t.yaml:7:1: YAML syntax error: a tab character: YAML indents with spaces only"]),
    "': ' in unquoted text": Case({"t.yaml": _spec("k", "topic: Re: results")}, ["build", "t.yaml"], 2,
                                  ["t.yaml:6:10: YAML syntax error: a ': ' where no key can start: quote text"]),
    "an unknown field": Case({"t.yaml": WALKTHROUGH.replace("topic:", "topik:")}, ["build", "t.yaml"], 2,
                             ["t.yaml:2:1: topik: unknown field 'topik' (did you mean 'topic'?)"]),
    "message positions count from 1": Case({"t.yaml": WALKTHROUGH.replace("sender: homer\n", "sender: bart\n")},
                                           ["build", "t.yaml"], 2, ["t.yaml:15:13: messages[2].sender: 'bart'"]),
    "an empty folder": Case({"in": None}, ["build", "in"], 2, ["in: folder has no *.yaml, *.yml, *.json files"]),
    # --- what the fuzzer found (tests/test_fuzz*.py) ----------------------------------------------------------
    "a resourceType that is a list": Case(
        {"b.json": _bundle(resourceType=[])}, ["validate", "b.json"], 1,
        ["error[entry.resource] Bundle.entry[1].resource.resourceType: [] is not a FHIR R4 resource type"]),
    "a raw ',' in a conditional reference": Case(
        {"t.yaml": _spec("k").replace("Patient/1", "'Patient?identifier=https://x.org|a,b'")}, ["build", "t.yaml"], 2,
        ["t.yaml:3:31: participants.a.reference: 'Patient?identifier=https://x.org|a,b' must be a literal reference",
         "(no spaces; write \\ , $ | in a system or value as \\\\ \\, \\$ \\|)"]),
    "an unknown escape in a conditional reference": Case(
        {"t.yaml": _spec("k").replace("Patient/1", "'Patient?identifier=https://x.org|a\\b'")}, ["build", "t.yaml"],
        2, ["t.yaml:3:31: participants.a.reference: 'Patient?identifier=https://x.org|a\\\\b' must be a literal"]),
    "a YAML tag without a name": Case({"t.yaml": "!!\n"}, ["build", "t.yaml"], 2,
                                      ["t.yaml:1:3: YAML syntax error: a tag (!name) without a name: quote text"]),
    "a block of text without its line end": Case({"t.yaml": "|x\n"}, ["build", "t.yaml"], 2,
                                                 ["t.yaml:1:2: YAML syntax error: after '|' or '>' (a block of text)"]),
    # --- read state, priority and drafts ----------------------------------------------------------------------
    "read_by: someone who is not a recipient": Case(
        {"t.yaml": _group("read_by: {a: 2024-01-01T01:00:00Z}")}, ["build", "t.yaml"], 2,
        ["t.yaml:5:68: messages[1].read_by.a: 'a' is not a recipient of this message (recipients: b, c)"]),
    "read_by: read before it was sent": Case(
        {"t.yaml": _group("read_by: {b: 2023-12-31T23:00:00Z}")}, ["build", "t.yaml"], 2,
        ["messages[1].read_by.b: read at 2023-12-31T23:00:00Z, before the message was sent"]),
    "read_by: not an instant": Case(
        {"t.yaml": _group("read_by: {b: yesterday}")}, ["build", "t.yaml"], 2,
        ["messages[1].read_by.b: 'yesterday' must be a FHIR instant"]),
    "read_by on a draft": Case(
        {"t.yaml": _group("status: preparation, read_by: {b: 2024-01-01T01:00:00Z}")}, ["build", "t.yaml"], 2,
        ["messages[1]: a draft (status: preparation) was never sent, so nobody read it: remove read_by"]),
    "a message without sent that is not a draft": Case(
        {"t.yaml": _group().replace("sent: 2024-01-01T00:00:00Z, ", "")}, ["build", "t.yaml"], 2,
        ["messages[1]: a message needs sent (only a draft, status: preparation, may leave it out)"]),
    "read_model simple on a group thread": Case(
        {"t.yaml": _group(model="simple")}, ["validate", "t.yaml"], 2,
        ["t.yaml:3:13: read_model: the simple read model fits 1:1 threads", "use read_model: tasks"]),
    "--read-model simple on a group thread": Case(
        {"t.yaml": _group()}, ["build", "t.yaml", "--read-model", "simple", "-o", "out"], 2,
        ["t.yaml:1: read_model (--read-model simple): the simple read model fits 1:1 threads", "this thread has 3"]),
    "--read-model that is not one": Case({"t.yaml": _group()}, ["build", "t.yaml", "--read-model", "receipts"], 2,
                                         ["'receipts' is not one of 'simple', 'header-extension', 'tasks'"]),
    "an unknown read_model and priority": Case(
        {"t.yaml": _group(model="receipts").replace("topic: t", "topic: t\npriority: high")}, ["build", "t.yaml"], 2,
        ["priority: 'high' must be a request priority (one of: routine, urgent, asap, stat)",
         "read_model: 'receipts' must be a read model (one of: simple, header-extension, tasks)"]),
    "tasks model with a Group as recipient": Case(
        {"t.yaml": _group(model="tasks").replace("Practitioner/3", "Group/3")}, ["build", "t.yaml"], 2,
        ["participants.c.reference: 'c' is a Group, which cannot own a read-receipt Task"]),
    # --- export: options refused before anything is sent (no server needed to refuse them) -----------------
    "export: --since not an instant": Case({}, ["export", "-o", "out", "--since", "yesterday"], 2,
                                           ["Invalid value for '--since': 'yesterday' must be a FHIR instant"]),
    "export: --since an impossible date": Case({}, ["export", "-o", "out", "--since", "2024-02-30T00:00:00Z"], 2,
                                               ["'2024-02-30T00:00:00Z' is not a real date"]),
    "export: --subject not a reference": Case({}, ["export", "-o", "out", "--subject", "Patient"], 2,
                                              ["'--subject': 'Patient' must be a literal reference Type/id"]),
    "export: --subject conditional": Case({}, ["export", "-o", "out", "--subject", "Patient?identifier=a|b"], 2,
                                          ["must be a literal reference Type/id", "always a literal one"]),
    "export: --subject of a type no subject can be": Case(
        {}, ["export", "-o", "out", "--subject", "Practitioner/1"], 2,
        ["'Practitioner/1' is a Practitioner: a Communication's subject is one of Group, Patient"]),
    "export: bad identifier system": Case({}, ["export", "-o", "out", "--identifier-system", "not a uri"], 2,
                                          ["Invalid value for '--identifier-system'", "must be an absolute URI"]),
    "export: participants file inside the export's folder": Case(
        {}, ["export", "-o", "out", "--participants-file", "out/people.yaml", "--base-url", "http://127.0.0.1:9/",
             "--token", "t"], 2, ["participants file: out/people.yaml is inside out", "put it beside the folder"],
        never=["exporting"]),
    "export: the participants file to write inside the export's folder": Case(
        {}, ["export", "-o", "out", "--participants-out", "out/people.yaml", "--base-url", "http://127.0.0.1:9/",
             "--token", "t"], 2, ["participants file: out/people.yaml is inside out", "put it beside the folder"],
        never=["exporting", "deprecated"]),
    "export: --attachments neither keep nor download": Case(
        {}, ["export", "-o", "out", "--attachments", "fetch"], 2,
        ["Invalid value for '--attachments': 'fetch' is not one of 'keep', 'download'"]),
    "export: -o is a file": Case({"out": "x"}, ["export", "-o", "out", "--base-url", "http://127.0.0.1:9/",
                                                "--token", "t"], 2, ["'out' is a file"]),
    "local server: port in use": Case({}, ["--port", "{port}"], 2,
                                      ["error: port {port} on 127.0.0.1 is already in use",
                                       "--port 0 for any free one"], never=["EADDRINUSE", "Node.js"],
                                      module="bundler.medplum.localserver", setup=_port_in_use),
    "server: port in use": Case({}, ["server", "--port", "{port}"], 2,
                                ["error: port {port} on 127.0.0.1 is already in use", "--port 0 for any free one"],
                                never=["EADDRINUSE", "Node.js"], setup=_port_in_use),
    "local server: no npm": Case({"bin": None, "cache": None}, [], 2,
                                 ["error: npm is not on PATH", "install Node.js with npm"],
                                 module="bundler.medplum.localserver",
                                 env={"PATH": "{tmp}/bin", "THREAD_BUNDLER_CACHE": "{tmp}/cache"}),
    # --- load: a journal two loads could share without seeing each other's lock ----------------------------
    "load: a journal with two names (hard links)": Case(
        {"t.yaml": _spec("t1"), "j.sqlite": b""}, ["load", "t.yaml", "--journal", "copy.sqlite"], 2,
        ["copy.sqlite", "has 2 names (hard links)", "Keep one name", "nothing was sent"], never=["s3cret"],
        setup=_hard_link, env=NOWHERE),
    "load: a journal that is a symlink loop": Case(
        {"t.yaml": _spec("t1")}, ["load", "t.yaml", "--journal", "a.sqlite"], 2,
        ["cannot use the journal a.sqlite", "ymlink loop", "nothing was sent"], setup=_symlink_loop, env=NOWHERE),
    # --- migrate: participants to create ----------------------------------------------------------------------
    "migrate: a rule's create without an identifier": Case(
        {"e.csv": "c,i,s,t,b\nc1,1,x1,2024-01-01T00:00:00Z,hi\n",
         "m.yaml": "thread: {id: c}\nmessage: {id: i, sender: s, sent: t, text: b}\n"
                   "participants:\n  rules:\n    - {prefix: x, create: {resourceType: Patient}}\n"},
        ["migrate", "e.csv", "--mapping", "m.yaml", "--to", "specs", "out"], 2,
        ["m.yaml:5:", "participants.rules[1].create", "needs an identifier",
         "a create is a FHIR resource with an identifier"]),
    "migrate: a YAML table entry that is neither a reference nor a participant": Case(
        {"e.csv": "c,i,s,t,b\nc1,1,x1,2024-01-01T00:00:00Z,hi\n", "t.yaml": "x1: {name: Ann}\n",
         "m.yaml": "thread: {id: c}\nmessage: {id: i, sender: s, sent: t, text: b}\nparticipants: {table: t.yaml}\n"},
        ["migrate", "e.csv", "--mapping", "m.yaml", "--to", "specs", "out"], 2,
        ["t.yaml:1:5: x1: unknown field 'name'", "or {display, create} to create it when missing"]),
    "migrate: a participants file with a bad entry": Case(
        {"e.csv": "c,i,s,t,b\nc1,1,x1,2024-01-01T00:00:00Z,hi\n",
         "p.yaml": "participants:\n  x1: {create: {resourceType: Location, identifier: [{system: s, value: v}]}}\n",
         "m.yaml": "thread: {id: c}\nmessage: {id: i, sender: s, sent: t, text: b}\n"
                   "participants: {rules: [{prefix: x, reference: 'Patient/{rest}'}]}\n"},
        ["migrate", "e.csv", "--mapping", "m.yaml", "--participants", "p.yaml", "--to", "specs", "out"], 2,
        ["p.yaml:2:", "participants.x1.create", "Location"]),
    "demo: no npm": Case({"bin": None, "cache": None}, ["demo"], 2,
                         ["error: npm is not on PATH", "install Node.js with npm"],
                         env={"PATH": "{tmp}/bin", "THREAD_BUNDLER_CACHE": "{tmp}/cache"}),
}


def _limits(memory_mb: int, cpu_seconds: int) -> Callable[[], None]:
    def apply() -> None:  # in the child, before it runs Python
        resource.setrlimit(resource.RLIMIT_DATA, (memory_mb << 20, memory_mb << 20))
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds))

    return apply


def _files(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


def _run(case: Case, argv: list[str], folder: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1",
           **{k: v.replace("{tmp}", str(folder)) for k, v in case.env.items()}}
    return subprocess.run([sys.executable, "-m", case.module, *argv], capture_output=True, text=True, cwd=folder,
                          env=env, timeout=120, preexec_fn=_limits(case.memory_mb, case.cpu_seconds))


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(name: str, tmp_path: Path) -> None:
    case = CASES[name]
    if not case.as_root and os.geteuid() == 0:
        pytest.skip("file permissions do not stop root")
    for file, content in case.files.items():
        path = tmp_path / file
        if content is None:
            path.mkdir(parents=True, exist_ok=True)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        if callable(content):
            content(path)
            continue
        path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    for argv in case.before:
        first = _run(case, argv, tmp_path)
        assert first.returncode == 0, first.stdout + first.stderr
    with case.setup(tmp_path) if case.setup else contextlib.nullcontext({}) as values:
        files = _files(tmp_path)  # (what the setup made is not the command's)
        done = _run(case, [a.format(**values) if values else a for a in case.argv], tmp_path)
    output = done.stdout + done.stderr
    assert "Traceback" not in output, output
    assert done.returncode == case.exit, output
    for fragment in case.says:
        fragment = fragment.format(**values) if values else fragment
        assert fragment in output, f"{fragment!r} not in:\n{output}"
    for fragment in case.never:
        assert fragment not in output, f"{fragment!r} in:\n{output}"
    created = sorted(_files(tmp_path) - files)
    if case.creates is not None or case.exit != 0:
        assert created == sorted(case.creates or []), output
