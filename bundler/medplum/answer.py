"""What a server answers, typed: the one place a transaction or batch response Bundle, its entries' statuses and
locations, and an OperationOutcome are read. The loader and everything else read these, never the JSON.

    answer = client.transaction(body, entries=2)        # a TransactionAnswer
    for entry in answer.entries:                         # one EntryAnswer per entry sent, in order
        entry.status, entry.ok, entry.location, entry.id, entry.version, entry.outcome_text

A `TransactionAnswer` is also a read-only mapping over the response Bundle as the server sent it (scrubbed of
secrets), for a caller that wants the JSON itself (`answer["entry"][0]["response"]["location"]`); its `entries`
are parsed from that Bundle when first asked for.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from ..vocabulary import SERIALIZATION_FAILURE, TYPE_PATTERN, parse_literal

__all__ = ["EntryAnswer", "Location", "TransactionAnswer", "blamed_entry", "outcome_text", "quoted_conditional",
           "resource_version", "serialization_failure", "status_code"]

_ENTRY_INDEX = re.compile(r"entry\[(\d+)\]")
_CONDITIONAL = re.compile(rf"'({TYPE_PATTERN}\?[^'\s]+)'")  # as the server quotes one it could not resolve


class Location(NamedTuple):
    """Where an entry's resource is, as its `response.location` says (`Type/id[/_history/version]`, relative or
    under the server's base URL)."""

    type: str
    id: str
    version: str | None

    @property
    def reference(self) -> str:
        """`Type/id`."""
        return f"{self.type}/{self.id}"

    @classmethod
    def parse(cls, location: object) -> Location | None:
        """The location an entry's `response.location` names, or None (none, or not a literal reference)."""
        if not isinstance(location, str) or not location:
            return None
        path = location.split("?", 1)[0].rstrip("/").split("/")
        for tail in (4, 2):  # Type/id/_history/v, then Type/id, at the end of the (relative or absolute) URL
            if len(path) >= tail and (parsed := parse_literal("/".join(path[-tail:]))) is not None:
                return cls(*parsed)
        return None


def status_code(status: object) -> int | None:
    """The HTTP code an entry's `response.status` ("201 Created", "201") starts with, or None."""
    if not isinstance(status, str):
        return None
    code = status.split(" ", 1)[0][:3]
    return int(code) if len(code) == 3 and code.isdigit() else None


def outcome_text(outcome: Any) -> str:
    """The human text of an OperationOutcome (every issue's details/diagnostics, with its expression)."""
    if not isinstance(outcome, dict) or outcome.get("resourceType") != "OperationOutcome":
        return ""
    issues = outcome.get("issue")
    return "; ".join(_issue_text(issue) for issue in issues if isinstance(issue, dict)) \
        if isinstance(issues, list) else ""


def _issue_text(issue: dict[str, Any]) -> str:
    details = issue.get("details")
    text = (details.get("text") if isinstance(details, dict) else None) or issue.get("diagnostics") \
        or issue.get("code") or "error"
    where = [str(w) for w in (issue.get("expression") or issue.get("location") or ()) if isinstance(w, str)]
    return f"{text} ({', '.join(where)})" if where else str(text)


def serialization_failure(outcome: Any) -> bool:
    """Whether an OperationOutcome (of a 409) says the database could not serialize the transaction with others,
    so it was rolled back and may be sent again: one issue, code `conflict`, with SERIALIZATION_FAILURE among its
    details' codes, as Medplum tests it (repo.ts `isRetryableTransactionError`). A conflict of another kind (a
    unique key, another server's version conflict) is not."""
    if not isinstance(outcome, dict) or outcome.get("resourceType") != "OperationOutcome":
        return False
    issues = outcome.get("issue")
    if not isinstance(issues, list) or len(issues) != 1 or not isinstance(issues[0], dict):
        return False
    details = issues[0].get("details")
    codings = details.get("coding") if isinstance(details, dict) else None
    return issues[0].get("code") == "conflict" and isinstance(codings, list) and any(
        isinstance(c, dict) and c.get("code") == SERIALIZATION_FAILURE for c in codings)


