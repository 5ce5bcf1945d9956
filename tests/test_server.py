"""Tests of the local Medplum server itself, all through real HTTP (httpx).

The ones that hold for any Medplum also run against a remote server (``MEDPLUM_BASE_URL`` & co);
the ones that need the local server's switches are ``local_only``.
"""

from __future__ import annotations

import base64
import re
import time
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from bundler.medplum.ratelimit import parse_ratelimit

if TYPE_CHECKING:
    from conftest import MedplumTarget, Project

    from bundler.medplum.localserver import LocalServer

FHIR_JSON = "application/fhir+json"
SYSTEM = "https://thread-bundler.test/id"


# --------------------------------------------------------------------------- helpers


_TOKENS: dict[str, str] = {}  # client id → a token (one login per project a session: Medplum allows 160 a minute)


@pytest.fixture
def access_token(project: Project) -> str:
    """A token for the test's project (its kind set by a `project_kind` marker)."""
    target = project.target
    if target.client_id not in _TOKENS or target.local is not None:
        response = httpx.post(target.token_url, data={"grant_type": "client_credentials", "client_id": target.client_id,
                                                      "client_secret": target.client_secret})
        response.raise_for_status()
        _TOKENS[target.client_id] = response.json()["access_token"]
    return _TOKENS[target.client_id]


@pytest.fixture
def fhir(project: Project, access_token: str) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {access_token}", "Content-Type": FHIR_JSON, "Accept": FHIR_JSON}
    # a real Medplum's quota is shared by every test of the run (and these requests are not paced as the client's
    # are): a 429 there is waited out, as its RateLimit header says; the local server's quota tests see theirs
    transport = QuotaWaiting(httpx.HTTPTransport()) if project.server is None else None
    with httpx.Client(base_url=project.target.fhir_base, headers=headers, timeout=30, transport=transport) as client:
        yield client


class QuotaWaiting(httpx.BaseTransport):
    """Sends a request again after a 429, once the quota window the server's RateLimit header names has renewed
    (at most `TRIES` times): what these tests look at is how the server treats what we send, not its quota."""

    TRIES = 3

    def __init__(self, inner: httpx.BaseTransport) -> None:
        self.inner = inner

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        for _ in range(self.TRIES):
            response = self.inner.handle_request(request)
            if response.status_code != 429:
                return response
            response.read()
            limits = parse_ratelimit(response.headers.get_list("ratelimit")).values()
            time.sleep(min(60.0, max((limit.reset for limit in limits), default=60.0)) + 0.5)
        return self.inner.handle_request(request)

    def close(self) -> None:
        self.inner.close()


def urn() -> str:
    return f"urn:uuid:{uuid.uuid4()}"


def post_entry(full_url: str, resource: dict[str, Any], **request: str) -> dict[str, Any]:
    return {
        "fullUrl": full_url,
        "resource": resource,
        "request": {"method": "POST", "url": resource["resourceType"], **request},
    }


def bundle(entries: list[dict[str, Any]], kind: str = "transaction") -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": kind, "entry": entries}


def header(prefix: str, title: str = "Walkthrough") -> dict[str, Any]:
    return {
        "resourceType": "Communication",
        "status": "in-progress",
        "identifier": [{"system": SYSTEM, "value": f"{prefix}-header"}],
        "topic": {"text": title},
    }


def message(prefix: str, n: int, header_ref: str, sent: str, reply_to: str | None = None) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Communication",
        "status": "in-progress",
        "identifier": [{"system": SYSTEM, "value": f"{prefix}-m{n}"}],
        "partOf": [{"reference": header_ref}],
        "sent": sent,
        "payload": [{"contentString": f"message {n}"}],
    }
    if reply_to:
        resource["inResponseTo"] = [{"reference": reply_to}]
    return resource


def walkthrough(prefix: str) -> tuple[dict[str, Any], list[str]]:
    """Header + 3 messages linked by urn:uuid (partOf, inResponseTo); sent times out of bundle order."""
    h, m1, m2, m3 = urn(), urn(), urn(), urn()
    entries = [
        post_entry(h, header(prefix)),
        post_entry(m1, message(prefix, 1, h, "2024-03-01T10:00:00Z")),
        post_entry(m2, message(prefix, 2, h, "2024-03-01T10:05:00Z", reply_to=m1)),
        post_entry(m3, message(prefix, 3, h, "2024-03-01T09:55:00Z", reply_to=m2)),
    ]
    return bundle(entries), [h, m1, m2, m3]


