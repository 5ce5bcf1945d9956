"""Reading what a header search cannot find: messages whose `partOf` points at no header (orphans).

FHIR search finds a thread's messages from its header (`part-of=Communication/<id>`), never the other way
round: no search asks for "a reference whose target does not exist". So `orphans` pages through every message
of the project (`part-of:missing=false`, only `partOf` asked for: one request per page of up to 1,000) and
looks at each target that is not a header this export wrote: read once (a cheap read), it is missing (404/410),
a message (a message part of a message), or a header the filters did not select (not an orphan). Each group of
orphans is then read whole, like a thread.

The headers written are kept on disk (`HeaderIds`, SQLite), so memory stays flat in the number of threads.
"""

from __future__ import annotations

import sqlite3
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import ServerError
from ..medplum.client import FhirClient
from ..vocabulary import cursor_paged, parse_literal


class HeaderIds:
    """The server ids of the headers an export has seen, in a temporary SQLite file: memory stays flat."""

    def __init__(self) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="thread-bundler-export-")
        self._db = sqlite3.connect(Path(self._dir.name) / "headers.sqlite", check_same_thread=False)
        self._db.execute("CREATE TABLE headers (id TEXT PRIMARY KEY)")

    def add(self, header_id: str) -> None:
        self._db.execute("INSERT OR IGNORE INTO headers VALUES (?)", (header_id,))

    def known(self, ids: set[str]) -> set[str]:
        """Those of `ids` that are headers written."""
        known: set[str] = set()
        listed = sorted(ids)
        for start in range(0, len(listed), 500):
            chunk = listed[start:start + 500]
            rows = self._db.execute(f"SELECT id FROM headers WHERE id IN ({','.join('?' * len(chunk))})", chunk)
            known.update(row[0] for row in rows)
        return known

    def close(self) -> None:
        self._db.close()
        self._dir.cleanup()


def _target(message: dict[str, Any]) -> str | None:
    """The reference of what a message is part of (its first `partOf`), if it holds one."""
    parts = message.get("partOf") or ()
    ref = parts[0].get("reference") if parts and isinstance(parts[0], dict) else None
    return ref if isinstance(ref, str) else None


def _what_is(client: FhirClient, target: str) -> str | None:
    """Why messages part of `target` are orphans (it does not exist; it is a message; it is no Communication), or
    None: it is a header."""
    literal = parse_literal(target)
    if literal is None or literal[0] != "Communication":
        return f"part of {target}, which is no Communication of this server"
    try:
        resource = client.read(target)
    except ServerError as exc:
        if exc.status in (404, 410):
            return f"its header {target} does not exist"
        raise
    if resource.get("partOf"):
        return f"part of {target}, which is a message (part of {resource['partOf'][0].get('reference')}), not a header"
    return None


def orphan_targets(client: FhirClient, headers: HeaderIds, *, since: str | None, page_size: int
                   ) -> Iterator[tuple[str, str]]:
    """(target reference, why) of each thing that messages are part of but that is no header this export wrote;
    each once, as the scan finds it."""
    params = {"part-of:missing": "false", "_elements": "partOf", **cursor_paged(page_size)}
    if since is not None:
        params["_lastUpdated"] = f"ge{since}"
    judged: dict[str, str | None] = {}  # target → why (None: a header the filters left out); few in practice
    for page in client.search_resource_pages("Communication", params):
        targets = {t for m in page if (t := _target(m)) is not None} - judged.keys()
        written = {f"Communication/{i}" for i in headers.known({t.removeprefix("Communication/") for t in targets})}
        for target in sorted(targets - written):
            why = judged[target] = _what_is(client, target)
            if why is not None:
                yield target, why
