"""Server limits as a profile: what a given server refuses even in a well-formed Bundle.

    validate(bundle, limits="medplum")       # the default
    validate(bundle, limits="none")          # structure and meaning only
    validate(bundle, limits=Limits(max_body_bytes=4 << 20))

Medplum 5.x (packages/fhir-router/src/batch.ts, packages/server config): request bodies up to 1 MB
(`maxJsonSize` '1mb' = 1,048,576 bytes); a *transaction* with a conditional entry (ifNoneExist,
conditional PUT/DELETE/PATCH) runs serializable and holds at most 8 entries; a transaction holds at
most 50 updates (PUT); client-chosen ids must be UUIDs ("Invalid id").

A bundle over the body limit is only a warning: `load` cuts it into requests of at most
`vocabulary.MAX_REQUEST_BYTES`. It cuts between entries, so one entry larger than that cannot be sent at all, an
error; what an entry takes in a request is measured here (`request_entry_bytes`), for the validator and for the
loader's cutting (`load.plan`) alike.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from ..vocabulary import (
    CONDITIONAL_URL_METHODS,
    MAX_BODY_BYTES,
    MAX_CONDITIONAL_ENTRIES,
    MAX_PUT_ENTRIES,
    MAX_REQUEST_BYTES,
    TRANSACTION,
    is_uuid,
)
from .issues import Issue, entry_path, make_issue

REQUEST_ENVELOPE_BYTES = len(b'{"resourceType":"Bundle","type":"transaction","entry":[]}')
"""The bytes of a transaction request around its entries."""
REFERENCE_GROWTH = 16
"""How much longer a reference gets when `load` points it at an entry already on the server: `Communication/<uuid>`
is 16 bytes longer than `urn:uuid:<uuid>`."""


@dataclass(frozen=True, slots=True)
class Limits:
    """One server's limits; None (or False) turns a check off. `max_request_bytes`: the largest request `load`
    makes (an entry larger on its own cannot be sent)."""

    name: str = "custom"
    max_body_bytes: int | None = None
    max_conditional_entries: int | None = None
    max_put_entries: int | None = None
    uuid_ids: bool = False
    max_request_bytes: int | None = None


PROFILES: dict[str, Limits] = {
    "medplum": Limits("medplum", max_body_bytes=MAX_BODY_BYTES, max_conditional_entries=MAX_CONDITIONAL_ENTRIES,
                      max_put_entries=MAX_PUT_ENTRIES, uuid_ids=True, max_request_bytes=MAX_REQUEST_BYTES),
    "none": Limits("none"),
}


def get_limits(limits: str | Limits) -> Limits:
    """A profile by name ('medplum', 'none') or a Limits given as is; ValueError for an unknown name."""
    if isinstance(limits, Limits):
        return limits
    try:
        return PROFILES[limits]
    except KeyError:
        raise ValueError(f"unknown limits profile {limits!r} (known: {', '.join(PROFILES)})") from None


def is_conditional(entry: Any) -> bool:
    """Whether an entry is a conditional interaction (ifNoneExist, or PUT/DELETE/PATCH Type?query)."""
    request = entry.get("request") if isinstance(entry, dict) else None
    if not isinstance(request, dict):
        return False
    if request.get("method") == "POST":
        return bool(request.get("ifNoneExist"))
    url = request.get("url")
    return request.get("method") in CONDITIONAL_URL_METHODS and isinstance(url, str) and "?" in url


def json_bytes(data: Any) -> bytes:
    """`data` as compact JSON (what is posted), also when orjson cannot write it (an integer beyond 64 bits, a
    string with half a surrogate pair)."""
    try:
        return orjson.dumps(data)
    except (orjson.JSONEncodeError, TypeError):
        text = json.dumps(data, ensure_ascii=False, separators=(",", ":"), check_circular=False)
        return text.encode("utf-8", "surrogatepass")


def request_entry_bytes(entry: Any) -> int:
    """The bytes `entry` takes in a transaction request `load` sends: itself as compact JSON, the comma after it,
    and room for each `urn:uuid:` reference in it to become a server id (`REFERENCE_GROWTH`), as it does in a part
    sent after the entries it points at."""
    data = json_bytes(entry)
    return len(data) + 1 + REFERENCE_GROWTH * data.count(b"urn:uuid:")


def fits_request(entry_bytes: int, max_bytes: int = MAX_REQUEST_BYTES) -> bool:
    """Whether an entry of `entry_bytes` (`request_entry_bytes`, with whatever a request adds to it) fits a request
    of at most `max_bytes` on its own."""
    return REQUEST_ENVELOPE_BYTES + entry_bytes <= max_bytes


def limit_issues(bundle: Mapping[str, Any], limits: Limits) -> list[Issue]:
    """Issues for every limit of `limits` that `bundle` goes over. An entry too large for any request is an error,
    and then the bundle's size is not also a warning (that `load` cuts it into parts that fit would not be true)."""
    entries = bundle.get("entry")
    entries = entries if isinstance(entries, list) else []
    data = json_bytes(bundle) if limits.max_body_bytes is not None or limits.max_request_bytes is not None else b""
    size, urns = len(data), data.count(b"urn:uuid:")
    del data  # (a large bundle's entries are written again one by one: not beside it)
    out = _entry_size(entries, size + REFERENCE_GROWTH * urns, limits) or _body_size(size, limits)
    if bundle.get("type") == TRANSACTION:
        out += _conditional_entries(entries, limits)
        out += _put_entries(entries, limits)
    out += _uuid_ids(entries, limits)
    return out


