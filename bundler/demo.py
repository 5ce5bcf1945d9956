"""The embedded default: a local Medplum server, the example threads loaded into it, read back and shown.

    thread-bundler demo                  # the six example threads shipped with the package
    thread-bundler demo fixtures/threads # any specs
"""

from __future__ import annotations

import tempfile
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from . import assets
from .build import DEFAULT_IDENTIFIER_SYSTEM
from .load.loader import load
from .load.report import LoadReport
from .load.verify import VerifyResult, read_thread, verify
from .medplum.client import ClientCredentials, FhirClient
from .medplum.localserver import LocalServer
from .output import check_bundles
from .spec import ThreadSpec, load_specs


def example_paths() -> list[Path]:
    """The example specs shipped with the package: six threads, the Medplum walkthrough's among them (three keep
    read state, one in each of Medplum's read models)."""
    return [assets.asset_dir("examples")]


def format_thread(header: dict[str, Any], messages: Sequence[dict[str, Any]], *, width: int = 88) -> str:
    """A thread as a person reads it: title, then each message with when, who, to whom and what."""
    by_ref = {f"Communication/{m['id']}": m for m in messages}
    lines = _heading(header, len(messages))
    for m in messages:
        to = ", ".join(_who(r) for r in m.get("recipient") or ()) or "(nobody)"
        lines.append(f"  {m.get('sent')}  {_who(m.get('sender'))} → {to}{_reply(m, by_ref)}")
        lines += [_payload(part, width) for part in m.get("payload") or ()]
    return "\n".join(lines)


def _heading(header: dict[str, Any], messages: int) -> list[str]:
    title = (header.get("topic") or {}).get("text") or "(no topic)"
    subject = f" · about {_who(header['subject'])}" if header.get("subject") else ""
    return [f"━━ {title} ━━", f"   Communication/{header['id']}{subject} · {messages} messages"]


def _who(ref: dict[str, Any] | None) -> str:
    return str((ref or {}).get("display") or (ref or {}).get("reference") or "?")


def _reply(message: dict[str, Any], by_ref: dict[str, dict[str, Any]]) -> str:
    """`↩ who at when` of the (last) message `message` replies to, if any."""
    reply = ""
    for r in message.get("inResponseTo") or ():
        target = by_ref.get(r.get("reference", ""))
        reply = f"  ↩ {_who(target['sender'])} at {target.get('sent')}" if target else "  ↩ (earlier message)"
    return reply


def _payload(part: dict[str, Any], width: int) -> str:
    if "contentString" in part:
        return "\n".join(textwrap.fill(line, width=width, initial_indent="      ", subsequent_indent="      ")
                         or "      " for line in part["contentString"].split("\n"))
    att = part.get("contentAttachment") or {}
    return f"      📎 {att.get('title') or att.get('url')} ({att.get('contentType', '?')})"


def run_demo(paths: Sequence[str | Path] | None, out: TextIO, *, note: TextIO | None = None) -> tuple[LoadReport,
                                                                                                   list[VerifyResult]]:
    """Start a local server, build and load `paths` (default: the shipped examples), print every thread."""
    specs: list[ThreadSpec] = load_specs(paths or example_paths())
    check_bundles(specs, DEFAULT_IDENTIFIER_SYSTEM)
    say = (note or out).write
    n = len(specs)
    say(f"built and validated {n:,} thread{'s' * (n != 1)}; starting a local Medplum server\n")
    with LocalServer() as server, tempfile.TemporaryDirectory() as tmp:
        say(f"server: {server.base_url} (Medplum fhir-router, in memory)\n")
        with FhirClient(server.base_url, ClientCredentials(server.client_id, server.client_secret)) as client:
            report = load(specs, client, journal=Path(tmp) / "demo.journal.sqlite", keep_results=True)
            say(f"loaded: {', '.join(f'{n} {k}' for k, n in sorted(report.counts().items()))} "
                f"in {report.requests} requests\n\n")
            results = verify(specs, client)
            loaded_by_key = {t.key: t for t in report.threads}  # (in the order they finished)
            for spec, checked in zip(specs, results, strict=True):
                loaded = loaded_by_key[spec.key]
                if not loaded.outcome.ok or not loaded.header_id:
                    out.write(f"✗ {spec.key}: {loaded.outcome}: {loaded.error}\n\n")
                    continue
                header = client.read(f"Communication/{loaded.header_id}")
                out.write(format_thread(header, read_thread(client, loaded.header_id)) + "\n")
                out.write("   ✓ read back: matches its spec field by field\n\n" if checked.ok else
                          "   ✗ read back: " + "; ".join(checked.differences[:5]) + "\n\n")
    return report, results
