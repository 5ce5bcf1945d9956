"""Legacy user ids → FHIR references: a table (CSV or YAML) first, then rules in order.

    participants:
      table: participants.csv            # id,reference,display
      rules:
        - match: "^pt-(?P<mrn>[0-9]+)$"  # the whole id; named groups are template fields
          reference: "Patient?identifier=https://portal.example.org/mrn|{mrn}"
        - prefix: "dr-"                  # {rest}: the id without the prefix
          reference: "Practitioner?identifier=https://portal.example.org/staff|{rest}"
        - role: nurse                    # the role seen for this id in message.sender_role
          reference: "Practitioner?identifier=https://portal.example.org/staff|{id}"

The table is held in memory (it grows with users, not messages); rule results are cached (bounded).
"""

from __future__ import annotations

import csv
import io
import re
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import Problem
from ..spec.source import Document, decode, parse_yaml
from ..vocabulary import escape_search, is_reference

_TEMPLATE_FIELD = re.compile(r"\{([^{}]*)\}")
_CACHE_SIZE = 20_000  # ~6 MB at most; emptied when full (ids that recur across threads come back soon)


@dataclass(frozen=True)
class Rule:
    reference: str
    display: str | None = None
    match: re.Pattern[str] | None = None
    prefix: str | None = None
    role: str | None = None

    def apply(self, legacy_id: str, roles: frozenset[str]) -> tuple[str, str | None] | None:
        fields = {"id": legacy_id}
        if self.match is not None:
            m = self.match.fullmatch(legacy_id)
            if m is None:
                return None
            fields.update({k: v or "" for k, v in m.groupdict().items()})
        if self.prefix is not None:
            if not legacy_id.startswith(self.prefix):
                return None
            fields["rest"] = legacy_id[len(self.prefix):]
        if self.role is not None:
            if self.role not in roles:
                return None
            fields["role"] = self.role

        def fill(template: str, escape: Callable[[str], str] = str) -> str:
            return _TEMPLATE_FIELD.sub(lambda m: escape(fields[m.group(1)]), template)
        # a reference's fields are FHIR-escaped: `|{rest}` of the id `a,b` searches the value `a,b`, not `a` or `b`
        return fill(self.reference, escape_search), fill(self.display) if self.display else None


@dataclass
class Participants:
    """The table and the rules of a mapping; `resolver()` gives the per-run lookup."""

    table: dict[str, tuple[str, str | None]] = field(default_factory=dict)
    rules: list[Rule] = field(default_factory=list)

    @property
    def uses_roles(self) -> bool:
        return any(r.role is not None for r in self.rules)

    def resolver(self, roles_of: Callable[[str], frozenset[str]] | None = None) -> Resolver:
        return Resolver(self, roles_of)


Resolved = tuple[str, str | None]


class Resolver:
    """legacy id → (reference, display), or a str saying why it cannot be resolved. Caches rule results."""

    def __init__(self, participants: Participants, roles_of: Callable[[str], frozenset[str]] | None) -> None:
        self.table = participants.table
        self.rules = participants.rules
        self.roles_of = roles_of
        self.cache: dict[str, Resolved | str] = {}

    def __call__(self, legacy_id: str) -> Resolved | str:
        found = self.table.get(legacy_id)
        if found is not None:
            return found
        cached = self.cache.get(legacy_id)
        if cached is not None:
            return cached
        result = self._rules(legacy_id)
        if len(self.cache) >= _CACHE_SIZE:
            self.cache.clear()
        self.cache[legacy_id] = result
        return result

    def _rules(self, legacy_id: str) -> Resolved | str:
        roles = self.roles_of(legacy_id) if self.roles_of is not None else frozenset()
        for rule in self.rules:
            got = rule.apply(legacy_id, roles)
            if got is None:
                continue
            if not is_reference(got[0]):
                return (f"user {legacy_id!r} maps to {got[0]!r}, which is not a reference "
                        "(Type/id or Type?identifier=system|value)")
            return got
        if len(roles) > 1:
            return f"user {legacy_id!r} has conflicting roles ({', '.join(sorted(roles))}) and no table entry"
        return f"user {legacy_id!r} is not in the participant table and matches no rule"


# --- loading ---------------------------------------------------------------------------------------


