"""Loads that run at the same time (issue 20, finding 5): a transaction the server could not serialize (409,
Medplum's serialization failure) is sent again, not failed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
from faultproxy import FaultProxy, Rule
from loadkit import (
    POST,
    assert_exactly_once,
    client_for,
    header_value,
    load,
    specs_for,
    transactions,
)

from bundler import build_bundle
from bundler.load import Outcome
from bundler.vocabulary import SERIALIZATION_FAILURE

SERIALIZATION = orjson.dumps({
    "resourceType": "OperationOutcome", "id": "conflict",
    "issue": [{"severity": "error", "code": "conflict", "details": {
        "coding": [{"code": SERIALIZATION_FAILURE}],
        "text": "could not serialize access due to read/write dependencies among transactions"}}]})
"""What Medplum 5.0.10 answers (HTTP 409) when Postgres could not serialize a transaction (seen on the real
server with two strict loads at once; its tracing extension left out)."""
VERSION_CONFLICT = orjson.dumps({
    "resourceType": "OperationOutcome",
    "issue": [{"severity": "error", "code": "conflict",
               "diagnostics": "HAPI-0989: Trying to update Communication/1/_history/2 but this is not the current "
                              "version"}]})
"""A 409 of another kind: how a HAPI server words a version conflict (Medplum answers those 412)."""
FHIR_JSON = {"Content-Type": "application/fhir+json"}


# --- 5. a transaction the server could not serialize ---------------------------------------------------------


def test_a_serialization_failure_is_sent_again_and_another_conflict_is_not(project: Any, tmp_path: Path) -> None:
    specs = specs_for(project, 3, 4, seed=9)
    retried, refused = specs[0].key, specs[1].key
    with FaultProxy(project.target.base_url) as proxy:
        proxy.add(Rule("status", status=409, method="POST", path=POST, body_contains=header_value(retried), times=3,
                       headers=FHIR_JSON, body=SERIALIZATION))
        proxy.add(Rule("status", status=409, method="POST", path=POST, body_contains=header_value(refused), times=1,
                       headers=FHIR_JSON, body=VERSION_CONFLICT))
        with client_for(project, proxy.url) as client:
            report = load(specs, client, journal=tmp_path / "j.sqlite", exactly_once="strict")
            assert client.serialization_retries == 3
        by_key = {t.key: t for t in report.threads}
        assert by_key[retried].outcome == Outcome.LOADED
        assert len(transactions(proxy.log, header_value(retried))) == 4  # three 409s, then the one that went in
        assert by_key[refused].outcome == Outcome.FAILED
        assert "HTTP 409: HAPI-0989: Trying to update" in (by_key[refused].error or "")
        assert len(transactions(proxy.log, header_value(refused))) == 1, "another conflict is not sent again"
        assert by_key[specs[2].key].outcome == Outcome.LOADED
    with client_for(project) as client:
        assert_exactly_once(client, [specs[0], specs[2]], project)


def test_a_serialization_failure_that_keeps_coming_fails_the_thread_saying_so(project: Any, tmp_path: Path) -> None:
    specs = specs_for(project, 1, 2, seed=10)
    with FaultProxy(project.target.base_url) as proxy:
        proxy.add(Rule("status", status=409, method="POST", path=POST, body_contains=project.prefix, headers=FHIR_JSON,
                       body=SERIALIZATION))
        with client_for(project, proxy.url, max_attempts=2) as client:
            [result] = load(specs, client, journal=tmp_path / "j.sqlite", exactly_once="strict").threads
    assert result.outcome == Outcome.FAILED
    assert "HTTP 409: could not serialize access" in (result.error or "")
    assert "4 times; nothing of it was stored: run again" in (result.error or "")
    assert len(transactions(proxy.log, project.prefix)) == 4


def test_entries_of_a_batch_rolled_back_for_serialization_are_sent_again(project: Any, tmp_path: Path) -> None:
    # a project without atomic transactions runs each conditional create as its own serializable transaction: the
    # batch answers 200 with such entries 409 (here made up at the proxy: the whole first answer)
    specs = specs_for(project, 2, 3, seed=12)
    key = specs[0].key
    entries = len(build_bundle(specs[0])["entry"])
    answer = orjson.dumps({"resourceType": "Bundle", "type": "transaction-response", "entry": [
        {"response": {"status": "409", "outcome": orjson.loads(SERIALIZATION)}}] * entries})
    with FaultProxy(project.target.base_url) as proxy:
        proxy.add(Rule("status", status=200, method="POST", path=POST, body_contains=header_value(key), times=1,
                       headers=FHIR_JSON, body=answer))
        with client_for(project, proxy.url) as client:
            report = load(specs, client, journal=tmp_path / "j.sqlite", atomic="off")
        assert report.ok, [(t.key, t.error) for t in report.threads]
        assert len(transactions(proxy.log, header_value(key))) == 2  # rolled back, then sent again
    with client_for(project) as client:
        assert_exactly_once(client, specs, project)
