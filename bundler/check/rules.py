"""The structural, reference and thread rules of `validate` (everything but FHIR structure and limits).

Pure functions over a Bundle dict; nothing here writes to it.

What a thread is, in a Bundle:

* A **message** is a Communication with a `payload` and a `partOf`. Its thread is what its (single)
  `partOf` points at: a header entry of the bundle (by `urn:uuid:`, by `Communication/<id>` of a PUT
  entry, or by a conditional `Communication?identifier=system|value` that matches a header's
  identifier), or otherwise an existing thread on the server, `Communication/<id>` (or a conditional
  reference to one). Messages that continue an existing thread need no header in the bundle.
* A **header** is a Communication without `partOf`, or one that messages point at with `partOf`.
  A header that has a payload or a partOf is reported (`thread.header-payload`,
  `thread.header-partof`); a Communication with a payload and neither a partOf nor messages pointing
  at it is a message missing its partOf (`thread.message-partof`).
* Each thread has exactly one header: two headers sharing an identifier (system|value), or a message
  with several partOf, are `thread.header-count`.
* A reply (`inResponseTo`) must point at a message of the same thread. Replies to messages outside the
  bundle are accepted in an existing thread and refused in a thread the bundle creates (POST).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..vocabulary import (
    COMMUNICATION_TARGETS,
    HTTP_METHODS,
    MIME_TYPE_HINT,
    REQUEST_BUNDLE_TYPES,
    REQUIRED_CODES,
    RESOURCE_METHODS,
    RESOURCE_TYPES,
    URN_PATTERN,
    InstantError,
    identifier_token,
    is_base64,
    is_mime_type,
    is_urn,
    parse_instant,
    parse_literal,
    query_decode,
    query_encoding_problem,
    query_problem,
)
from .context import RuleContext, Target
from .issues import Issue, make_issue
from .readstate import read_state_rules
from .readstate import tokens as _tokens

_URN_IN_TEXT = re.compile(URN_PATTERN)


def check_rules(bundle: Any) -> list[Issue]:
    """Issues of every bundle, entry, reference and thread rule (not FHIR structure, not limits)."""
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        got = bundle.get("resourceType") if isinstance(bundle, dict) else type(bundle).__name__
        return [make_issue("bundle.resource-type", "Bundle.resourceType", f"expected a Bundle, got {got!r}")]
    ctx = RuleContext(bundle, [])
    if bundle.get("type") not in REQUEST_BUNDLE_TYPES:
        ctx.add("bundle.type", None, ("type",), f"must be {' or '.join(map(repr, REQUEST_BUNDLE_TYPES))}, "
                                                f"got {bundle.get('type')!r}")
    entries = bundle.get("entry")
    if not isinstance(entries, list):
        got = "nothing" if entries is None else f"{_json_kind(entries)}"
        ctx.add("bundle.empty", None, ("entry",), f"must be a list of entries, got {got}" if entries is not None
                else "a transaction needs at least one entry")
        return ctx.out
    if not entries:
        ctx.add("bundle.empty", None, ("entry",), "a transaction needs at least one entry")
        return ctx.out
    ctx.entries = entries
    _entries(ctx)
    _created_identifiers(ctx)
    _references(ctx)
    _threads(ctx)
    _values(ctx)
    return ctx.out


def _json_kind(value: Any) -> str:
    """What a JSON value is, for messages: 'an object', 'a string ('x')', ..."""
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return f"a string ({value[:40]!r})"
    if isinstance(value, bool) or value is None:
        return f"{str(value).lower() if value is not None else 'null'}"
    return f"a number ({value!r})"


# --- entries ---------------------------------------------------------------------------------------


def _entries(ctx: RuleContext) -> None:
    for i, entry in enumerate(ctx.entries):
        if not isinstance(entry, dict):
            ctx.add("entry.resource", i, (), "an entry must be a JSON object")
            ctx.bad_entries.add(i)
            continue
        request = entry.get("request")
        method = _request(ctx, i, request)
        if method is not None:
            ctx.methods[i] = method
        resource = entry.get("resource")
        carries = method in RESOURCE_METHODS or (method is None and resource is not None)
        _resource(ctx, i, method, resource, carries)
        _full_url(ctx, i, entry, carries)
        url = request.get("url") if isinstance(request, dict) else None
        if method is not None and isinstance(url, str) and i not in ctx.bad_entries:
            _request_url(ctx, i, method, url, ctx.resources.get(i))


def _created_identifiers(ctx: RuleContext) -> None:
    """A create whose `ifNoneExist` searches `identifier=system|value` carries that identifier."""
    for i, resource in ctx.resources.items():
        request = ctx.entries[i].get("request")
        query = request.get("ifNoneExist") if isinstance(request, dict) else None
        if not isinstance(query, str) or query_problem(query):
            continue
        params = {query_decode(k): query_decode(v) for k, v in (part.partition("=")[::2] for part in query.split("&"))}
        wanted = params.get("identifier")  # (as the server reads it)
        if wanted is None or "|" not in wanted:
            continue
        tokens = {identifier_token(str(ident.get("system", "")), str(ident.get("value", "")))
                  for ident in resource.get("identifier") or () if isinstance(ident, dict)}
        if wanted not in tokens:
            ctx.add("ref.created-identifier", i, ("request", "ifNoneExist"),
                    f"searches identifier {wanted!r}, which the {resource['resourceType']} it creates does not have")


def _request(ctx: RuleContext, i: int, request: Any) -> str | None:
    """The entry's method if its request is usable (entry.request otherwise)."""
    if not isinstance(request, dict):
        ctx.add("entry.request", i, ("request",), "every entry of a transaction needs a request (method, url)")
        return None
    method, url = request.get("method"), request.get("url")
    if method not in HTTP_METHODS:
        ctx.add("entry.request", i, ("request", "method"), f"method must be one of {', '.join(HTTP_METHODS)}; "
                                                           f"got {method!r}")
        return None
    if not isinstance(url, str) or not url.strip():
        ctx.add("entry.request", i, ("request", "url"), "request.url is missing or empty")
        return None
    if "ifNoneExist" in request:
        condition = request["ifNoneExist"]
        why = query_problem(condition) if isinstance(condition, str) else "not text"
        if why:
            ctx.add("entry.request", i, ("request", "ifNoneExist"),
                    f"must be a search query like identifier=system|value: {why}")
        elif encoding := query_encoding_problem(condition):
            ctx.add("ref.query-encoding", i, ("request", "ifNoneExist"), f"{condition!r} {encoding}")
    return str(method)