def search_all(fhir: httpx.Client, query: str) -> list[dict[str, Any]]:
    """Follows `next` links; returns every resource."""
    resources: list[dict[str, Any]] = []
    url: str | None = query
    while url:
        response = fhir.get(url)
        assert response.status_code == 200, response.text
        page = response.json()
        resources += [e["resource"] for e in page.get("entry", [])]
        url = next((link["url"] for link in page.get("link", []) if link["relation"] == "next"), None)
    return resources


def rate_limit(response: httpx.Response) -> dict[str, tuple[int, int]]:
    """Parses every RateLimit header line into {name: (remaining, seconds)}."""
    parsed: dict[str, tuple[int, int]] = {}
    for line in response.headers.get_list("ratelimit"):
        for part in line.split(","):
            match = re.fullmatch(r'\s*"(\w+)";r=(\d+);t=(\d+)\s*', part)
            assert match, f"bad RateLimit header: {line!r}"
            parsed[match.group(1)] = (int(match.group(2)), int(match.group(3)))
    return parsed


def statuses(response_bundle: dict[str, Any]) -> list[str]:
    return [entry["response"]["status"] for entry in response_bundle["entry"]]


def count_identifiers(fhir: httpx.Client, values: list[str]) -> int:
    query = ",".join(f"{SYSTEM}|{v}" for v in values)
    return len(search_all(fhir, f"Communication?identifier={query}&_count=100"))


# --------------------------------------------------------------------------- health and auth


def test_healthcheck_needs_no_auth(medplum_target: MedplumTarget) -> None:
    response = httpx.get(f"{medplum_target.base_url}healthcheck")
    assert response.status_code == 200
    assert response.json()["ok"] is True


def test_fhir_requires_valid_credentials(project: Project, access_token: str) -> None:
    base = project.target.fhir_base
    anonymous = httpx.get(f"{base}Communication")
    assert anonymous.status_code == 401
    assert anonymous.json()["resourceType"] == "OperationOutcome"
    forged = httpx.get(f"{base}Communication", headers={"Authorization": f"Bearer {access_token}x"})
    assert forged.status_code == 401
    ok = httpx.get(f"{base}Communication", headers={"Authorization": f"Bearer {access_token}"})
    assert ok.status_code == 200
    assert ok.headers["content-type"].startswith(FHIR_JSON)
    assert ok.json()["type"] == "searchset"


def test_http_basic_client_credentials_on_fhir_requests(project: Project) -> None:
    target = project.target
    good = base64.b64encode(f"{target.client_id}:{target.client_secret}".encode()).decode()
    bad = base64.b64encode(f"{target.client_id}:not-the-secret".encode()).decode()
    assert httpx.get(f"{target.fhir_base}Communication", headers={"Authorization": f"Basic {good}"}).status_code == 200
    assert httpx.get(f"{target.fhir_base}Communication", headers={"Authorization": f"Basic {bad}"}).status_code == 401


def test_token_endpoint(project: Project) -> None:
    target = project.target
    form = {"grant_type": "client_credentials", "client_id": target.client_id, "client_secret": target.client_secret}
    good = httpx.post(target.token_url, data=form)
    assert good.status_code == 200
    body = good.json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] > 0
    assert body["project"]["reference"].startswith("Project/")
    assert body["profile"]["reference"].startswith("ClientApplication/")

    wrong = httpx.post(target.token_url, data={**form, "client_secret": "wrong-secret"})
    assert wrong.status_code == 400
    assert wrong.json()["error"] == "invalid_request"
    assert wrong.json()["error_description"]

    basic = httpx.post(
        target.token_url,
        data={"grant_type": "client_credentials"},
        auth=(target.client_id, target.client_secret),
    )
    assert basic.status_code == 200
    assert basic.json()["access_token"]


@pytest.mark.local_only
def test_token_expiry_gives_401(local_server: LocalServer, project: Project) -> None:
    """A token past its expiry is refused (401, `expired`) and a new one is accepted: the expired one is issued
    expired (a TTL of 0), so nothing waits for a token to age."""
    target = project.target
    form = {"grant_type": "client_credentials", "client_id": target.client_id, "client_secret": target.client_secret}

    def token() -> dict[str, Any]:
        return httpx.post(target.token_url, data=form).json()  # type: ignore[no-any-return]

    def status(access_token: str) -> httpx.Response:
        return httpx.get(f"{target.fhir_base}Communication", headers={"Authorization": f"Bearer {access_token}"})

    assert status(token()["access_token"]).status_code == 200
    project.configure(token_ttl=0)
    stale = token()
    assert stale["expires_in"] == 0
    expired = status(stale["access_token"])
    assert expired.status_code == 401
    assert any(issue["code"] == "expired" for issue in expired.json()["issue"])
    project.configure(token_ttl=3600)
    assert status(token()["access_token"]).status_code == 200


