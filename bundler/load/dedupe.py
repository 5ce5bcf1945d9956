"""`dedupe`: keep one copy of each thread that loads running at the same time both made, going by their reports.

Two loads of the same specs with two journals can both send a thread (`duplicates`). Each checks for copies once
its thread is in, and the one that committed second finds both; the first may find them too, or not (its check ran
before the second's commit). So one load's report may list a thread and the other's not, and following one report
leaves the threads only the other found (and following both, each deleting "the others", deletes every copy).

`plan_dedupe` reads every report together and picks, for each thread, the copy to keep:
1. a thread a load found with its own late requests (`landed_late`): its copy, the one its journal holds;
2. else the copy no report calls its own: that of the load that committed first and found nothing, whose journal
   does not know of the double (its next run skips the thread, trusting its ids: they must stay valid);
3. else (every copy is a reporting load's own) the copy of the first report given that has one.
The other copies of each listed entry are deleted (`dedupe`). A load whose copy was deleted notes the thread in its
journal (it found the copies): its next run sees its copy gone, forgets it and finds the thread again by
identifier (`existing`). An entry with two copies no report owns (the loads that made them were not given) is left
alone and said (`Decision.unresolved`).

    from bundler.load.dedupe import dedupe
    result = dedupe(["a.json", "b.json"], client)     # then: each load again with its journal, then verify
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from ..errors import OptionError
from ..medplum.client import FhirClient


@dataclass(frozen=True)
class Listing:
    """One report's word on one thread it found with copies: per entry (identifier), the copy the load calls its own
    (None: it made none) and the others it saw."""

    report: str
    key: str
    ours: dict[str, str | None]
    others: dict[str, list[str]]
    late: bool = False
    entries: dict[str, str] = field(default_factory=dict)  # identifier → the entry's name ("header", "messages[2]...")


@dataclass
class Decision:
    """What is kept and deleted of one thread: `keep` per identifier, `delete` the other copies (`Type/<id>`); `why`
    whose copy is kept ("a.json's"; "the load's that found none": no report given calls it its own); `unresolved`
    identifiers whose copy to keep cannot be told from the reports given."""

    key: str
    keep: dict[str, str]
    delete: list[str]
    why: str
    unresolved: list[str] = field(default_factory=list)
    headers: list[str] = field(default_factory=list)  # those of `delete` that are headers (deleted last)

    def as_json(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if (v or k in ("key", "delete")) and k != "headers"}


@dataclass
class DedupeResult:
    decisions: list[Decision]
    deleted: int = 0
    dry_run: bool = False

    @property
    def ok(self) -> bool:
        """Every listed thread has one copy left (or would have, in a dry run)."""
        return not any(d.unresolved for d in self.decisions)

    def as_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "dry_run": self.dry_run, "deleted": self.deleted,
                "threads": [d.as_json() for d in self.decisions]}


def read_listings(paths: Sequence[str | Path]) -> list[Listing]:
    """The threads each `--report` file lists with copies (`duplicates`), in the order given. A report as `load`
    writes it (a thread a line) is read a line at a time, and only lines with copies are parsed: a migration's
    report of a million threads is not held whole; one written otherwise (reformatted) is read whole."""
    out: list[Listing] = []
    for path in paths:
        name = str(path)
        try:
            threads = list(_threads(Path(path)))
        except OSError as exc:
            raise OptionError(f"{name}: cannot read it: {exc.strerror or exc}") from None
        except orjson.JSONDecodeError as exc:
            raise OptionError(f"{name}: not a load report: not JSON ({exc})") from None
        for n, thread in threads:
            try:
                duplicates = thread["duplicates"]
                out.append(Listing(name, str(thread["key"]), {d["identifier"]: d.get("ours") for d in duplicates},
                                   {d["identifier"]: list(d["others"]) for d in duplicates},
                                   late=bool(thread.get("landed_late")),
                                   entries={d["identifier"]: str(d.get("entry", "")) for d in duplicates}))
            except (KeyError, TypeError) as exc:
                raise OptionError(f"{name}: threads[{n}].duplicates: not as `load --report` writes them "
                                  f"(missing {exc})") from None
    return out


def _threads(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(index, thread) of the report's threads that list copies."""
    with path.open("rb") as f:
        if f.readline() == _OPENING:
            for n, line in enumerate(f):
                if line.startswith(b"]"):
                    return
                if b'"duplicates"' in line and isinstance(thread := orjson.loads(line.rstrip(b",\r\n")), dict) \
                        and thread.get("duplicates"):
                    yield n, thread
            raise orjson.JSONDecodeError("the report ends before its threads' list does", "", 0)
        f.seek(0)
        report = orjson.loads(f.read())
    threads = report.get("threads") if isinstance(report, dict) else None
    if not isinstance(threads, list):
        raise OptionError(f"{path}: not a load report (`thread-bundler load --report`): no \"threads\" list")
    yield from ((n, t) for n, t in enumerate(threads) if isinstance(t, dict) and t.get("duplicates"))


