"""The fuzz harness's parts: the example budget, the per-input limits, and strategies that make hostile input.

Every reader of outside input must end in a result or in our own error (`SpecError`, whose problems each
name the file and, unless the file as a whole is the problem, a line): never another exception, and
never more than `SECONDS` of wall clock or `MEMORY_MB` more memory for one input. `bounded()` holds an
input to those limits in process (an alarm; the data memory limit of the process, lowered for the
test), so a hang or a blow-up fails the example instead of stalling the run.

The budget: `--fuzz-examples N` (tests/conftest.py) sets the examples per fuzz test, with fresh random
seeds; without it a small, derandomized default keeps the default run short and steady.
"""

from __future__ import annotations

import contextlib
import json
import re
import resource
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from bundler.errors import Problem

SECONDS = 30
"""Wall-clock limit of one input (a shared 2-core machine: generous; a hang is what it catches)."""
MEMORY_MB = 1024
"""Data memory one input may add to the process."""

FILE_LEVEL = ("not a text file", "this is UTF-", "not UTF-8 text", "empty file", "no thread in this file",
              "expected one mapping", "expected a mapping: legacy id", "cannot read", "no such file", "folder has no")
"""Problems about a file as a whole: they have no line."""


def register_fuzz_profile(examples: int, *, derandomize: bool) -> None:
    settings.register_profile("fuzz", max_examples=examples, derandomize=derandomize,
                              database=None if derandomize else settings.get_profile("default").database,
                              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                                     HealthCheck.filter_too_much, HealthCheck.large_base_example])


def fuzz_settings() -> settings:
    """The settings of a fuzz test: the `fuzz` profile's budget (tests/conftest.py registers it)."""
    return settings(settings.get_profile("fuzz"))


class Overrun(Exception):
    """An input took longer than `SECONDS`."""


def _data_used() -> int:
    """Bytes of data memory this process has mapped (VmData), the measure RLIMIT_DATA limits."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmData:"):
            return int(line.split()[1]) * 1024
    return 0  # pragma: no cover - Linux has it


@contextlib.contextmanager
def bounded() -> Iterator[None]:
    """Run one input under the limits: an alarm after `SECONDS`, data memory `MEMORY_MB` above today's."""
    def alarm(signum: int, frame: Any) -> None:
        raise Overrun(f"one input took more than {SECONDS} s")

    soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
    limit = _data_used() + (MEMORY_MB << 20)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    previous = signal.signal(signal.SIGALRM, alarm)
    resource.setrlimit(resource.RLIMIT_DATA, (limit, hard))
    signal.alarm(SECONDS)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
        resource.setrlimit(resource.RLIMIT_DATA, (soft, hard))


def check_problems(problems: list[Problem], file: str) -> None:
    """Our own error, as promised: at least one problem, each naming `file` and, unless the file as a whole is
    the problem, its line."""
    assert problems
    for p in problems:
        assert p.file == file, str(p)
        assert p.message, str(p)
        assert p.line is not None or p.message.startswith(FILE_LEVEL), f"no line: {p}"


# --- strategies ----------------------------------------------------------------------------------------------

SYNTAX = [b":", b"-", b"- ", b"[", b"]", b"{", b"}", b'"', b"'", b"\n", b"\t", b" ", b"&a ", b"*a", b"!!int ", b"!x ",
          b"#", b"|", b">", b"%", b"@", b",", b"\\", b"\\u", b"\\ud800", b"NaN", b"-Infinity", b"1e999", b"9" * 30,
          b"\x00", b"\xff", b"\xef\xbb\xbf", b"\xe2\x80\x8f", b"---\n", b"...\n", b"null", b"true", b"<<: *a"]
"""Bytes that mean something to a YAML or JSON reader, or break an encoding."""