# --------------------------------------------------------------------------- transactions


def test_walkthrough_transaction_rewrites_references(project: Project, fhir: httpx.Client) -> None:
    request_bundle, _ = walkthrough(project.prefix)
    response = fhir.post("", json=request_bundle)
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["type"] == "transaction-response"
    assert statuses(result) == ["201"] * 4
    locations = [entry["response"]["location"] for entry in result["entry"]]
    assert all(re.fullmatch(r"Communication/[0-9a-f-]{36}", loc) for loc in locations), locations
    header_ref, m1_ref, m2_ref, _ = locations

    stored_m3 = fhir.get(locations[3]).json()
    assert stored_m3["partOf"] == [{"reference": header_ref}]
    assert stored_m3["inResponseTo"] == [{"reference": m2_ref}]
    assert "urn:uuid" not in response.text
    stored_m2 = fhir.get(m2_ref).json()
    assert stored_m2["inResponseTo"] == [{"reference": m1_ref}]

    ordered = search_all(fhir, f"Communication?part-of={header_ref}&_sort=sent")
    assert [r["payload"][0]["contentString"] for r in ordered] == ["message 3", "message 1", "message 2"]
    descending = search_all(fhir, f"Communication?part-of={header_ref}&_sort=-sent")
    assert [r["id"] for r in descending] == [r["id"] for r in reversed(ordered)]


def test_threads_are_the_communications_without_part_of(project: Project, fhir: httpx.Client) -> None:
    request_bundle, _ = walkthrough(project.prefix)
    answer = fhir.post("", json=request_bundle).json()
    header_ref = answer["entry"][0]["response"]["location"]
    since = min(e["resource"]["meta"]["lastUpdated"] for e in answer["entry"])
    # (what this test wrote, not every thread of a project a real server keeps: Medplum pages past 10,000 only by
    # cursor, for a search sorted by _lastUpdated)
    threads = search_all(fhir, f"Communication?part-of:missing=true&_lastUpdated=ge{since}&_sort=_lastUpdated"
                               "&_count=1000")
    assert any(e["resource"].get("partOf") for e in answer["entry"]), "the walkthrough has messages"
    thread_refs = {f"Communication/{r['id']}" for r in threads}
    assert header_ref in thread_refs
    assert all("partOf" not in r for r in threads)


def test_unresolved_and_uppercase_urns_are_stored_as_written(project: Project, fhir: httpx.Client) -> None:
    h = urn()
    upper = f"urn:uuid:{str(uuid.uuid4()).upper()}"
    dangling = urn()
    entries = [
        post_entry(upper, header(project.prefix)),
        post_entry(h, message(project.prefix, 1, upper, "2024-03-01T10:00:00Z", reply_to=dangling)),
    ]
    result = fhir.post("", json=bundle(entries))
    assert result.status_code == 200, result.text
    stored = result.json()["entry"][1]["resource"]
    assert stored["partOf"] == [{"reference": upper}]
    assert stored["inResponseTo"] == [{"reference": dangling}]


def test_failing_entry_rolls_back_the_whole_transaction(project: Project, fhir: httpx.Client) -> None:
    request_bundle, _ = walkthrough(project.prefix)
    request_bundle["entry"][2]["resource"]["status"] = 42  # invalid: status is a code (string)
    response = fhir.post("", json=request_bundle)
    assert response.status_code == 400
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["expression"] == ["Communication.status"]
    values = [f"{project.prefix}-header"] + [f"{project.prefix}-m{n}" for n in (1, 2, 3)]
    assert count_identifiers(fhir, values) == 0


@pytest.mark.project_kind("non-atomic")
def test_without_transaction_bundles_a_transaction_runs_as_batch(project: Project, fhir: httpx.Client) -> None:
    h, m1, m2 = urn(), urn(), urn()
    bad = message(project.prefix, 2, h, "2024-03-01T10:05:00Z")
    bad["status"] = 42
    entries = [
        post_entry(h, header(project.prefix)),
        post_entry(m1, message(project.prefix, 1, h, "2024-03-01T10:00:00Z")),
        post_entry(m2, bad),
    ]
    response = fhir.post("", json=bundle(entries))
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["type"] == "transaction-response"
    assert statuses(result) == ["201", "201", "400"]
    assert result["entry"][2]["response"]["outcome"]["resourceType"] == "OperationOutcome"
    values = [f"{project.prefix}-header", f"{project.prefix}-m1", f"{project.prefix}-m2"]
    assert count_identifiers(fhir, values) == 2
    stored_m1 = fhir.get(result["entry"][1]["response"]["location"]).json()
    assert stored_m1["partOf"] == [{"reference": result["entry"][0]["response"]["location"]}]


