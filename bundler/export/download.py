"""`--attachments download`: the bytes of each attachment held in a Binary of the server, downloaded next to the
spec as a file, which the spec then attaches (`{file: name}`): loading the export elsewhere uploads them again.

A file is named `<thread key>.<message id>.<n><suffix>` (its n-th attachment), the suffix from its title or its
content type; never `.yaml`, `.yml` or `.json`, which `load DIR` would read as specs. Attachments whose url is
not a Binary of this server (another site's URL) keep their url: our token goes to the base URL only.
"""

from __future__ import annotations

import re
from pathlib import Path

from ..errors import AuthError, ServerError, Unreachable
from ..medplum.client import FhirClient
from ..spec.files import SPEC_SUFFIXES
from ..spec.model import Attachment, ThreadSpec
from ..vocabulary import CONTENT_TYPES, attachment_hash, binary_reference

_SUFFIX = re.compile(r"\.[A-Za-z0-9]{1,8}")
_BY_TYPE = {t: s for s, t in reversed(list(CONTENT_TYPES.items()))}  # content type → its first suffix


def file_name(key: str, message_id: str, n: int, title: str | None, content_type: str | None) -> str:
    """The name of the file holding a message's `n`-th attachment (its suffix from its title, else its type)."""
    title = title or ""
    dot = title.rfind(".")
    suffix = title[dot:].lower() if dot > 0 and _SUFFIX.fullmatch(title[dot:]) else \
        _BY_TYPE.get(content_type or "", ".bin")
    return f"{key}.{message_id}.{n}{'.bin' if suffix in SPEC_SUFFIXES else suffix}"


def download(client: FhirClient, spec: ThreadSpec, folder: Path
             ) -> tuple[dict[str, tuple[Attachment, bytes]], list[str]]:
    """Each attachment of `spec` whose url names a Binary, downloaded into `folder` (once per url): url → a file
    attachment of its bytes (the file's name, size and hash: every attachment of that url keeps its own title and
    type, `shape`) and its bytes; and the problems of those that could not be."""
    files: dict[str, tuple[Attachment, bytes]] = {}
    problems: list[str] = []
    for m in spec.messages:
        for n, a in enumerate(m.attachments, 1):
            ref = binary_reference(a.url)
            if a.url is None or ref is None or a.url in files:
                continue
            try:
                data = client.read_binary(ref)
            except (AuthError, Unreachable):
                raise
            except ServerError as exc:
                problems.append(f"message {m.id}: attachment {n} ({ref}) could not be downloaded ({exc}): its url "
                                "is kept")
                continue
            name = file_name(spec.key, m.id, n, a.title, a.content_type)
            (folder / name).write_bytes(data)
            files[a.url] = (Attachment(file=name, content_type=a.content_type, title=a.title, size=len(data),
                                       hash=attachment_hash(data)), data)
    return files, problems
