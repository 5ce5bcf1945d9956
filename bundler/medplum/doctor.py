"""`doctor`: probe a project once — login, permission to search and create Communication, whether
transactions are atomic (`probe.probe_atomicity`), the quota — and remove whatever the probe left behind.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from ..errors import BundlerError, ServerError
from .auth import ClientCredentials
from .client import FhirClient, outcome_text
from .probe import probe_atomicity, probe_resource, probe_transaction, remove_probes
from .ratelimit import parse_ratelimit


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


def doctor(client: FhirClient) -> DoctorReport:
    """Probe the project behind `client`; never raises for what it finds, only for bad arguments.

    The checks run in order and stop at the first that fails: each needs the one before."""
    report = DoctorReport(client.root)
    started = time.monotonic()
    for check in (_login, _search, _create):
        report.checks.append(result := check(client, report))
        if result.ok is False:
            return report
    atomicity = probe_atomicity(client)
    report.leftovers += atomicity.leftovers
    report.checks.append(Check("atomic transactions", atomicity.atomic, atomicity.detail))
    report.atomic = atomicity.atomic
    if report.leftovers:
        report.checks.append(Check("clean up", False, f"could not delete {', '.join(report.leftovers)}"))
    else:
        report.checks.append(Check("clean up", True, f"nothing left behind ({time.monotonic() - started:.1f}s)"))
    return report


def _login(client: FhirClient, report: DoctorReport) -> Check:
    try:
        client.auth.token()
    except BundlerError as exc:
        return Check("login", False, client.all_secrets().scrub(str(exc)))
    if isinstance(client.auth, ClientCredentials):
        return Check("login", True, f"token from {client.auth.token_url}")
    return Check("login", True, "bearer token given")


def _search(client: FhirClient, report: DoctorReport) -> Check:
    """Search permission; the answer's RateLimit header also tells the quota (a second check)."""
    try:
        for _page in client.search_pages("Communication", {"_count": "1", "_elements": "id"}):
            pass
    except BundlerError as exc:
        return Check("search Communication", False, client.all_secrets().scrub(str(exc)))
    report.checks.append(Check("search Communication", True, "allowed"))
    quota = parse_ratelimit(client.last_ratelimit).get("fhirInteractions")
    if quota is None:
        return Check("quota", None, "no RateLimit header: no pacing")
    return Check("quota", True, f"{quota.remaining:,.0f} points left, window resets in {quota.reset:.0f}s "
                                f"(about {quota.remaining / 100:,.0f} creates)")


def _create(client: FhirClient, report: DoctorReport) -> Check:
    tag = f"create-{uuid.uuid4()}"
    try:
        client.transaction(probe_transaction(probe_resource(tag)), entries=1)
        return Check("create Communication", True, "allowed (in a transaction)")
    except ServerError as exc:
        return Check("create Communication", False, outcome_text(exc.outcome) or str(exc))
    finally:
        report.leftovers += remove_probes(client, tag)
