"""Cutting a thread into requests the server will take, keeping every reference intact. Pure.

A thread goes as one transaction when it fits (`vocabulary.MAX_REQUEST_BYTES`, `max_entries`). When it does not,
it is cut into parts sent in order: the first holds the header, later ones point at entries already on the server
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

from ..check.limits import REQUEST_ENVELOPE_BYTES, fits_request, request_entry_bytes
from ..vocabulary import (
    MAX_CONDITIONAL_ENTRIES,
    MAX_PUT_ENTRIES,
    MAX_REQUEST_BYTES,
    READ_STATE_EXTENSION,
    READ_STATE_LAST_READ,
    TRANSACTION,
    identifier_search,
    rewrite_references,
)

SAFE_MAX_BYTES = MAX_REQUEST_BYTES
"""The largest request the loader plans (`vocabulary.MAX_REQUEST_BYTES`, derived from Medplum's body limit)."""
_ENVELOPE = REQUEST_ENVELOPE_BYTES


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
    """The serialised size of each entry, plus room for its references to be rewritten
    (`check.limits.request_entry_bytes`, what `validate` measures an entry by)."""
    return [request_entry_bytes(entry) for entry in bundle["entry"]]


def cut(indexes: Sequence[int], sizes: Sequence[int], limits: RequestLimits, *, weights: Sequence[int] | None = None,
        units: Sequence[int | None] | None = None) -> list[list[int]]:
    """Group entry `indexes` (in order) into parts within `limits`; entry 0, the header, leads alone in
    `header_alone` mode. `weights`: how many entries each takes in a request (a message with the Binaries it
    carries), 1 by default. With `units` (each entry's unit: the message a read receipt belongs to, the message's
    own index for a message), a part is not cut inside a unit that fits a part of its own: a message and its read
    receipts go together. Raises TooLarge for an entry that cannot fit in any request."""
    max_entries = limits.max_entries or 1 << 30
    if limits.conditional:
        max_entries = min(max_entries, MAX_CONDITIONAL_ENTRIES)
    parts: list[list[int]] = []
    current: list[int] = []
    size, count = _ENVELOPE, 0
    rooms = [_room(i, sizes[i], limits) for i in indexes]
    counts = [weights[i] if weights is not None else 1 for i in indexes]
    for k, i in enumerate(indexes):
        extra, weight = rooms[k], counts[k]
        if current and (size + extra > limits.max_bytes or count + weight > max_entries
                        or (limits.header_alone and current == [0])):
            parts.append(current)
            current, size, count = [], _ENVELOPE, 0
        elif current and units is not None and _unit_starts(indexes, units, k):
            whole = _unit_end(indexes, units, k)  # the unit would not fit here, but would in a part of its own
            unit_size, unit_count = sum(rooms[k:whole]), sum(counts[k:whole])
            if (size + unit_size > limits.max_bytes or count + unit_count > max_entries) and \
                    _ENVELOPE + unit_size <= limits.max_bytes and unit_count <= max_entries:
                parts.append(current)
                current, size, count = [], _ENVELOPE, 0
        current.append(i)
        size += extra
        count += weight
    if current:
        parts.append(current)
    return parts


def _unit_starts(indexes: Sequence[int], units: Sequence[int | None], k: int) -> bool:
    """Whether entry `indexes[k]` starts a unit of more than one entry (a message followed by its receipts)."""
    unit = units[indexes[k]]
    return unit is not None and (k == 0 or units[indexes[k - 1]] != unit) and k + 1 < len(indexes) and \
        units[indexes[k + 1]] == unit


def _unit_end(indexes: Sequence[int], units: Sequence[int | None], k: int) -> int:
    end = k + 1
    while end < len(indexes) and units[indexes[end]] == units[indexes[k]]:
        end += 1
    return end


def trim_read_state(header: dict[str, Any], known: Mapping[str, str], urls: Sequence[str],
                    part: Sequence[int]) -> bool:
    """Leave out of a header about to be sent (in place) the read-state blocks (header-extension model) whose
    `lastRead` points at a message neither on the server (`known`) nor in this `part`: such a urn would be stored
    unresolved. True when something was left out: the loader updates the header once every part is in."""
    blocks = header.get("extension")
    if not blocks:
        return False
    here = {urls[n] for n in part} | set(known) | set(known.values())
    kept = [b for b in blocks if b.get("url") != READ_STATE_EXTENSION or all(
        s.get("valueReference", {}).get("reference") in here for s in b.get("extension", ())
        if s.get("url") == READ_STATE_LAST_READ)]
    if len(kept) == len(blocks):
        return False
    if kept:
        header["extension"] = kept
    else:
        del header["extension"]
    return True


def _room(index: int, size: int, limits: RequestLimits) -> int:
    """The bytes entry `index` takes in a request (with its ifNoneExist in conditional mode)."""
    extra = size + (96 if limits.conditional else 0)
    if not fits_request(extra, limits.max_bytes):
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
                query = identifier_search(ident.get("system", ""), ident["value"])
                entry = {**entry, "request": {**entry["request"], "ifNoneExist": query}}
        entries.append(entry)
    return {"resourceType": "Bundle", "type": bundle.get("type", TRANSACTION), "entry": entries}


def update_parts(indexes: Sequence[int], sizes: Sequence[int], limits: RequestLimits) -> list[list[int]]:
    """Group entry `indexes` to update into transactions of at most MAX_PUT_ENTRIES within `limits`."""
    most = min(limits.max_entries or MAX_PUT_ENTRIES, MAX_PUT_ENTRIES)
    return cut(indexes, sizes, RequestLimits(limits.max_bytes, most))


def update_bundle(bundle: Mapping[str, Any], indexes: Sequence[int], known: Mapping[str, str | Mapping[str, str]],
                  versions: Mapping[str, str]) -> dict[str, Any]:
    """A transaction updating the entries `indexes` of `bundle`, each already on the server (`known`: fullUrl
    → `Communication/<id>`; it also maps each conditional reference the server resolved to the whole Reference it
    stores in its place, display included: `vocabulary.stored_reference`), each with `ifMatch` on its version in
    `versions` (fullUrl → versionId) when one is known."""
    entries = []
    for i in indexes:
        entry = bundle["entry"][i]
        ref = str(known[entry["fullUrl"]])
        resource = {**rewrite_references(entry["resource"], known), "id": ref.split("/", 1)[1]}
        request: dict[str, Any] = {"method": "PUT", "url": ref}
        if version := versions.get(entry["fullUrl"]):
            request["ifMatch"] = f'W/"{version}"'
        entries.append({"resource": resource, "request": request})
    return {"resourceType": "Bundle", "type": bundle.get("type", TRANSACTION), "entry": entries}