def load_participants(data: Mapping[str, Any], doc: Document, base: Path, *, has_roles: bool
                      ) -> tuple[Participants, list[Problem]]:
    """The participants section of a mapping: its table file read, its rules compiled."""
    problems: list[Problem] = []
    out = Participants()
    if "table" in data:
        out.table = _load_table(base / data["table"], doc, problems)
    for i, raw in enumerate(data.get("rules") or ()):
        path = ("participants", "rules", i)
        fields = {"id"}
        pattern = None
        if "match" in raw:
            pattern = _compile((*path, "match"), raw["match"], doc, problems)
            if pattern is not None:
                fields |= set(pattern.groupindex)
        if "prefix" in raw:
            fields.add("rest")
        if "role" in raw:
            fields.add("role")
            if not has_roles:
                problems.append(doc.problem((*path, "role"), "a role rule needs message.sender_role (the column "
                                                              "that holds each sender's role)"))
        for key in ("reference", "display"):
            if key in raw:
                for name in _TEMPLATE_FIELD.findall(raw[key]):
                    if name not in fields:
                        problems.append(doc.problem((*path, key), f"unknown field {{{name}}} (known here: "
                                                                   f"{', '.join(sorted(fields))})"))
        out.rules.append(Rule(raw["reference"], raw.get("display"), pattern, raw.get("prefix"), raw.get("role")))
    return out, problems


def _compile(path: tuple[str | int, ...], text: str, doc: Document, problems: list[Problem]) -> re.Pattern[str] | None:
    """A rule's regular expression, or a problem at its line: also for what Python only warns about (a
    `[[` that may one day mean a nested set), so that a mapping means the same in every Python."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        try:
            return re.compile(text)
        except re.error as exc:
            problems.append(doc.problem(path, f"not a regular expression: {exc}"))
        except FutureWarning as exc:
            problems.append(doc.problem(path, f"ambiguous regular expression: {exc} (write \\[ for a literal '[')"))
    return None


def _load_table(path: Path, doc: Document, problems: list[Problem]) -> dict[str, tuple[str, str | None]]:
    where = ("participants", "table")
    name = str(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        problems.append(doc.problem(where, f"cannot read the participant table {name}: {exc.strerror}"))
        return {}
    text, bad = decode(raw, name)
    if text is None:
        problems.extend(bad)
        return {}
    if path.suffix.lower() in (".yaml", ".yml", ".json"):
        return _yaml_table(text, name, problems)
    return _csv_table(text, name, problems)


def _add(table: dict[str, tuple[str, str | None]], key: str, reference: str, display: str | None,
         where: Callable[[str], Problem], problems: list[Problem]) -> None:
    if not key:
        problems.append(where("empty id"))
    elif key in table:
        problems.append(where(f"user {key!r} is listed twice"))
    elif not is_reference(reference):
        problems.append(where(f"{reference!r} is not a reference (Type/id or Type?identifier=system|value)"))
    else:
        table[key] = (reference, display or None)


def _csv_table(text: str, name: str, problems: list[Problem]) -> dict[str, tuple[str, str | None]]:
    table: dict[str, tuple[str, str | None]] = {}
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader, None)
    if header is None or "id" not in header or "reference" not in header:
        problems.append(Problem(name, 1, None, "", f"the participant table needs a header with id, reference "
                                                   f"(and display); got {header!r}"))
        return table
    ix, ir = header.index("id"), header.index("reference")
    idisp = header.index("display") if "display" in header else None
    line = reader.line_num
    for row in reader:
        start, line = line + 1, reader.line_num
        if not any(row):
            continue
        if len(row) != len(header):
            problems.append(Problem(name, start, None, "", f"{len(row)} fields, the header has {len(header)}"))
            continue
        _add(table, row[ix].strip(), row[ir].strip(), row[idisp].strip() if idisp is not None else None,
             lambda msg, s=start: Problem(name, s, None, "", msg), problems)  # type: ignore[misc]
    return table


def _yaml_table(text: str, name: str, problems: list[Problem]) -> dict[str, tuple[str, str | None]]:
    table: dict[str, tuple[str, str | None]] = {}
    docs, bad = parse_yaml(text, name)
    problems.extend(bad)
    if bad:
        return table
    if len(docs) != 1 or not isinstance(docs[0].data, dict):
        problems.append(Problem(name, None, None, "", "expected a mapping: legacy id → {reference, display}"))
        return table
    doc = docs[0]
    for key, entry in doc.data.items():
        if isinstance(entry, str):
            entry = {"reference": entry}
        if not isinstance(entry, dict) or not isinstance(entry.get("reference"), str) or \
                set(entry) - {"reference", "display"} or not isinstance(entry.get("display", ""), str | None):
            problems.append(doc.problem((key,), "expected a reference string or {reference, display} (both text)"))
            continue
        _add(table, str(key), entry["reference"], entry.get("display"),
             lambda msg, k=key: doc.problem((k,), msg), problems)  # type: ignore[misc]
    return table
