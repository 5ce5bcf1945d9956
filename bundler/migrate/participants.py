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
        - match: "^\\+1(?P<n>[0-9]{10})$"   # created when missing, as a spec's participant with `create`
          create:
            resourceType: Patient
            identifier: [{system: "https://sms.example.org/phone", value: "{n}"}]
            telecom: [{system: phone, value: "{id}"}]
            name: [{text: "{name}"}]     # {name}: the first message.sender_display the export gives this id

A rule's `create` is a FHIR resource whose text values are templates over the rule's fields (not escaped:
they are the resource's values); a value that comes out empty is left out (and so is an object or list left
empty). The participant's reference is then the conditional one of its first identifier, and `load` creates it
when missing, exactly as it does for a spec (`bundler.load.participants.Ensurer`). A YAML table's entries, and a
participants file given to `migrate` (`--participants`, keyed by the alias the migration makes of each legacy
id, `tel-17735550123` for `+17735550123`: it comes first, before the table and the rules), are a spec's
participants: `{reference, display, create}`.

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

from ..errors import Problem, SpecError
from ..spec.model import CreateResource, Participant
from ..spec.participants import ParticipantsFile
from ..spec.source import Document, decode, parse_yaml
from ..vocabulary import escape_search, is_reference
from .keys import alias as make_alias

_TEMPLATE_FIELD = re.compile(r"\{([^{}]*)\}")
_CACHE_SIZE = 20_000  # ~6 MB at most; emptied when full (ids that recur across threads come back soon)


CREATE_HINT = ("{resourceType: Patient, identifier: [{system: 'https://example.org/phone', value: '{id}'}], "
               "name: [{text: '{name}'}]}")
"""What a create looks like, for the messages that say what to write."""
NAME_FIELD = "name"
"""The template field of the name the export gives a user (message.sender_display)."""

Resolved = tuple[str, str | None, CreateResource | None]
"""A user as a participant: (reference, display, create: how to create it when missing, or None)."""


@dataclass(frozen=True)
class Rule:
    reference: str | None
    display: str | None = None
    match: re.Pattern[str] | None = None
    prefix: str | None = None
    role: str | None = None
    create: Any = None  # a FHIR resource whose text values are templates

    def apply(self, legacy_id: str, roles: frozenset[str], name: str | None = None
              ) -> tuple[str | None, str | None, Any] | None:
        fields = {"id": legacy_id, NAME_FIELD: name or ""}
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
        return (fill(self.reference, escape_search) if self.reference is not None else None,
                fill(self.display) or None if self.display else None,
                filled(self.create, fill) if self.create is not None else None)


def filled(template: Any, fill: Callable[[str], str]) -> Any:
    """A create template with every text value filled in; values that come out empty are left out, and so are
    the objects and lists they leave empty (None: nothing left)."""
    if isinstance(template, str):
        return fill(template) or None
    if isinstance(template, dict):
        out = {k: v for k, v in ((k, filled(v, fill)) for k, v in template.items()) if v is not None}
        return out or None
    if isinstance(template, list):
        items = [v for v in (filled(v, fill) for v in template) if v is not None]
        return items or None
    return template


def template_fields(template: Any) -> list[str]:
    """Every field a template (a text, or a create's text values) names, in order."""
    if isinstance(template, str):
        return _TEMPLATE_FIELD.findall(template)
    if isinstance(template, dict):
        return [f for v in template.values() for f in template_fields(v)]
    if isinstance(template, list):
        return [f for v in template for f in template_fields(v)]
    return []


def as_participant(reference: str | None, display: str | None, create: Any) -> Resolved | str:
    """(reference, display, create) checked as a spec's participant is (the reference derived from `create` when
    not given), or why it cannot be one, in words."""
    try:
        p = Participant("p", reference, display, create)
    except SpecError as exc:
        shown = [pr for pr in exc.problems if create is None or "reference" not in pr.message] or exc.problems
        return "; ".join(f"{pr.path.removeprefix('participants.p.') or 'participant'}: {pr.message}" for pr in shown)
    return p.reference, p.display, p.create


@dataclass
class Participants:
    """The table and the rules of a mapping; `resolver()` gives the per-run lookup."""

    table: dict[str, Resolved] = field(default_factory=dict)
    rules: list[Rule] = field(default_factory=list)
    shared: dict[str, Resolved] = field(default_factory=dict)  # a participants file's, by alias: first of all

    @property
    def uses_roles(self) -> bool:
        return any(r.role is not None for r in self.rules)

    @property
    def uses_names(self) -> bool:
        return any(NAME_FIELD in template_fields([r.create, r.display]) for r in self.rules)

    def with_file(self, shared: ParticipantsFile) -> Participants:
        """These, with a participants file's first: its keys are the aliases made of legacy ids (`keys.alias`)."""
        return Participants(self.table, self.rules, {alias: (p.reference, p.display, p.create)
                                                     for alias, p in shared.participants.items()})

    def resolver(self, roles_of: Callable[[str], frozenset[str]] | None = None,
                 names_of: Callable[[str], str | None] | None = None) -> Resolver:
        return Resolver(self, roles_of, names_of)


