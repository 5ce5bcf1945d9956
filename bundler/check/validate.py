"""Check a transaction Bundle before sending it: everything a Medplum server would reject, or store broken.

    issues = validate(bundle)                                   # [] when clean
    issues = validate(bundle, limits="none", structure=False)   # rules only, no server profile
    issues = validate(build_bundle(spec), origin=spec_origin(spec))
    for issues in validate_many(bundles, workers=2): ...        # many bundles, on several cores

`validate` is pure: no I/O, and the bundle is never modified; `validate_many` runs it on a process
pool. Every rule has a stable code listed in `RULES` (code → (severity, description)); errors mean
the server would refuse or corrupt the bundle, warnings that it would accept it but probably not as
meant. The rules live in `check.rules` (bundle, entries, references, threads — read its docstring
for what a "thread" is in a bundle), `check.structure` (FHIR R4 structure with fhir.resources R4B)
and `check.limits` (server limits).
"""

from __future__ import annotations

import dataclasses
import gc
import multiprocessing
import os
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import orjson

from ..build import BuiltEntries, entry_messages
from ..spec import ThreadSpec
from ..vocabulary import TRANSACTION, URN_PATTERN
from .issues import RULES, Issue, Severity
from .limits import PROFILES, Limits, body_size_issues, get_limits, json_bytes, limit_issues
from .rules import check_rules
from .structure import bundle_structure_issues

__all__ = ["PROFILES", "RULES", "Issue", "Limits", "Origin", "Severity", "has_errors", "locate", "spec_origin",
           "validate", "validate_built", "validate_many"]

Origin = Callable[[int | None], tuple[str, int | None]]
"""Entry index (None: the Bundle as a whole) → (file, line) it came from."""


def spec_origin(spec: ThreadSpec) -> Origin:
    """The origin of a bundle built from `spec`: entry 0 is the thread (its header), entry k its k-th message, a read
    receipt after them its message (`build.entry_messages`)."""
    messages = entry_messages(spec)
    return lambda entry: spec.origin(messages[entry] if entry is not None and entry < len(messages) else None)

_ORDER = {code: n for n, code in enumerate(RULES)}


def validate(bundle: Any, *, limits: str | Limits = "medplum", structure: bool = True,
             origin: Origin | None = None) -> list[Issue]:
    """Every issue in `bundle`, errors and warnings, sorted by entry then rule.

    `limits`: a server profile ('medplum', 'none') or a `Limits`. `structure`: also check every
    resource against the FHIR R4 models (the slow part). `origin(entry_index)` gives the (file, line)
    an entry came from, for bundles built from specs.
    """
    issues = _validate(bundle, get_limits(limits), structure, frozenset())
    return locate(issues, origin) if origin is not None else issues


def _validate(bundle: Any, profile: Limits, structure: bool, unstructured: frozenset[int]) -> list[Issue]:
    """`validate`, the structure of the entries `unstructured` not checked (a window's context: `validate_built`)."""
    issues = check_rules(bundle)
    if isinstance(bundle, dict) and not any(i.code in ("bundle.resource-type", "bundle.empty") for i in issues):
        if structure:
            issues += _structure(bundle, issues, unstructured)
        issues += limit_issues(bundle, profile)
    issues.sort(key=lambda i: (-1 if i.entry is None else i.entry, _ORDER[i.code], i.path))
    return issues


def _structure(bundle: dict[str, Any], found: list[Issue], unstructured: frozenset[int]) -> list[Issue]:
    """fhir.structure issues, minus those at (or below) a path another rule already reported."""
    skip = {i.entry for i in found if i.code == "entry.resource" and i.entry is not None} | unstructured
    taken = {i.path for i in found}
    out = []
    for issue in bundle_structure_issues(bundle, skip):
        path = issue.path
        covered = False
        while path:
            if path in taken:
                covered = True
                break
            cut = max(path.rfind("."), path.rfind("["))
            path = path[:cut] if cut > 0 else ""
        if not covered:
            out.append(issue)
    return out


def locate(issues: Sequence[Issue], origin: Origin) -> list[Issue]:
    """`issues` with file and line filled from `origin(entry index)` (None for bundle-wide issues)."""
    cache: dict[int | None, tuple[str, int | None]] = {}

    def where(entry: int | None) -> tuple[str, int | None]:
        if entry not in cache:
            cache[entry] = origin(entry)
        return cache[entry]

    out = []
    for issue in issues:
        file, line = where(issue.entry)
        related_line = where(issue.related)[1] if issue.related is not None else None
        out.append(dataclasses.replace(issue, file=file, line=line, related_line=related_line))
    return out


# --- a thread's bundle, a window at a time --------------------------------------------------------------

WINDOW = 500
"""Messages checked together when a thread's bundle is checked a window at a time (`validate_built`)."""

_URN = re.compile(URN_PATTERN)
_ENTRY_PATH = re.compile(r"^Bundle\.entry\[(\d+)\]")
_ENTRY_WORD = re.compile(r"\bentry (\d+)\b")