def test_conditional_create_twice_gives_one_resource(project: Project, fhir: httpx.Client) -> None:
    condition = f"identifier={SYSTEM}|{project.prefix}-header"
    entry = post_entry(urn(), header(project.prefix), ifNoneExist=condition)
    first = fhir.post("", json=bundle([entry]))
    second = fhir.post("", json=bundle([{**entry, "fullUrl": urn()}]))
    assert first.status_code == 200 and second.status_code == 200, (first.text, second.text)
    assert statuses(first.json()) == ["201"]
    assert statuses(second.json()) == ["200"]
    first_id = first.json()["entry"][0]["resource"]["id"]
    assert second.json()["entry"][0]["resource"]["id"] == first_id
    assert count_identifiers(fhir, [f"{project.prefix}-header"]) == 1

    plain = fhir.post("Communication", json=header(project.prefix), headers={"If-None-Exist": condition})
    assert plain.status_code == 200
    assert plain.json()["id"] == first_id


def test_conditional_reference_is_resolved(project: Project, fhir: httpx.Client) -> None:
    created = fhir.post("Communication", json=header(project.prefix))
    assert created.status_code == 201
    conditional = f"Communication?identifier={SYSTEM}|{project.prefix}-header"
    reply = fhir.post("Communication", json=message(project.prefix, 1, conditional, "2024-03-01T10:00:00Z"))
    assert reply.status_code == 201, reply.text
    assert reply.json()["partOf"] == [{"reference": f"Communication/{created.json()['id']}"}]

    nowhere = f"Communication?identifier={SYSTEM}|{project.prefix}-nothing"
    missing = fhir.post("Communication", json=message(project.prefix, 2, nowhere, "2024-03-01T10:00:00Z"))
    assert missing.status_code == 400
    assert "did not match any" in missing.json()["issue"][0]["details"]["text"]


def _patient(prefix: str, value: str, **more: Any) -> dict[str, Any]:
    return {"resourceType": "Patient", "identifier": [{"system": SYSTEM, "value": f"{prefix}-{value}"}], **more}


def test_queries_are_read_as_medplum_reads_them(project: Project, fhir: httpx.Client) -> None:
    """Medplum reads a GET's query, an ifNoneExist and a conditional reference as URLSearchParams does (a '+' is a
    space, %XX a byte), matches identifiers case-sensitively, and a token's system ends at its first '|' (a value
    may hold more, escaped): the local server the same."""
    prefix = project.prefix
    ids = {}
    for name, value in (("plus", "v+1"), ("space", "v 1"), ("upper", "AbC"), ("pipe", "a|b"), ("a", "a")):
        created = fhir.post("Patient", json=_patient(prefix, value))
        assert created.status_code == 201, created.text
        ids[name] = created.json()["id"]

    def found(query: str) -> set[str]:
        return {r["id"] for r in search_all(fhir, f"Patient?identifier={SYSTEM}|{prefix}-{query}")}

    assert found("v+1") == {ids["space"]}  # a raw '+' is a space
    assert found("v%2B1") == {ids["plus"]}
    assert found("AbC") == {ids["upper"]} and found("abc") == set()
    assert found("a%5C|b") == {ids["pipe"]} and found("a") == {ids["a"]}
    # a conditional create and a conditional reference read their queries the same way
    again = fhir.post("", json=bundle([post_entry(urn(), _patient(prefix, "v+1"),
                                                  ifNoneExist=f"identifier={SYSTEM}|{prefix}-v%2B1")]))
    assert again.status_code == 200 and statuses(again.json()) == ["200"], again.text
    assert again.json()["entry"][0]["resource"]["id"] == ids["plus"]
    for query, name in ((f"{prefix}-v+1", "space"), (f"{prefix}-v%2B1", "plus"), (f"{prefix}-a%5C|b", "pipe")):
        note = {"resourceType": "Communication", "status": "completed",
                "subject": {"reference": f"Patient?identifier={SYSTEM}|{query}"}}
        sent = fhir.post("Communication", json=note)
        assert sent.status_code == 201, sent.text
        assert sent.json()["subject"] == {"reference": f"Patient/{ids[name]}"}  # (no name: no display)