@st.composite
def mutated_bytes(draw: st.DrawFn, raw: bytes, *, max_edits: int = 6) -> bytes:
    """`raw` with a few edits: a byte or a syntax fragment inserted, replaced or deleted, a span repeated."""
    out = bytearray(raw)
    for _ in range(draw(st.integers(1, max_edits))):
        at = draw(st.integers(0, len(out)))
        kind = draw(st.sampled_from(["insert", "replace", "delete", "repeat"]))
        piece = draw(st.sampled_from(SYNTAX) | st.binary(min_size=1, max_size=4))
        if kind == "insert":
            out[at:at] = piece
        elif kind == "replace":
            out[at:at + len(piece)] = piece
        elif kind == "delete":
            del out[at:at + draw(st.integers(1, 20))]
        else:
            span = bytes(out[at:at + draw(st.integers(1, 40))])
            out[at:at] = span * draw(st.integers(1, 5))
    return bytes(out)


SCALARS = (st.none() | st.booleans() | st.integers() | st.integers(min_value=10**18, max_value=10**40)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=30)
           | st.sampled_from(["", "\n", "abc\n", "Patient/1", "2024-04-10T10:00:00Z", "2024-02-30T10:00:00Z", "a",
                              "homer", "alice", "in-progress", "bogus", "http://x|y", "urn:uuid:x", ".", "..",
                              "Case-A", "case-a", "\ud800", "x" * 200]))
"""Leaf values, among them the ones our grammars are about (and some they refuse)."""
KEYS = st.text(max_size=12) | st.sampled_from(["thread", "topic", "participants", "messages", "sender", "sent",
                                               "text", "id", "reply_to", "recipient", "attachments", "status",
                                               "subject", "category", "reference", "display", "url",
                                               "contentType", "resourceType", "entry", "resource", "request",
                                               "fullUrl", "payload", "partOf", "type", "method"])


def trees(max_leaves: int = 30) -> st.SearchStrategy[Any]:
    """Random JSON-like values: lists and mappings of `SCALARS`, keys that are often ours."""
    return st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=5) | st.dictionaries(KEYS, inner, max_size=5),
                        max_leaves=max_leaves)


def _paths(data: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield path
    if isinstance(data, dict):
        for k, v in data.items():
            yield from _paths(v, (*path, k))
    elif isinstance(data, list):
        for i, v in enumerate(data):
            yield from _paths(v, (*path, i))


@st.composite
def mutated_tree(draw: st.DrawFn, data: Any, *, max_edits: int = 3) -> Any:
    """`data` (plain JSON-like data) with a few edits: a value replaced by a random tree, a key deleted or renamed,
    a list item duplicated."""
    data = json.loads(json.dumps(data))
    for _ in range(draw(st.integers(1, max_edits))):
        paths = list(_paths(data))
        path = draw(st.sampled_from(paths))
        if not path:
            if draw(st.booleans()):
                data = draw(trees())
            continue
        parent = data
        for part in path[:-1]:
            parent = parent[part]
        last = path[-1]
        kind = draw(st.sampled_from(["replace", "delete", "rename", "duplicate"]))
        if kind == "replace":
            parent[last] = draw(trees())
        elif kind == "delete":
            del parent[last]
        elif kind == "rename" and isinstance(parent, dict):
            parent[draw(KEYS)] = parent.pop(last)
        elif kind == "duplicate" and isinstance(parent, list):
            parent.insert(last, json.loads(json.dumps(parent[last])))
    return data


def as_json(data: Any) -> str:
    """`data` as JSON text (NaN and Infinity written as Python writes them, which is not JSON)."""
    return json.dumps(data, ensure_ascii=False)


def as_yaml(data: Any) -> str:
    """`data` as YAML text, floats as YAML writes them."""
    import yaml

    return yaml.safe_dump(data, allow_unicode=True, sort_keys=False)


def encodable(text: str) -> bytes:
    """`text` as UTF-8, half surrogate pairs kept as JSON escapes would bring them (surrogatepass)."""
    return text.encode("utf-8", "surrogatepass")


def one_of_our_words(message: str) -> bool:
    """Whether a message is ours, not a library's raw text (PyYAML's, Python's json's)."""
    return re.search(r"did not find expected|Expecting |while scanning|while parsing", message) is None

