"""The HTTP shell: one `FhirClient` the loader is given, so tests point it at the local server or through
the fault proxy (or swap the httpx transport).

What it promises its callers:
- a request that certainly did not reach the server (connection refused, pool timeout) or was
  refused before it was processed (429) is retried here, paced and backed off;
- a request that may have been applied (timeout or connection lost after sending, 502/503/504) raises
  `UnknownOutcome` and is NOT retried: only the caller can reconcile it (search, then record or re-send);
- reads (GET, search) are idempotent and retried on any transient failure;
- one OAuth2 token is shared by every thread, renewed shortly before expiry and once on a 401 (`auth`);
- the client secret and tokens never appear in an exception it raises.

`ClientCredentials`, `BearerToken`, `Secrets` and `Unreachable` live in `auth` and are re-exported here.
"""

from __future__ import annotations

import ipaddress
import itertools
import random
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx

from ..errors import AuthError, BundlerError, ServerError, UnknownOutcome
from ..vocabulary import READ_POINTS, SEARCH_POINTS, WRITE_POINTS, fhir_base, identifier_token, server_root
from .auth import BearerToken, ClientCredentials, MedplumAuth, Secrets, Unreachable, json_body
from .ratelimit import Pacer, parse_ratelimit

__all__ = ["BearerToken", "ClientCredentials", "FhirClient", "MedplumAuth", "Secrets", "Throttled", "Unreachable",
           "is_loopback", "outcome_text"]

USER_AGENT = "thread-bundler/0.1"
FHIR_JSON = "application/fhir+json"
RETRY_STATUSES_UNKNOWN = {502, 503, 504}
NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)  # failed before a byte was sent


class Throttled(ServerError):
    """The server refused the request for quota (429) and kept refusing after waiting."""


def is_loopback(host: str) -> bool:
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def outcome_text(outcome: Any) -> str:
    """The human text of an OperationOutcome (every issue's details/diagnostics, with its expression)."""
    if not isinstance(outcome, dict) or outcome.get("resourceType") != "OperationOutcome":
        return ""
    return "; ".join(_issue_text(issue) for issue in outcome.get("issue") or ())


def _issue_text(issue: dict[str, Any]) -> str:
    text = (issue.get("details") or {}).get("text") or issue.get("diagnostics") or issue.get("code") or "error"
    where = issue.get("expression") or issue.get("location")
    return f"{text} ({', '.join(where)})" if where else str(text)


def _backoff(attempt: int, *, base: float = 0.25, cap: float = 20.0) -> float:
    """Full-jitter exponential backoff."""
    return random.uniform(0, min(cap, base * 2**attempt))