class Resolver:
    """legacy id → (reference, display, create), or a str saying why it cannot be resolved. Caches rule results."""

    def __init__(self, participants: Participants, roles_of: Callable[[str], frozenset[str]] | None,
                 names_of: Callable[[str], str | None] | None = None) -> None:
        self.table = participants.table
        self.rules = participants.rules
        self.shared = participants.shared
        self.roles_of = roles_of
        self.names_of = names_of
        self.cache: dict[str, Resolved | str] = {}

    def __call__(self, legacy_id: str) -> Resolved | str:
        if self.shared:
            found = self.shared.get(make_alias(legacy_id))
            if found is not None:
                return found
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
        name = self.names_of(legacy_id) if self.names_of is not None else None
        for rule in self.rules:
            got = rule.apply(legacy_id, roles, name)
            if got is None:
                continue
            reference, display, create = got
            if create is None and (reference is None or not is_reference(reference)):
                return (f"user {legacy_id!r} maps to {reference!r}, which is not a reference "
                        "(Type/id or Type?identifier=system|value)")
            if create is None:
                return reference, display, None  # type: ignore[return-value]  # (checked just above)
            made = as_participant(reference, display, create)
            if isinstance(made, str):
                return f"user {legacy_id!r}: the rule's create makes a participant that cannot be created: {made}"
            return made
        if len(roles) > 1:
            return f"user {legacy_id!r} has conflicting roles ({', '.join(sorted(roles))}) and no table entry"
        return f"user {legacy_id!r} is not in the participant table and matches no rule"


# --- loading ---------------------------------------------------------------------------------------


def load_participants(data: Mapping[str, Any], doc: Document, base: Path, *, has_roles: bool,
                      has_names: bool = True) -> tuple[Participants, list[Problem]]:
    """The participants section of a mapping: its table file read, its rules compiled (a rule's `create` tried
    with every field filled in, so that what it cannot make is said at its line)."""
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
        fields.add(NAME_FIELD)
        for key in ("reference", "display", "create"):
            for name in dict.fromkeys(template_fields(raw.get(key))):
                if name not in fields:
                    problems.append(doc.problem((*path, key), f"unknown field {{{name}}} (known here: "
                                                               f"{', '.join(sorted(fields))})"))
                elif name == NAME_FIELD and not has_names:
                    problems.append(doc.problem((*path, key), "{name} is the name the export gives a user: it needs "
                                                               "message.sender_display (the column that holds it)"))
        if "create" in raw:
            _check_create(raw, path, fields, doc, problems)
        out.rules.append(Rule(raw.get("reference"), raw.get("display"), pattern, raw.get("prefix"), raw.get("role"),
                              raw.get("create")))
    return out, problems


def _check_create(raw: Mapping[str, Any], path: tuple[str | int, ...], fields: set[str], doc: Document,
                  problems: list[Problem]) -> None:
    """A rule's create (and reference, when both are given), with every field filled in by a sample value: what
    no id could fix is a problem at the rule's line, saying what a create is."""
    def sample(template: str) -> str:
        return _TEMPLATE_FIELD.sub("1", template)
    reference = sample(raw["reference"]) if isinstance(raw.get("reference"), str) else None
    got = as_participant(reference, None, filled(raw["create"], sample))
    if isinstance(got, str):
        problems.append(doc.problem((*path, "create"), f"{got} (a create is a FHIR resource with an identifier, "
                                                       f"its text values templates: {CREATE_HINT})"))


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


def _load_table(path: Path, doc: Document, problems: list[Problem]) -> dict[str, Resolved]:
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


def _add(table: dict[str, Resolved], key: str, reference: str, display: str | None,
         where: Callable[[str], Problem], problems: list[Problem]) -> None:
    if not key:
        problems.append(where("empty id"))
    elif key in table:
        problems.append(where(f"user {key!r} is listed twice"))
    elif not is_reference(reference):
        problems.append(where(f"{reference!r} is not a reference (Type/id or Type?identifier=system|value)"))
    else:
        table[key] = (reference, display or None, None)


def _csv_table(text: str, name: str, problems: list[Problem]) -> dict[str, Resolved]:
    table: dict[str, Resolved] = {}
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


TABLE_ENTRY_HINT = ("write a reference ('Patient/123' or 'Patient?identifier=system|value'), or a participant as a "
                    "spec writes one: {reference, display}, or {display, create} to create it when missing, e.g. "
                    "{display: Ann Lee, create: {resourceType: Patient, identifier: [{system: "
                    "'https://example.org/phone', value: '17735550123'}]}}")


def _yaml_table(text: str, name: str, problems: list[Problem]) -> dict[str, Resolved]:
    table: dict[str, Resolved] = {}
    docs, bad = parse_yaml(text, name)
    problems.extend(bad)
    if bad:
        return table
    if len(docs) != 1 or not isinstance(docs[0].data, dict):
        problems.append(Problem(name, None, None, "", "expected a mapping: legacy id → a reference, or "
                                                      "{reference, display, create}"))
        return table
    doc = docs[0]
    for key, entry in doc.data.items():
        if isinstance(entry, str):
            entry = {"reference": entry}
        unknown = sorted(map(str, set(entry) - {"reference", "display", "create"})) if isinstance(entry, dict) else []
        if not isinstance(entry, dict) or unknown or not isinstance(entry.get("reference", ""), str) or \
                not isinstance(entry.get("display", ""), str | None):
            why = f"unknown field {', '.join(map(repr, unknown))}: " if unknown else ""
            problems.append(doc.problem((key,), f"{why}{TABLE_ENTRY_HINT}"))
            continue
        def where(msg: str, k: Any = key) -> Problem:
            return doc.problem((k,), msg)
        if "create" in entry or "reference" not in entry:
            made = as_participant(entry.get("reference"), entry.get("display"), entry.get("create"))
            if isinstance(made, str):
                problems.append(where(f"{made} ({TABLE_ENTRY_HINT})"))
            elif not str(key):
                problems.append(where("empty id"))
            elif str(key) in table:
                problems.append(where(f"user {key!r} is listed twice"))
            else:
                table[str(key)] = made
            continue
        _add(table, str(key), entry["reference"], entry.get("display"), where, problems)
    return table