def _puts(entries: list[Any]) -> list[int]:
    return [i for i, e in enumerate(entries) if isinstance(e, dict) and isinstance(e.get("request"), dict)
            and e["request"].get("method") == "PUT"]


def _entry_size(entries: list[Any], largest: int, limits: Limits) -> list[Issue]:
    """Each entry that alone is larger than a request `load` makes (`largest`: what the whole bundle would take in
    one request, more than any entry of it)."""
    cap = limits.max_request_bytes
    if cap is None or fits_request(largest, cap):
        return []  # (no entry takes more than the whole bundle)
    out = []
    server = f" ({limits.name} refuses bodies over {limits.max_body_bytes:,})" if limits.max_body_bytes else ""
    for i, entry in enumerate(entries):
        size = request_entry_bytes(entry)
        if not fits_request(size, cap):
            out.append(make_issue("limit.entry-size", entry_path(i), f"this entry is {size:,} bytes in a request; "
                                  f"`thread-bundler load` sends at most {cap:,} bytes a request{server} and cuts a "
                                  f"thread between entries, never inside one, so it cannot be sent: "
                                  f"{_smaller(entry, size)}", i))
    return out


def _smaller(entry: Any, size: int) -> str:
    """How an entry too large for a request could be made smaller: by what takes most of it."""
    resource = entry.get("resource") if isinstance(entry, dict) else None
    recipients = resource.get("recipient") if isinstance(resource, dict) else None
    if isinstance(recipients, list) and 2 * len(json_bytes(recipients)) > size:
        return (f"most of it is its {len(recipients):,} recipients (a thread's header lists every participant): "
                f"name a Group or CareTeam as one participant instead of its members, or split the thread")
    return "make it smaller: shorter text, or large content as a file attachment (a large file is uploaded on its own)"


def body_size_issues(size: int, limits: Limits) -> list[Issue]:
    """The issue of a bundle of `size` bytes as JSON over the body limit of `limits`, if it is."""
    return _body_size(size, limits)


def _body_size(size: int, limits: Limits) -> list[Issue]:
    if limits.max_body_bytes is None or size <= limits.max_body_bytes:
        return []
    return [make_issue("limit.body-size", "Bundle", f"the Bundle is {size:,} bytes as JSON; {limits.name} refuses "
                       f"request bodies over {limits.max_body_bytes:,} bytes, so posted as is it fails: "
                       f"`thread-bundler load` cuts it into parts that fit")]


def _conditional_entries(entries: list[Any], limits: Limits) -> list[Issue]:
    cap = limits.max_conditional_entries
    if cap is None or len(entries) <= cap:
        return []
    first = next((i for i, e in enumerate(entries) if is_conditional(e)), None)
    if first is None:
        return []
    return [make_issue("limit.conditional-entries", entry_path(first, "request"),
                       f"a transaction with a conditional entry runs with strict isolation and may hold at most "
                       f"{cap} entries on {limits.name}; this one has {len(entries)}", first)]


def _put_entries(entries: list[Any], limits: Limits) -> list[Issue]:
    cap = limits.max_put_entries
    puts = _puts(entries)
    if cap is None or len(puts) <= cap:
        return []
    return [make_issue("limit.put-entries", entry_path(puts[cap], "request"),
                       f"{len(puts)} PUT entries; {limits.name} allows at most {cap} updates in a transaction",
                       puts[cap])]


def _uuid_ids(entries: list[Any], limits: Limits) -> list[Issue]:
    if not limits.uuid_ids:
        return []
    out: list[Issue] = []
    for i in _puts(entries):
        url = entries[i]["request"].get("url")
        if isinstance(url, str) and "?" not in url and url.count("/") == 1:
            rid = url.split("/", 1)[1]
            if rid and not is_uuid(rid):
                out.append(make_issue("limit.uuid-id", entry_path(i, "request", "url"),
                                      f"id {rid!r} is not a UUID: {limits.name} refuses client-chosen ids that are "
                                      f"not UUIDs (400 Invalid id)", i))
    return out

