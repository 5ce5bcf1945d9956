"""Attachments from files: the one I/O the spec stage does for them. A message's `{file: path}` (relative to the
spec file) is read here; its `size`, `hash` (vocabulary.attachment_hash) and, unless given, `contentType` (from
the file name) are filled into the spec's data, and its bytes kept by hash, so the builder gets them as a pure
input (`ThreadSpec.files`): same spec, same files, same bytes.

    data, files, problems = read_files(doc)
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from ..errors import Problem
from ..vocabulary import attachment_hash, content_type_for
from .source import Document


def read_files(doc: Document) -> tuple[Any, dict[str, bytes], list[Problem]]:
    """`doc`'s data with every file attachment filled in, the files' bytes by hash, and the problems (a file
    missing, unreadable, or not what a given size or hash says), each at its `file` field."""
    data = doc.data
    messages = data.get("messages") if isinstance(data, dict) else None
    if not isinstance(messages, list) or not any(_has_files(m) for m in messages):
        return data, {}, []
    base = Path(doc.file).parent if doc.file not in ("<stdin>", "<spec>") else Path.cwd()
    files: dict[str, bytes] = {}
    problems: list[Problem] = []
    filled = []
    for i, m in enumerate(messages):
        if not _has_files(m):
            filled.append(m)
            continue
        attachments = []
        for j, a in enumerate(m["attachments"]):
            if isinstance(a, dict) and isinstance(a.get("file"), str):
                a = _read(doc, base, a, ("messages", i, "attachments", j), files, problems)
            attachments.append(a)
        filled.append({**m, "attachments": attachments})
    return {**data, "messages": filled}, files, problems


def _has_files(message: Any) -> bool:
    attachments = message.get("attachments") if isinstance(message, dict) else None
    return isinstance(attachments, list) and any(isinstance(a, dict) and "file" in a for a in attachments)


def _read(doc: Document, base: Path, attachment: dict[str, Any], at: tuple[str | int, ...], files: dict[str, bytes],
          problems: list[Problem]) -> dict[str, Any]:
    name = attachment["file"]
    path = base / name
    try:
        raw = sys.stdin.buffer.read() if name == "-" else path.read_bytes()
    except IsADirectoryError:
        problems.append(doc.problem((*at, "file"), f"{name!r} is a folder, not a file"))
        return attachment
    except OSError as exc:
        problems.append(doc.problem((*at, "file"), f"cannot read {name!r} ({path}): {exc.strerror or exc}"))
        return attachment
    digest = attachment_hash(raw)
    for field, value in (("size", len(raw)), ("hash", digest)):
        if field in attachment and attachment[field] != value:
            problems.append(doc.problem((*at, field), f"{attachment[field]!r} is not the {field} of {name!r} "
                                                      f"({value!r}): leave it out, it is filled in"))
    files[digest] = raw
    out = {**attachment, "size": len(raw), "hash": digest}
    if "contentType" not in attachment:
        out["contentType"] = content_type_for(name)
    return out
