"""The embedded default: a local Medplum server, strict and empty, seeded with the example threads (their
participants created when missing), read back and shown.

    thread-bundler demo                  # the six example threads shipped with the package, and four generated
    thread-bundler demo fixtures/threads --participants people.yaml   # any specs
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from .. import assets
from ..build import DEFAULT_IDENTIFIER_SYSTEM
from ..bundle_files import check_bundles
from ..generator import generate
from ..load.loader import load
from ..load.report import LoadReport
from ..load.verify import VerifyResult, read_thread, verify
from ..medplum.client import ClientCredentials, FhirClient
from ..medplum.localserver import LocalServer, default_env_file
from ..spec import ThreadSpec, load_specs
from ..vocabulary import binary_reference
from ..words import count
from .show import format_thread


def example_paths() -> list[Path]:
    """The example specs shipped with the package: six threads, the Medplum walkthrough's among them (three keep
    read state, one in each of Medplum's read models)."""
    return [assets.asset_dir("examples")]


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
    _summary(specs, report, results, out)
    return report, results


def next_steps() -> str:
    """Where to go after the demo: the same steps on one's own threads and a local server of one's own."""
    return (f"next: your own threads, on a local server of your own\n"
            f"  thread-bundler validate threads/                 # every problem at its file:line:col\n"
            f"  thread-bundler server &                          # strict, as here; Ctrl-C (or kill %1) stops it\n"
            f"  set -a; . {default_env_file()}; set +a\n"
            f"                                                   # MEDPLUM_* for load, verify, show\n"
            f"  thread-bundler load threads/ && thread-bundler verify threads/\n"
            f"  thread-bundler show threads/                     # a spec as it reads; --key K: from the server\n")


def _summary(specs: list[ThreadSpec], report: LoadReport, results: list[VerifyResult], out: TextIO) -> None:
    """What the demo did, in one line, and where to go from here."""
    matched = sum(r.ok for r in results)
    messages = sum(len(s.messages) for s in specs)
    verdict = "all match their specs" if matched == len(results) else f"{count(len(results) - matched, 'thread')} " \
        "differ from their specs (above)"
    out.write(f"\ndemo: {count(len(specs), 'thread')} ({count(messages, 'message')}) loaded into a strict, empty "
              f"Medplum server and read back: {verdict}; {report.participants.text()}\n\n{next_steps()}")


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
