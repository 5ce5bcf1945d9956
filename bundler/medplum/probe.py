"""Whether a project's transactions are atomic: the probe `doctor` shows and `load --atomic auto` relies on.

It posts a two-entry transaction whose second entry is invalid, then searches for the first: found
means the server committed half a transaction (Medplum without its `transaction-bundles` feature
processes transactions as batches). Whatever a probe creates is searched for by its own identifier
and deleted.

A probe whose answer is lost (a 503, a dropped connection) is reconciled like any other request: its
first entry found on the server means the project is not atomic (the request was processed, half of it
kept); not found, it may not have arrived yet, so the probe is made again with a new identifier. The
identifiers of lost probes are kept (`Atomicity.lost`): on a project that is not atomic such a request
may still land later and leave its first entry, so the caller removes them again once no request can
linger any more (`remove_probes`).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

import orjson

from ..errors import BundlerError, ServerError, UnknownOutcome
from ..vocabulary import TRANSACTION, identifier_token
from .client import FhirClient

PROBE_SYSTEM = "urn:thread-bundler:doctor"
PROBE_ATTEMPTS = 4


@dataclass
class Atomicity:
    """The probe's answer: `atomic`, how the server answered the failing transaction, the references of
    probe resources it could not delete, and the tags of probes whose answer was lost."""

    atomic: bool
    answered: str
    leftovers: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)

    @property
    def detail(self) -> str:
        if self.atomic:
            return f"yes: a failing transaction left nothing ({self.answered})"
        return (f"no: a failing transaction left its first entry behind ({self.answered}); Medplum's "
                "transaction-bundles feature is off for this project")


def probe_resource(tag: str, *, valid: bool = True, **extra: Any) -> dict[str, Any]:
    """A Communication carrying the probe identifier `tag`; with `valid=False`, one every server refuses."""
    resource: dict[str, Any] = {"resourceType": "Communication", "status": "completed",
                                "identifier": [{"system": PROBE_SYSTEM, "value": tag}],
                                "payload": [{"contentString": "thread-bundler doctor probe: safe to delete"}],
                                **extra}
    if not valid:  # a malformed dateTime: refused by every FHIR server (a bad status code is not, by Medplum)
        resource["sent"] = "not-a-date"
    return resource


def probe_transaction(*resources: dict[str, Any]) -> bytes:
    """A transaction creating `resources`."""
    return orjson.dumps({"resourceType": "Bundle", "type": TRANSACTION, "entry": [
        {"fullUrl": f"urn:uuid:{uuid.uuid4()}", "resource": r, "request": {"method": "POST", "url": "Communication"}}
        for r in resources]})


def find_probes(client: FhirClient, tag: str) -> list[str]:
    """The references of the probe resources tagged `tag` on the server."""
    return [f"Communication/{r['id']}" for r in
            client.search("Communication", {"identifier": identifier_token(PROBE_SYSTEM, tag)})]


def remove_probes(client: FhirClient, *tags: str) -> list[str]:
    """Delete every probe resource tagged with one of `tags`; the references of those that could not be
    deleted."""
    leftovers = []
    for tag in tags:
        for ref in find_probes(client, tag):
            try:
                client.delete(ref)
            except BundlerError:
                leftovers.append(ref)
    return leftovers


def probe_atomicity(client: FhirClient, *, attempts: int = PROBE_ATTEMPTS) -> Atomicity:
    """Whether a transaction with a bad second entry leaves its first entry behind."""
    tags: list[str] = []
    lost: list[str] = []
    for _ in range(attempts):
        tags.append(tag := f"atomic-{uuid.uuid4()}")
        try:
            client.transaction(probe_transaction(probe_resource(tag), probe_resource(tag, valid=False)), entries=2)
            answered = "HTTP 200 with per-entry statuses"
        except ServerError as exc:
            answered = f"HTTP {exc.status}"
        except UnknownOutcome:
            lost.append(tag)
            if find_probes(client, tag):  # processed, and half of it kept
                return Atomicity(False, "its answer was lost, but its first entry was stored",
                                 remove_probes(client, *tags), lost)
            continue  # not there (yet?): ask again, with a new tag
        left = find_probes(client, tag)
        return Atomicity(not left, answered, remove_probes(client, *tags), lost)
    raise ServerError(f"could not find out whether this project's transactions are atomic: the answers to "
                      f"{attempts} probe transactions were lost (is the server or a gateway failing?)")
