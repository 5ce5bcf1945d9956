"""Server limits as a profile: what a given server refuses even in a well-formed Bundle.

    validate(bundle, limits="medplum")       # the default
    validate(bundle, limits="none")          # structure and meaning only
    validate(bundle, limits=Limits(max_body_bytes=4 << 20))

Medplum 5.x (packages/fhir-router/src/batch.ts, packages/server config): request bodies up to 1 MB
(`maxJsonSize` '1mb' = 1,048,576 bytes); a *transaction* with a conditional entry (ifNoneExist,
conditional PUT/DELETE/PATCH) runs serializable and holds at most 8 entries; a transaction holds at
most 50 updates (PUT); client-chosen ids must be UUIDs ("Invalid id").
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from ..vocabulary import MAX_BODY_BYTES, MAX_CONDITIONAL_ENTRIES, MAX_PUT_ENTRIES
from .issues import Issue, entry_path, make_issue

UUID_RE = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


@dataclass(frozen=True, slots=True)
class Limits:
    """One server's limits; None (or False) turns a check off."""

    name: str = "custom"
    max_body_bytes: int | None = None
    max_conditional_entries: int | None = None
    max_put_entries: int | None = None
    uuid_ids: bool = False


PROFILES: dict[str, Limits] = {
    "medplum": Limits("medplum", max_body_bytes=MAX_BODY_BYTES, max_conditional_entries=MAX_CONDITIONAL_ENTRIES,
                      max_put_entries=MAX_PUT_ENTRIES, uuid_ids=True),
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
    return request.get("method") in ("PUT", "DELETE", "PATCH") and isinstance(url, str) and "?" in url


def json_size(data: Any) -> int:
    """Bytes of `data` as compact JSON (what is posted), also when orjson cannot write it (an integer beyond 64
    bits, a string with half a surrogate pair)."""
    try:
        return len(orjson.dumps(data))
    except (orjson.JSONEncodeError, TypeError):
        text = json.dumps(data, ensure_ascii=False, separators=(",", ":"), check_circular=False)
        return len(text.encode("utf-8", "surrogatepass"))


def limit_issues(bundle: Mapping[str, Any], limits: Limits) -> list[Issue]:
    """Issues for every limit of `limits` that `bundle` goes over."""
    entries = bundle.get("entry")
    entries = entries if isinstance(entries, list) else []
    out = _body_size(bundle, limits)
    if bundle.get("type") == "transaction":
        out += _conditional_entries(entries, limits)
        out += _put_entries(entries, limits)
    out += _uuid_ids(entries, limits)
    return out


def _puts(entries: list[Any]) -> list[int]:
    return [i for i, e in enumerate(entries) if isinstance(e, dict) and isinstance(e.get("request"), dict)
            and e["request"].get("method") == "PUT"]


def _body_size(bundle: Mapping[str, Any], limits: Limits) -> list[Issue]:
    if limits.max_body_bytes is None:
        return []
    size = json_size(bundle)
    if size <= limits.max_body_bytes:
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
            if rid and not UUID_RE.match(rid):
                out.append(make_issue("limit.uuid-id", entry_path(i, "request", "url"),
                                      f"id {rid!r} is not a UUID: {limits.name} refuses client-chosen ids that are "
                                      f"not UUIDs (400 Invalid id)", i))
    return out

