"""The pure builder: a ThreadSpec in, a FHIR R4 transaction Bundle (a plain dict) out.

Same spec in, same bytes out: no clock, no randomness, no I/O. fullUrls are `urn:uuid:` + a UUIDv5 of
the resource's identifier, so a thread always gets the same urns and a loaded thread can be found
again by `identifier=<system>|<thread key>` (header) or `<system>|<thread key>/<message id>`.

    bundle = build_bundle(spec)
    for bundle in build_bundles(specs): ...
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import orjson

from .spec import Coding, Message, ThreadSpec, parse_spec

DEFAULT_IDENTIFIER_SYSTEM = "urn:thread-bundler:thread"
"""The identifier system put on every Communication unless another is given (`--identifier-system`)."""

URN_NAMESPACE = uuid.UUID("5f0c2a7e-3d3b-5b8e-9a57-0c1f2b7d6e41")
"""The UUIDv5 namespace of fullUrls: urn = uuid5(URN_NAMESPACE, f"{system}|{identifier value}")."""

_NS = URN_NAMESPACE.bytes
_REQUEST = {"method": "POST", "url": "Communication"}


def identifier_value(key: str, message_id: str | None = None) -> str:
    """The identifier value of a thread's header (`key`) or of one of its messages (`key/id`)."""
    return key if message_id is None else f"{key}/{message_id}"


def full_url(system: str, value: str) -> str:
    """`urn:uuid:` + lowercase uuid5 of `system|value` (the same as `uuid.uuid5`, computed faster)."""
    b = bytearray(hashlib.sha1(_NS + f"{system}|{value}".encode()).digest()[:16])
    b[6] = (b[6] & 0x0F) | 0x50
    b[8] = (b[8] & 0x3F) | 0x80
    x = b.hex()
    return f"urn:uuid:{x[:8]}-{x[8:12]}-{x[12:16]}-{x[16:20]}-{x[20:]}"


def _concept(c: Coding) -> dict[str, Any]:
    coding: dict[str, Any] = {}
    if c.system is not None:
        coding["system"] = c.system
    coding["code"] = c.code
    if c.display is not None:
        coding["display"] = c.display
    return {"coding": [coding]}


def _payload(m: Message) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if m.text is not None:
        out.append({"contentString": m.text})
    for a in m.attachments:
        att: dict[str, Any] = {}
        if a.content_type is not None:
            att["contentType"] = a.content_type
        att["url"] = a.url
        if a.title is not None:
            att["title"] = a.title
        out.append({"contentAttachment": att})
    return out


def build_bundle(thread: ThreadSpec | Mapping[str, Any], *, identifier_system: str = DEFAULT_IDENTIFIER_SYSTEM
                 ) -> dict[str, Any]:
    """The transaction Bundle for one thread: its header first, then its messages in spec order.

    `thread` is a ThreadSpec, or plain spec data (checked first; SpecError if invalid). Nothing in the
    result is shared between resources, so it is safe to change.
    """
    spec = thread if isinstance(thread, ThreadSpec) else parse_spec(thread)
    system = identifier_system
    key = spec.key

    refs: dict[str, dict[str, str]] = {}
    for alias, p in spec.participants.items():
        refs[alias] = {"reference": p.reference, "display": p.display} if p.display is not None else {
            "reference": p.reference}

    header_url = full_url(system, key)
    header: dict[str, Any] = {
        "resourceType": "Communication",
        "identifier": [{"system": system, "value": key}],
        "status": spec.status,
    }
    if spec.category:
        header["category"] = [_concept(c) for c in spec.category]
    if spec.subject is not None:
        header["subject"] = dict(refs[spec.subject]) if spec.subject in refs else {"reference": spec.subject}
    header["topic"] = {"text": spec.topic}
    if spec.sent is not None:
        header["sent"] = spec.sent
    header["recipient"] = [dict(r) for r in refs.values()]
    if spec.sender is not None:
        header["sender"] = dict(refs[spec.sender])
    entries: list[dict[str, Any]] = [{"fullUrl": header_url, "resource": header, "request": dict(_REQUEST)}]

    urls: dict[str, str] = {}
    aliases = list(refs)
    for m in spec.messages:
        value = f"{key}/{m.id}"
        url = full_url(system, value)
        urls[m.id] = url
        res: dict[str, Any] = {
            "resourceType": "Communication",
            "identifier": [{"system": system, "value": value}],
            "partOf": [{"reference": header_url}],
        }
        if m.reply_to is not None:
            res["inResponseTo"] = [{"reference": urls[m.reply_to]}]
        res["status"] = m.status or spec.status
        if spec.category:
            res["category"] = [_concept(c) for c in spec.category]
        res["sent"] = m.sent
        recipients = m.recipient if m.recipient is not None else [a for a in aliases if a != m.sender]
        if recipients:
            res["recipient"] = [dict(refs[a]) for a in recipients]
        res["sender"] = dict(refs[m.sender])
        res["payload"] = _payload(m)
        entries.append({"fullUrl": url, "resource": res, "request": dict(_REQUEST)})
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def build_bundles(threads: Iterable[ThreadSpec | Mapping[str, Any]], *,
                  identifier_system: str = DEFAULT_IDENTIFIER_SYSTEM) -> Iterator[dict[str, Any]]:
    """Bundles for many threads, built one at a time as they are asked for."""
    for thread in threads:
        yield build_bundle(thread, identifier_system=identifier_system)


def dumps(bundle: Mapping[str, Any], *, pretty: bool = False) -> bytes:
    """A bundle as JSON bytes: compact (NDJSON lines) or indented with a final newline (files)."""
    if pretty:
        return orjson.dumps(bundle, option=orjson.OPT_INDENT_2) + b"\n"
    return orjson.dumps(bundle)
