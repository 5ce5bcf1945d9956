"""The HTTP shell: one `FhirClient` the loader is given, so tests point it at the local server or through
the fault proxy (or swap the httpx transport).

What it promises its callers:
- a request that certainly did not reach the server (connection refused, pool timeout), was refused before it
  was processed (429), or was rolled back because the database could not serialize it with other writes (409
  with Medplum's serialization-failure code: `serialization_failure`) is retried here, paced and backed off, a
  bounded number of times;
- a request that may have been applied (timeout or connection lost after sending, 502/503/504) raises
  `UnknownOutcome` and is NOT retried: only the caller can reconcile it (search, then record or re-send);
- reads (GET, search) are idempotent and retried on any transient failure;
- one OAuth2 token is shared by every thread, renewed shortly before expiry and once on a 401 (`auth`);
- the client secret and tokens never appear in an exception it raises, nor in an answer it returns: every
  answer is scrubbed of them as it arrives (`_body`), before anything reads it, and every error it raises
  is made by `_error`, which scrubs its text too (a server's error text may echo our request's headers);
- an answer that is not what FHIR promises (a search answered `[1, 2]`, an entry that is a number) is a
  ServerError naming the request, never a traceback;
- `next` links are followed at the base URL only (a link at another origin by its path below the FHIR base,
  as Medplum writes links at its own configured URL, which a proxy or tunnel makes another): the token goes
  nowhere else.

`ClientCredentials`, `BearerToken`, `Secrets` and `Unreachable` live in `auth` and are re-exported here.
"""

from __future__ import annotations

import ipaddress
import itertools
import random
import threading
from collections.abc import Container, Iterable, Iterator, Sequence
from typing import Any, TypeVar
from urllib.parse import SplitResult, urljoin, urlsplit

import httpx
import orjson

from ..errors import AuthError, BundlerError, ServerError, Throttled, UnknownOutcome, Unreachable
from ..vocabulary import (
    FHIR_PATH,
    IDENTIFIER_SEARCH_COUNT,
    READ_POINTS,
    SEARCH_POINTS,
    WRITE_POINTS,
    fhir_base,
    identifier_token,
    search_query,
    server_root,
)
from .answer import TransactionAnswer, outcome_text, serialization_failure
from .auth import BearerToken, ClientCredentials, MedplumAuth, Secrets, transport_problem
from .clock import SYSTEM_CLOCK, Clock
from .ratelimit import Gate, Pacer, parse_ratelimit

__all__ = ["BearerToken", "ClientCredentials", "FhirClient", "MedplumAuth", "Secrets", "Throttled",
           "TransactionAnswer", "Unreachable", "is_loopback"]

USER_AGENT = "thread-bundler/0.1"
FHIR_JSON = "application/fhir+json"
RETRY_STATUSES_UNKNOWN = {502, 503, 504}
NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)  # failed before a byte was sent


E = TypeVar("E", bound=BundlerError)


def is_loopback(host: str) -> bool:
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _kind(value: Any) -> str:
    """What a JSON value is, for a message (never the value itself: it may be large)."""
    if value is None:
        return "nothing"
    if isinstance(value, dict):
        return f"a {value['resourceType']}" if isinstance(value.get("resourceType"), str) else "an object"
    return {list: "a list", str: "text", bool: "true/false"}.get(type(value), "a number")


def _searches(searches: Sequence[tuple[str, dict[str, str]]]) -> str:
    return f"search {', '.join(dict.fromkeys(kind for kind, _ in searches))}"


def _malformed(what: str, why: str) -> ServerError:
    return ServerError(f"{what}: the server's answer is not what FHIR promises: {why}")


def _bundle(body: Any, what: str) -> dict[str, Any]:
    """`body` if it is a Bundle whose `entry` and `link` are lists of objects; else ServerError."""
    if not isinstance(body, dict) or body.get("resourceType") != "Bundle":
        raise _malformed(what, f"expected a Bundle, got {_kind(body)}")
    for name in ("entry", "link"):
        items = body.get(name, [])
        if not isinstance(items, list):
            raise _malformed(what, f"its {name} is {_kind(items)}, not a list")
        if (bad := next((n for n, item in enumerate(items) if not isinstance(item, dict)), None)) is not None:
            raise _malformed(what, f"its {name}[{bad}] is {_kind(items[bad])}, not an object")
    return body


