"""Comparing a thread spec with what a server holds for it, field by field. Pure.

Server-assigned ids, `meta`, the rewriting of `urn:uuid:` references into `Communication/<id>`, and what Medplum
stores in place of a conditional reference (the literal reference of what it matched, with its own display:
`vocabulary.stored_reference`) are not differences; anything else is. Resources are matched by their identifiers.
"""

from __future__ import annotations

from collections import ChainMap
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..build import DEFAULT_IDENTIFIER_SYSTEM, build_bundle, bundle_entries, full_url, read_receipts
from ..spec.model import ThreadSpec
from ..vocabulary import binary_reference, rewrite_references, wire_reference

Resolved = Mapping[str, str | Mapping[str, str]]
"""What the server put in place of references of the spec: a conditional reference (its spec form) → the Reference
stored for it (`Resolver.stored`), or any reference → the reference string stored for it."""

IGNORED = ("id", "meta", "text")


def _ident(resource: Mapping[str, Any], system: str) -> str | None:
    for ident in resource.get("identifier") or ():
        if ident.get("system") == system:
            value = ident.get("value")
            return None if value is None else str(value)
    return None


def _differences(path: str, expected: Any, actual: Any, out: list[str], *, top: bool = False) -> None:
    if isinstance(expected, dict) and isinstance(actual, dict):
        _dict_differences(path, expected, actual, out, top=top)
    elif isinstance(expected, list) and isinstance(actual, list):
        if len(expected) != len(actual):
            out.append(f"{path}: {len(expected)} expected, {len(actual)} on the server")
        for i, (e, a) in enumerate(zip(expected, actual, strict=False)):
            _differences(f"{path}[{i}]", e, a, out)
    elif expected != actual:
        out.append(f"{path}: expected {_short(expected)}, got {_short(actual)}")


def _dict_differences(path: str, expected: dict[str, Any], actual: dict[str, Any], out: list[str], *,
                      top: bool) -> None:
    for key in expected.keys() | actual.keys():
        if top and key in IGNORED:
            continue
        if key not in actual:
            out.append(f"{path}.{key}: missing on the server (expected {_short(expected[key])})")
        elif key not in expected:
            out.append(f"{path}.{key}: on the server but not in the spec ({_short(actual[key])})")
        else:
            _differences(f"{path}.{key}", expected[key], actual[key], out)


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass
class ThreadDiff:
    """How a server's resources differ from a thread's spec, entry by entry (entry 0 is the header)."""

    names: list[str]  # each entry's name: "header", "messages[0] (m0)", ...
    differences: dict[int, list[str]] = field(default_factory=dict)  # entry → its differences, in verify's words
    missing: list[int] = field(default_factory=list)  # entries not on the server
    found: dict[int, Mapping[str, Any]] = field(default_factory=dict)  # entry → the server's resource
    extra: list[tuple[str, Mapping[str, Any]]] = field(default_factory=list)  # (identifier value, resource) of
    # this thread on the server but not in the spec
    problems: list[str] = field(default_factory=list)  # resources without our identifier, or twice

    def lines(self, system: str, idents: list[str]) -> list[str]:
        """Every difference as one line each (what `verify` shows)."""
        out = list(self.problems)
        missing = set(self.missing)
        for n in range(len(self.names)):
            if n in missing:
                out.append(f"{self.names[n]}: not on the server (identifier {system}|{idents[n]})")
            out += self.differences.get(n, [])
        out += [f"{_name(resource)}: on the server in this thread but not in the spec "
                f"(identifier {ident})" for ident, resource in self.extra]
        return out


def entry_names(spec: ThreadSpec) -> list[str]:
    """The name of each entry of a thread's bundle, as differences call it."""
    return ["header"] + [f"messages[{i}] ({m.id})" for i, m in enumerate(spec.messages, 1)] + [
        f"read receipt of messages[{i + 1}] ({spec.messages[i].id}) for {alias}" for i, alias in read_receipts(spec)]