def test_a_conditional_reference_is_replaced_by_medplum_s_reference_to_what_it_matched(
        project: Project, fhir: httpx.Client) -> None:
    """What @medplum/core's createReference makes of the match replaces the whole Reference (display and all), as
    bundler.vocabulary.stored_reference says it does: its port of getDisplayString, held here to the real thing on
    many kinds of names."""
    from bundler.vocabulary import stored_reference

    prefix = project.prefix
    patient = fhir.post("Patient", json=_patient(prefix, "p0", name=[{"given": ["Abe"], "family": "Simpson"}])).json()
    resources = [
        _patient(prefix, "p1", name=[{"prefix": ["Dr."], "given": ["Julius", "M."], "family": "Hibbert",
                                      "suffix": ["MD", "PhD"]}, {"given": ["Other"]}]),
        _patient(prefix, "p2", name=[{"text": "Marge Simpson"}]),
        _patient(prefix, "p3", name=[{"text": "ignored", "given": ["Bart"]}]),
        _patient(prefix, "p4", name=[{"family": "Flanders"}]),
        _patient(prefix, "p5", name=[{"use": "official", "given": ["Zoë"], "family": "中村"}]),
        _patient(prefix, "p6", name=[{"use": "nickname"}]),
        _patient(prefix, "p7"),
        {"resourceType": "Practitioner", "identifier": [{"system": SYSTEM, "value": f"{prefix}-d1"}],
         "name": [{"prefix": ["RN"], "given": ["Joy"], "family": "Nurse"}]},
        {"resourceType": "RelatedPerson", "identifier": [{"system": SYSTEM, "value": f"{prefix}-r1"}],
         "patient": {"reference": f"Patient/{patient['id']}"}, "name": [{"given": ["Mona"], "suffix": ["Sr."]}]},
        {"resourceType": "Organization", "identifier": [{"system": SYSTEM, "value": f"{prefix}-o1"}],
         "name": "Springfield Pharmacy"},
        {"resourceType": "Organization", "identifier": [{"system": SYSTEM, "value": f"{prefix}-o2"}]},
        {"resourceType": "CareTeam", "identifier": [{"system": SYSTEM, "value": f"{prefix}-c1"}], "name": "Ward 3"},
        {"resourceType": "Group", "identifier": [{"system": SYSTEM, "value": f"{prefix}-g1"}], "type": "person",
         "actual": True, "name": "Family"},
        {"resourceType": "Device", "identifier": [{"system": SYSTEM, "value": f"{prefix}-v1"}],
         "deviceName": [{"name": "Glucose meter", "type": "user-friendly-name"}]},
        {"resourceType": "Device", "identifier": [{"system": SYSTEM, "value": f"{prefix}-v2"}]},
        {"resourceType": "PractitionerRole", "identifier": [{"system": SYSTEM, "value": f"{prefix}-x1"}],
         "code": [{"coding": [{"system": "urn:x", "code": "doctor", "display": "Doctor"},
                              {"system": "urn:x", "code": "nurse"}]}]},
        {"resourceType": "PractitionerRole", "identifier": [{"system": SYSTEM, "value": f"{prefix}-x2"}],
         "code": [{"text": "On call"}]},
        {"resourceType": "PractitionerRole", "identifier": [{"system": SYSTEM, "value": f"{prefix}-x3"}],
         "code": [{"coding": [{"code": "a"}], "text": "Lead"}]},
        {"resourceType": "HealthcareService", "identifier": [{"system": SYSTEM, "value": f"{prefix}-h1"}],
         "name": "Lab"},
    ]
    stored = []
    for resource in resources:
        created = fhir.post(resource["resourceType"], json=resource)
        assert created.status_code == 201, created.text
        stored.append(created.json())
    recipients = [{"reference": f"{r['resourceType']}?identifier={SYSTEM}|{r['identifier'][0]['value']}",
                   "display": "what we sent", "type": r["resourceType"]} for r in resources]
    note = {"resourceType": "Communication", "status": "completed", "recipient": recipients,
            "sender": {"reference": f"Patient/{patient['id']}", "display": "kept as sent"}}
    sent = fhir.post("Communication", json=note)
    assert sent.status_code == 201, sent.text
    back = fhir.get(f"Communication/{sent.json()['id']}").json()
    assert back["recipient"] == [stored_reference(r) for r in stored]
    assert back["sender"] == {"reference": f"Patient/{patient['id']}", "display": "kept as sent"}  # a literal one
    assert back["recipient"][0]["display"] == "Dr. Julius M. Hibbert MD PhD"