def _matches(page: dict[str, Any], what: str) -> list[dict[str, Any]]:
    """The resources a searchset page matched (not included ones), each with an id."""
    out = []
    for n, entry in enumerate(page.get("entry") or ()):
        search = entry.get("search")
        if isinstance(search, dict) and search.get("mode", "match") != "match":
            continue
        resource = entry.get("resource")
        if not isinstance(resource, dict) or not isinstance(resource.get("id"), str):
            raise _malformed(what, f"its entry[{n}] has no resource with an id")
        out.append(resource)
    return out


def _transaction_response(body: Any, what: str) -> dict[str, Any]:
    """`body` if it is a Bundle whose every entry has a response status (and a resource object, if any)."""
    if type(body) is not dict or body.get("resourceType") != "Bundle" or type(body.get("entry", [])) is not list:
        return _bundle(body, what)  # says what is wrong with it
    for n, entry in enumerate(body.get("entry") or ()):  # one pass, few calls: this runs for every request
        response = entry.get("response") if type(entry) is dict else None
        if type(response) is not dict or type(response.get("status")) is not str:
            _bundle(body, what)
            raise _malformed(what, f"its entry[{n}] has no response status")
        if type(entry.get("resource", {})) is not dict:
            raise _malformed(what, f"its entry[{n}].resource is {_kind(entry['resource'])}")
    return body


def backoff(attempt: int, *, base: float = 0.25, cap: float = 20.0) -> float:
    """Full-jitter exponential backoff."""
    return random.uniform(0, min(cap, base * 2**attempt))