def _resource(ctx: RuleContext, i: int, method: str | None, resource: Any, carries: bool) -> None:
    """Record the entry's resource if it carries one of a known type (entry.resource otherwise)."""
    if not carries:
        if resource is not None:
            ctx.add("entry.resource", i, ("resource",), f"a {method} entry carries no resource")
            ctx.bad_entries.add(i)
        return
    rtype = resource.get("resourceType") if isinstance(resource, dict) else None
    if not isinstance(resource, dict):
        ctx.add("entry.resource", i, ("resource",), f"a {method or 'write'} entry needs a resource object")
        ctx.bad_entries.add(i)
    elif not isinstance(rtype, str) or rtype not in RESOURCE_TYPES:
        ctx.add("entry.resource", i, ("resource", "resourceType"), f"{rtype!r} is not a FHIR R4 resource type")
        ctx.bad_entries.add(i)
    else:
        ctx.resources[i] = resource


def _full_url(ctx: RuleContext, i: int, entry: dict[str, Any], carries: bool) -> None:
    url = entry.get("fullUrl")
    if url is None:
        if carries:
            ctx.add("entry.fullurl-missing", i, ("fullUrl",),
                    "no fullUrl: give every created resource a urn:uuid: fullUrl so it can be referenced")
        return
    if not isinstance(url, str):
        ctx.add("entry.fullurl-format", i, ("fullUrl",), "fullUrl must be a string")
        return
    if url in ctx.by_url:
        ctx.add("entry.fullurl-duplicate", i, ("fullUrl",),
                f"{url} is also the fullUrl of entry {ctx.by_url[url]}: references to it become ambiguous")
        return
    ctx.by_url[url] = i
    if not is_urn(url):
        ctx.add("entry.fullurl-format", i, ("fullUrl",),
                f"{url!r} is not a lowercase canonical urn:uuid:<uuid>: Medplum leaves references to it unresolved")