def test_conditional_transactions_hold_at_most_8_entries(project: Project, fhir: httpx.Client) -> None:
    def entries(n: int) -> list[dict[str, Any]]:
        h = urn()
        condition = f"identifier={SYSTEM}|{project.prefix}-header-{n}"
        result = [post_entry(h, header(f"{project.prefix}-{n}"), ifNoneExist=condition)]
        result += [
            post_entry(urn(), message(f"{project.prefix}-{n}", i, h, f"2024-03-01T10:{i:02d}:00Z")) for i in range(1, n)
        ]
        return result

    nine = fhir.post("", json=bundle(entries(9)))
    assert nine.status_code == 400
    assert "too many entries" in nine.json()["issue"][0]["details"]["text"]
    eight = fhir.post("", json=bundle(entries(8)))
    assert eight.status_code == 200, eight.text
    assert statuses(eight.json()) == ["201"] * 8


@pytest.mark.project_kind("strict")
def test_check_references_on_write(project: Project, fhir: httpx.Client) -> None:
    missing = f"Communication/{uuid.uuid4()}"
    response = fhir.post("Communication", json=message(project.prefix, 1, missing, "2024-03-01T10:00:00Z"))
    assert response.status_code == 400
    issue = response.json()["issue"][0]
    assert issue["details"]["text"] == "Invalid reference (Not found)"
    assert issue["expression"] == ["Communication.partOf[0]"]
    # forward and backward references inside one transaction are checked at commit, so they pass
    request_bundle, _ = walkthrough(project.prefix)
    request_bundle["entry"].reverse()
    ok = fhir.post("", json=request_bundle)
    assert ok.status_code == 200, ok.text


# --------------------------------------------------------------------------- quota


@pytest.mark.local_only
def test_quota_header_counts_down_and_429_when_spent(project: Project, fhir: httpx.Client) -> None:
    project.configure(quota=True, quota_points=350)
    first = fhir.post("Communication", json=header(project.prefix))
    assert first.status_code == 201
    remaining, seconds = rate_limit(first)["fhirInteractions"]
    assert remaining == 250
    assert 0 < seconds <= 60
    assert "requests" in rate_limit(first)

    search = fhir.get("Communication")
    assert search.status_code == 200
    assert rate_limit(search)["fhirInteractions"][0] == 230  # search costs 20

    read = fhir.get(f"Communication/{first.json()['id']}")
    assert rate_limit(read)["fhirInteractions"][0] == 229  # read costs 1

    assert fhir.post("Communication", json=header(project.prefix)).status_code == 201  # 129 left
    assert fhir.post("Communication", json=header(project.prefix)).status_code == 201  # 29 left
    throttled = fhir.post("Communication", json=header(project.prefix))
    assert throttled.status_code == 429
    outcome = throttled.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["code"] == "throttled"
    assert rate_limit(throttled)["fhirInteractions"][0] == 0
    assert "retry-after" not in throttled.headers


@pytest.mark.local_only
def test_quota_in_batch_mode_fills_the_rest_with_429(project: Project, fhir: httpx.Client) -> None:
    project.configure(quota=True, quota_points=250, transaction_bundles=False)
    h = urn()
    entries = [post_entry(h, header(project.prefix))] + [
        post_entry(urn(), message(project.prefix, i, h, f"2024-03-01T10:0{i}:00Z")) for i in range(1, 4)
    ]
    response = fhir.post("", json=bundle(entries))
    assert response.status_code == 200, response.text
    result = response.json()
    assert statuses(result) == ["201", "201", "429", "429"]
    assert result["entry"][3]["response"]["outcome"]["issue"][0]["code"] == "throttled"
    assert rate_limit(response)["fhirInteractions"][0] == 0


@pytest.mark.local_only
def test_quota_in_atomic_mode_rejects_the_whole_transaction(project: Project, fhir: httpx.Client) -> None:
    project.configure(quota=True, quota_points=250)
    request_bundle, _ = walkthrough(project.prefix)
    response = fhir.post("", json=request_bundle)
    assert response.status_code == 429
    assert response.json()["resourceType"] == "OperationOutcome"
    project.configure(quota=False)
    values = [f"{project.prefix}-header"] + [f"{project.prefix}-m{n}" for n in (1, 2, 3)]
    assert count_identifiers(fhir, values) == 0


# --------------------------------------------------------------------------- limits and ids


def test_body_over_1mb_is_refused(project: Project, fhir: httpx.Client) -> None:
    too_big = message(project.prefix, 1, "Communication/x", "2024-03-01T10:00:00Z")
    too_big["payload"] = [{"contentString": "x" * (1024 * 1024 + 10)}]
    response = fhir.post("Communication", json=too_big)
    assert response.status_code == 400
    assert response.json()["issue"][0]["details"]["text"] == "File too large"

    fits = header(project.prefix)
    fits["note"] = [{"text": "y" * (900 * 1024)}]
    assert fhir.post("Communication", json=fits).status_code == 201


