"""Authentication for a Medplum server, as `httpx.Auth`: OAuth2 client credentials, or a ready bearer token.

    auth = ClientCredentials(client_id, client_secret)
    with FhirClient("https://api.medplum.com/", auth) as client:   # binds its own copy of `auth`
        client.search("Communication", {"_count": "1"})

`ClientCredentials` logs in at `{root}/oauth2/token` (form-encoded `grant_type=client_credentials`) and
keeps the token for every thread of the client it is bound to: Medplum allows 160 logins a minute per
IP, so workers must share one. It logs in again shortly before the token expires, and, following httpx's
documented flow (`response = yield request`), once more when the server answers 401, then sends the
request again. A `FhirClient` binds a copy (`bind`), so the object the caller passed never changes and
can be given to several clients.

Nothing here shows a secret: `repr` hides them, and every token is added to the client's `Secrets` as
it is issued, so whatever the program prints or stores can be scrubbed of it.
"""

from __future__ import annotations

import abc
import re
import threading
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

import httpx
import orjson

from ..errors import AuthError, BundlerError, ServerError, Unreachable
from ..vocabulary import token_url


@dataclass
class Secrets:
    """Strings that must never be shown; `scrub` removes them from any text we print or store, `scrub_bytes`
    from a server's answer before anything reads it. Safe to share between threads."""

    values: set[str]

    def add(self, value: str | None) -> None:
        if value and len(value) >= 4:
            self.values.add(value)

    def scrub(self, text: str) -> str:
        for value in tuple(self.values):  # a copy: another thread may add a token meanwhile
            text = text.replace(value, "***")
        return text

    def scrub_bytes(self, data: bytes) -> bytes:
        for value in tuple(self.values):
            raw = value.encode()
            if raw in data:
                data = data.replace(raw, b"***")
        return data


_SSL_REASON = re.compile(r"\]\s*(.*?)\s*\(_ssl\.c")


def transport_problem(exc: httpx.TransportError, *, timeout: float | None = None) -> str:
    """What went wrong with a connection, in words ("connection refused", "TLS failed: ...")."""
    if isinstance(exc, httpx.TimeoutException):
        return _timeout_problem(exc, timeout)
    if isinstance(exc, httpx.ConnectError):
        return _connect_problem(str(exc))
    if isinstance(exc, httpx.RemoteProtocolError):
        return "the server closed the connection without answering"
    if isinstance(exc, httpx.ReadError):
        return "the connection was lost while waiting for the answer"
    if isinstance(exc, httpx.WriteError):
        return "the connection was lost while sending"
    if isinstance(exc, httpx.ProxyError):
        return "the HTTP proxy refused the connection"
    return "the connection failed"


def _timeout_problem(exc: httpx.TimeoutException, timeout: float | None) -> str:
    if isinstance(exc, httpx.ConnectTimeout):
        return "connection timed out"
    if isinstance(exc, httpx.PoolTimeout):
        return "no free connection in time"
    if isinstance(exc, httpx.WriteTimeout):
        return "timed out while sending"
    return f"no answer within {timeout:g} s" if timeout else "no answer in time"


def _connect_problem(text: str) -> str:
    low = text.lower()
    if "ssl" in low or "certificate" in low or "tls" in low:
        m = _SSL_REASON.search(text)
        return f"TLS failed ({m.group(1)})" if m and m.group(1) else "TLS failed"
    if "refused" in low:
        return "connection refused"
    if any(s in low for s in ("name or service not known", "nodename nor servname", "name resolution",
                              "getaddrinfo", "no address associated")):
        return "host name not found"
    if "unreachable" in low:
        return "network unreachable"
    return "could not connect"


class MedplumAuth(httpx.Auth, abc.ABC):
    """What a `FhirClient` needs of its auth: a bound copy of its own, the current token, the secrets."""

    @abc.abstractmethod
    def bind(self, root: str, http: httpx.Client, secrets: Secrets) -> MedplumAuth:
        """The auth for one client of the server at `root`: logs in through `http` and adds every token it
        gets to `secrets`. `self` is not changed."""

    @abc.abstractmethod
    def token(self, *, stale: str | None = None) -> str:
        """A token to send now; `stale` is one the server refused (a new one is got, if the auth can)."""

    @abc.abstractmethod
    def secrets(self) -> list[str]:
        """The secret and the current token, for scrubbing."""

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        # what httpx.AsyncClient would use: our flows log in with blocking I/O under a lock (sync_auth_flow)
        raise TypeError(f"{type(self).__name__} works with httpx.Client only (it logs in synchronously)")


