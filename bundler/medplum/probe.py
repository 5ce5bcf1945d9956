"""Whether a project's transactions are atomic: the probe `doctor` shows and `load --atomic auto` relies on.

It posts a two-entry transaction whose second entry is invalid, then searches for the first: found
means the server committed half a transaction (Medplum without its `transaction-bundles` feature
processes transactions as batches). Whatever a probe creates is searched for by its own identifier
and deleted.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

import orjson

from ..errors import BundlerError, ServerError
from .client import FhirClient

PROBE_SYSTEM = "urn:thread-bundler:doctor"


@dataclass
class Atomicity:
    """The probe's answer: `atomic`, how the server answered the failing transaction, and the references
    of probe resources it could not delete."""

    atomic: bool
    answered: str
    leftovers: list[str] = field(default_factory=list)

    @property
    def detail(self) -> str:
        if self.atomic:
            return f"yes: a failing transaction left nothing ({self.answered})"
        return (f"no: a failing transaction left its first entry behind ({self.answered}); Medplum's "
                "transaction-bundles feature is off for this project")


def probe_resource(tag: str, *, valid: bool = True) -> dict[str, Any]:
    """A Communication carrying the probe identifier `tag`; with `valid=False`, one every server refuses."""
    resource: dict[str, Any] = {"resourceType": "Communication", "status": "completed",
                                "identifier": [{"system": PROBE_SYSTEM, "value": tag}],
                                "payload": [{"contentString": "thread-bundler doctor probe: safe to delete"}]}
    if not valid:  # a malformed dateTime: refused by every FHIR server (a bad status code is not, by Medplum)
        resource["sent"] = "not-a-date"
    return resource


def probe_transaction(*resources: dict[str, Any]) -> bytes:
    """A transaction creating `resources`."""
    return orjson.dumps({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": f"urn:uuid:{uuid.uuid4()}", "resource": r, "request": {"method": "POST", "url": "Communication"}}
        for r in resources]})


def remove_probes(client: FhirClient, tag: str) -> list[str]:
    """Delete every probe resource tagged `tag`; the references of those that could not be deleted."""
    leftovers = []
    for resource in client.search("Communication", {"identifier": f"{PROBE_SYSTEM}|{tag}"}):
        ref = f"Communication/{resource['id']}"
        try:
            client.delete(ref)
        except BundlerError:
            leftovers.append(ref)
    return leftovers


def probe_atomicity(client: FhirClient) -> Atomicity:
    """Whether a transaction with a bad second entry leaves its first entry behind."""
    tag = f"atomic-{uuid.uuid4()}"
    try:
        client.transaction(probe_transaction(probe_resource(tag), probe_resource(tag, valid=False)), entries=2)
        answered = "HTTP 200 with per-entry statuses"
    except ServerError as exc:
        answered = f"HTTP {exc.status}"
    left = client.search("Communication", {"identifier": f"{PROBE_SYSTEM}|{tag}"})
    return Atomicity(not left, answered, remove_probes(client, tag))
