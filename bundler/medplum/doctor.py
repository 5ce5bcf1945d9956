"""`doctor`: probe a project once — login, permission to search and create Communication, whether
transactions are atomic, the quota — and remove whatever the probe left behind.

The atomicity probe posts a two-entry transaction whose second entry is invalid, then searches for the
first: found means the server committed half a transaction (Medplum without `transaction-bundles`).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import orjson

from ..errors import AuthError, BundlerError, ServerError
from ..vocabulary import token_url
from .client import FhirClient, outcome_text
from .ratelimit import parse_ratelimit

PROBE_SYSTEM = "urn:thread-bundler:doctor"


@dataclass
class Check:
    name: str
    ok: bool | None  # None: could not tell
    detail: str


@dataclass
class DoctorReport:
    base_url: str
    checks: list[Check] = field(default_factory=list)
    atomic: bool | None = None
    leftovers: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.ok is not False for c in self.checks if c.name != "atomic transactions")

    def as_json(self) -> dict[str, Any]:
        return {"base_url": self.base_url, "ok": self.ok, "atomic": self.atomic, "leftovers": self.leftovers,
                "checks": [c.__dict__ for c in self.checks]}


def _probe_resource(tag: str, *, valid: bool = True) -> dict[str, Any]:
    resource: dict[str, Any] = {"resourceType": "Communication", "status": "completed",
                                "identifier": [{"system": PROBE_SYSTEM, "value": tag}],
                                "payload": [{"contentString": "thread-bundler doctor probe: safe to delete"}]}
    if not valid:  # a malformed dateTime: refused by every FHIR server (a bad status code is not, by Medplum)
        resource["sent"] = "not-a-date"
    return resource


def _cleanup(client: FhirClient, tag: str, report: DoctorReport | None) -> None:
    for resource in client.search("Communication", {"identifier": f"{PROBE_SYSTEM}|{tag}"}):
        ref = f"Communication/{resource['id']}"
        try:
            client.delete(ref)
        except BundlerError:
            if report is not None:
                report.leftovers.append(ref)


def probe_atomicity(client: FhirClient, report: DoctorReport | None = None) -> Check:
    """Whether a transaction with a bad second entry leaves its first entry behind."""
    tag = f"atomic-{uuid.uuid4()}"
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": f"urn:uuid:{uuid.uuid4()}", "resource": _probe_resource(tag),
         "request": {"method": "POST", "url": "Communication"}},
        {"fullUrl": f"urn:uuid:{uuid.uuid4()}", "resource": _probe_resource(tag, valid=False),
         "request": {"method": "POST", "url": "Communication"}},
    ]}
    try:
        client.transaction(orjson.dumps(bundle), entries=2)
        answered = "HTTP 200 with per-entry statuses"
    except ServerError as exc:
        answered = f"HTTP {exc.status}"
    left = client.search("Communication", {"identifier": f"{PROBE_SYSTEM}|{tag}"})
    _cleanup(client, tag, report)
    if left:
        check = Check("atomic transactions", False, f"no: a failing transaction left its first entry behind "
                      f"({answered}); Medplum's transaction-bundles feature is off for this project")
    else:
        check = Check("atomic transactions", True, f"yes: a failing transaction left nothing ({answered})")
    return check


def doctor(client: FhirClient) -> DoctorReport:
    """Probe the project behind `client`; never raises for what it finds, only for bad arguments."""
    report = DoctorReport(client.root)
    started = time.monotonic()
    try:
        client.auth.token(client.http)
        report.checks.append(Check("login", True, f"token from {token_url(client.root)}"
                                   if hasattr(client.auth, "client_id") else "bearer token given"))
    except BundlerError as exc:
        report.checks.append(Check("login", False, client.all_secrets().scrub(str(exc))))
        return report
    try:
        pages = list(client.search_pages("Communication", {"_count": "1", "_elements": "id"}))
        report.checks.append(Check("search Communication", True, "allowed"))
        limits = parse_ratelimit(client.last_ratelimit)
        quota = limits.get("fhirInteractions")
        report.checks.append(Check("quota", None if quota is None else True,
                                   "no RateLimit header: no pacing" if quota is None else
                                   f"{quota.remaining:,.0f} points left, window resets in {quota.reset:.0f}s "
                                   f"(about {quota.remaining / 100:,.0f} creates)"))
        del pages
    except AuthError as exc:
        report.checks.append(Check("search Communication", False, str(exc)))
        return report
    except BundlerError as exc:
        report.checks.append(Check("search Communication", False, client.all_secrets().scrub(str(exc))))
        return report
    tag = f"create-{uuid.uuid4()}"
    try:
        client.transaction(orjson.dumps({"resourceType": "Bundle", "type": "transaction", "entry": [
            {"fullUrl": f"urn:uuid:{uuid.uuid4()}", "resource": _probe_resource(tag),
             "request": {"method": "POST", "url": "Communication"}}]}), entries=1)
        report.checks.append(Check("create Communication", True, "allowed (in a transaction)"))
    except ServerError as exc:
        report.checks.append(Check("create Communication", False, outcome_text(exc.outcome) or str(exc)))
        return report
    finally:
        _cleanup(client, tag, report)
    atomic = probe_atomicity(client, report)
    report.checks.append(atomic)
    report.atomic = atomic.ok
    if report.leftovers:
        report.checks.append(Check("clean up", False, f"could not delete {', '.join(report.leftovers)}"))
    else:
        report.checks.append(Check("clean up", True, f"nothing left behind ({time.monotonic() - started:.1f}s)"))
    return report
