"""What FHIR R4 says about the values a thread holds: instants and Communication's reference targets."""

from __future__ import annotations

import datetime as dt
import re

TARGET_TYPES: dict[str, frozenset[str]] = {
    "subject": frozenset({"Patient", "Group"}),
    "sender": frozenset({"Device", "Organization", "Patient", "Practitioner", "PractitionerRole", "RelatedPerson",
                         "HealthcareService"}),
    "recipient": frozenset({"Device", "Organization", "Patient", "Practitioner", "PractitionerRole", "RelatedPerson",
                            "Group", "CareTeam", "HealthcareService"}),
}
"""The resource types FHIR R4 allows as Communication.subject, .sender and .recipient."""


def reference_type(reference: str) -> str:
    """`Patient` for `Patient/1` and for `Patient?identifier=s|v`."""
    return re.split(r"[/?]", reference, maxsplit=1)[0]


INSTANT = re.compile(r"^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.\d{1,9})?(?:Z|([+-])(\d{2}):(\d{2}))$")


def instant_problem(value: str) -> str | None:
    """Why `value` is not a real FHIR instant (impossible date or time), or None when it is one."""
    m = INSTANT.match(value)
    if not m:
        return "must be a FHIR instant with seconds and a time zone, like 2024-04-10T10:00:00Z"
    y, mo, d, h, mi, s = (int(x) for x in m.groups()[:6])
    try:
        dt.date(y, mo, d)
    except ValueError as exc:
        return f"{value!r} is not a real date ({exc})"
    if h > 23 or mi > 59 or s > 60:
        return f"{value!r} is not a real time of day"
    if m.group(7) and (int(m.group(8)) > 14 or int(m.group(9)) > 59 or (int(m.group(8)) == 14 and int(m.group(9)))):
        return f"{value!r} has an impossible time zone offset"
    return None