def _request_url(ctx: RuleContext, i: int, method: str, url: str, resource: dict[str, Any] | None) -> None:
    if method == "POST":
        _post_url(ctx, i, url, resource)
    elif method in ("GET", "HEAD"):
        if url.startswith("/") or "://" in url:
            ctx.add("entry.request-url", i, ("request", "url"),
                    f"{method} url must be relative to the server base, got {url!r}")
    elif "?" in url:
        _conditional_url(ctx, i, method, url, resource)
    else:
        _literal_url(ctx, i, method, url, resource)


def _post_url(ctx: RuleContext, i: int, url: str, resource: dict[str, Any] | None) -> None:
    if resource is None:
        return
    rtype = resource["resourceType"]
    if url != rtype:
        ctx.add("entry.request-url", i, ("request", "url"), f"a POST of a {rtype} goes to {rtype!r}, not {url!r}")
    elif "id" in resource:
        ctx.add("entry.client-id", i, ("resource", "id"),
                "a created resource gets its id from the server: remove id (Medplum refuses client ids)")


def _conditional_url(ctx: RuleContext, i: int, method: str, url: str, resource: dict[str, Any] | None) -> None:
    base, _, query = url.partition("?")
    rtype = resource["resourceType"] if resource is not None else None
    if base not in RESOURCE_TYPES:
        why: str | None = f"{base!r} is not a resource type"
    elif rtype is not None and base != rtype:
        why = f"{base!r} is not the resource's type {rtype!r}"
    else:
        why = query_problem(query)
    if why:
        ctx.add("entry.request-url", i, ("request", "url"), f"conditional {method} url must be Type?param=value: {why}")
    elif method == "PUT" and resource is not None and "id" in resource:
        ctx.add("entry.client-id", i, ("resource", "id"),
                "a conditional PUT may create the resource: remove id (Medplum: 'Cannot provide ID for create "
                "by update')")


def _literal_url(ctx: RuleContext, i: int, method: str, url: str, resource: dict[str, Any] | None) -> None:
    path = ("request", "url")
    literal = parse_literal(url)
    if not literal or literal[2] is not None or literal[0] not in RESOURCE_TYPES:
        ctx.add("entry.request-url", i, path, f"{method} url must be Type/id or Type?param=value, got {url!r}")
        return
    url_type, url_id, _ = literal
    rtype = resource["resourceType"] if resource is not None else None
    if rtype is not None and url_type != rtype:
        ctx.add("entry.request-url", i, path, f"url names a {url_type} but the resource is a {rtype}")
        return
    ctx.by_literal.setdefault(f"{url_type}/{url_id}", i)
    if method == "PUT" and resource is not None and resource.get("id") != url_id:
        ctx.add("entry.request-url", i, path,
                f"url id {url_id!r} differs from resource.id {resource.get('id')!r}: they must be equal")


# --- references ------------------------------------------------------------------------------------


def _walk(node: Any, loc: tuple[str | int, ...], refs: list[tuple[tuple[str | int, ...], str]],
          texts: list[tuple[tuple[str | int, ...], str, str]]) -> None:
    """Collect every `reference` string and every other string that contains 'urn:uuid:'."""
    if isinstance(node, dict):
        for k, v in node.items():
            if type(v) is str:
                if k == "reference":
                    refs.append(((*loc, k), v))
                elif "urn:uuid:" in v:
                    texts.append(((*loc, k), k, v))
            elif isinstance(v, dict | list):
                _walk(v, (*loc, k), refs, texts)
    else:
        for n, v in enumerate(node):
            if type(v) is str:
                if "urn:uuid:" in v:
                    texts.append(((*loc, n), "", v))
            elif isinstance(v, dict | list):
                _walk(v, (*loc, n), refs, texts)


