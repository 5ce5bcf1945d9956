"""Copies another load made at the same time: found after commit, by identifier, a batch of threads at a time.

A journal keeps one load from sending a thread twice; two loads with two journals (or none) know nothing of
each other. Given the same specs at the same time, both find a thread missing, both send it, and the server
holds it twice. So once a thread's requests are in, the identifiers of every entry this load sent in a create
are searched (`find_copies`: the entries of several threads, up to CHECK_BATCH identifiers, in one request, as
GET entries of one transaction, which Medplum answers from its primary database after everything committed
before it). Of two loads that made the same resource, the one whose transaction committed second finds both
copies: its search begins after both commits. The first may find them too, or not.

The server counts them first (`_summary=count`), and a thread whose header went in one transaction with its messages,
on a project known to be atomic, is counted by its header alone: a load that made a copy of one of those messages
made a copy of the header with it, or found our header first, and with it every message that committed with it (so
it sent again only messages of later parts, which it counts itself). Where a count is off, every entry of the
thread is searched, so that the result (and `dedupe`) names each copy. A thread of 11 entries costs one identifier
of a check, not eleven.

In strict mode (`--exactly-once strict`) and on a project without atomic transactions every create is
conditional, and Medplum runs conditional creates serializable: two loads cannot both create an identifier,
the second finds the first's (one of them may have to be sent again: a serialization failure, retried by the
client). The check runs there too: it costs little, and it also catches a concurrent load in the default mode,
whose plain creates a conditional one cannot see coming.

A thread found with copies is `duplicated` (a problem: exit 1), its result naming each entry the server holds
more than once, this load's copy and the others (`Duplicate`). Its journal row stays committed, with this load's
ids, and notes it (the row's error: `NOTE`), so that the next run with that journal checks the thread again
instead of skipping it, until the server holds one copy. `dedupe` (given every such load's report) keeps one copy
of each thread: a load whose copy it deleted finds that out on its next run, forgets its row and finds the thread
again by identifier in the same run (`existing`). A thread the pre-check finds more than once (no journal row:
`found_twice`) is not loaded, and is `duplicated` too.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

from ..medplum.client import FhirClient, chunked, holding
from ..vocabulary import IDENTIFIER_SEARCH_COUNT, identifier_token
from ..words import count
from .compare import entry_names
from .report import Duplicate, Outcome, ThreadResult
from .thread import Thread

CHECK_BATCH = 500
"""Identifiers a check waits for before it is sent (as GET entries of at most SEARCH_BATCH each), unless nothing else
is left to do or the oldest thread has waited CHECK_AFTER seconds."""
SEARCH_BATCH = 100
"""Identifiers one search asks for (as the pre-check's searches do)."""
CHECK_AFTER = 2.0
"""Seconds a thread's result waits for a fuller check, at most (a slow load, at Medplum's default quota)."""
NOTE = "duplicates"
"""How a committed journal row's error starts when a check found copies of the thread (the next run checks
again)."""


@dataclass
class Waiting:
    """A thread whose result waits for its check: the entries (indexes) to look for, and the server ids this
    load knows of them. `again`: a thread an earlier run found copies of, checked again (nothing was sent)."""

    t: Thread
    result: ThreadResult
    entries: list[int]
    ids: dict[str, str]
    again: bool = False
    lost: int = 0
    """Requests of this thread whose answers this load lost: a copy found then is most likely one of them,
    landed after the quarantine's search (later than --late-margin), not another load's."""
    counted: list[int] | None = None
    """Of `entries`, those whose counts stand for all (`ThreadLoad.to_count`: the header for the entries created
    with it in one atomic transaction); None: every one is counted. Where one is off, every entry is searched."""

    @property
    def asked(self) -> list[int]:
        """The entries its check asks about first: every one (searched when `again`), else those counted."""
        return self.entries if self.again or self.counted is None else self.counted

    @property
    def size(self) -> int:
        """Identifiers its check counts (or searches)."""
        return len(self.asked)


def find_copies(client: FhirClient, batch: Sequence[Waiting]) -> list[dict[int, list[str]]]:
    """For each thread of `batch`: entry index → every `Type/<id>` on the server with that entry's identifier
    (ours among them), for the entries it asks about that are not simply on the server once (an entry left out is
    ours alone: a thread of 100,000 messages found as it should be is not answered with 100,000 lists). The server
    counts them first (`_summary=count`, a third of
    the time of a search that returns them, on Medplum): only where a count is not one per identifier are they
    searched (a second request); so are those of a thread checked `again` (whose copy is left is the question)."""
    counted: dict[str, list[str]] = {}  # resource type → identifiers (each one on the server, unless counts say)
    exact: dict[str, list[str]] = {}  # resource type → identifiers to search for their resources
    standing: dict[tuple[str, str], Waiting] = {}  # a counted identifier that stands for more of its thread's
    for w in batch:
        for n in w.asked:
            (exact if w.again else counted).setdefault(w.t.types[n], []).append(w.t.identifiers[n])
        if len(w.asked) < len(w.entries):
            standing |= {(w.t.types[n], w.t.identifiers[n]): w for n in w.asked}
    for asks in _requests(_asks(counted)):
        totals = client.count_together([(kind, _params(chunk)) for kind, chunk in asks])
        for (kind, chunk), total in zip(asks, totals, strict=True):
            if total != len(chunk):  # (more: copies; fewer: one gone since, which might hide one more)
                exact.setdefault(kind, []).extend(chunk)
                stood = {id(s): s for ident in chunk if (s := standing.get((kind, ident))) is not None}
                for s in stood.values():
                    for n in s.entries:  # (and the entries they stand for)
                        exact.setdefault(s.t.types[n], []).append(s.t.identifiers[n])
    found: dict[tuple[str, str], list[str]] = {}
    searches = _asks(exact)
    for group in _requests(searches):
        matched = client.search_together([(kind, {**_params(chunk), "_elements": "identifier"})
                                          for kind, chunk in group])
        for (kind, chunk), resources in zip(group, matched, strict=True):
            for value, same in holding(resources, set(chunk)).items():
                found[(kind, value)] = [f"{kind}/{resource['id']}" for resource in same]
    searched = {(kind, ident) for kind, chunk in searches for ident in chunk}
    return [{n: found.get(key, []) for n in w.entries if (key := (w.t.types[n], w.t.identifiers[n])) in searched}
            for w in batch]


def _requests(asks: list[tuple[str, list[str]]]) -> Iterator[list[tuple[str, list[str]]]]:
    """`asks` in requests of at most CHECK_BATCH identifiers (and at least one search): a thread of 100,000
    messages is checked in 200 requests, not one whose body the server refuses as too large."""
    group: list[tuple[str, list[str]]] = []
    size = 0
    for kind, chunk in asks:
        if group and size + len(chunk) > CHECK_BATCH:
            yield group
            group, size = [], 0
        group.append((kind, chunk))
        size += len(chunk)
    if group:
        yield group


def _asks(identifiers: dict[str, list[str]]) -> list[tuple[str, list[str]]]:
    """One search per SEARCH_BATCH identifiers of a type (each once)."""
    return [(kind, chunk) for kind, values in identifiers.items()
            for chunk in chunked(values, max_url=6000, most=SEARCH_BATCH)]


def _params(chunk: list[str]) -> dict[str, str]:
    return {"identifier": ",".join(identifier_token(*ident.split("|", 1)) for ident in chunk),
            "_count": str(IDENTIFIER_SEARCH_COUNT)}  # (not fewer: Medplum answers a small one slowly, see there)


def checked(w: Waiting, copies: dict[int, list[str]]) -> tuple[ThreadResult, str | None, bool]:
    """What the check of `w` found, as (its result, the journal's note for its row, whether the row no longer
    matches the server and is to be forgotten). The note is None when the server holds one copy of each."""
    if w.again and any(w.ids.get(w.t.urls[n]) not in refs for n, refs in copies.items()):
        return w.result, None, True  # someone removed this journal's copy (`dedupe`), keeping another or none
    twice = sorted(n for n, refs in copies.items() if len(refs) > 1)
    if not twice:
        return w.result, None, False
    names = entry_names(w.t.spec)
    duplicates = [Duplicate(names[n], w.t.identifiers[n], ours, [ref for ref in copies[n] if ref != ours])
                  for n in twice for ours in [w.ids.get(w.t.urls[n])]]
    n = len(duplicates)
    note = (f"{NOTE}: {n} of its resources {'are' if n != 1 else 'is'} on the server more than once: "
            f"{duplicates[0].text()}")
    if w.lost:
        whose = (f"this load lost the answer to {w.lost} of its requests, found nothing of it when it searched "
                 "--late-margin seconds later, and sent it again; the lost request landed after all (the server took "
                 "longer than --timeout plus --late-margin). On a server this slow, raise --late-margin or use "
                 "--exactly-once strict. ")
    else:
        whose = "another load sent them at the same time (with another journal, or none). "
    advice = (f"{w.t.where(None)}: {count(n, 'resource')} of this thread {'are' if n != 1 else 'is'} on the "
              f"server more than once: {whose}This load's copy is complete and in its journal. {DEDUPE}")
    result = replace(w.result, duplicates=duplicates, landed_late=w.lost)
    if not w.result.outcome.ok:  # (a failed or partial thread keeps its outcome and says why first)
        return replace(result, error=f"{w.result.error}; {note}"), None, False
    return replace(result, outcome=Outcome.DUPLICATED, error=advice), note, False


def found_twice(t: Thread, headers: list[str]) -> ThreadResult:
    """A thread the pre-check found on the server more than once (its header's identifier on several headers):
    not loaded (which copy would it complete?), told as `duplicated`, naming them; no journal row."""
    names = entry_names(t.spec)
    return t.result(Outcome.DUPLICATED, {}, duplicates=[Duplicate(names[0], t.identifiers[0], None, headers)],
                    error=f"{t.where(None)}: the server holds this thread {len(headers)} times (its header's "
                          f"identifier {t.identifiers[0]} is on {', '.join(headers)}): loads that ran at the same "
                          f"time, with other journals or none, each made one; nothing was sent. {DEDUPE}")


DEDUPE = ("Run `thread-bundler dedupe` with the --report of every load that ran then (it keeps one copy of each "
          "thread and deletes the others), run each load again with its journal, then run verify")
"""What to do about copies, as a duplicated thread's error says it."""
