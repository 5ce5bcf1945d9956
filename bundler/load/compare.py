"""Comparing a thread spec with what a server holds for it, field by field. Pure.

Server-assigned ids, `meta`, the rewriting of `urn:uuid:` references into `Communication/<id>`, and what Medplum
stores in place of a conditional reference (the literal reference of what it matched, with its own display:
`vocabulary.stored_reference`) are not differences; anything else is. Resources are matched by their identifiers.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..build import DEFAULT_IDENTIFIER_SYSTEM, build_bundle, entry_values, read_receipts
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
        for n in range(len(self.names)):
            if n in self.missing:
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
        mapping = {**ref_of, **_attachment_urls(entry["resource"], actual)} if "payload" in entry["resource"] \
            else ref_of
        _differences(diff.names[n], rewrite_references(entry["resource"], mapping), dict(actual), out, top=True)
        if "payload" in entry["resource"]:
            out += _unresolved_files(diff.names[n], entry["resource"], actual)
        if out:
            diff.differences[n] = out
    diff.extra = [(ident, resource) for ident, resource in by_ident.items() if ident not in expected_idents]
    return diff


def diff_thread(spec: ThreadSpec, resources: Iterable[Mapping[str, Any]], *,
                identifier_system: str = DEFAULT_IDENTIFIER_SYSTEM,
                resolved: Resolved | None = None) -> list[str]:
    """Every difference between `spec` and `resources` (its header and messages as a server returned
    them, in any order); an empty list when they match (see `compare_thread`)."""
    diff = compare_thread(spec, resources, identifier_system=identifier_system, resolved=resolved)
    return diff.lines(identifier_system, entry_values(spec))


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