def _name(resource: Mapping[str, Any]) -> str:
    """`Type/id` of a resource the server returned."""
    return f"{resource.get('resourceType', 'Communication')}/{resource.get('id')}"


def compare_thread(spec: ThreadSpec, resources: Iterable[Mapping[str, Any]], *,
                   identifier_system: str = DEFAULT_IDENTIFIER_SYSTEM, resolved: Resolved | None = None,
                   bundle: Mapping[str, Any] | None = None) -> ThreadDiff:
    """How `resources` (a thread's header and messages as a server returned them, in any order) differ from
    `spec`, entry by entry. `bundle` is the spec's bundle when the caller has it already.

    `resolved` maps the spec's conditional references (`Patient?identifier=s|v`) to the References the server
    stored in their place (`{reference: Patient/<id>, display}`), as `bundler.load.verify.resolve_references` finds
    them: the whole Reference is expected, the spec's display replaced by the server's."""
    bundle = bundle if bundle is not None else build_bundle(spec, identifier_system=identifier_system)
    diff = ThreadDiff(entry_names(spec))
    by_ident = _by_identifier(resources, identifier_system, diff.problems)
    ref_of = _server_references(bundle, by_ident, identifier_system, resolved)
    expected_idents = set()
    for n, entry in enumerate(bundle["entry"]):
        ident = _ident(entry["resource"], identifier_system)
        expected_idents.add(ident)
        actual = by_ident.get(ident or "")
        if actual is None:
            diff.missing.append(n)
            continue
        diff.found[n] = actual
        out: list[str] = []
        if out := _entry_differences(diff.names[n], entry["resource"], actual, ref_of):
            diff.differences[n] = out
    diff.extra = [(ident, resource) for ident, resource in by_ident.items() if ident not in expected_idents]
    return diff


def _entry_differences(name: str, expected: Mapping[str, Any], actual: Mapping[str, Any],
                       ref_of: dict[str, str | Mapping[str, str]]) -> list[str]:
    """How one resource the server holds differs from the entry's resource it stands for, in verify's words (a
    message's attachment urls looked up before `ref_of`, which is not copied: it has an entry a resource)."""
    out: list[str] = []
    mapping: Mapping[str, str | Mapping[str, str]] = ref_of
    if "payload" in expected:
        files: dict[str, str | Mapping[str, str]] = dict(_attachment_urls(expected, actual))
        mapping = ChainMap(files, ref_of)
    _differences(name, rewrite_references(expected, mapping), dict(actual), out, top=True)
    if "payload" in expected:
        out += _unresolved_files(name, expected, actual)
    return out


def diff_thread(spec: ThreadSpec, resources: Iterable[Mapping[str, Any]], *,
                identifier_system: str = DEFAULT_IDENTIFIER_SYSTEM,
                resolved: Resolved | None = None) -> list[str]:
    """Every difference between `spec` and `resources` (its header and messages as a server returned
    them, in any order); an empty list when they match (see `compare_thread`; `ThreadComparer` a page at a
    time, which says the same)."""
    comparer = ThreadComparer(spec, identifier_system=identifier_system, resolved=resolved)
    comparer.add(resources)
    return comparer.finish()


