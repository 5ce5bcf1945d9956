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
from pathlib import Path
from typing import Any

from ..errors import OptionError, SpecError
from ..medplum.client import FhirClient, chunked
from ..spec.dump import dump_yaml
from ..spec.files import read_documents
from ..spec.model import check_document, created_reference
from ..spec.participants import ParticipantsFile
from ..spec.source import Document
from ..vocabulary import identifier_system_problem, is_identifier_value, parse_literal
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
    if not is_identifier_value(value):
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
    """Read every participant (one search per type, many ids a request) and say how each is to be created. Of two
    resources with the same first identifier (one conditional create would make them one), the first by reference
    is created; the other keeps its literal reference, and that is listed."""
    out = Plan(aliases=people.aliases())
    found = read_resources(client, people.displays)
    blocks = {r: create_block(res) for r in people.displays
              if (res := found.get(r)) is not None and create_problem(res) is None}
    first: dict[str, str] = {}  # conditional reference → the reference it creates
    for reference in sorted(blocks):
        first.setdefault(created_reference(blocks[reference]), reference)
    for reference in people.displays:
        resource = found.get(reference)
        if resource is None:
            why: str | None = ("is not on the server" if parse_literal(reference) else
                               "is no literal reference") + ": it cannot be read, its reference is kept"
        elif (why := create_problem(resource)) is None:
            conditional = created_reference(blocks[reference])
            if first[conditional] == reference:
                out.creates[reference] = blocks[reference]
                continue
            why = (f"has the first identifier of {first[conditional]} ({conditional}), so one conditional create "
                   "would make them one: its literal reference is kept")
        out.problems[reference] = f"{reference} {why}"
    return out


def _renamed(data: dict[str, Any], names: Mapping[str, str]) -> dict[str, Any]:
    """Spec data with its aliases renamed (`names`: old → new)."""
    out = dict(data)
    for field_ in ("subject", "sender"):
        if out.get(field_) in names:
            out[field_] = names[out[field_]]
    out["messages"] = [{**m, "sender": names[m["sender"]]}
                       | ({"recipient": [names[r] for r in m["recipient"]]} if "recipient" in m else {})
                       | ({"read_by": {names[a]: w for a, w in m["read_by"].items()}} if "read_by" in m else {})
                       for m in data.get("messages", ())]
    if not out["messages"]:
        del out["messages"]
    return out


def thin(data: dict[str, Any], plan: Plan, people: People, shared: ParticipantsFile) -> dict[str, Any]:
    """A spec's data (as exported: literal references, the thread's own aliases) for use with the participants
    file `shared`: the export's aliases; each participant the file can create named by its alias alone where the
    file gives the thread the same participant in the same place, else given in full (its `create` too). The
    header's recipients, in order, are the same either way (`ParticipantsFile.merged` says where the file's
    participants go: after the spec's own, in order of first use)."""
    own = data["participants"]
    names = {alias: plan.aliases[p["reference"]] for alias, p in own.items()}
    full: dict[str, dict[str, Any]] = {}
    borrowable: set[str] = set()
    for alias, p in own.items():
        reference, display = p["reference"], p.get("display")
        create = plan.creates.get(reference)
        name = names[alias]
        if create is None:
            full[name] = dict(p)
            continue
        full[name] = ({"display": display} if display is not None else {}) | {"create": create}
        if display == people.displays[reference]:
            borrowable.add(name)
    order = list(full)
    renamed = _everyone_named(_renamed(data, names), order, shared)
    for k in range(len(order) + 1):
        if not borrowable.issuperset(order[k:]):
            continue
        candidate = {**renamed, "participants": {a: full[a] for a in order[:k]}}
        if not candidate["participants"]:
            del candidate["participants"]
        merged, _ = shared.merged(candidate)
        if list(merged.get("participants", {})) == order:
            return _ordered(candidate)
    raise AssertionError("unreachable: every participant given in full always keeps the order")


def _everyone_named(data: dict[str, Any], order: list[str], shared: ParticipantsFile) -> dict[str, Any]:
    """`data` in which each participant of the file that the thread never names (one who only receives, as every
    participant but the sender does by default) is named: the first message it receives by default gets its
    recipients written out, the same ones in the same order, so the bundle is the same."""
    _, named = shared.merged({**data, "participants": {}})
    messages = [dict(m) for m in data.get("messages", ())]
    for alias in order:
        if alias in named or alias not in shared.participants:
            continue
        for m in messages:
            if "recipient" not in m and m["sender"] != alias:
                m["recipient"] = [a for a in order if a != m["sender"]]
                named = named | set(m["recipient"])
                break
    return {**data, "messages": messages} if messages else data


def _ordered(data: dict[str, Any]) -> dict[str, Any]:
    """Spec data in the order `ThreadSpec.to_data` writes its fields."""
    first = ["thread", "topic", "subject", "status", "category", "sender", "sent", "participants", "messages"]
    return {k: data[k] for k in first if k in data} | {k: v for k, v in data.items() if k not in first}


def check_participants_file(path: str | Path | None, out: str | Path) -> Path | None:
    """`path` as a Path; OptionError when it is inside the export's folder (`load DIR` would read it as a spec)."""
    if path is None:
        return None
    target, folder = Path(path).resolve(), Path(out).resolve()
    if target == folder or folder in target.parents:
        raise OptionError(f"participants file: {path} is inside {out}, where `load {out}` would read it as a "
                          "spec: put it beside the folder")
    return Path(path)


def rewrite_spec(path: Path, known: Plan, people: People, shared: ParticipantsFile) -> None:
    """The exported spec at `path`, rewritten to name its participants by the export's aliases (`thin`), and
    checked with the participants file before it is written."""
    (doc,), _ = read_documents(path)
    data = thin(doc.data, known, people, shared)
    spec, problems = check_document(Document(str(path), data), shared)
    if spec is None:  # pragma: no cover - made to the model's rules
        raise SpecError(problems)
    path.write_bytes(dump_yaml(data))