def validate_built(entries: BuiltEntries, *, limits: str | Limits = "medplum", structure: bool = True,
                   window: int = WINDOW) -> list[Issue]:
    """`validate` of the bundle `entries` make (`build.BuiltEntries`: `build_bundle`'s entries, each built when
    asked for), with the spec's files and lines, without holding it whole: a thread of more than two windows of
    messages is checked a `window` of messages at a time (a bundle of the header, those messages, their read
    receipts, and the entries they point at: the messages they answer, the files they attach), each issue named by
    its entry's index in the whole bundle; the Binaries go in windows of their own, and the whole bundle's size is
    added up entry by entry. Checked in windows, what a rule says of the header comes from the first; what only
    the whole bundle shows (two entries of one fullUrl, messages' people missing from the header's recipients) a
    checked spec never builds (ids unique, every alias a participant, the header listing every participant)."""
    spec = entries.spec
    origin = spec_origin(spec)
    messages = len(spec.messages)
    if messages <= 2 * window:
        return validate({"resourceType": "Bundle", "type": TRANSACTION, "entry": list(entries)}, limits=limits,
                        structure=structure, origin=origin)
    profile = get_limits(limits)
    index = {entries.url_of(n): n for n in range(len(entries))}
    receipts: dict[int, list[int]] = {}  # message → its read receipts' entries
    for k, (i, _) in enumerate(entries.receipts):
        receipts.setdefault(i, []).append(1 + messages + k)
    binaries = range(1 + messages + len(entries.receipts), len(entries))
    spans = [[n + 1 for n in range(start, min(start + window, messages))] for start in range(0, messages, window)]
    spans += [list(binaries[start:start + window]) for start in range(0, len(binaries), window)]
    out: list[Issue] = []
    size = len(b'{"resourceType":"Bundle","type":"transaction","entry":[]}') + len(entries) - 1
    for w, span in enumerate(spans):
        own = [0, *span, *(r for n in span if 1 <= n <= messages for r in receipts.get(n - 1, ()))]
        built = [entries[n] for n in own]
        data = [json_bytes(e) for e in built]
        size += sum(len(d) for n, d in zip(own, data, strict=True) if n or not w)
        mine = set(own)
        context = sorted({index[u] for d in data for u in _URN.findall(d.decode()) if u in index} - mine)
        bundle = {"resourceType": "Bundle", "type": TRANSACTION, "entry": built + [entries[n] for n in context]}
        del data
        places = own + context
        # (the context's structure is not checked here: its own window checks it)
        for issue in _validate(bundle, profile, structure, frozenset(range(len(own), len(places)))):
            g = places[issue.entry] if issue.entry is not None else None
            if (w and not g) or (g is not None and g not in mine) or issue.code == "limit.body-size":
                continue  # (the header's and the bundle's from the first window, the context's from its own; the
                # whole bundle's size is added up below)
            out.append(_renumbered(issue, places))
        del built, bundle  # (before the next window's are built)
    if not any(i.code == "limit.entry-size" for i in out):
        out += body_size_issues(size, profile)
    out.sort(key=lambda i: (-1 if i.entry is None else i.entry, _ORDER[i.code], i.path))
    return locate(out, origin)


def _renumbered(issue: Issue, places: list[int]) -> Issue:
    """`issue` of a window's bundle, its entries named by their index in the whole bundle (`places`: window index
    → index in the whole)."""
    def entry(m: re.Match[str]) -> str:
        n = int(m.group(1))
        return m.group(0).replace(m.group(1), str(places[n])) if n < len(places) else m.group(0)

    return dataclasses.replace(
        issue, path=_ENTRY_PATH.sub(lambda m: f"Bundle.entry[{places[int(m.group(1))]}]", issue.path),
        message=_ENTRY_WORD.sub(entry, issue.message),
        entry=places[issue.entry] if issue.entry is not None else None,
        related=places[issue.related] if issue.related is not None else None)


def has_errors(issues: Iterable[Issue]) -> bool:
    """Whether any issue is an error (warnings alone do not stop a load)."""
    return any(i.severity == "error" for i in issues)


# --- many bundles, on several cores -------------------------------------------------------------------

_PARALLEL_MIN = 64  # bundles; below this a process pool costs more than it saves


_FORKED: list[Any] = []  # the bundles of the running validate_many, inherited by forked workers


def _validate_chunk(payload: tuple[list[bytes] | range, str | Limits, bool]) -> list[list[Issue]]:
    items, limits, structure = payload
    bundles = (_FORKED[k] for k in items) if isinstance(items, range) else (orjson.loads(b) for b in items)
    return [validate(b, limits=limits, structure=structure) for b in bundles]


def validate_many(bundles: Iterable[Any], *, limits: str | Limits = "medplum", structure: bool = True,
                  workers: int | None = None, chunk_size: int = 250) -> Iterator[list[Issue]]:
    """`validate` for each bundle, in order, on a process pool of `workers` (default: every core) when
    there are enough bundles for it to pay off. Forked workers read the bundles from the memory they
    inherit; elsewhere bundles travel as JSON. Pass origins afterwards with `locate`."""
    items = bundles if isinstance(bundles, list) else list(bundles)
    n = workers if workers is not None else (os.cpu_count() or 1)
    if n <= 1 or len(items) < _PARALLEL_MIN:
        for b in items:
            yield validate(b, limits=limits, structure=structure)
        return
    fork = "fork" in multiprocessing.get_all_start_methods()
    spans = [range(k, min(k + chunk_size, len(items))) for k in range(0, len(items), chunk_size)]
    chunks = [(span if fork else [orjson.dumps(items[k]) for k in span], limits, structure) for span in spans]
    ctx = multiprocessing.get_context("fork" if fork else None)
    _FORKED[:] = items if fork else []
    try:
        # gc.freeze in the workers: the forked heap is never scanned (nor copied page by page) by their gc
        with ProcessPoolExecutor(max_workers=n, mp_context=ctx, initializer=gc.freeze) as pool:
            for result in pool.map(_validate_chunk, chunks):
                yield from result
    finally:
        _FORKED.clear()