class ThreadComparer:
    """`diff_thread` fed a page at a time as a read-back streams (`add`, then `finish`), holding neither the whole
    bundle nor every resource read: the spec's entries are built as the resources read ask for them
    (`build.bundle_entries`, in bundle order, at most `window` ahead of what was read), each pair is compared
    and let go, and only a name a resource (`Type/id`) is kept, by identifier, for the references of later
    ones. A resource whose entry refers to one not read yet (a reply to a later message, the header's read
    state) waits for the end. Read back in about bundle order (`_sort=_lastUpdated`), a thread of 100,000
    messages holds a page or two; read in another order it holds what it must, and says the same."""

    def __init__(self, spec: ThreadSpec, *, identifier_system: str = DEFAULT_IDENTIFIER_SYSTEM,
                 resolved: Resolved | None = None, window: int = 2000) -> None:
        self.spec, self.system, self.window = spec, identifier_system, window
        self.receipts = read_receipts(spec)
        self.named = 1 + len(spec.messages) + len(self.receipts)  # (the Binaries after them are not read back)
        self.entries = enumerate(bundle_entries(spec, identifier_system=identifier_system))
        self.ref_of: dict[str, str | Mapping[str, str]] = {wire_reference(k): v for k, v in (resolved or {}).items()}
        self.seen: dict[str, str] = {}  # identifier value → Type/id of the resource read with it
        self.waiting: dict[str, Mapping[str, Any]] = {}  # read, its entry not built yet (or none: extra)
        self.pending: dict[str, tuple[int, dict[str, Any]]] = {}  # built, its resource not read yet
        self.later: list[tuple[int, dict[str, Any], Mapping[str, Any]]] = []  # both, a reference not read yet
        self.problems: list[str] = []
        self.differences: dict[int, list[str]] = {}
        self.done = False

    def name(self, n: int) -> str:
        """Entry `n`'s name, as `entry_names` gives it."""
        if n == 0:
            return "header"
        if n <= len(self.spec.messages):
            return f"messages[{n}] ({self.spec.messages[n - 1].id})"
        i, alias = self.receipts[n - 1 - len(self.spec.messages)]
        return f"read receipt of messages[{i + 1}] ({self.spec.messages[i].id}) for {alias}"

    def add(self, resources: Iterable[Mapping[str, Any]]) -> None:
        """Resources of the thread as the server returned them, in any order (a page of a read-back)."""
        for resource in resources:
            ident = _ident(resource, self.system)
            if ident is None:
                self.problems.append(f"{_name(resource)}: has no {self.system} identifier")
                continue
            if ident in self.seen:
                self.problems.append(f"{ident}: on the server twice ({self.seen[ident]} and {_name(resource)})")
                continue
            self.seen[ident] = name = _name(resource)
            if resource.get("id"):
                self.ref_of[full_url(self.system, ident)] = name
            if ident in self.pending:
                self._pair(*self.pending.pop(ident), resource)
            else:
                self.waiting[ident] = resource
        self._advance(until_done=False)

    def _advance(self, *, until_done: bool) -> None:
        """Build entries while resources wait for theirs (and no more than `window` ahead), or all of them."""
        while until_done or (self.waiting and len(self.pending) < self.window):
            n, entry = next(self.entries, (self.named, {}))
            if n >= self.named:
                return
            ident = _ident(entry["resource"], self.system) or ""
            if ident in self.waiting:
                self._pair(n, entry, self.waiting.pop(ident))
            else:  # (at the end, what was not read is missing: its name is all that is said of it)
                self.pending[ident] = (n, _MISSING if self.done else entry)

    def _pair(self, n: int, entry: dict[str, Any], actual: Mapping[str, Any]) -> None:
        if not self.done and any(ref not in self.ref_of for ref in _urns(entry["resource"])):
            self.later.append((n, entry, actual))
        elif out := _entry_differences(self.name(n), entry["resource"], actual, self.ref_of):
            self.differences[n] = out

    def finish(self) -> list[str]:
        """Every difference, one line each, in `diff_thread`'s order: resources without our identifier or twice,
        then entry by entry (not on the server, or how it differs), then what the server holds but the spec
        does not."""
        self.done = True
        self._advance(until_done=True)
        for n, entry, actual in self.later:
            self._pair(n, entry, actual)
        missing = {n: ident for ident, (n, _) in self.pending.items()}
        out = list(self.problems)
        for n in sorted(missing.keys() | self.differences.keys()):
            if n in missing:
                out.append(f"{self.name(n)}: not on the server (identifier {self.system}|{missing[n]})")
            out += self.differences.get(n, [])
        out += [f"{_name(resource)}: on the server in this thread but not in the spec (identifier {ident})"
                for ident, resource in self.waiting.items()]
        return out