class FhirClient:
    """A FHIR R4 client for one Medplum (or any FHIR) server.

        client = FhirClient("https://api.medplum.com/", ClientCredentials(id, secret))
        answer = client.transaction(bundle_bytes)       # a TransactionAnswer: answer.entries[0].status, ...
        resources = client.search("Communication", {"identifier": "urn:x|t1"})

    `auth` is bound to this client (`client.auth` is that copy; the caller's object is not changed) and is
    also `http`'s default auth, so a request made with `client.http` directly is authenticated too.
    `requests` counts the FHIR requests sent (every attempt, logins not included). `transport` replaces httpx's
    (an `httpx.MockTransport` answers in memory); every wait (backoff, pacing) is on `clock`, as is a load's.
    """

    def __init__(self, base_url: str, auth: MedplumAuth, *, timeout: float = 60.0,
                 allow_insecure: bool = False, verify: bool = True, transport: httpx.BaseTransport | None = None,
                 pacer: Pacer | None = None, max_attempts: int = 8, concurrency: int = 32,
                 secrets: Secrets | None = None, clock: Clock = SYSTEM_CLOCK) -> None:
        self.root = _checked_root(base_url, allow_insecure=allow_insecure)
        self.fhir_base = fhir_base(self.root)
        self.timeout = timeout
        self.clock = clock  # every wait of the client (backoffs, pacing) and of a load through it is on it
        self.pacer = pacer or Pacer(clock=clock.monotonic, sleep=clock.sleep)
        self.concurrency = concurrency  # the most requests at once it keeps connections for
        self.gate: Gate = Gate(concurrency)  # transactions at the server at once, fewer while they fail to serialize
        self.max_attempts = max_attempts
        self.secrets = secrets if secrets is not None else Secrets(set())
        self.requests = 0
        self.serialization_retries = 0  # requests sent again after a serialization failure (409)
        self.last_ratelimit: list[str] = []
        self._count_lock = threading.Lock()
        limits = httpx.Limits(max_connections=concurrency + 2, max_keepalive_connections=concurrency + 2)
        self.http = httpx.Client(timeout=httpx.Timeout(timeout, connect=10.0), verify=verify, transport=transport,
                                 limits=limits, headers={"User-Agent": USER_AGENT},
                                 event_hooks={"request": [self._count]})
        self.auth = auth.bind(self.root, self.http, self.secrets)
        self.http.auth = self.auth

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> FhirClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- requests ----------------------------------------------------------------------------------

    def _count(self, request: httpx.Request) -> None:
        if str(request.url).startswith(self.fhir_base):
            with self._count_lock:
                self.requests += 1

    def _send(self, method: str, url: str, *, content: bytes | None = None, cost: float = 0,
              idempotent: bool, headers: dict[str, str] | None = None, follow: bool = False,
              gated: bool = False) -> httpx.Response:
        """One logical request, paced, with the retries that are safe for it (auth renews itself). `headers`
        replace our FHIR JSON Accept/Content-Type; `follow`: follow redirects (httpx drops our Authorization
        on a redirect to another origin); `gated`: a transaction, let in by `gate`."""
        if headers is None:
            headers = {"Accept": FHIR_JSON} | ({"Content-Type": FHIR_JSON} if content is not None else {})
        for attempt in itertools.count(1):
            self.pacer.wait(cost)
            gate = self.gate  # (the one it entered: a load may put its own in place meanwhile)
            if gated:
                gate.enter()
            conflict, status, sent = False, None, self.clock.monotonic()
            try:
                resp = self.http.request(method, url, content=content, headers=headers, follow_redirects=follow)
                status = resp.status_code
                conflict = resp.status_code == 409 and serialization_failure(self._body(resp))
            except httpx.TransportError as exc:
                self._transport_failed(exc, f"{method} {url}", attempt, idempotent=idempotent)
                continue
            finally:
                self.pacer.done(cost)
                if gated:
                    gate.leave(conflict=conflict, status=status, seconds=self.clock.monotonic() - sent, work=cost)
            if ratelimit := resp.headers.get_list("RateLimit"):
                self.last_ratelimit = ratelimit
                self.pacer.update(parse_ratelimit(ratelimit))
            if not self._again(resp, f"{method} {url}", attempt, idempotent=idempotent):
                return resp
        raise AssertionError("unreachable")  # itertools.count never ends

    def _transport_failed(self, exc: httpx.TransportError, what: str, attempt: int, *, idempotent: bool) -> None:
        """Back off before the next attempt, or raise: Unreachable when the request certainly did not reach
        the server, UnknownOutcome when it may have been applied and may not be sent blindly again."""
        problem = transport_problem(exc, timeout=self.timeout)
        if isinstance(exc, NOT_SENT):
            if attempt >= self.max_attempts:
                raise self._error(Unreachable, f"cannot reach {self.root}: {problem} (after {attempt} attempts)")
        elif not idempotent or attempt >= self.max_attempts:
            raise self._error(UnknownOutcome, f"{what}: {problem}, after the request was sent")
        self.clock.sleep(backoff(attempt))

    def _error(self, cls: type[E], message: str, **kw: Any) -> E:
        """An error of ours about a request, its text scrubbed of every secret: every error the client
        raises is made here."""
        return cls(self.all_secrets().scrub(message), **kw)

    def _body(self, resp: httpx.Response) -> Any:
        """The answer's JSON (None when it has none), scrubbed of every secret before anything reads it."""
        content = self.secrets.scrub_bytes(resp.content) if resp.content else b""  # (every token is added as issued)
        try:
            return orjson.loads(content) if content else None
        except orjson.JSONDecodeError:
            return None

    def _again(self, resp: httpx.Response, what: str, attempt: int, *, idempotent: bool) -> bool:
        """Whether to send the request again after `resp` (having waited as long as it should); raises
        Throttled when the server keeps refusing for quota, ServerError when it keeps failing to serialize it (409),
        UnknownOutcome for a gateway error on a write."""
        if resp.status_code == 429:
            limits = parse_ratelimit(resp.headers.get_list("RateLimit"))
            wait = max((lim.reset for lim in limits.values() if lim.remaining <= 0), default=0.0)
            self.pacer.blocked(wait or backoff(attempt, base=1.0))
            if attempt < self.max_attempts * 4:
                return True
            body = self._body(resp)
            raise self._error(Throttled, f"{what}: still throttled after {attempt} attempts", status=429,
                              outcome=body if isinstance(body, dict) else None)
        if resp.status_code == 409:
            return self._serialization_failed(resp, what, attempt)
        if resp.status_code not in RETRY_STATUSES_UNKNOWN:
            return False
        if not idempotent:
            raise self._error(UnknownOutcome, f"{what}: HTTP {resp.status_code} from the server or a gateway")
        if attempt < self.max_attempts:
            self.clock.sleep(backoff(attempt))
            return True
        return False

    def _serialization_failed(self, resp: httpx.Response, what: str, attempt: int) -> bool:
        """After a 409: whether to send the request again, having backed off (a serialization failure: the server
        rolled it back, so even a write may be sent again). Other conflicts are the caller's (False); a serialization
        failure that keeps coming is a ServerError that says so."""
        body = self._body(resp)
        if not serialization_failure(body):
            return False
        if attempt < self.max_attempts * 2:
            with self._count_lock:
                self.serialization_retries += 1
            self.clock.sleep(backoff(attempt, base=0.1, cap=5.0))
            return True
        raise self._error(ServerError, f"{what}: HTTP 409: {outcome_text(body)} (the server could not run it alongside "
                                       f"other writes {attempt} times; nothing of it was stored: run again)",
                          status=409, outcome=body)

    def _check(self, resp: httpx.Response, what: str) -> Any:
        body = self._body(resp)
        if resp.status_code < 300:
            return body
        outcome = body if isinstance(body, dict) else None
        text = outcome_text(body) or resp.reason_phrase
        if resp.status_code == 401:
            raise self._error(AuthError, f"{what}: the server refused our token (HTTP 401): {text}", status=401,
                              outcome=outcome)
        if resp.status_code == 403:
            raise self._error(AuthError, f"{what}: forbidden (HTTP 403) — the client's access policy does not "
                                         f"allow this: {text}", status=403, outcome=outcome)
        raise self._error(ServerError, f"{what}: HTTP {resp.status_code}: {text}", status=resp.status_code,
                          outcome=outcome)

    def transaction(self, body: bytes, *, entries: int, cost: float | None = None) -> TransactionAnswer:
        """POST a transaction/batch Bundle (`entries` of them; `cost` in quota points, by default a write
        each, for pacing); the answer, each entry's status, location and outcome parsed (`answer.entries`).

        Raises ServerError for a refusal (an atomic transaction answers an OperationOutcome), and
        UnknownOutcome when the request may or may not have been applied (its answer lost, or a success
        answer that is not a transaction-response Bundle)."""
        resp = self._send("POST", self.fhir_base, content=body, cost=WRITE_POINTS * entries if cost is None else cost,
                          idempotent=False, gated=True)
        answer = self._check(resp, "transaction")
        try:
            return TransactionAnswer(_transaction_response(answer, "transaction"))
        except ServerError as exc:  # processed, but how is unreadable: as good as a lost answer
            raise self._error(UnknownOutcome, str(exc)) from None

    def upload_binary(self, data: bytes, content_type: str) -> str:
        """POST the raw bytes of a file as a Binary (with its own Content-Type, as Medplum takes uploads): its
        `Binary/<id>`. UnknownOutcome when the answer was lost (a Binary has no identifier to search it by)."""
        what = "upload Binary"
        resp = self._send("POST", urljoin(self.fhir_base, "Binary"), content=data, cost=WRITE_POINTS,
                          idempotent=False, headers={"Accept": FHIR_JSON, "Content-Type": content_type})
        body = self._check(resp, what)
        if not isinstance(body, dict) or not body.get("id"):
            raise self._error(UnknownOutcome, f"{what}: the answer names no Binary ({_kind(body)})")
        return f"Binary/{body['id']}"

    def read_binary(self, reference: str) -> bytes:
        """The raw bytes of `Binary/<id>` (Medplum answers a read that does not ask for FHIR JSON with the bytes,
        or redirects to its storage: followed)."""
        what = f"read {reference}"
        resp = self._send("GET", urljoin(self.fhir_base, reference), cost=READ_POINTS, idempotent=True,
                          headers={"Accept": "*/*"}, follow=True)
        if resp.status_code >= 300:
            self._check(resp, what)  # (raises)
        return resp.content

    def read(self, reference: str) -> dict[str, Any]:
        what = f"read {reference}"
        resp = self._send("GET", urljoin(self.fhir_base, reference), cost=READ_POINTS, idempotent=True)
        body = self._check(resp, what)
        if not isinstance(body, dict) or not isinstance(body.get("resourceType"), str):
            raise _malformed(what, f"expected a resource, got {_kind(body)}")
        return body

    def delete(self, reference: str) -> None:
        resp = self._send("DELETE", urljoin(self.fhir_base, reference), cost=WRITE_POINTS, idempotent=True)
        if resp.status_code not in (404, 410):
            self._check(resp, f"delete {reference}")

    def search_page(self, resource_type: str, params: dict[str, str]) -> dict[str, Any]:
        """The first page of a search only (a searchset Bundle): one request."""
        return next(self.search_pages(resource_type, params))

    def search_pages(self, resource_type: str, params: dict[str, str]) -> Iterator[dict[str, Any]]:
        """Every page (a searchset Bundle) of a search, following `next` links at our own base URL only."""
        what = f"search {resource_type}"
        query = search_query(params)  # encoded here, as the server reads it (httpx sends it as it is)
        url = urljoin(self.fhir_base, resource_type) + (f"?{query}" if query else "")
        yield from self._pages(self._page(url, what), url, what)

    def _page(self, url: str, what: str) -> dict[str, Any]:
        return _bundle(self._check(self._send("GET", url, cost=SEARCH_POINTS, idempotent=True), what), what)

    def _pages(self, page: dict[str, Any], url: str, what: str) -> Iterator[dict[str, Any]]:
        """`page` (of the search at `url`), then every page after it, by `next` links."""
        while True:
            yield page
            if (after := self._next(page, what, url)) is None:
                return
            url, page = after, self._page(after, what)

    def search_together(self, searches: Sequence[tuple[str, dict[str, str]]]) -> list[list[dict[str, Any]]]:
        """The resources each of `searches` ((resource type, parameters)) matches, every page, asked in one request
        (`_together`)."""
        what = _searches(searches)
        return [[r for page in self._pages(first, url, what) for r in _matches(page, what)]
                for first, url in self._together(searches)]

    def count_together(self, searches: Sequence[tuple[str, dict[str, str]]]) -> list[int]:
        """How many resources each of `searches` matches (`_summary=count`: the server counts them, and sends
        none), asked in one request (`_together`)."""
        what = _searches(searches)
        totals = [first.get("total") for first, _ in self._together(
            [(kind, {**params, "_summary": "count"}) for kind, params in searches])]
        if any(type(t) is not int for t in totals):
            raise _malformed(what, f"a count is {_kind(next(t for t in totals if type(t) is not int))}, not a number")
        return [int(t) for t in totals]  # type: ignore[arg-type]

    def _together(self, searches: Sequence[tuple[str, dict[str, str]]]) -> list[tuple[dict[str, Any], str]]:
        """The first page (and its URL) of each of `searches`, asked in one request: a transaction Bundle of GET
        entries. Medplum runs a transaction on its primary database, in a database transaction that begins when the
        request arrives, so it sees every write committed before (a plain search may be answered by a read
        replica, behind the primary). A project without atomic transactions runs it as a batch: the same
        searches. Only reads: sent again like any read when its answer is lost."""
        what = _searches(searches)
        urls = [kind + (f"?{query}" if (query := search_query(params)) else "") for kind, params in searches]
        body = orjson.dumps({"resourceType": "Bundle", "type": "transaction",
                             "entry": [{"request": {"method": "GET", "url": url}} for url in urls]})
        resp = self._send("POST", self.fhir_base, content=body, cost=SEARCH_POINTS * len(urls), idempotent=True)
        answer = TransactionAnswer(_transaction_response(self._check(resp, what), what))
        if len(answer.entries) != len(urls):
            raise _malformed(what, f"{len(answer.entries)} answers to {len(urls)} searches")
        out = []
        for url, entry in zip(urls, answer.entries, strict=True):
            if not entry.ok:
                raise self._error(ServerError, f"{what}: HTTP {entry.code}: {entry.outcome_text or 'refused'}",
                                  status=entry.status, outcome=entry.outcome)
            out.append((_bundle(entry.resource, what), urljoin(self.fhir_base, url)))
        return out

    def _next(self, page: dict[str, Any], what: str, current: str) -> str | None:
        """The page's `next` link, if any, at our base URL.

        Medplum writes next links at the base URL it is configured with, which need not be the one we reach it by
        (a proxy, a tunnel, `localhost` for `127.0.0.1`): a link at another origin is followed at ours, by its
        path below the FHIR base, so the token goes to the base URL only. A link that names no FHIR path, or the
        page itself again, is a ServerError."""
        link = next((link.get("url") for link in page.get("link") or () if link.get("relation") == "next"), None)
        if link is None:
            return None
        if not isinstance(link, str):
            raise _malformed(what, f"its next link is {_kind(link)}")
        url = urljoin(self.fhir_base, link)
        here, there = urlsplit(self.root), urlsplit(url)
        if (there.scheme, there.hostname, _port(there)) != (here.scheme, here.hostname, _port(here)):
            below = there.path.partition("/" + FHIR_PATH)
            if not below[1]:
                origin = f"{there.scheme}://{there.netloc.rpartition('@')[2]}"
                raise self._error(ServerError, f"{what}: the server's next page is at {origin}{there.path}, not "
                                               f"below a FHIR base ({FHIR_PATH}): not followed")
            url = self.fhir_base + below[2] + (f"?{there.query}" if there.query else "")
        if url == current:
            raise _malformed(what, "its next link is the page itself")
        return url

    def search(self, resource_type: str, params: dict[str, str]) -> list[dict[str, Any]]:
        """All resources a search matches (every page), without included resources; each has an `id`."""
        return [r for page in self.search_resource_pages(resource_type, params) for r in page]

    def search_resource_pages(self, resource_type: str, params: dict[str, str]) -> Iterator[list[dict[str, Any]]]:
        """The resources a search matches, a page at a time (every page; no included resources; each has an `id`)."""
        what = f"search {resource_type}"
        for page in self.search_pages(resource_type, params):
            yield _matches(page, what)

    def find_resources(self, resource_type: str, identifiers: Sequence[str], *, elements: str | None = None,
                       max_url: int = 6000) -> dict[str, dict[str, Any]]:
        """`system|value` → the resource (only its `elements`, if given) of those of `identifiers` that
        exist; many per search request. A value held by several resources maps to the first found
        (`find_every_resource` gives them all)."""
        every = self.find_every_resource(resource_type, identifiers, elements=elements, max_url=max_url)
        return {ident: resources[0] for ident, resources in every.items()}

    def find_every_resource(self, resource_type: str, identifiers: Sequence[str], *, elements: str | None = None,
                            max_url: int = 6000) -> dict[str, list[dict[str, Any]]]:
        """`system|value` → every resource (only its `elements`, if given) with it, in the order found, for those of
        `identifiers` that exist; many per search request."""
        found: dict[str, list[dict[str, Any]]] = {}
        for chunk in chunked(identifiers, max_url=max_url, most=100):
            tokens = ",".join(identifier_token(*ident.split("|", 1)) for ident in chunk)
            params = {"identifier": tokens, "_count": str(IDENTIFIER_SEARCH_COUNT)}  # (not fewer: see there)
            if elements:
                params["_elements"] = elements
            found |= holding(self.search(resource_type, params), set(chunk))
        return found

    def find_identifiers(self, resource_type: str, identifiers: Sequence[str], *, max_url: int = 6000
                         ) -> dict[str, str]:
        """`system|value` → server id, for those of `identifiers` that exist; many per search request."""
        found = self.find_resources(resource_type, identifiers, elements="identifier", max_url=max_url)
        return {ident: str(resource["id"]) for ident, resource in found.items()}

    def all_secrets(self) -> Secrets:
        """Every secret this client knows (the auth's, every token it got), to scrub text with."""
        for value in self.auth.secrets():
            self.secrets.add(value)
        return self.secrets