def test_client_chosen_ids_are_refused(project: Project, fhir: httpx.Client) -> None:
    homer = {"resourceType": "Patient", "id": "homer-simpson", "name": [{"family": "Simpson", "given": ["Homer"]}]}
    response = fhir.put("Patient/homer-simpson", json=homer)
    assert response.status_code == 400
    assert response.json()["issue"][0]["details"]["text"] == "Invalid id"

    new_id = str(uuid.uuid4())
    assert fhir.put(f"Patient/{new_id}", json={**homer, "id": new_id}).status_code == 404

    created = fhir.post("Patient", json=homer)
    assert created.status_code == 201
    assert created.json()["id"] != "homer-simpson"
    assert uuid.UUID(created.json()["id"])
    assert created.headers["location"].startswith(f"{project.target.fhir_base}Patient/{created.json()['id']}")


def test_invalid_resource_is_refused_with_its_path(project: Project, fhir: httpx.Client) -> None:
    response = fhir.post("Communication", json={**header(project.prefix), "colour": "blue"})
    assert response.status_code == 400
    assert response.json()["issue"][0]["expression"] == ["Communication.colour"]


# --------------------------------------------------------------------------- search


def test_search_by_several_identifiers(project: Project, fhir: httpx.Client) -> None:
    for n in range(1, 5):
        created = fhir.post("Communication", json=message(project.prefix, n, "Communication/x", "2024-03-01T10:00:00Z"))
        assert created.status_code == 201
    found = search_all(fhir, f"Communication?identifier={SYSTEM}|{project.prefix}-m1,{SYSTEM}|{project.prefix}-m3")
    assert sorted(r["identifier"][0]["value"] for r in found) == [f"{project.prefix}-m1", f"{project.prefix}-m3"]
    other_system = search_all(fhir, f"Communication?identifier=urn:other|{project.prefix}-m1")
    assert other_system == []


def test_identifier_and_part_of_searches_find_exactly_what_matches(project: Project, fhir: httpx.Client) -> None:
    """The local server answers these from indexes: what they find must be what a scan of every resource finds,
    after updates and failed transactions too (and on any Medplum)."""
    prefix = project.prefix
    header_ref = "Communication/" + fhir.post("Communication", json=header(prefix)).json()["id"]
    other_ref = "Communication/" + fhir.post("Communication", json=header(f"{prefix}-other")).json()["id"]
    odd = f"{prefix}-a,b"  # a comma in a value: escaped in the search
    ids = {}
    for name, part_of in (("m1", header_ref), ("m2", header_ref), ("m3", other_ref)):
        created = fhir.post("Communication", json=message(prefix, 0, part_of, "2024-03-01T10:00:00Z"))
        resource = created.json()
        resource["identifier"] = [{"system": SYSTEM, "value": f"{prefix}-{name}"}, {"value": odd if name == "m3" else
                                                                                    f"{prefix}-x{name}"}]
        assert fhir.put(f"Communication/{resource['id']}", json=resource).status_code == 200
        ids[name] = resource["id"]

    def found(query: str) -> set[str]:
        return {r["id"] for r in search_all(fhir, query)}

    assert found(f"Communication?identifier={SYSTEM}|{prefix}-m1,{SYSTEM}|{prefix}-m3") == {ids["m1"], ids["m3"]}
    assert found(f"Communication?identifier={prefix}-m2") == {ids["m2"]}  # any system
    assert found(f"Communication?identifier={SYSTEM}|{prefix}-m0") == set()  # replaced by the update
    assert found(f"Communication?identifier={prefix}-a%5C,b") == {ids["m3"]}  # escaped comma
    assert found(f"Communication?part-of={header_ref}&_count=1") <= {ids["m1"], ids["m2"]}
    assert found(f"Communication?part-of={header_ref}") == {ids["m1"], ids["m2"]}
    assert found(f"Communication?part-of={header_ref}&identifier={SYSTEM}|{prefix}-m3") == set()
    assert found(f"Communication?part-of={other_ref}") == {ids["m3"]}


def test_searches_do_not_find_what_a_failed_transaction_rolled_back(project: Project, fhir: httpx.Client) -> None:
    good = post_entry(urn(), header(project.prefix))
    bad = post_entry(urn(), {**message(project.prefix, 1, "Communication/x", "2024-03-01T10:00:00Z"), "sent": "no"})
    assert fhir.post("", json=bundle([good, bad])).status_code == 400
    assert search_all(fhir, f"Communication?identifier={SYSTEM}|{project.prefix}-header") == []


