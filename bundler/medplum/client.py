"""The HTTP shell: one `FhirClient` the loader is given, so tests point it at the local server or through
the fault proxy (or swap the httpx transport).

What it promises its callers:
- a request that certainly did not reach the server (connection refused, pool timeout) or was
  refused before it was processed (429) is retried here, paced and backed off;
- a request that may have been applied (timeout or connection lost after sending, 502/503/504) raises
  `UnknownOutcome` and is NOT retried: only the caller can reconcile it (search, then record or re-send);
- reads (GET, search) are idempotent and retried on any transient failure;
- one OAuth2 token is shared by every thread, renewed shortly before expiry and once on a 401;
- the client secret and tokens never appear in an exception or log line.
"""

from __future__ import annotations

import ipaddress
import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx
import orjson

from ..errors import AuthError, BundlerError, ServerError, UnknownOutcome
from ..vocabulary import READ_POINTS, SEARCH_POINTS, WRITE_POINTS, fhir_base, identifier_token, server_root, token_url
from .ratelimit import Pacer, parse_ratelimit

USER_AGENT = "thread-bundler/0.1"
RETRY_STATUSES_UNKNOWN = {502, 503, 504}


class Unreachable(BundlerError):
    """The server could not be reached at all (nothing was sent)."""


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
    texts = []
    for issue in outcome.get("issue") or ():
        text = (issue.get("details") or {}).get("text") or issue.get("diagnostics") or issue.get("code") or "error"
        where = issue.get("expression") or issue.get("location")
        texts.append(f"{text} ({', '.join(where)})" if where else text)
    return "; ".join(texts)


@dataclass
class Secrets:
    """Strings that must never be shown; `scrub` removes them from any text we print or store."""

    values: set[str]

    def add(self, value: str | None) -> None:
        if value and len(value) >= 4:
            self.values.add(value)

    def scrub(self, text: str) -> str:
        for value in self.values:
            text = text.replace(value, "***")
        return text