def blamed_entry(outcome: Any, *, below: int) -> int | None:
    """The entry of a request (its index `n`, below `below`) that an OperationOutcome blames: the first
    `entry[n]` its issues' expressions (or locations) name."""
    issues = outcome.get("issue") if isinstance(outcome, dict) else None
    for issue in issues if isinstance(issues, list) else ():
        if not isinstance(issue, dict):
            continue
        for where in [*(issue.get("expression") or ()), *(issue.get("location") or ())]:
            if (m := _ENTRY_INDEX.search(str(where))) and int(m.group(1)) < below:
                return int(m.group(1))
    return None


def quoted_conditional(text: str) -> str | None:
    """The conditional reference (`Patient?identifier=...`, as it was sent) a server's error text quotes, as
    Medplum words one it could not resolve: `Conditional reference 'Patient?identifier=...' did not match any
    resources`."""
    m = _CONDITIONAL.search(text)
    return m.group(1) if m else None


def resource_version(entry: Mapping[str, Any]) -> str | None:
    """The versionId a transaction-response entry (or a resource) carries: `resource.meta.versionId`, else
    the entry's `response.etag` (`W/"<versionId>"`)."""
    resource = entry.get("resource") if "resource" in entry else entry
    meta = resource.get("meta") if isinstance(resource, dict) else None
    if isinstance(meta, dict) and isinstance(meta.get("versionId"), str):
        return str(meta["versionId"])
    response = entry.get("response")
    etag = response.get("etag") if isinstance(response, dict) else None
    if isinstance(etag, str) and etag:
        return etag.removeprefix("W/").strip('"') or None
    return None


@dataclass(frozen=True, slots=True)
class EntryAnswer:
    """One entry of a transaction/batch response: its status (`status`, the code; `status_line`, as sent), where
    its resource is (`location`), the resource if the server sent it, the OperationOutcome if it failed."""

    status: int | None  # None: no status a code can be read from (the entry was not answered)
    status_line: str
    location: Location | None
    resource: dict[str, Any] | None
    outcome: dict[str, Any] | None
    version: str | None  # the version it was stored at (meta.versionId, else the etag)

    @classmethod
    def parse(cls, entry: object) -> EntryAnswer:
        entry = entry if isinstance(entry, dict) else {}
        answered = entry.get("response")
        response: dict[str, Any] = answered if isinstance(answered, dict) else {}
        resource, outcome = entry.get("resource"), response.get("outcome")
        status = response.get("status")
        return cls(status_code(status), str(status) if status is not None else "", Location.parse(
            response.get("location")), resource if isinstance(resource, dict) else None,
                   outcome if isinstance(outcome, dict) else None, resource_version(entry))

    @property
    def ok(self) -> bool:
        """Processed and stored (or found): 2xx."""
        return self.status is not None and 200 <= self.status < 300

    @property
    def throttled(self) -> bool:
        """Refused for quota (429) before it was processed: to be sent again."""
        return self.status == 429

    @property
    def rolled_back(self) -> bool:
        """Rolled back because the database could not serialize it with other writes (409 with Medplum's
        serialization-failure code): not processed, to be sent again."""
        return self.status == 409 and serialization_failure(self.outcome)

    @property
    def id(self) -> str | None:
        """The server id of its resource: the resource's own, else its location's."""
        if self.resource and self.resource.get("id"):
            return str(self.resource["id"])
        return self.location.id if self.location else None

    @property
    def reference(self) -> str | None:
        """`Type/<id>` of its resource: the resource's own, else its location's."""
        if self.resource and self.resource.get("id") and self.resource.get("resourceType"):
            return f"{self.resource['resourceType']}/{self.resource['id']}"
        return self.location.reference if self.location else None

    @property
    def code(self) -> str:
        """The status's code as sent (`"412"` of `"412 Precondition Failed"`), for a message."""
        return self.status_line.split()[0] if self.status_line.split() else ""

    @property
    def outcome_text(self) -> str:
        return outcome_text(self.outcome)


class TransactionAnswer(Mapping[str, Any]):
    """A transaction or batch response: `entries`, one `EntryAnswer` per entry sent, in order. As a mapping, the
    response Bundle itself."""

    def __init__(self, bundle: dict[str, Any]) -> None:
        self.bundle = bundle

    def __getitem__(self, key: str) -> Any:
        return self.bundle[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.bundle)

    def __len__(self) -> int:
        return len(self.bundle)

    def __repr__(self) -> str:
        return f"TransactionAnswer({len(self.entries)} entries)"

    @functools.cached_property
    def entries(self) -> tuple[EntryAnswer, ...]:
        return tuple(EntryAnswer.parse(e) for e in self.bundle.get("entry") or ())