def _references_fine(ctx: RuleContext) -> bool:
    """Fast path: True when serializing the bundle shows every reference is fine and no other string
    holds 'urn:uuid:' (then the walk that locates problems is not needed); False means: walk."""
    blob = ctx.blob
    if blob is None:
        return False
    known = RESOURCE_TYPES
    for raw in {part[:part.find(b'"')] for part in blob.split(b'"reference":"')[1:]}:
        if b"\\" in raw or (b"urn:uuid:" in raw and not raw.startswith(b"urn:uuid:")) or raw.count(b"urn:uuid:") > 1:
            return False
        t = ctx.target(raw.decode())
        if t.kind == "bad" or (t.kind in ("literal", "absolute", "conditional") and t.type not in known) or (
                t.kind == "conditional" and (query_problem(t.rest) or query_encoding_problem(t.rest))):
            return False
    urns = sum(u.count("urn:uuid:") for u in ctx.by_url) + blob.count(b'"reference":"urn:uuid:')
    return blob.count(b"urn:uuid:") == urns


def _references(ctx: RuleContext) -> None:
    if _references_fine(ctx):
        return
    canonical = {u for u in ctx.by_url if is_urn(u)}
    for i, resource in ctx.resources.items():
        refs: list[tuple[tuple[str | int, ...], str]] = []
        texts: list[tuple[tuple[str | int, ...], str, str]] = []
        _walk(resource, ("resource",), refs, texts)
        for loc, ref in refs:
            _reference(ctx, i, loc, ref)
        for loc, key, text in texts:
            found = [u for u in _URN_IN_TEXT.findall(text) if u in canonical]
            if found and not (key == "url" and text in canonical):
                ctx.add("ref.in-text", i, loc, f"contains {found[0]}, the fullUrl of entry {ctx.by_url[found[0]]}: "
                                               f"the server will replace it with that resource's id")


def _reference(ctx: RuleContext, i: int, loc: tuple[str | int, ...], ref: str) -> None:
    """The problem of one reference of entry `i`, if any: a urn of no entry, an unknown type, a conditional
    reference's query, or no reference grammar at all."""
    t = ctx.target(ref)
    if t.kind == "entry":
        return
    if ref[:9].lower() == "urn:uuid:":
        ctx.add("ref.unresolved", i, loc, f"{ref} is the fullUrl of no entry in this bundle: Medplum "
                                          f"would store it as written, pointing nowhere")
    elif t.kind == "bad":
        ctx.add("ref.format", i, loc, f"{ref!r} is not a reference: expected Type/id, "
                                      f"Type?param=value or urn:uuid:<uuid>")
    elif t.kind in ("literal", "absolute", "conditional") and t.type not in RESOURCE_TYPES:
        ctx.add("ref.type-unknown", i, loc, f"{t.type!r} is not a FHIR R4 resource type")
    elif t.kind == "conditional":
        if problem := query_problem(t.rest):
            ctx.add("ref.conditional", i, loc, f"conditional reference {ref!r} {problem}")
        elif problem := query_encoding_problem(t.rest):
            ctx.add("ref.query-encoding", i, loc, f"conditional reference {ref!r} {problem}")


# --- threads ---------------------------------------------------------------------------------------


def _refs(resource: Mapping[str, Any], key: str) -> list[tuple[int, str]]:
    value = resource.get(key)
    if not isinstance(value, list):
        return []
    return [(k, r["reference"]) for k, r in enumerate(value) if isinstance(r, dict) and
            isinstance(r.get("reference"), str)]