class ClientCredentials:
    """OAuth2 client credentials at `{base}/oauth2/token`, one token shared by all threads."""

    def __init__(self, client_id: str, client_secret: str, *, token_url: str | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.client_id = client_id
        self._secret = client_secret
        self.token_url = token_url
        self._clock = clock
        self._lock = threading.Lock()
        self._token: str | None = None
        self._expires = 0.0
        self.logins = 0

    def __repr__(self) -> str:
        return f"ClientCredentials(client_id={self.client_id!r}, client_secret=***)"

    def secrets(self) -> list[str]:
        return [self._secret] + ([self._token] if self._token else [])

    def token(self, http: httpx.Client, *, renew: bool = False, stale: str | None = None) -> str:
        with self._lock:
            if renew and stale is not None and self._token != stale:
                return self._token or self._login(http)  # another thread already renewed it
            if renew or self._token is None or self._clock() >= self._expires:
                return self._login(http)
            return self._token

    def _login(self, http: httpx.Client) -> str:
        assert self.token_url is not None
        form = {"grant_type": "client_credentials", "client_id": self.client_id, "client_secret": self._secret}
        try:
            resp = http.post(self.token_url, data=form, headers={"Accept": "application/json"})
        except httpx.TransportError as exc:
            raise Unreachable(f"cannot reach {self.token_url}: {type(exc).__name__}") from None
        body: Any = _json(resp)
        if resp.status_code != 200 or not isinstance(body, dict) or "access_token" not in body:
            why = (body.get("error_description") or body.get("error")) if isinstance(body, dict) else None
            raise AuthError(f"login refused by {self.token_url} (HTTP {resp.status_code}"
                            f"{': ' + str(why) if why else ''}): check the client id and secret",
                            status=resp.status_code)
        self.logins += 1
        self._token = str(body["access_token"])
        lifetime = float(body.get("expires_in") or 3600)
        self._expires = self._clock() + lifetime - min(60.0, lifetime / 10)  # renew a little before expiry
        return self._token


class BearerToken:
    """A ready bearer token (`--token`): used as is, never renewed."""

    def __init__(self, token: str) -> None:
        self._token = token

    def __repr__(self) -> str:
        return "BearerToken(***)"

    def secrets(self) -> list[str]:
        return [self._token]

    def token(self, http: httpx.Client, *, renew: bool = False, stale: str | None = None) -> str:
        if renew:
            raise AuthError("the server refused the bearer token given with --token (expired?)", status=401)
        return self._token


def _json(resp: httpx.Response) -> Any:
    try:
        return orjson.loads(resp.content) if resp.content else None
    except orjson.JSONDecodeError:
        return None


def _backoff(attempt: int, *, base: float = 0.25, cap: float = 20.0) -> float:
    """Full-jitter exponential backoff."""
    return random.uniform(0, min(cap, base * 2**attempt))


class FhirClient:
    """A FHIR R4 client for one Medplum (or any FHIR) server.

        client = FhirClient("https://api.medplum.com/", ClientCredentials(id, secret))
        response = client.transaction(bundle_bytes)     # the response Bundle, as a dict
        resources = client.search("Communication", {"identifier": "urn:x|t1"})
    """

    def __init__(self, base_url: str, auth: ClientCredentials | BearerToken, *, timeout: float = 60.0,
                 allow_insecure: bool = False, verify: bool = True, transport: httpx.BaseTransport | None = None,
                 pacer: Pacer | None = None, max_attempts: int = 8, concurrency: int = 8,
                 secrets: Secrets | None = None) -> None:
        root = server_root(base_url)
        parts = urlsplit(root)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise BundlerError(f"not an http(s) base URL: {base_url!r}")
        if parts.scheme == "http" and not is_loopback(parts.hostname) and not allow_insecure:
            raise BundlerError(f"refusing plain http to {parts.hostname}: use https, or --allow-insecure")
        self.root = root
        self.fhir_base = fhir_base(root)
        self.auth = auth
        if isinstance(auth, ClientCredentials) and auth.token_url is None:
            auth.token_url = token_url(root)
        self.pacer = pacer or Pacer()
        self.max_attempts = max_attempts
        self.secrets = secrets if secrets is not None else Secrets(set())
        for value in auth.secrets():
            self.secrets.add(value)
        limits = httpx.Limits(max_connections=concurrency + 2, max_keepalive_connections=concurrency + 2)
        self.http = httpx.Client(timeout=httpx.Timeout(timeout, connect=10.0), verify=verify, transport=transport,
                                 limits=limits, headers={"User-Agent": USER_AGENT})
        self.requests = 0
        self.last_ratelimit: list[str] = []
        self._count_lock = threading.Lock()

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> FhirClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- requests ----------------------------------------------------------------------------------

    def _send(self, method: str, url: str, *, content: bytes | None = None, cost: float = 0,
              idempotent: bool) -> httpx.Response:
        """One logical request with auth, pacing, and the retries that are safe for it."""
        renewed = False
        attempt = 0
        while True:
            attempt += 1
            self.pacer.wait(cost)
            token = self.auth.token(self.http)
            self.secrets.add(token)
            headers = {"Authorization": f"Bearer {token}", "Accept": "application/fhir+json"}
            if content is not None:
                headers["Content-Type"] = "application/fhir+json"
            with self._count_lock:
                self.requests += 1
            try:
                resp = self.http.request(method, url, content=content, headers=headers)
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
                self.pacer.done(cost)
                if attempt >= self.max_attempts:
                    raise Unreachable(f"cannot reach {self.root}: {type(exc).__name__} "
                                      f"(after {attempt} attempts)") from None
                time.sleep(_backoff(attempt))
                continue
            except httpx.TransportError as exc:  # sent, or maybe sent: the outcome is unknown
                self.pacer.done(cost)
                if idempotent and attempt < self.max_attempts:
                    time.sleep(_backoff(attempt))
                    continue
                raise UnknownOutcome(f"{method} {url}: {type(exc).__name__} after sending") from None
            self.pacer.done(cost)
            if ratelimit := resp.headers.get_list("RateLimit"):
                self.last_ratelimit = ratelimit
                self.pacer.update(parse_ratelimit(ratelimit))
            if resp.status_code == 401 and not renewed:
                renewed = True
                self.auth.token(self.http, renew=True, stale=token)
                continue
            if resp.status_code == 429:
                limits = parse_ratelimit(resp.headers.get_list("RateLimit"))
                wait = max((lim.reset for lim in limits.values() if lim.remaining <= 0), default=0.0)
                self.pacer.blocked(wait or _backoff(attempt, base=1.0))
                if attempt < self.max_attempts * 4:
                    continue
                raise Throttled(f"{method} {url}: still throttled after {attempt} attempts", status=429,
                                outcome=_json(resp))
            if resp.status_code in RETRY_STATUSES_UNKNOWN:
                if idempotent and attempt < self.max_attempts:
                    time.sleep(_backoff(attempt))
                    continue
                if not idempotent:
                    raise UnknownOutcome(f"{method} {url}: HTTP {resp.status_code} from the server or a gateway")
            return resp

    def _check(self, resp: httpx.Response, what: str) -> Any:
        body = _json(resp)
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
        chunks: list[list[str]] = [[]]
        length = 0
        for ident in dict.fromkeys(identifiers):
            if chunks[-1] and (length + len(ident) > max_url or len(chunks[-1]) >= 100):
                chunks.append([])
                length = 0
            chunks[-1].append(ident)
            length += len(ident) + 3
        for chunk in filter(None, chunks):
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
        for value in self.auth.secrets():
            self.secrets.add(value)
        return self.secrets
