"""What the rules of `validate` share while they check one bundle: the bundle's entries indexed by fullUrl and by
literal reference, what each reference points at, and the issues found so far. `rules` and `readstate` both
take a `RuleContext`; neither imports the other for it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from ..vocabulary import parse_absolute, parse_literal
from .issues import Issue, entry_path, make_issue


@dataclass(slots=True)
class Target:
    """What a reference string points at."""

    kind: str  # entry | literal | conditional | absolute | contained | bad
    type: str | None = None
    entry: int | None = None
    rest: str = ""  # the id or the query


@dataclass
class RuleContext:
    """One bundle under check: its entries indexed, and the issues found so far (`out`). The rules of `rules` and
    `readstate` each take one and add to it."""

    bundle: Mapping[str, Any]
    entries: list[Any]
    out: list[Issue] = field(default_factory=list)
    by_url: dict[str, int] = field(default_factory=dict)  # fullUrl → first entry index
    by_literal: dict[str, int] = field(default_factory=dict)  # "Type/id" of PUT entries → index
    resources: dict[int, dict[str, Any]] = field(default_factory=dict)  # index → resource of a known type
    methods: dict[int, str] = field(default_factory=dict)
    bad_entries: set[int] = field(default_factory=set)
    _memo: dict[str, Target] = field(default_factory=dict)
    _blob: bytes | None = None

    @property
    def blob(self) -> bytes | None:
        """The bundle serialised (for fast scans that tell whether a slow walk is needed); None if it cannot be."""
        if self._blob is None:
            try:
                self._blob = orjson.dumps(self.bundle)
            except (TypeError, orjson.JSONEncodeError):
                self._blob = b""
        return self._blob or None

    def add(self, code: str, index: int | None, parts: tuple[str | int, ...], message: str, *,
            related: int | None = None) -> None:
        self.out.append(make_issue(code, entry_path(index, *parts), message, index, related))

    def target(self, ref: str) -> Target:
        """What `ref` points at (memoized: bundles repeat the same few references)."""
        t = self._memo.get(ref)
        if t is None:
            t = self._memo[ref] = self._target(ref)
        return t

    def _target(self, ref: str) -> Target:
        if ref.startswith("urn:uuid:") or ref[:9].lower() == "urn:uuid:":
            j = self.by_url.get(ref)
            return Target("entry", self._type(j), j) if j is not None else Target("bad")
        if ref.startswith("#"):
            return Target("contained")
        if "?" in ref:
            t, _, q = ref.partition("?")
            return Target("conditional", t, rest=q)
        literal = parse_literal(ref)
        if literal:
            j = self.by_literal.get(f"{literal[0]}/{literal[1]}")
            if j is not None:
                return Target("entry", self._type(j), j)
            return Target("literal", literal[0], rest=literal[1])
        absolute = parse_absolute(ref)
        if absolute:
            return Target("absolute", absolute[0], rest=absolute[1])
        return Target("bad")

    def _type(self, j: int) -> str | None:
        r = self.resources.get(j)
        return r["resourceType"] if r is not None else None