def holding(resources: Iterable[dict[str, Any]], wanted: Container[str]) -> dict[str, list[dict[str, Any]]]:
    """`system|value` → each of `resources` with that identifier (once, in their order), for the values `wanted`."""
    found: dict[str, list[dict[str, Any]]] = {}
    for resource in resources:
        for ident in resource.get("identifier") or ():
            value = f"{ident.get('system', '')}|{ident.get('value')}" if isinstance(ident, dict) else None
            if value is not None and value in wanted:
                same = found.setdefault(value, [])
                if all(r.get("id") != resource.get("id") for r in same):
                    same.append(resource)
    return found


def _port(parts: SplitResult) -> int | None:
    try:
        return parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    except ValueError:  # a port that is not a number: no origin of ours
        return -1


def _checked_root(base_url: str, *, allow_insecure: bool) -> str:
    root = server_root(base_url)
    parts = urlsplit(root)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BundlerError(f"not an http(s) base URL: {base_url!r}")
    if parts.scheme == "http" and not is_loopback(parts.hostname) and not allow_insecure:
        raise BundlerError(f"refusing plain http to {parts.hostname}: use https, or --allow-insecure")
    return root


def chunked(identifiers: Sequence[str], *, max_url: int, most: int) -> Iterator[list[str]]:
    """`identifiers`, each once, in groups of at most `most` whose search URL stays under about `max_url`."""
    chunk: list[str] = []
    length = 0
    for ident in dict.fromkeys(identifiers):
        if chunk and (length + len(ident) > max_url or len(chunk) >= most):
            yield chunk
            chunk, length = [], 0
        chunk.append(ident)
        length += len(ident) + 3
    if chunk:
        yield chunk
