"""The client's auth (`bundler.medplum.auth`) against a real server, faults injected by the proxy."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from faultproxy import FaultProxy, Rule

from bundler.errors import AuthError, Unreachable
from bundler.medplum.auth import BearerToken, ClientCredentials
from bundler.medplum.client import FhirClient

FHIR = r"/fhir/R4/"
TOKEN = r"/oauth2/token"


def credentials(project: Any, **kw: Any) -> ClientCredentials:
    return ClientCredentials(project.target.client_id, project.target.client_secret, **kw)


def logins(proxy: FaultProxy) -> int:
    return sum(1 for e in proxy.log if e.method == "POST" and TOKEN in e.path)


def fhir_requests(proxy: FaultProxy) -> list[str]:
    return [e.action for e in proxy.log if FHIR in e.path]


def test_a_401_renews_the_token_once_and_sends_the_request_again(project: Any) -> None:
    with FaultProxy(project.target.base_url) as proxy, FhirClient(proxy.url, credentials(project)) as client:
        client.search_page("Communication", {"_count": "1"})
        first = client.auth.token()
        proxy.add(Rule("status", status=401, path=FHIR, nth=1, times=1))  # the token revoked
        client.search_page("Communication", {"_count": "1"})
        assert client.auth.logins == 2 == logins(proxy)
        assert fhir_requests(proxy) == ["forwarded", "status 401", "forwarded"]
        assert client.auth.token() != first
        assert {first, client.auth.token()} <= client.all_secrets().values
        assert client.requests == 3


def test_a_token_refused_again_after_renewal_is_an_auth_error(project: Any) -> None:
    with FaultProxy(project.target.base_url) as proxy, FhirClient(proxy.url, credentials(project)) as client:
        proxy.add(Rule("status", status=401, path=FHIR))
        with pytest.raises(AuthError, match=r"refused our token \(HTTP 401\)"):
            client.search_page("Communication", {"_count": "1"})
        assert client.auth.logins == 2 == logins(proxy)  # one renewal, not a loop
        assert fhir_requests(proxy) == ["status 401", "status 401"]


def test_worker_threads_share_one_login(project: Any) -> None:
    workers = 8
    start = threading.Barrier(workers)
    with FaultProxy(project.target.base_url) as proxy, FhirClient(proxy.url, credentials(project)) as client:
        proxy.add(Rule("delay", delay=0.3, path=TOKEN))  # the others arrive while the first logs in

        def search(_: int) -> int:
            start.wait()
            return len(client.search_page("Communication", {"_count": "1"}).get("entry", []))

        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(search, range(workers)))
        assert client.auth.logins == 1 == logins(proxy)
        assert len(fhir_requests(proxy)) == workers


def test_the_callers_auth_object_is_never_changed(project: Any) -> None:
    given = credentials(project)
    with FhirClient(project.target.base_url, given) as one, FhirClient(project.target.base_url, given) as two:
        one.search_page("Communication", {"_count": "1"})
        two.search_page("Communication", {"_count": "1"})
        assert one.auth is not given and two.auth is not one.auth
        assert isinstance(one.auth, ClientCredentials) and one.auth.logins == 1
        assert one.auth.token_url == f"{one.root}oauth2/token"
    assert given.token_url is None and given.logins == 0
    assert given.secrets() == [project.target.client_secret]  # no token got into it


def test_a_token_is_renewed_shortly_before_it_expires(project: Any) -> None:
    now = [0.0]
    with FaultProxy(project.target.base_url) as proxy, \
            FhirClient(proxy.url, credentials(project, clock=lambda: now[0])) as client:
        client.search_page("Communication", {"_count": "1"})
        client.search_page("Communication", {"_count": "1"})
        assert logins(proxy) == 1
        now[0] += 24 * 3600  # past any token's lifetime: renewed before use, not after a 401
        client.search_page("Communication", {"_count": "1"})
        assert client.auth.logins == 2 == logins(proxy)
        assert "status 401" not in fhir_requests(proxy)


def test_login_failures_keep_their_messages(project: Any) -> None:
    wrong = ClientCredentials(project.target.client_id, "wrong-secret-123")
    with FhirClient(project.target.base_url, wrong) as client:
        with pytest.raises(AuthError, match=r"login refused by .*oauth2/token.*check the client id and secret"):
            client.search_page("Communication", {"_count": "1"})
        assert "wrong-secret-123" in client.all_secrets().values
    with FhirClient("http://127.0.0.1:9/", credentials(project)) as client, \
            pytest.raises(Unreachable, match=r"cannot reach http://127.0.0.1:9/oauth2/token: connection refused$"):
        client.search_page("Communication", {"_count": "1"})


def test_a_refused_bearer_token_is_an_auth_error(project: Any) -> None:
    with FaultProxy(project.target.base_url) as proxy, FhirClient(proxy.url, BearerToken("not-a-token")) as client:
        with pytest.raises(AuthError, match=r"refused the bearer token given with --token \(expired\?\)"):
            client.search_page("Communication", {"_count": "1"})
        assert logins(proxy) == 0 and len(fhir_requests(proxy)) == 1


def test_no_secret_in_repr() -> None:
    creds = ClientCredentials("client-id", "super-secret-value")
    bearer = BearerToken("a-bearer-token-value")
    assert "super-secret-value" not in repr(creds) and "client-id" in repr(creds)
    assert "a-bearer-token-value" not in repr(bearer)