class ClientCredentials(MedplumAuth):
    """OAuth2 client credentials; one token shared by every thread, renewed before expiry and on a 401.

    `token_url` defaults to the token endpoint of the server the auth is bound to. `logins` counts the
    tokens this object got (a bound copy counts its own)."""

    def __init__(self, client_id: str, client_secret: str, *, token_url: str | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.client_id = client_id
        self._secret = client_secret
        self.token_url = token_url
        self._clock = clock
        self._http: httpx.Client | None = None  # set by bind: logins go through the client's own transport
        self._issued: Secrets | None = None
        self._lock = threading.Lock()  # held while logging in: the other threads wait for that token
        self._token: str | None = None
        self._expires = 0.0
        self.logins = 0

    def __repr__(self) -> str:
        return f"ClientCredentials(client_id={self.client_id!r}, client_secret=***)"

    def bind(self, root: str, http: httpx.Client, secrets: Secrets) -> ClientCredentials:
        bound = ClientCredentials(self.client_id, self._secret, token_url=self.token_url or token_url(root),
                                  clock=self._clock)
        bound._http, bound._issued = http, secrets
        secrets.add(self._secret)
        return bound

    def secrets(self) -> list[str]:
        return [self._secret] + ([self._token] if self._token else [])

    def token(self, *, stale: str | None = None) -> str:
        with self._lock:
            if self._token is not None and self._token != stale and self._clock() < self._expires:
                return self._token  # still good, or another thread already replaced the stale one
            return self._login()

    def sync_auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        token = self.token()
        request.headers["Authorization"] = f"Bearer {token}"
        response = yield request
        if response.status_code == 401:
            response.read()  # gives its connection back to the pool before we may wait for a login
            request.headers["Authorization"] = f"Bearer {self.token(stale=token)}"
            yield request

    def _login(self) -> str:
        if self.token_url is None:
            raise BundlerError("ClientCredentials has no token URL: give token_url=, or use it through a FhirClient")
        form = {"grant_type": "client_credentials", "client_id": self.client_id, "client_secret": self._secret}
        try:
            resp = self._post(self.token_url, form)
        except httpx.TransportError as exc:
            raise Unreachable(f"cannot reach {self.token_url}: {transport_problem(exc)}") from None
        token, lifetime = self._granted(resp)
        self.logins += 1
        self._token = token
        if self._issued is not None:
            self._issued.add(self._token)
        self._expires = self._clock() + lifetime - min(60.0, lifetime / 10)  # renew a little before expiry
        return self._token

    def _granted(self, resp: httpx.Response) -> tuple[str, float]:
        """The token and its lifetime in seconds; AuthError, with the server's reason, when the answer is not
        a token, ServerError when it is a token response that is not what OAuth2 promises."""
        body = json_body(resp)
        if resp.status_code == 200 and isinstance(body, dict) and "access_token" in body:
            return _token_of(body, self.token_url)
        why = (body.get("error_description") or body.get("error")) if isinstance(body, dict) else None
        message = (f"login refused by {self.token_url} (HTTP {resp.status_code}{': ' + str(why) if why else ''}): "
                   "check the client id and secret")
        scrub = self._issued.scrub if self._issued is not None else str
        raise AuthError(scrub(message.replace(self._secret, "***")), status=resp.status_code)

    def _post(self, url: str, form: dict[str, str]) -> httpx.Response:
        headers = {"Accept": "application/json"}
        if self._http is not None:
            return self._http.post(url, data=form, headers=headers, auth=httpx.Auth())  # httpx's no-op auth
        with httpx.Client() as http:
            return http.post(url, data=form, headers=headers)


class BearerToken(MedplumAuth):
    """A ready bearer token (`--token`): used as is, never renewed; a 401 is an AuthError."""

    def __init__(self, token: str) -> None:
        self._token = token

    def __repr__(self) -> str:
        return "BearerToken(***)"

    def bind(self, root: str, http: httpx.Client, secrets: Secrets) -> BearerToken:
        secrets.add(self._token)
        return self  # nothing in it changes: every client may share it

    def secrets(self) -> list[str]:
        return [self._token]

    def token(self, *, stale: str | None = None) -> str:
        if stale is not None:
            raise AuthError("the server refused the bearer token given with --token (expired?)", status=401)
        return self._token

    def sync_auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = f"Bearer {self._token}"
        response = yield request
        if response.status_code == 401:
            self.token(stale=self._token)


def _token_of(body: dict[str, Any], url: str | None) -> tuple[str, float]:
    """`access_token` and `expires_in` (3600 when absent) of a token response; ServerError when either is not
    what RFC 6749 promises (never showing the token)."""
    token, lifetime = body.get("access_token"), body.get("expires_in", 3600)
    if not isinstance(token, str) or not token:
        raise ServerError(f"login at {url}: the token endpoint answered an access_token that is not a string")
    if isinstance(lifetime, str) and lifetime.isdigit():
        lifetime = int(lifetime)
    if isinstance(lifetime, bool) or not isinstance(lifetime, int | float) or lifetime <= 0:
        raise ServerError(f"login at {url}: the token endpoint answered expires_in {str(lifetime)[:40]!r}, "
                          "not a number of seconds")
    return token, float(lifetime)


def json_body(resp: httpx.Response) -> Any:
    """The response's JSON, or None when it has no body or not JSON."""
    try:
        return orjson.loads(resp.content) if resp.content else None
    except orjson.JSONDecodeError:
        return None
