"""Finding thread headers: Communications with no `partOf`, filtered by the options, page by page.

    filters = Filters.checked(topic="refill", subject="Patient/123", since="2024-01-01T00:00:00Z")
    for page in header_pages(client, filters, page_size=100): ...

What FHIR search can select is selected by the server: `part-of:missing=true`, `subject=<reference>`,
`_lastUpdated=ge<since>`, sorted by `_lastUpdated` (a stable order; Medplum pages such a search by cursor, past
the 10,000 that `_offset` reaches, when a page asks for at least 20: `vocabulary.cursor_paged`). `--topic` is
matched here, on each page: Medplum's `topic` search parameter is a token (codes), and FHIR has no portable text
search on `Communication.topic.text`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ..errors import OptionError
from ..medplum.client import FhirClient
from ..vocabulary import COMMUNICATION_TARGETS, MAX_SEARCH_COUNT, cursor_paged, instant_problem, parse_literal

MAX_PAGE_SIZE = MAX_SEARCH_COUNT
"""Medplum's largest `_count`."""
DEFAULT_PAGE_SIZE = 100
"""Headers (and messages) a search page asks for by default."""


def check_since(since: str | None) -> str | None:
    """`since` if it is a FHIR instant, else OptionError saying why."""
    if since is not None and (why := instant_problem(since)) is not None:
        raise OptionError(f"since: {since!r} {why}" if why.startswith("must") else f"since: {why}")
    return since


def check_subject(subject: str | None) -> str | None:
    """`subject` if it is a literal reference `Type/id` to a type FHIR allows as a Communication's subject."""
    if subject is None:
        return None
    literal = parse_literal(subject)
    allowed = COMMUNICATION_TARGETS["subject"]
    if literal is None or literal[2] is not None:
        raise OptionError(f"subject: {subject!r} must be a literal reference Type/id, like Patient/123 (a search "
                          "finds threads by the reference they store, which is always a literal one)")
    if literal[0] not in allowed:
        raise OptionError(f"subject: {subject!r} is a {literal[0]}: a Communication's subject is one of "
                          f"{', '.join(sorted(allowed))}")
    return subject


def check_page_size(page_size: int) -> int:
    if not 1 <= page_size <= MAX_PAGE_SIZE:
        raise OptionError(f"page size: {page_size} must be 1-{MAX_PAGE_SIZE} (Medplum's largest _count)")
    return page_size


@dataclass(frozen=True)
class Filters:
    """Which threads to export; None: any."""

    topic: str | None = None
    subject: str | None = None
    since: str | None = None

    @classmethod
    def checked(cls, *, topic: str | None = None, subject: str | None = None, since: str | None = None) -> Filters:
        """Filters from user input: OptionError for a `since` that is no instant or a `subject` that is no
        reference a subject can be."""
        return cls(topic or None, check_subject(subject), check_since(since))

    def params(self, page_size: int) -> dict[str, str]:
        """The header search's parameters."""
        params = {"part-of:missing": "true", **cursor_paged(page_size)}
        if self.subject is not None:
            params["subject"] = self.subject
        if self.since is not None:
            params["_lastUpdated"] = f"ge{self.since}"
        return params

    def matches(self, header: dict[str, Any]) -> bool:
        """Whether `header` passes what the server could not select (the topic: its text contains ours, case
        ignored)."""
        if self.topic is None:
            return True
        topic = header.get("topic")
        text = topic.get("text") if isinstance(topic, dict) else None
        return isinstance(text, str) and self.topic.casefold() in text.casefold()


def header_pages(client: FhirClient, filters: Filters, *, page_size: int = DEFAULT_PAGE_SIZE
                 ) -> Iterator[list[dict[str, Any]]]:
    """The headers `filters` select, a page at a time (every page; a page may come back empty after the topic)."""
    for page in client.search_resource_pages("Communication", filters.params(page_size)):
        yield [h for h in page if filters.matches(h)]

