"""Cutting a thread into requests the server will take, keeping every reference intact. Pure.

A thread goes as one transaction when it fits (1 MB body, `max_entries`). When it does not, it is cut
into parts sent in order: the first holds the header, later ones point at entries already on the server
by their server ids (`Communication/<id>`), and at entries of their own part by `urn:uuid:`. On a
project with atomic transactions each part is atomic on its own. In conditional mode every entry is a
conditional create on its identifier (so re-sending, or a request arriving late, is harmless), at most
MAX_CONDITIONAL_ENTRIES to a request; on a project without atomic transactions the header also goes
alone first (`header_alone`), so no message is ever stored without it.

Changed entries go as updates (`update_bundle`): `PUT Communication/<id>` with `ifMatch` on the version
the loader knows, at most MAX_PUT_ENTRIES to a transaction, so a resource someone changed meanwhile is
refused (412), never overwritten.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from ..vocabulary import MAX_CONDITIONAL_ENTRIES, MAX_PUT_ENTRIES, identifier_token, rewrite_references

SAFE_MAX_BYTES = 1_000_000  # what we plan for, under Medplum's 1 MB: room for rewritten references
_ENVELOPE = len(b'{"resourceType":"Bundle","type":"transaction","entry":[]}')
_REFERENCE_GROWTH = 16  # "Communication/<uuid>" is longer than "urn:uuid:<uuid>"


class TooLarge(ValueError):
    """One entry alone is larger than a request may be."""


@dataclass(frozen=True, slots=True)
class RequestLimits:
    """How big one request may be (what the loader cuts threads to; `bundler.check.limits.Limits` is the
    validator's server profile). `conditional`: every entry a conditional create, at most
    MAX_CONDITIONAL_ENTRIES of them; `header_alone`: the header goes in a request of its own."""

    max_bytes: int = SAFE_MAX_BYTES
    max_entries: int | None = None
    conditional: bool = False
    header_alone: bool = False


def entry_sizes(bundle: Mapping[str, Any]) -> list[int]:
    """The serialised size of each entry, plus room for its references to be rewritten."""
    sizes = []
    for entry in bundle["entry"]:
        data = orjson.dumps(entry)
        sizes.append(len(data) + 1 + _REFERENCE_GROWTH * data.count(b"urn:uuid:"))
    return sizes


def cut(indexes: Sequence[int], sizes: Sequence[int], limits: RequestLimits, weights: Sequence[int] | None = None
        ) -> list[list[int]]:
    """Group entry `indexes` (in order) into parts within `limits`; entry 0, the header, leads alone in
    `header_alone` mode. `weights`: how many entries each takes in a request (a message with the Binaries it
    carries), 1 by default. Raises TooLarge for an entry that cannot fit in any request."""
    max_entries = limits.max_entries or 1 << 30
    if limits.conditional:
        max_entries = min(max_entries, MAX_CONDITIONAL_ENTRIES)
    parts: list[list[int]] = []
    current: list[int] = []
    size = _ENVELOPE
    count = 0
    for i in indexes:
        extra = _room(i, sizes[i], limits)
        weight = weights[i] if weights is not None else 1
        if current and (size + extra > limits.max_bytes or count + weight > max_entries
                        or (limits.header_alone and current == [0])):
            parts.append(current)
            current, size, count = [], _ENVELOPE, 0
        current.append(i)
        size += extra
        count += weight
    if current:
        parts.append(current)
    return parts


def _room(index: int, size: int, limits: RequestLimits) -> int:
    """The bytes entry `index` takes in a request (with its ifNoneExist in conditional mode)."""
    extra = size + (96 if limits.conditional else 0)
    if _ENVELOPE + extra > limits.max_bytes:
        raise TooLarge(f"entry {index} is {size:,} bytes: more than one request may carry "
                       f"({limits.max_bytes:,} bytes)")
    return extra


def part_bundle(bundle: Mapping[str, Any], indexes: Sequence[int], known: Mapping[str, str], *,
                conditional: bool = False) -> dict[str, Any]:
    """A transaction of the entries `indexes` of `bundle`; references to entries already on the server
    (`known`: fullUrl → `Communication/<id>`) become literal; with `conditional`, each entry is a
    conditional create on its first identifier."""
    entries = []
    for i in indexes:
        entry = bundle["entry"][i]
        if known:
            entry = {**entry, "resource": rewrite_references(entry["resource"], known)}
        if conditional:
            ident = (entry["resource"].get("identifier") or [{}])[0]
            if "value" in ident:
                query = f"identifier={identifier_token(ident.get('system', ''), ident['value'])}"
                entry = {**entry, "request": {**entry["request"], "ifNoneExist": query}}
        entries.append(entry)
    return {"resourceType": "Bundle", "type": bundle.get("type", "transaction"), "entry": entries}


def update_parts(indexes: Sequence[int], sizes: Sequence[int], limits: RequestLimits) -> list[list[int]]:
    """Group entry `indexes` to update into transactions of at most MAX_PUT_ENTRIES within `limits`."""
    most = min(limits.max_entries or MAX_PUT_ENTRIES, MAX_PUT_ENTRIES)
    return cut(indexes, sizes, RequestLimits(limits.max_bytes, most))


def update_bundle(bundle: Mapping[str, Any], indexes: Sequence[int], known: Mapping[str, str],
                  versions: Mapping[str, str]) -> dict[str, Any]:
    """A transaction updating the entries `indexes` of `bundle`, each already on the server (`known`: fullUrl
    → `Communication/<id>`, which also holds literal references for conditional ones the server resolved),
    each with `ifMatch` on its version in `versions` (fullUrl → versionId) when one is known."""
    entries = []
    for i in indexes:
        entry = bundle["entry"][i]
        ref = known[entry["fullUrl"]]
        resource = {**rewrite_references(entry["resource"], known), "id": ref.split("/", 1)[1]}
        request: dict[str, Any] = {"method": "PUT", "url": ref}
        if version := versions.get(entry["fullUrl"]):
            request["ifMatch"] = f'W/"{version}"'
        entries.append({"resource": resource, "request": request})
    return {"resourceType": "Bundle", "type": bundle.get("type", "transaction"), "entry": entries}
