"""`doctor`: probe a project once — login, permission to search and create Communication, whether
transactions are atomic (`probe.probe_atomicity`), whether references must exist (`checkReferencesOnWrite`),
the quota — and remove whatever the probe left behind.

Every check has a status: `ok`; `warn` (the project works, but differently: a project without atomic
transactions, which `load --atomic auto` handles with conditional creates); `fail` (loading cannot work:
login refused, no permission, the server unreachable); `unknown`. `DoctorReport.ok` is False exactly when
a row says `fail`, and the command's exit status says the same.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

from ..errors import BundlerError, ServerError
from ..vocabulary import QUOTA_POLICY, WRITE_POINTS
from .answer import EntryAnswer, outcome_text
from .auth import ClientCredentials
from .client import FhirClient
from .probe import probe_atomicity, probe_resource, probe_transaction, remove_probes
from .ratelimit import parse_ratelimit

Status = Literal["ok", "warn", "fail", "unknown"]


@dataclass
class Check:
    name: str
    status: Status
    detail: str

    @property
    def ok(self) -> bool:
        return self.status != "fail"


@dataclass
class DoctorReport:
    base_url: str
    checks: list[Check] = field(default_factory=list)
    atomic: bool | None = None
    leftovers: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """No check failed (warnings and unknowns are not failures)."""
        return all(c.ok for c in self.checks)

    def as_json(self) -> dict[str, Any]:
        return {"base_url": self.base_url, "ok": self.ok, "atomic": self.atomic, "leftovers": self.leftovers,
                "checks": [{"name": c.name, "status": c.status, "ok": c.ok, "detail": c.detail} for c in self.checks]}


def doctor(client: FhirClient) -> DoctorReport:
    """Probe the project behind `client`; never raises for what it finds, only for bad arguments.

    The checks run in order and stop at the first that fails: each needs the one before."""
    report = DoctorReport(client.root)
    started = time.monotonic()
    for check in (_login, _search, _create, _atomic, _references):
        try:
            result = check(client, report)
        except BundlerError as exc:  # the server answered something no check expects
            result = Check(check.__name__.strip("_"), "fail", str(exc))
        report.checks.append(result)
        if result.status == "fail":
            break
    report.checks.append(_cleaned(report, time.monotonic() - started))
    return report


def _cleaned(report: DoctorReport, seconds: float) -> Check:
    if report.leftovers:
        return Check("clean up", "warn", f"could not delete {', '.join(report.leftovers)} (probe resources: safe "
                                         "to delete)")
    return Check("clean up", "ok", f"nothing left behind ({seconds:.1f}s)")


def _login(client: FhirClient, report: DoctorReport) -> Check:
    try:
        client.auth.token()
    except BundlerError as exc:
        return Check("login", "fail", client.all_secrets().scrub(str(exc)))
    if isinstance(client.auth, ClientCredentials):
        return Check("login", "ok", f"token from {client.auth.token_url}")
    return Check("login", "ok", "bearer token given")


def _search(client: FhirClient, report: DoctorReport) -> Check:
    """Search permission, by one request (never paging through the project); the answer's RateLimit header
    also tells the quota (a row of its own)."""
    try:
        client.search_page("Communication", {"_count": "1", "_elements": "id"})
    except BundlerError as exc:
        return Check("search Communication", "fail", str(exc))
    report.checks.append(Check("search Communication", "ok", "allowed"))
    quota = parse_ratelimit(client.last_ratelimit).get(QUOTA_POLICY)
    if quota is None:
        return Check("quota", "unknown", "no RateLimit header: no pacing, and no estimate of a load's time")
    return Check("quota", "ok", f"{quota.remaining:,.0f} points left, window resets in {quota.reset:.0f}s "
                                f"(about {quota.remaining / WRITE_POINTS:,.0f} creates)")


def _refusal(client: FhirClient, resource: dict[str, Any]) -> ServerError | None:
    """Why the server refused to create `resource` in a transaction (an atomic refusal, or the entry's own
    status inside a 200 answer, as a project without atomic transactions answers), or None: created."""
    try:
        answer = client.transaction(probe_transaction(resource), entries=1)
    except ServerError as exc:
        return exc
    entry = answer.entries[0] if answer.entries else EntryAnswer.parse({})
    if entry.ok:
        return None
    return ServerError(entry.outcome_text or f"entry refused (HTTP {entry.status_line})", status=entry.status,
                       outcome=entry.outcome)


def _create(client: FhirClient, report: DoctorReport) -> Check:
    tag = f"create-{uuid.uuid4()}"
    try:
        refused = _refusal(client, probe_resource(tag))
    finally:
        report.leftovers += remove_probes(client, tag)
    if refused is None:
        return Check("create Communication", "ok", "allowed (in a transaction)")
    return Check("create Communication", "fail", outcome_text(refused.outcome) or str(refused))


def _atomic(client: FhirClient, report: DoctorReport) -> Check:
    atomicity = probe_atomicity(client)
    report.leftovers += atomicity.leftovers
    report.atomic = atomicity.atomic
    if atomicity.atomic:
        return Check("atomic transactions", "ok", atomicity.detail)
    detail = atomicity.detail + "; `load --atomic auto` (the default) sends conditional creates there"
    if atomicity.lost:
        detail += (f"; a probe whose answer was lost may still arrive and leave a Communication with identifier "
                   f"{', '.join(f'urn:thread-bundler:doctor|{t}' for t in atomicity.lost)} (safe to delete)")
    return Check("atomic transactions", "warn", detail)


def _references(client: FhirClient, report: DoctorReport) -> Check:
    """checkReferencesOnWrite, by a harmless probe: a Communication whose subject is a Patient that cannot
    exist (a fresh random id)."""
    name = "references must exist"
    tag = f"references-{uuid.uuid4()}"
    missing = f"Patient/{uuid.uuid4()}"
    try:
        refused = _refusal(client, probe_resource(tag, subject={"reference": missing}))
    finally:
        report.leftovers += remove_probes(client, tag)
    if refused is None:
        return Check(name, "ok", "no: a reference to a missing resource is stored as written "
                                 "(checkReferencesOnWrite is off)")
    text = outcome_text(refused.outcome) or str(refused)
    if refused.status == 400 and "not found" in text.lower():
        return Check(name, "ok", "yes: every reference must point at an existing resource "
                                 "(checkReferencesOnWrite): create participants before loading threads")
    return Check(name, "unknown", f"the probe was refused for another reason: {text}")