_OPENING = b'{"threads": [\n'
"""How `ReportWriter` begins a report: then a thread a line."""


def plan_dedupe(listings: Iterable[Listing]) -> list[Decision]:
    """For each thread the listings name, the copy of each entry to keep and those to delete (see the module)."""
    by_key: dict[str, list[Listing]] = {}
    for listing in listings:
        by_key.setdefault(listing.key, []).append(listing)
    return [_decide(key, group) for key, group in by_key.items()]


def _decide(key: str, group: list[Listing]) -> Decision:
    copies: dict[str, list[str]] = {}  # identifier → every copy any report saw, in the order seen
    for listing in group:
        for ident, others in listing.others.items():
            seen = copies.setdefault(ident, [])
            for ref in [listing.ours.get(ident), *others]:
                if ref is not None and ref not in seen:
                    seen.append(ref)
    owned = {ref for listing in group for ref in listing.ours.values() if ref is not None}
    unowned = {ident: [ref for ref in refs if ref not in owned] for ident, refs in copies.items()}
    late = [listing for listing in group if listing.late]
    makers = late + [listing for listing in group if not listing.late]
    if late:
        why = f"{late[0].report}'s (the others: its own late requests)"
    elif any(unowned.values()):
        why = "the load's that found none"
        makers = []
    else:
        why = f"{next((m.report for m in makers if any(m.ours.values())), makers[0].report)}'s"
    keep: dict[str, str] = {}
    unresolved: list[str] = []
    for ident, refs in copies.items():
        kept = next((ref for m in makers if (ref := m.ours.get(ident)) is not None), None)
        if kept is None:
            if len(unowned[ident]) == 1:
                kept = unowned[ident][0]
            elif unowned[ident]:
                unresolved.append(ident)
                continue
            else:
                kept = next((ref for m in group if (ref := m.ours.get(ident)) is not None), refs[0])
        keep[ident] = kept
    names = {ident: name for listing in group for ident, name in listing.entries.items()}
    last = sorted(keep, key=lambda ident: names.get(ident) == "header")  # (stable: messages first, then the header)
    delete = [ref for ident in last for ref in copies[ident] if ref != keep[ident]]
    headers = [ref for ident in keep if names.get(ident) == "header" for ref in copies[ident] if ref != keep[ident]]
    return Decision(key, keep, delete, why, unresolved, headers)


def dedupe(reports: Sequence[str | Path], client: FhirClient, *, dry_run: bool = False, concurrency: int = 4,
           on_plan: Callable[[list[Decision]], None] | None = None,
           on_deleted: Callable[[str], None] | None = None) -> DedupeResult:
    """Keep one copy of each thread the load `reports` found with copies (`plan_dedupe`) and delete the others
    (already gone: fine, so it can be run again); `dry_run` deletes nothing. What `thread-bundler dedupe` does."""
    decisions = plan_dedupe(read_listings(reports))
    if on_plan is not None:
        on_plan(decisions)
    result = DedupeResult(decisions, dry_run=dry_run)
    if dry_run:
        return result
    headers = {ref for d in decisions for ref in d.headers}

    def one(ref: str) -> str:
        client.delete(ref)
        return ref

    with ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="dedupe") as pool:
        # messages first, then headers: a stop halfway leaves no message whose header is gone
        for phase in ([r for d in decisions for r in d.delete if r not in headers], sorted(headers)):
            for ref in pool.map(one, phase):
                result.deleted += 1
                if on_deleted is not None:
                    on_deleted(ref)
    return result

