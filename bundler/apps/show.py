"""A thread as a person reads it, in the terminal: from its spec (as it will be sent), or from the server (as it was
stored), the way `thread-bundler demo` shows what it loaded.

    show(["threads/homer.yaml"], sys.stdout)                                  # from the spec: nothing is sent
    show([], sys.stdout, client=client, keys=["homer-lab-results-2024-04-10"])   # from the server, by thread key
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from ..build import DEFAULT_IDENTIFIER_SYSTEM, build_bundle
from ..errors import BundlerError
from ..load.inputs import read_threads
from ..load.verify import read_thread
from ..medplum.client import FhirClient
from ..spec.participants import ParticipantsFile
from ..vocabulary import identifier_token
from ..words import count

DRAFT_TIME = "(draft: not sent)"
"""What stands for the time of a message without `sent` (a draft)."""


def format_thread(header: dict[str, Any], messages: Sequence[dict[str, Any]], *, width: int = 88,
                  name: str | None = None) -> str:
    """A thread as a person reads it: title, then each message with when, who, to whom and what. `name`: how the
    thread is named under its title (default `Communication/<id>`)."""
    by_ref = {f"Communication/{m['id']}": m for m in messages if "id" in m}
    by_ref |= {m["fullUrl"]: m for m in messages if "fullUrl" in m}
    lines = _heading(header, len(messages), name or f"Communication/{header.get('id')}")
    for m in messages:
        to = ", ".join(_who(r) for r in m.get("recipient") or ()) or "(nobody)"
        lines.append(f"  {m.get('sent') or DRAFT_TIME}  {_who(m.get('sender'))} → {to}{_reply(m, by_ref)}")
        lines += [_payload(part, width) for part in m.get("payload") or ()]
    return "\n".join(lines)


def _heading(header: dict[str, Any], messages: int, name: str) -> list[str]:
    title = (header.get("topic") or {}).get("text") or "(no topic)"
    subject = f" · about {_who(header['subject'])}" if header.get("subject") else ""
    return [f"━━ {title} ━━", f"   {name}{subject} · {count(messages, 'message')}"]


def _who(ref: dict[str, Any] | None) -> str:
    return str((ref or {}).get("display") or (ref or {}).get("reference") or "?")


def _reply(message: dict[str, Any], by_ref: dict[str, dict[str, Any]]) -> str:
    """`↩ who at when` of the (last) message `message` replies to, if any."""
    reply = ""
    for r in message.get("inResponseTo") or ():
        target = by_ref.get(r.get("reference", ""))
        reply = (f"  ↩ {_who(target.get('sender'))} at {target.get('sent') or DRAFT_TIME}" if target else
                 "  ↩ (earlier message)")
    return reply


def _payload(part: dict[str, Any], width: int) -> str:
    if "contentString" in part:
        return "\n".join(textwrap.fill(line, width=width, initial_indent="      ", subsequent_indent="      ")
                         or "      " for line in part["contentString"].split("\n"))
    att = part.get("contentAttachment") or {}
    what = att.get("title") or att.get("url") or (f"{att['size']:,} bytes" if "size" in att else "a file")
    return f"      📎 {what} ({att.get('contentType', '?')})"


def show(paths: Sequence[str | Path], out: TextIO, *, client: FhirClient | None = None, keys: Sequence[str] = (),
         identifier_system: str = DEFAULT_IDENTIFIER_SYSTEM, participants: str | Path | ParticipantsFile | None = None,
         read_model: str | None = None, allow_outside_files: bool = False) -> int:
    """Print threads to `out` as the demo shows them: those of the spec files `paths` (read as `load` reads them,
    with `participants`, `read_model`, `allow_outside_files`; shown as built, nothing sent), then those the server
    behind `client` holds under `keys` (found by their header's identifier in `identifier_system`). What
    `thread-bundler show` does. Returns the number of threads shown; BundlerError naming a key the server does not
    hold (after showing the others)."""
    if keys and client is None:
        raise BundlerError("showing threads by key reads them from a server: give a client (--base-url ...)")
    shown = 0
    if paths:
        for spec in read_threads(list(paths), participants=participants, read_model=read_model,
                                 allow_outside_files=allow_outside_files):
            entries = build_bundle(spec, identifier_system=identifier_system)["entry"]
            resources = [{**e["resource"], "fullUrl": e["fullUrl"]} for e in entries
                         if e["resource"]["resourceType"] == "Communication"]
            file, line = spec.origin()
            where = f"{file}:{line}" if line else file
            out.write(format_thread(resources[0], resources[1:], name=f"{spec.key} ({where})") + "\n\n")
            shown += 1
    missing = []
    for key in keys:
        assert client is not None
        headers = client.search("Communication", {"identifier": identifier_token(identifier_system, key)})
        if not headers:
            missing.append(key)
        for header in headers:
            out.write(format_thread(header, read_thread(client, header["id"]),
                                    name=f"{key} · Communication/{header['id']}") + "\n\n")
            shown += 1
    if missing:
        raise BundlerError(f"not on the server (no header with the identifier {identifier_system}|<key>): "
                           f"{', '.join(missing)}")
    return shown
