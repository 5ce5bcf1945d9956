"""A FHIR server in memory, behind `httpx.MockTransport`: just enough of Medplum for a load (transactions and
batches of creates, conditional creates and updates; identifier searches, counts, reads), with faults a test
schedules per transaction: an answer lost after the request was applied, a request that lands late, HTTP 409 for
a serialization failure, entries answered 429 or rolled back inside a batch's 200.

    server = MemoryServer(clock)
    server.faults.append(Lost())                                # the next transaction: applied, its answer lost
    client = server.client()                                     # a FhirClient on it, on `clock`

Every request is logged (`log`: method and path); a transaction's faults are taken in order, one per transaction.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx

from bundler.medplum.auth import BearerToken
from bundler.medplum.client import FhirClient
from bundler.medplum.clock import FakeClock
from bundler.vocabulary import SERIALIZATION_FAILURE

BASE = "http://127.0.0.1:9/"
FHIR = BASE + "fhir/R4/"


@dataclass
class Lost:
    """The transaction is applied, and its answer lost (the client times out)."""


@dataclass
class Late:
    """The transaction is not applied now (the client times out); it lands `after` seconds later, by the clock,
    at the first request from then on (None: never)."""

    after: float | None = 5.0


@dataclass
class Conflict:
    """The transaction is answered HTTP 409, a serialization failure: rolled back, nothing applied."""


@dataclass
class Inside:
    """The transaction is processed as a batch and entries from `first` on are answered `status` (429, or 409 with a
    serialization failure's outcome) without being applied."""

    first: int
    status: int = 429


Fault = Lost | Late | Conflict | Inside


def _outcome(code: str, text: str, coding: str | None = None) -> dict[str, Any]:
    details: dict[str, Any] = {"text": text}
    if coding:
        details["coding"] = [{"code": coding}]
    return {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": code, "details": details}]}


def _tokens(value: str) -> list[tuple[str, str]]:
    """The `system|value` pairs of an identifier search (FHIR escapes: `\\,` `\\|` `\\\\`)."""
    out: list[tuple[str, str]] = []
    parts: list[str] = []
    cur, escaped = "", False
    for ch in value + ",":
        if escaped:
            cur, escaped = cur + ch, False
        elif ch == "\\":
            escaped = True
        elif ch == "|" and not parts:
            parts, cur = [cur], ""
        elif ch == ",":
            out.append((parts[0], cur) if parts else ("", cur))
            cur, parts = "", []
        else:
            cur += ch
    return out


@dataclass
class MemoryServer:
    clock: FakeClock = field(default_factory=FakeClock)
    faults: list[Fault | None] = field(default_factory=list)
    log: list[tuple[str, str]] = field(default_factory=list)
    store: dict[str, dict[str, Any]] = field(default_factory=dict)  # Type/id → resource
    late: list[tuple[float, dict[str, Any]]] = field(default_factory=list)  # (lands at, the Bundle) not landed yet
    applied: int = 0  # transactions (and batches) applied, in whole or in part
    _ids: Any = field(default_factory=lambda: itertools.count(1))

    def client(self, **kw: Any) -> FhirClient:
        return FhirClient(BASE, BearerToken("memory-token"), transport=httpx.MockTransport(self.handle),
                          clock=self.clock, timeout=10.0, **kw)

    def created(self, kind: str = "Communication") -> list[dict[str, Any]]:
        return [r for ref, r in self.store.items() if ref.startswith(kind + "/")]

    def copies(self) -> dict[str, int]:
        """identifier value → how many stored resources hold it."""
        out: dict[str, int] = {}
        for r in self.store.values():
            for ident in r.get("identifier") or ():
                out[ident["value"]] = out.get(ident["value"], 0) + 1
        return out

    # --- requests -----------------------------------------------------------------------------------

    def handle(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path.removeprefix("/fhir/R4/")
        self.log.append((request.method, path))
        self._land()
        if request.method == "POST" and path == "":
            return self._bundle(request, json.loads(request.content))
        if request.method == "GET" and "/" in path:
            resource = self.store.get(path)
            return self._json(200, resource) if resource else self._json(404, _outcome("not-found", "Not found"))
        if request.method == "GET":
            return self._json(200, self._search(path, dict(parse_qsl(request.url.query.decode()))))
        return self._json(405, _outcome("not-supported", f"{request.method} {path}"))

    def _land(self) -> None:
        now = self.clock.time()
        for item in [item for item in self.late if item[0] <= now]:
            self.late.remove(item)
            self._apply(item[1])

    def _bundle(self, request: httpx.Request, bundle: dict[str, Any]) -> httpx.Response:
        entries = bundle.get("entry") or []
        if all(e["request"]["method"] == "GET" for e in entries):  # searches in one request
            return self._json(200, {"resourceType": "Bundle", "type": "transaction-response", "entry": [
                {"resource": self._search(*_split(e["request"]["url"])), "response": {"status": "200 OK"}}
                for e in entries]})
        fault = self.faults.pop(0) if self.faults else None
        if isinstance(fault, Conflict):
            return self._json(409, _outcome("conflict", "could not serialize access", SERIALIZATION_FAILURE))
        if isinstance(fault, Late):
            if fault.after is not None:
                self.late.append((self.clock.time() + fault.after, bundle))
            raise httpx.ReadTimeout("the answer was lost (in memory)", request=request)
        answer = self._apply(bundle, stop=fault.first if isinstance(fault, Inside) else None,
                             status=fault.status if isinstance(fault, Inside) else 0)
        if isinstance(fault, Lost):
            raise httpx.ReadTimeout("the answer was lost (in memory)", request=request)
        return self._json(200, answer)

    def _apply(self, bundle: dict[str, Any], *, stop: int | None = None, status: int = 0) -> dict[str, Any]:
        """Apply the creates and updates of `bundle` (entries from `stop` on answered `status`, not applied)."""
        self.applied += 1
        entries = bundle.get("entry") or []
        urls: dict[str, str] = {}
        for e in entries:  # the ids first: entries refer to each other by fullUrl
            if e["request"]["method"] == "POST" and e.get("fullUrl"):
                urls[e["fullUrl"]] = f"{e['resource']['resourceType']}/{next(self._ids)}"
        out = []
        for n, e in enumerate(entries):
            if stop is not None and n >= stop:
                out.append(_refused(status))
                continue
            out.append(self._entry(e, urls))
        return {"resourceType": "Bundle", "type": "transaction-response", "entry": out}

    def _entry(self, e: dict[str, Any], urls: dict[str, str]) -> dict[str, Any]:
        text = json.dumps(e["resource"])
        for urn, ref in urls.items():
            text = text.replace(f'"{urn}"', f'"{ref}"')
        resource = json.loads(text)
        req = e["request"]
        if req["method"] == "POST" and req.get("ifNoneExist"):
            (system, value), = _tokens(dict(parse_qsl(req["ifNoneExist"]))["identifier"])
            if found := self._with_identifier(resource["resourceType"], {(system, value)}):
                urls[e["fullUrl"]] = ref = f"{found[0]['resourceType']}/{found[0]['id']}"
                return {"resource": found[0], "response": {"status": "200 OK", "location": f"{ref}/_history/1"}}
        if req["method"] == "PUT":
            ref = req["url"]
            resource["id"] = ref.split("/")[1]
            version = int(self.store[ref]["meta"]["versionId"]) + 1
        else:
            ref = urls.get(e.get("fullUrl", "")) or f"{resource['resourceType']}/{next(self._ids)}"
            resource["id"] = ref.split("/")[1]
            version = 1
        resource["meta"] = {"versionId": str(version)}
        self.store[ref] = resource
        return {"resource": resource, "response": {"status": "201 Created" if version == 1 else "200 OK",
                                                   "location": f"{ref}/_history/{version}"}}

    def _with_identifier(self, kind: str, wanted: set[tuple[str, str]]) -> list[dict[str, Any]]:
        return [r for ref, r in self.store.items() if ref.startswith(kind + "/") and any(
            (i.get("system", ""), i.get("value")) in wanted for i in r.get("identifier") or ())]

    def _search(self, kind: str, params: dict[str, str]) -> dict[str, Any]:
        found = self._with_identifier(kind, set(_tokens(params["identifier"]))) if "identifier" in params else \
            self.created(kind)
        if params.get("_summary") == "count":
            return {"resourceType": "Bundle", "type": "searchset", "total": len(found)}
        return {"resourceType": "Bundle", "type": "searchset", "entry": [
            {"resource": r, "search": {"mode": "match"}} for r in found]}

    @staticmethod
    def _json(status: int, body: Any) -> httpx.Response:
        return httpx.Response(status, json=body, headers={"Content-Type": "application/fhir+json"})


def _split(url: str) -> tuple[str, dict[str, str]]:
    parts = urlsplit(url)
    return parts.path, dict(parse_qsl(parts.query))


def _refused(status: int) -> dict[str, Any]:
    if status == 409:
        return {"response": {"status": "409 Conflict", "outcome": _outcome("conflict", "could not serialize access",
                                                                           SERIALIZATION_FAILURE)}}
    if status == 429:
        return {"response": {"status": "429 Too Many Requests", "outcome": _outcome("throttled", "quota")}}
    return {"response": {"status": f"{status} Bad Request", "outcome": _outcome("invalid", "refused here")}}