_MISSING: dict[str, Any] = {}
"""What `finish` keeps of an entry the read-back did not have: nothing (a thread of 100,000 messages that is not on
the server holds their names, not their built entries)."""


def _urns(value: Any) -> Iterator[str]:
    """The `urn:uuid:` references in `value` (an entry's resource): those the server rewrote."""
    if isinstance(value, dict):
        ref = value.get("reference")
        if isinstance(ref, str) and ref.startswith("urn:uuid:"):
            yield ref
        for v in value.values():
            if isinstance(v, dict | list):
                yield from _urns(v)
    elif isinstance(value, list):
        for v in value:
            yield from _urns(v)


def _attachment_urls(expected: Mapping[str, Any], actual: Mapping[str, Any]) -> dict[str, str]:
    """The urns of a message's file attachments (`build.binary_url`), and its `Binary/<id>` urls, → the url the server
    holds in their place: `Binary/<id>`, or a signed URL of its storage (`vocabulary.binary_reference`; for a
    `Binary/<id>`, of that Binary). Their bytes are compared by hash by `verify`, which reads them."""
    out = {}
    for want, got in zip(expected.get("payload") or (), actual.get("payload") or (), strict=False):
        url = (want.get("contentAttachment") or {}).get("url") if isinstance(want, dict) else None
        held = (got.get("contentAttachment") or {}).get("url") if isinstance(got, dict) else None
        if isinstance(url, str) and (ref := binary_reference(held)) is not None and \
                (url.startswith("urn:uuid:") or binary_reference(url) == ref):
            out[url] = str(held)
    return out


def _unresolved_files(name: str, expected: Mapping[str, Any], actual: Mapping[str, Any]) -> list[str]:
    """A message's file attachments that the server holds with the urn we gave them (`build.binary_url`): no Binary
    of the request that stored them stood for it, so the link names nothing (the same url, but not the same)."""
    out = []
    for k, (want, got) in enumerate(zip(expected.get("payload") or (), actual.get("payload") or (), strict=False)):
        url = (want.get("contentAttachment") or {}).get("url") if isinstance(want, dict) else None
        held = (got.get("contentAttachment") or {}).get("url") if isinstance(got, dict) else None
        if isinstance(url, str) and url.startswith("urn:uuid:") and held == url:
            out.append(f"{name}.payload[{k}].contentAttachment.url: {held!r} names no Binary on the server (the "
                       "file's bytes are not there)")
    return out


def _server_references(bundle: Mapping[str, Any], by_ident: Mapping[str, Mapping[str, Any]], system: str,
                       resolved: Resolved | None) -> dict[str, str | Mapping[str, str]]:
    """The server's reference for each of our fullUrls, and its Reference for each conditional reference (in the
    wire form the bundle holds), to undo its rewriting."""
    ref_of: dict[str, str | Mapping[str, str]] = {wire_reference(k): v for k, v in (resolved or {}).items()}
    for entry in bundle["entry"]:
        actual = by_ident.get(_ident(entry["resource"], system) or "")
        if actual is not None and actual.get("id"):
            ref_of[entry["fullUrl"]] = _name(actual)
    return ref_of


def _by_identifier(resources: Iterable[Mapping[str, Any]], system: str, out: list[str]
                   ) -> dict[str, Mapping[str, Any]]:
    """`resources` by their `system` identifier's value; those without one, or twice, are differences."""
    by_ident: dict[str, Mapping[str, Any]] = {}
    for resource in resources:
        ident = _ident(resource, system)
        if ident is None:
            out.append(f"{_name(resource)}: has no {system} identifier")
        elif ident in by_ident:
            out.append(f"{ident}: on the server twice ({_name(by_ident[ident])} and {_name(resource)})")
        else:
            by_ident[ident] = resource
    return by_ident