@dataclass
class _Threads:
    """The thread structure of a bundle's Communications, found in named steps: which entries are headers and
    which are messages (`classify`), each message's thread (`membership`), then the thread rules over them."""

    ctx: RuleContext
    comms: dict[int, dict[str, Any]]
    headers: set[int] = field(default_factory=set)
    messages: set[int] = field(default_factory=set)
    partof: dict[int, list[tuple[int, str, Target]]] = field(default_factory=dict)  # message → its partOf targets
    thread: dict[int, tuple[str, Any]] = field(default_factory=dict)  # message → ("entry", header) | ("external", ref)
    _headers_by_token: dict[str, int] = field(default_factory=dict)
    _messages_by_token: dict[str, int] = field(default_factory=dict)  # filled on first need (conditional replies)

    def __post_init__(self) -> None:
        for i, r in self.comms.items():
            if not r.get("partOf"):
                for tok in _tokens(r):
                    self._headers_by_token.setdefault(tok, i)

    def resolve(self, ref: str, kind_ok: str) -> Target:
        """Like ctx.target, also matching conditional Communication?identifier=... to bundle entries."""
        t = self.ctx.target(ref)
        if t.kind != "conditional" or t.type != "Communication" or not t.rest.startswith("identifier="):
            return t
        tok = query_decode(t.rest.removeprefix("identifier="))  # (as the server reads it)
        tok = tok if "|" in tok else f"|{tok}"
        if kind_ok == "message" and not self._messages_by_token:
            for m in self.messages:
                for mt in _tokens(self.comms[m]):
                    self._messages_by_token.setdefault(mt, m)
        by_token = self._headers_by_token if kind_ok == "header" else self._messages_by_token
        j = by_token.get(tok)
        return Target("entry", "Communication", j) if j is not None else t

    def classify(self) -> None:
        """Headers and messages, from partOf and payload (and which entries messages point at)."""
        targeted: set[int] = set()
        for i, r in self.comms.items():
            if r.get("partOf"):
                self.partof[i] = [(k, ref, self.resolve(ref, "header")) for k, ref in _refs(r, "partOf")]
                targeted.update(t.entry for _, _, t in self.partof[i]
                                if t.kind == "entry" and t.entry is not None and t.entry != i)
        for i, r in self.comms.items():
            payload, part_of = bool(r.get("payload")), bool(r.get("partOf"))
            if not part_of and payload and i not in targeted:
                self.messages.add(i)
                self.ctx.add("thread.message-partof", i, ("resource", "partOf"),
                             "a message (it has a payload) needs partOf pointing at its thread header")
            elif not part_of:
                self.headers.add(i)
                if payload:
                    self.ctx.add("thread.header-payload", i, ("resource", "payload"),
                                 "a thread header (messages point at it with partOf) must have no payload")
            elif i in targeted and not payload:
                self.headers.add(i)
                self.ctx.add("thread.header-partof", i, ("resource", "partOf"),
                             "a thread header (messages point at it with partOf) must have no partOf")
            else:
                self.messages.add(i)
                if not payload:
                    self.ctx.add("thread.message-payload", i, ("resource", "payload"),
                                 "a message (it has partOf) needs a payload: contentString, contentAttachment or "
                                 "contentReference")

    def duplicate_headers(self) -> None:
        seen: dict[str, int] = {}
        for h in sorted(self.headers):
            for tok in _tokens(self.comms[h]):
                if tok in seen and seen[tok] != h:
                    self.ctx.add("thread.header-count", h, ("resource", "identifier"),
                                 f"entry {seen[tok]} is a header with the same identifier {tok}: a thread has one "
                                 f"header")
                    break
                seen.setdefault(tok, h)

    def membership(self) -> None:
        """Each message's thread: a header entry of the bundle, or a thread on the server."""
        for i in sorted(self.messages & set(self.partof)):
            targets = self.partof[i]
            if len(targets) > 1:
                self.ctx.add("thread.header-count", i, ("resource", "partOf"),
                             f"{len(targets)} partOf references: a message belongs to exactly one thread")
            if targets:
                self._member(i, *targets[0])

    def _member(self, i: int, k: int, ref: str, t: Target) -> None:
        where = ("resource", "partOf", k, "reference")
        if t.kind == "entry" and t.entry in self.headers:
            self.thread[i] = ("entry", t.entry)
        elif t.kind == "entry" and t.entry is not None:
            what = "a message" if t.entry in self.messages else f"a {t.type}" if t.type else "no resource"
            self.ctx.add("thread.partof-target", i, where,
                         f"partOf points at entry {t.entry}, {what}, not a thread header")
        elif t.kind in ("literal", "conditional", "absolute") and t.type == "Communication":
            self.thread[i] = ("external", ref)
        elif t.kind != "bad" and (t.kind == "contained" or t.type in RESOURCE_TYPES):
            self.ctx.add("thread.partof-target", i, where,
                         f"partOf {ref!r} is not a thread header: point it at the header's urn:uuid: or "
                         f"Communication/<id>")


