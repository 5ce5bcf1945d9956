"""The participants of an export, as a participants file: each person or thing the threads name, read from the
server and written with how to create it (`--participants-file`), so that loading the export into an empty
project recreates them.

    found = read_resources(client, ["Patient/1", "Practitioner/2"])    # one search per type, many ids a request
    block = create_block(found["Patient/1"])                            # the resource to create, or None

A participant is created in the target by a conditional create on its first identifier, and threads refer to
it as `Type?identifier=system|value`; a resource without a usable identifier cannot be created that way: it
keeps its literal reference, and that is listed as a problem. Aliases are global to an export (one alias, one
participant, in every spec and in the file), made from display names as a thread's are (`aliases_for`), in an
order that does not depend on which thread was read first.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..medplum.client import FhirClient, chunked
from ..vocabulary import identifier_system_problem, parse_literal
from .shape import alias_base, aliases_for

SERVER_SET = ("id", "meta")
"""What the server sets on a resource it creates: left out of a `create` block."""


def read_resources(client: FhirClient, references: Iterable[str], *, max_url: int = 6000
                   ) -> dict[str, dict[str, Any]]:
    """`Type/id` → the resource, for those of `references` (literal ones) that exist: one search per type, many ids
    a request (`_id=a,b,c`, chunked to stay under about `max_url` characters)."""
    by_type: dict[str, list[str]] = {}
    for ref in references:
        literal = parse_literal(ref)
        if literal is not None and literal[2] is None:
            by_type.setdefault(literal[0], []).append(literal[1])
    found: dict[str, dict[str, Any]] = {}
    for kind, ids in sorted(by_type.items()):
        for chunk in chunked(sorted(ids), max_url=max_url, most=100):
            for resource in client.search(kind, {"_id": ",".join(chunk), "_count": str(len(chunk))}):
                found[f"{kind}/{resource['id']}"] = resource
    return found


def create_problem(resource: Mapping[str, Any]) -> str | None:
    """Why `resource` cannot be created conditionally in another project (its first identifier is what a
    conditional create and reference search), or None."""
    idents = resource.get("identifier")
    first = idents[0] if isinstance(idents, list) and idents and isinstance(idents[0], dict) else None
    if first is None:
        return "has no identifier, so it cannot be created conditionally: its literal reference is kept"
    if identifier_system_problem(first.get("system")) is not None:
        return (f"its first identifier's system {first.get('system')!r} cannot be searched: its literal reference "
                "is kept")
    value = first.get("value")
    if not isinstance(value, str) or not value or any(c.isspace() or c == "&" for c in value):
        return f"its first identifier's value {value!r} cannot be searched: its literal reference is kept"
    return None


def create_block(resource: Mapping[str, Any]) -> dict[str, Any]:
    """The resource as a participants file's `create` holds it: everything but what the server sets."""
    return {k: v for k, v in resource.items() if k not in SERVER_SET}


def participants_document(entries: Mapping[str, tuple[str | None, Mapping[str, Any]]]) -> dict[str, Any]:
    """A participants file's data: `participants: {alias: {display?, create}}`, aliases in order."""
    out: dict[str, Any] = {}
    for alias in sorted(entries):
        display, create = entries[alias]
        out[alias] = ({"display": display} if display is not None else {}) | {"create": dict(create)}
    return {"participants": out}


class People:
    """Every participant of an export: reference → display, told by the workers as threads are shaped (thread-safe).
    Of the displays threads give one participant, the smallest is its own: the same whatever thread came first."""

    def __init__(self) -> None:
        self.displays: dict[str, str | None] = {}
        self._lock = threading.Lock()

    def see(self, people: Mapping[str, str | None]) -> None:
        with self._lock:
            for reference, display in people.items():
                known = self.displays.get(reference)
                if reference not in self.displays or (display is not None and (known is None or display < known)):
                    self.displays[reference] = display

    def aliases(self) -> dict[str, str]:
        """Reference → alias, one alias a participant across the export (`aliases_for`, in the order of their
        names, then references: not the order threads were read in)."""
        order = sorted(self.displays, key=lambda r: (alias_base(r, self.displays[r]), r))
        return dict(zip(order, aliases_for([(r, self.displays[r]) for r in order]), strict=True))


@dataclass
class Plan:
    """What becomes of each participant: its alias, and how to create it, or why it cannot be."""

    aliases: dict[str, str] = field(default_factory=dict)  # reference → alias
    creates: dict[str, dict[str, Any]] = field(default_factory=dict)  # reference → its create block
    problems: dict[str, str] = field(default_factory=dict)  # reference → why it keeps its reference

    def document(self, people: People) -> dict[str, Any]:
        """The participants file: every participant that can be created."""
        return participants_document({self.aliases[r]: (people.displays[r], c) for r, c in self.creates.items()})


def plan(client: FhirClient, people: People) -> Plan:
    """Read every participant (one search per type, many ids a request) and say how each is to be created."""
    out = Plan(aliases=people.aliases())
    found = read_resources(client, people.displays)
    for reference in people.displays:
        resource = found.get(reference)
        if resource is None:
            why: str | None = ("is not on the server" if parse_literal(reference) else
                               "is no literal reference") + ": it cannot be read, its reference is kept"
        elif (why := create_problem(resource)) is None:
            out.creates[reference] = create_block(resource)
            continue
        out.problems[reference] = f"{reference} {why}"
    return out
