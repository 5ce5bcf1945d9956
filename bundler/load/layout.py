"""How a thread's entries go in requests given where the server holds their files (`Layout`, `lay_out`): the
Binaries each entry carries in its request, the files uploaded before, each entry's size and weight."""

from __future__ import annotations

from dataclasses import dataclass

from ..build import binary_entry, binary_url, carry_files
from ..spec.model import Attachment
from .plan import entry_sizes
from .thread import Thread
from .uploads import Binaries


@dataclass
class Layout:
    """How entries of a thread go in requests, given where the server holds their files: `refs`, the urn of each
    file it holds → `Binary/<id>`; `carried`, entry → the files whose Binaries go in the same request (the first
    entry of those to send that attaches a file the server does not hold yet); each entry's size and weight (how
    many entries it takes in a request) with the Binaries it carries."""

    refs: dict[str, str]
    carried: dict[int, list[Attachment]]
    sizes: list[int]
    weights: list[int]


def lay_out(t: Thread, files: Binaries, indexes: list[int]) -> Layout | str:
    """How `indexes` (entries of `t` to send, in order) go in requests, given the files the server holds (`files`):
    the Binaries each entry carries (`build.carry_files`); the files too large to carry are uploaded first
    (`Binaries.ensure`). Why not, at its spec line, when a file could not be uploaded."""
    spec = t.spec
    sizes, weights = list(t.sizes), [1] * len(t.urls)
    if not spec.has_files:
        return Layout({}, {}, sizes, weights)
    messages = [n - 1 for n in indexes if t.files_of(n)]
    where = files.where({a.hash or "" for n in indexes for a in t.files_of(n)})
    carried, uploads = carry_files(spec, messages, where)
    files.reused({h: where[h] for h in carry_files(spec, messages)[1] if h in where})
    if uploads:
        if (why := files.ensure(spec, uploads)) is not None:
            return why
        where |= files.where(uploads)
    by_entry = {i + 1: carried_files for i, carried_files in carried.items()}
    for n, carried_files in by_entry.items():
        sizes[n] += sum(binary_size(a) for a in carried_files)
        weights[n] += len(carried_files)
    return Layout({binary_url(h): ref for h, ref in where.items()}, by_entry, sizes, weights)


def binary_size(attachment: Attachment) -> int:
    """The size of a file's Binary entry in a request (as `plan.entry_sizes` counts): its bytes in base64."""
    empty = entry_sizes({"entry": [binary_entry(attachment, b"")]})[0]
    return empty + 4 * (((attachment.size or 0) + 2) // 3)