def _threads(ctx: RuleContext) -> None:
    comms = {i: r for i, r in ctx.resources.items() if r["resourceType"] == "Communication"}
    if not comms:
        return
    threads = _Threads(ctx, comms)
    threads.classify()
    threads.duplicate_headers()
    threads.membership()
    when = _sent_times(ctx, comms)
    _replies(ctx, comms, threads.messages, threads.thread, threads.resolve, when)
    _sent_order(ctx, comms, threads.thread, when)
    _recipients(ctx, comms, threads.headers, threads.thread)
    _target_types(ctx, comms)
    read_state_rules(ctx, comms, threads.headers, threads.thread)


def _replies(ctx: RuleContext, comms: dict[int, dict[str, Any]], messages: set[int], thread: dict[int, tuple[str, Any]],
             resolve: Any, when: dict[int, dt.datetime]) -> None:
    for i in sorted(thread):
        mine = thread[i]
        for k, ref in _refs(comms[i], "inResponseTo"):
            t = resolve(ref, "message")
            where = ("resource", "inResponseTo", k, "reference")
            if t.kind == "bad":
                continue
            if t.kind == "entry":
                if t.entry in messages and t.entry not in thread:
                    continue  # that message's own partOf is already reported
                if t.entry not in messages or thread.get(t.entry) != mine:
                    what = "another thread's message" if t.entry in messages else "not a message"
                    ctx.add("thread.reply-target", i, where, f"inResponseTo points at entry {t.entry}, {what}: "
                                                             f"a reply answers a message of its own thread")
                elif t.entry is not None and i in when and t.entry in when and when[i] < when[t.entry]:
                    answered = comms[t.entry]
                    ident = "".join(f", identifier {tok}" for tok in _tokens(answered)[:1])
                    ctx.add("thread.reply-order", i, ("resource", "sent"),
                            f"sent {comms[i]['sent']}, before the message it answers (entry {t.entry}{ident}, "
                            f"sent {answered['sent']}): read back by sent, the answer shows above the question",
                            related=t.entry)
                continue
            if t.type != "Communication" or t.kind == "contained":
                ctx.add("thread.reply-target", i, where, f"inResponseTo {ref!r} is not a message of this thread")
            elif mine[0] == "entry" and ctx.methods.get(mine[1]) == "POST":
                ctx.add("thread.reply-target", i, where,
                        f"inResponseTo {ref!r} is outside the bundle, but this thread is created by the bundle "
                        f"(entry {mine[1]}) and has no earlier messages: it belongs to another thread")


def _sent_times(ctx: RuleContext, comms: dict[int, dict[str, Any]]) -> dict[int, dt.datetime]:
    """Each Communication's `sent` as a moment (thread.sent for those that are not real instants)."""
    when: dict[int, dt.datetime] = {}
    for i, r in comms.items():
        if "sent" not in r:
            continue
        value = r["sent"]
        if not isinstance(value, str):
            ctx.add("thread.sent", i, ("resource", "sent"), f"must be a string, got {value!r}")
            continue
        try:
            when[i] = parse_instant(value)
        except InstantError as exc:
            ctx.add("thread.sent", i, ("resource", "sent"), str(exc))
    return when


def _sent_order(ctx: RuleContext, comms: dict[int, dict[str, Any]], thread: dict[int, tuple[str, Any]],
                when: dict[int, dt.datetime]) -> None:
    for i, (kind, h) in sorted(thread.items()):
        if kind == "entry" and i in when and h in when and when[i] < when[h]:
            ctx.add("thread.sent-order", i, ("resource", "sent"),
                    f"sent {comms[i]['sent']} is before its header's sent {comms[h]['sent']} (entry {h})")


