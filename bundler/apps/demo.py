"""The embedded default: a local Medplum server, strict and empty, seeded with the example threads (their
participants created when missing), read back and shown.

    thread-bundler demo                  # the six example threads shipped with the package, and four generated
    thread-bundler demo fixtures/threads --participants people.yaml   # any specs
"""

from __future__ import annotations

import tempfile
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from .. import assets
from ..build import DEFAULT_IDENTIFIER_SYSTEM
from ..bundle_files import check_bundles
from ..generator import generate
from ..load.loader import load
from ..load.report import LoadReport
from ..load.verify import VerifyResult, read_thread, verify
from ..medplum.client import ClientCredentials, FhirClient
from ..medplum.localserver import LocalServer
from ..spec import ThreadSpec, load_specs
from ..vocabulary import binary_reference
from ..words import count


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


GENERATED = 4
"""Threads the demo generates from the shipped participants file, beside the example threads."""


def example_participants() -> Path:
    """The participants file shipped with the package: the example clinic's patients and staff."""
    return assets.asset_dir("participants") / "people.yaml"


def _specs(paths: Sequence[str | Path] | None, participants: str | Path | None, tmp: Path, *,
           allow_outside_files: bool = False) -> list[ThreadSpec]:
    """The specs to seed: `paths` (with `participants`, and `allow_outside_files` as `load_specs` takes it); by
    default the shipped examples, and a few threads generated (seed 1) with the shipped participants file as their
    cast."""
    if paths:
        return load_specs(paths, participants=participants, allow_outside_files=allow_outside_files)
    people = participants or example_participants()
    generate(GENERATED, out=tmp / "generated", seed=1, messages=(2, 4), participants=people, prefix="demo")
    return load_specs(example_paths()) + load_specs([tmp / "generated" / "threads"], participants=people)


def run_demo(paths: Sequence[str | Path] | None, out: TextIO, *, note: TextIO | None = None,
             participants: str | Path | None = None, allow_outside_files: bool = False
             ) -> tuple[LoadReport, list[VerifyResult]]:
    """Start a local server, strict (references must exist: Medplum's `checkReferencesOnWrite`) and empty; seed it
    with `paths` (default: the shipped examples, plus threads generated from the shipped participants file), their
    participants created when missing; read a file attachment back; verify every thread and print it.
    `allow_outside_files`: the specs of `paths` may attach files outside their own folder (`load_specs`)."""
    say = (note or out).write
    with tempfile.TemporaryDirectory() as tmp:
        specs = _specs(paths, participants, Path(tmp), allow_outside_files=allow_outside_files)
        check_bundles(specs, DEFAULT_IDENTIFIER_SYSTEM)
        n = len(specs)
        say(f"built and validated {count(n, 'thread')}; starting a local Medplum server\n")
        with LocalServer(check_references_on_write=True) as server:
            say(f"server: {server.base_url} (Medplum fhir-router, in memory, strict: references must exist)\n")
            with FhirClient(server.base_url, ClientCredentials(server.client_id, server.client_secret)) as client:
                report = load(specs, client, journal=Path(tmp) / "demo.journal.sqlite", keep_results=True)
                say(f"loaded: {', '.join(f'{n} {k}' for k, n in sorted(report.counts().items()))} "
                    f"in {report.requests} requests; {report.participants.text()}\n\n")
                results = verify(specs, client)
                _show(specs, report, results, client, out)
                _read_back_a_file(specs, report, client, out)
    return report, results


def _show(specs: list[ThreadSpec], report: LoadReport, results: list[VerifyResult], client: FhirClient,
          out: TextIO) -> None:
    loaded_by_key = {t.key: t for t in report.threads}  # (in the order they finished)
    for spec, checked in zip(specs, results, strict=True):
        loaded = loaded_by_key[spec.key]
        if not loaded.outcome.ok or not loaded.header_id:
            out.write(f"✗ {spec.key}: {loaded.outcome}: {loaded.error}\n\n")
            continue
        header = client.read(f"Communication/{loaded.header_id}")
        out.write(format_thread(header, read_thread(client, loaded.header_id)) + "\n")
        out.write("   ✓ read back: matches its spec field by field\n\n" if checked.ok else
                  "   ✗ read back: " + "; ".join([*checked.differences, *filter(None, [checked.error])][:5]) + "\n\n")


def _read_back_a_file(specs: list[ThreadSpec], report: LoadReport, client: FhirClient, out: TextIO) -> None:
    """The first file attachment, read back from the server and compared with the file, byte for byte."""
    loaded = {t.key: t for t in report.threads}
    for spec in specs:
        for m in spec.messages:
            for j, a in enumerate(m.attachments):
                message_id = loaded[spec.key].message_ids.get(m.id)
                if a.file is None or a.hash is None or not a.size or message_id is None:  # (an empty file: no Binary)
                    continue
                stored = client.read(f"Communication/{message_id}")
                held = [p["contentAttachment"] for p in stored.get("payload") or () if "contentAttachment" in p]
                ref = binary_reference(held[j].get("url")) if j < len(held) else None
                data = client.read_binary(ref) if ref else b""
                same = "identical to the file" if data == spec.files.get(a.hash) else "NOT the file's bytes"
                out.write(f"📎 {a.file} ({spec.key}) read back from {ref}: {len(data):,} bytes, {same}\n")
                return