def test_paging_with_count_and_next(project: Project, fhir: httpx.Client) -> None:
    header_ref = "Communication/" + fhir.post("Communication", json=header(project.prefix)).json()["id"]
    for n in range(7):
        reply = message(project.prefix, n, header_ref, f"2024-03-01T10:{n:02d}:00Z")
        assert fhir.post("Communication", json=reply).status_code == 201

    first = fhir.get(f"Communication?part-of={header_ref}&_sort=sent&_count=3").json()
    assert len(first["entry"]) == 3
    assert "total" not in first  # only with _total=accurate, as on Medplum
    assert all(e["fullUrl"].endswith(e["resource"]["id"]) for e in first["entry"])
    next_links = [link["url"] for link in first["link"] if link["relation"] == "next"]
    assert len(next_links) == 1

    everything = search_all(fhir, f"Communication?part-of={header_ref}&_sort=sent&_count=3")
    assert [r["sent"] for r in everything] == [f"2024-03-01T10:{n:02d}:00Z" for n in range(7)]
    assert len({r["id"] for r in everything}) == 7

    counted = fhir.get(f"Communication?part-of={header_ref}&_total=accurate&_count=1").json()
    assert counted["total"] == 7


def test_default_page_size_is_20(project: Project, fhir: httpx.Client) -> None:
    entries = [
        post_entry(urn(), message(project.prefix, n, "Communication/x", "2024-03-01T10:00:00Z")) for n in range(25)
    ]
    assert fhir.post("", json=bundle(entries, "batch")).status_code == 200
    page = fhir.get("Communication").json()
    assert len(page["entry"]) == 20
    assert any(link["relation"] == "next" for link in page["link"])


# --------------------------------------------------------------------------- admin


@pytest.mark.local_only
def test_admin_endpoint_needs_its_key(project: Project) -> None:
    base = project.target.base_url
    assert httpx.post(f"{base}$admin/reset").status_code == 403
    assert httpx.post(f"{base}$admin/reset", headers={"X-Admin-Key": "guess"}).status_code == 403


@pytest.mark.local_only
def test_reset_empties_the_store(local_server: LocalServer, project: Project, fhir: httpx.Client) -> None:
    assert fhir.post("Communication", json=header(project.prefix)).status_code == 201
    assert count_identifiers(fhir, [f"{project.prefix}-header"]) == 1
    local_server.reset()
    assert count_identifiers(fhir, [f"{project.prefix}-header"]) == 0


# --------------------------------------------------------------------------- attachments and storage


def test_an_attachment_url_is_kept_as_the_binary_and_answered_as_a_signed_storage_url(
        project: Project, fhir: httpx.Client) -> None:
    """Medplum stores an attachment url naming a Binary as `Binary/<id>` and answers it, on every read, as a signed
    URL of its storage that serves the bytes without a token; a signature not of that URL is refused."""
    data = f"bytes of {project.prefix}".encode()
    uploaded = fhir.post("Binary", content=data, headers={"Content-Type": "text/plain"})
    assert uploaded.status_code == 201, uploaded.text
    binary = uploaded.json()["id"]
    resource = {**header(project.prefix, "Storage"),
                "payload": [{"contentAttachment": {"url": f"Binary/{binary}", "contentType": "text/plain"}}]}
    created = fhir.post("Communication", json=resource)
    assert created.status_code == 201, created.text
    storage = f"{project.target.base_url}storage/{binary}/"
    for answer in (created.json(), fhir.get(f"Communication/{created.json()['id']}").json()):
        url = answer["payload"][0]["contentAttachment"]["url"]
        assert url.startswith(storage), url
        assert {"Expires", "Signature"} <= set(httpx.URL(url).params), url
    signed = httpx.get(url)  # no Authorization: the signature is the key
    assert signed.status_code == 200, signed.text
    assert signed.content == data
    forged = httpx.URL(url).copy_set_param("Signature", "AAAA" + httpx.URL(url).params["Signature"][4:])
    assert httpx.get(forged).status_code == 401
    # sent back as read, the signed URL is stored as the Binary again (and answered signed anew)
    updated = fhir.put(f"Communication/{answer['id']}", json=answer)
    assert updated.status_code == 200, updated.text
    assert updated.json()["payload"][0]["contentAttachment"]["url"].startswith(storage)
    assert httpx.get(updated.json()["payload"][0]["contentAttachment"]["url"]).content == data