def _recipients(ctx: RuleContext, comms: dict[int, dict[str, Any]], headers: set[int],
                thread: dict[int, tuple[str, Any]]) -> None:
    missing: dict[int, list[str]] = {}
    have_by_header: dict[int, set[str]] = {}
    for i, (kind, h) in sorted(thread.items()):
        if kind != "entry":
            continue
        r = comms[i]
        people = [ref for _, ref in _refs(r, "recipient")]
        sender = r.get("sender")
        if isinstance(sender, dict) and isinstance(sender.get("reference"), str):
            people.insert(0, sender["reference"])
        have = have_by_header.get(h)
        if have is None:
            have = have_by_header[h] = {ref for _, ref in _refs(comms[h], "recipient")}
        for ref in people:
            if ref not in have and ref not in missing.setdefault(h, []):
                missing[h].append(ref)
    for h, refs in sorted(missing.items()):
        if refs:
            ctx.add("thread.header-recipients", h, ("resource", "recipient"),
                    f"header recipients lack {', '.join(refs)}: inbox searches (recipient=...) will not find "
                    f"this thread for them")


def _target_types(ctx: RuleContext, comms: dict[int, dict[str, Any]]) -> None:
    known = RESOURCE_TYPES
    for i, r in comms.items():
        for key, allowed in COMMUNICATION_TARGETS.items():
            value = r.get(key)
            if isinstance(value, dict):
                items: Iterable[tuple[int | None, Any]] = ((None, value),)
            elif isinstance(value, list):
                items = enumerate(value)
            else:
                continue
            for k, item in items:
                ref = item.get("reference") if isinstance(item, dict) else None
                if type(ref) is not str:
                    continue
                t = ctx.target(ref).type
                if t is not None and t not in allowed and t in known:
                    loc = ("resource", key, "reference") if k is None else ("resource", key, k, "reference")
                    ctx.add("ref.target-type", i, loc, f"Communication.{key} may point at "
                                                       f"{', '.join(sorted(allowed))}; not a {t}")


# --- values: codes of required bindings, base64 ------------------------------------------------------


def _values(ctx: RuleContext) -> None:
    blob = ctx.blob
    attachments = blob is None or b'"contentType"' in blob  # else no element anywhere to walk to
    for i, resource in ctx.resources.items():
        rtype = resource["resourceType"]
        for (of_type, element), codes in REQUIRED_CODES.items():
            if of_type == rtype and element in resource:
                value = resource[element]
                if isinstance(value, str) and value not in codes:  # (a value of the wrong type is fhir.structure)
                    ctx.add("fhir.code", i, ("resource", element),
                            f"{value!r} is not a {rtype}.{element} code (one of: {', '.join(codes)}): Medplum stores "
                            f"it, and every search by {element} misses the resource")
        if rtype == "Binary" and "data" in resource:
            _base64(ctx, i, ("resource", "data"), resource["data"])
        if attachments:
            _attachments(ctx, i, resource, ("resource",))


def _attachments(ctx: RuleContext, i: int, node: Any, loc: tuple[str | int, ...]) -> None:
    """contentType anywhere is a MIME type (every FHIR contentType is a `mimetypes` code); an Attachment's
    data and hash are base64."""
    if isinstance(node, dict):
        content_type = node.get("contentType")
        if isinstance(content_type, str) and not is_mime_type(content_type):
            ctx.add("fhir.code", i, (*loc, "contentType"), f"{content_type!r} {MIME_TYPE_HINT}")
        if content_type is not None and loc != ("resource",):  # an Attachment (Binary's own data is checked above)
            for key in ("data", "hash"):
                if key in node:
                    _base64(ctx, i, (*loc, key), node[key])
        for key, value in node.items():
            if isinstance(value, dict | list):
                _attachments(ctx, i, value, (*loc, key))
    elif isinstance(node, list):
        for k, value in enumerate(node):
            if isinstance(value, dict | list):
                _attachments(ctx, i, value, (*loc, k))


def _base64(ctx: RuleContext, i: int, loc: tuple[str | int, ...], value: Any) -> None:
    if value == "":  # (Medplum stores no file for an empty Binary.data, and answers 500 when it is read)
        ctx.add("fhir.base64", i, loc, "is empty: FHIR has no empty values (an empty file has no bytes to store: "
                                       "attach it by its size, 0, and hash)")
    elif isinstance(value, str) and not is_base64(value):
        shown = value if len(value) <= 24 else value[:24] + "…"
        ctx.add("fhir.base64", i, loc, f"{shown!r} is not base64 (A-Z a-z 0-9 + /, padded with = to a multiple of "
                                       f"4, nothing after the padding, no spaces)")