class FhirClient:
    """A FHIR R4 client for one Medplum (or any FHIR) server.

        client = FhirClient("https://api.medplum.com/", ClientCredentials(id, secret))
        response = client.transaction(bundle_bytes)     # the response Bundle, as a dict
        resources = client.search("Communication", {"identifier": "urn:x|t1"})

    `auth` is bound to this client (`client.auth` is that copy; the caller's object is not changed) and is
    also `http`'s default auth, so a request made with `client.http` directly is authenticated too.
    `requests` counts the FHIR requests sent (every attempt, logins not included).
    """

    def __init__(self, base_url: str, auth: MedplumAuth, *, timeout: float = 60.0,
                 allow_insecure: bool = False, verify: bool = True, transport: httpx.BaseTransport | None = None,
                 pacer: Pacer | None = None, max_attempts: int = 8, concurrency: int = 8,
                 secrets: Secrets | None = None) -> None:
        self.root = _checked_root(base_url, allow_insecure=allow_insecure)
        self.fhir_base = fhir_base(self.root)
        self.pacer = pacer or Pacer()
        self.max_attempts = max_attempts
        self.secrets = secrets if secrets is not None else Secrets(set())
        self.requests = 0
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
              idempotent: bool) -> httpx.Response:
        """One logical request, paced, with the retries that are safe for it (auth renews itself)."""
        headers = {"Accept": FHIR_JSON} | ({"Content-Type": FHIR_JSON} if content is not None else {})
        for attempt in itertools.count(1):
            self.pacer.wait(cost)
            try:
                resp = self.http.request(method, url, content=content, headers=headers)
            except httpx.TransportError as exc:
                self._transport_failed(exc, f"{method} {url}", attempt, idempotent=idempotent)
                continue
            finally:
                self.pacer.done(cost)
            if ratelimit := resp.headers.get_list("RateLimit"):
                self.last_ratelimit = ratelimit
                self.pacer.update(parse_ratelimit(ratelimit))
            if not self._again(resp, f"{method} {url}", attempt, idempotent=idempotent):
                return resp
        raise AssertionError("unreachable")  # itertools.count never ends

    def _transport_failed(self, exc: httpx.TransportError, what: str, attempt: int, *, idempotent: bool) -> None:
        """Back off before the next attempt, or raise: Unreachable when the request certainly did not reach
        the server, UnknownOutcome when it may have been applied and may not be sent blindly again."""
        if isinstance(exc, NOT_SENT):
            if attempt >= self.max_attempts:
                raise Unreachable(f"cannot reach {self.root}: {type(exc).__name__} "
                                  f"(after {attempt} attempts)") from None
        elif not idempotent or attempt >= self.max_attempts:
            raise UnknownOutcome(f"{what}: {type(exc).__name__} after sending") from None
        time.sleep(_backoff(attempt))

    def _again(self, resp: httpx.Response, what: str, attempt: int, *, idempotent: bool) -> bool:
        """Whether to send the request again after `resp` (having waited as long as it should); raises
        Throttled when the server keeps refusing for quota, UnknownOutcome for a gateway error on a write."""
        if resp.status_code == 429:
            limits = parse_ratelimit(resp.headers.get_list("RateLimit"))
            wait = max((lim.reset for lim in limits.values() if lim.remaining <= 0), default=0.0)
            self.pacer.blocked(wait or _backoff(attempt, base=1.0))
            if attempt < self.max_attempts * 4:
                return True
            raise Throttled(f"{what}: still throttled after {attempt} attempts", status=429, outcome=json_body(resp))
        if resp.status_code not in RETRY_STATUSES_UNKNOWN:
            return False
        if not idempotent:
            raise UnknownOutcome(f"{what}: HTTP {resp.status_code} from the server or a gateway")
        if attempt < self.max_attempts:
            time.sleep(_backoff(attempt))
            return True
        return False

    def _check(self, resp: httpx.Response, what: str) -> Any:
        body = json_body(resp)
        if resp.status_code < 300:
            return body
        text = outcome_text(body) or resp.reason_phrase
        if resp.status_code == 401:
            raise AuthError(f"{what}: the server refused our token (HTTP 401): {text}", status=401, outcome=body)
        if resp.status_code == 403:
            raise AuthError(f"{what}: forbidden (HTTP 403) — the client's access policy does not allow this: "
                            f"{text}", status=403, outcome=body)
        raise ServerError(f"{what}: HTTP {resp.status_code}: {text}", status=resp.status_code,
                          outcome=body if isinstance(body, dict) else None)

    def transaction(self, body: bytes, *, entries: int) -> dict[str, Any]:
        """POST a transaction/batch Bundle (`entries` of them, for pacing); the response Bundle.

        Raises ServerError for a refusal (an atomic transaction answers an OperationOutcome), and
        UnknownOutcome when the request may or may not have been applied."""
        resp = self._send("POST", self.fhir_base, content=body, cost=WRITE_POINTS * entries, idempotent=False)
        return self._check(resp, "transaction")  # type: ignore[no-any-return]

    def read(self, reference: str) -> dict[str, Any]:
        resp = self._send("GET", urljoin(self.fhir_base, reference), cost=READ_POINTS, idempotent=True)
        return self._check(resp, f"read {reference}")  # type: ignore[no-any-return]

    def delete(self, reference: str) -> None:
        resp = self._send("DELETE", urljoin(self.fhir_base, reference), cost=WRITE_POINTS, idempotent=True)
        if resp.status_code not in (404, 410):
            self._check(resp, f"delete {reference}")

    def search_pages(self, resource_type: str, params: dict[str, str]) -> Iterator[dict[str, Any]]:
        """Every page (a searchset Bundle) of a search, following `next` links."""
        url: str | None = str(httpx.URL(urljoin(self.fhir_base, resource_type), params=params))
        while url:
            resp = self._send("GET", url, cost=SEARCH_POINTS, idempotent=True)
            page = self._check(resp, f"search {resource_type}")
            yield page
            url = next((link.get("url") for link in page.get("link") or () if link.get("relation") == "next"), None)

    def search(self, resource_type: str, params: dict[str, str]) -> list[dict[str, Any]]:
        """All resources a search matches (every page), without included resources."""
        return [e["resource"] for page in self.search_pages(resource_type, params) for e in page.get("entry") or ()
                if e.get("search", {}).get("mode", "match") == "match" and "resource" in e]

    def find_identifiers(self, resource_type: str, identifiers: Sequence[str], *, max_url: int = 6000
                         ) -> dict[str, str]:
        """`system|value` → server id, for those of `identifiers` that exist; many per search request."""
        wanted = set(identifiers)
        found: dict[str, str] = {}
        for chunk in _chunks(identifiers, max_url=max_url, most=100):
            tokens = ",".join(identifier_token(*ident.split("|", 1)) for ident in chunk)
            params = {"identifier": tokens, "_count": str(min(1000, 2 * len(chunk) + 10)),
                      "_elements": "identifier"}
            for resource in self.search(resource_type, params):
                for ident in resource.get("identifier") or ():
                    value = f"{ident.get('system', '')}|{ident.get('value')}"
                    if value in wanted:
                        found.setdefault(value, resource["id"])
        return found

    def all_secrets(self) -> Secrets:
        """Every secret this client knows (the auth's, every token it got), to scrub text with."""
        for value in self.auth.secrets():
            self.secrets.add(value)
        return self.secrets


def _checked_root(base_url: str, *, allow_insecure: bool) -> str:
    root = server_root(base_url)
    parts = urlsplit(root)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BundlerError(f"not an http(s) base URL: {base_url!r}")
    if parts.scheme == "http" and not is_loopback(parts.hostname) and not allow_insecure:
        raise BundlerError(f"refusing plain http to {parts.hostname}: use https, or --allow-insecure")
    return root


def _chunks(identifiers: Sequence[str], *, max_url: int, most: int) -> Iterator[list[str]]:
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
