"""The read-state rules of `validate`: the shape of Medplum's three read models in a bundle. Pure.

* **simple** (1:1 threads): a read message has `status: completed` and `received`. In a thread of more
  than two participants such a message cannot say who read it: `read.simple-group` (a warning: the status
  may mean something else to the app; messages of a closed thread, `completed` too, are not judged).
* **header-extension**: each `thread-read-state` extension of a header holds the sub-extensions
  `participant` (valueReference to one of the header's recipients), `lastRead` (valueReference to a message
  of that thread) and `lastReadAt` (valueDateTime, a real instant), each once; one block per participant:
  `read.extension`.
* **tasks**: a read-receipt Task (`code` https://medplum.com/task-codes|read-receipt) has intent `order`,
  status `requested` or `completed`, `focus` on a thread header, an `owner`: `read.task`; its owner is a
  recipient of the header and, when its identifier names a message of the bundle (`<message>/read/<alias>`),
  of that message: `read.task-owner`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..build import read_receipt_parts
from ..vocabulary import (
    READ_RECEIPT_CODE,
    READ_RECEIPT_INTENT,
    READ_RECEIPT_READ,
    READ_RECEIPT_SYSTEM,
    READ_RECEIPT_UNREAD,
    READ_STATE_EXTENSION,
    READ_STATE_LAST_READ,
    READ_STATE_LAST_READ_AT,
    READ_STATE_PARTICIPANT,
    READ_STATUS,
    SIMPLE_MAX_PARTICIPANTS,
    instant_problem,
)
from .context import RuleContext

_SUBS = {READ_STATE_PARTICIPANT: "valueReference", READ_STATE_LAST_READ: "valueReference",
         READ_STATE_LAST_READ_AT: "valueDateTime"}


def read_state_rules(ctx: RuleContext, comms: Mapping[int, dict[str, Any]], headers: set[int],
                     thread: Mapping[int, tuple[str, Any]]) -> None:
    """Issues of the three read models' shapes (see the module docstring)."""
    recipients = {h: _recipients(comms[h]) for h in headers}  # a thread's participants: its header's recipients,
    for i, (kind, h) in thread.items():  # and who sends and receives its messages (`thread.header-recipients` tells
        if kind == "entry":  # when those are not the same)
            sender = _reference(comms[i].get("sender"))
            recipients[h] += [r for r in [*_recipients(comms[i]), *([sender] if sender else [])]
                              if r not in recipients[h]]
    _simple(ctx, comms, recipients, thread)
    for h in sorted(headers):
        for k, ext in enumerate(comms[h].get("extension") or ()):
            if isinstance(ext, dict) and ext.get("url") == READ_STATE_EXTENSION:
                _block(ctx, h, k, ext, recipients[h], {i for i, (kind, t) in thread.items()
                                                       if kind == "entry" and t == h})
        _one_block_each(ctx, h, comms[h])
    messages_by_token = {tok: i for i in thread for tok in tokens(comms[i])}
    for i, r in ctx.resources.items():
        if r["resourceType"] == "Task" and _is_read_receipt(r):
            _task(ctx, i, r, comms, headers, recipients, messages_by_token)


def _recipients(resource: Mapping[str, Any]) -> list[str]:
    value = resource.get("recipient")
    return [r["reference"] for r in value if isinstance(r, dict) and isinstance(r.get("reference"), str)] \
        if isinstance(value, list) else []


def tokens(resource: Mapping[str, Any]) -> list[str]:
    """A resource's identifiers as search tokens `system|value`."""
    ids = resource.get("identifier")
    if not isinstance(ids, list):
        return []
    return [f"{x.get('system', '')}|{x['value']}" for x in ids
            if isinstance(x, dict) and isinstance(x.get("value"), str)]


def _reference(value: Any) -> str | None:
    ref = value.get("reference") if isinstance(value, dict) else None
    return ref if isinstance(ref, str) else None


def _simple(ctx: RuleContext, comms: Mapping[int, dict[str, Any]], recipients: Mapping[int, list[str]],
            thread: Mapping[int, tuple[str, Any]]) -> None:
    for i, (kind, h) in sorted(thread.items()):
        if kind == "entry" and comms[i].get("status") == READ_STATUS and "received" in comms[i] and \
                comms[h].get("status") != READ_STATUS and len(recipients.get(h, ())) > SIMPLE_MAX_PARTICIPANTS:
            ctx.add("read.simple-group", i, ("resource", "status"),
                    f"status {READ_STATUS} marks a message read in the simple read model, which fits 1:1 threads; "
                    f"this thread has {len(recipients[h])} participants, so it cannot say who read it: keep read "
                    "state in read-receipt Tasks (tasks) or the header's extension (header-extension)")


def _block(ctx: RuleContext, h: int, k: int, ext: dict[str, Any], people: list[str], own: set[int]) -> None:
    """One thread-read-state extension of header `h`: its sub-extensions, each once, of the right kind."""
    loc = ("resource", "extension", k)
    subs = ext.get("extension")
    if not isinstance(subs, list):
        ctx.add("read.extension", h, (*loc, "extension"), f"a {READ_STATE_EXTENSION} extension holds the "
                                                          f"sub-extensions {', '.join(_SUBS)}")
        return
    seen: dict[str, dict[str, Any]] = {}
    for n, sub in enumerate(subs):
        name = sub.get("url") if isinstance(sub, dict) else None
        if name not in _SUBS or name in seen:
            why = "given twice" if name in seen else f"not one of {', '.join(_SUBS)}"
            ctx.add("read.extension", h, (*loc, "extension", n), f"sub-extension {name!r}: {why}")
            continue
        seen[name] = sub
        value = sub.get(_SUBS[name])
        if value is None or set(sub) != {"url", _SUBS[name]}:
            ctx.add("read.extension", h, (*loc, "extension", n), f"{name} holds exactly one {_SUBS[name]}")
        elif name == READ_STATE_LAST_READ_AT and (problem := instant_problem(value)) is not None:
            ctx.add("read.extension", h, (*loc, "extension", n, _SUBS[name]), problem)
        elif name == READ_STATE_PARTICIPANT and _reference(value) not in people:
            ctx.add("read.extension", h, (*loc, "extension", n, _SUBS[name]),
                    f"{_reference(value)!r} is not a participant of this thread")
        elif name == READ_STATE_LAST_READ:
            _last_read(ctx, h, (*loc, "extension", n, _SUBS[name]), _reference(value), own)
    missing = [name for name in _SUBS if name not in seen]
    if missing:
        ctx.add("read.extension", h, (*loc, "extension"), f"missing {', '.join(missing)}")


def _last_read(ctx: RuleContext, h: int, loc: tuple[str | int, ...], ref: str | None, own: set[int]) -> None:
    """`lastRead` points at a message of this thread (in the bundle), or at a Communication on the server."""
    target = ctx.target(ref) if ref is not None else None
    if target is not None and target.kind == "bad":
        return  # (ref.unresolved, ref.format)
    if target is None or (target.kind == "entry" and target.entry not in own) or (
            target.kind != "entry" and target.type != "Communication"):
        ctx.add("read.extension", h, loc, f"lastRead {ref!r} is not a message of this thread")


def _one_block_each(ctx: RuleContext, h: int, header: Mapping[str, Any]) -> None:
    seen: set[str] = set()
    for k, ext in enumerate(header.get("extension") or ()):
        if not isinstance(ext, dict) or ext.get("url") != READ_STATE_EXTENSION:
            continue
        for sub in ext.get("extension") or ():
            if isinstance(sub, dict) and sub.get("url") == READ_STATE_PARTICIPANT:
                who = _reference(sub.get("valueReference"))
                if who is not None and who in seen:
                    ctx.add("read.extension", h, ("resource", "extension", k),
                            f"a second read state for {who}: one block per participant")
                seen.add(who or "")


def _is_read_receipt(task: Mapping[str, Any]) -> bool:
    code = task.get("code")
    codings = code.get("coding") if isinstance(code, dict) else None
    return isinstance(codings, list) and any(
        isinstance(c, dict) and c.get("code") == READ_RECEIPT_CODE for c in codings)


def _task(ctx: RuleContext, i: int, task: dict[str, Any], comms: Mapping[int, dict[str, Any]], headers: set[int],
          recipients: Mapping[int, list[str]], messages_by_token: Mapping[str, int]) -> None:
    """A read-receipt Task's own fields, then whose receipt it is."""
    codings = task["code"]["coding"]
    if not any(isinstance(c, dict) and c.get("system") == READ_RECEIPT_SYSTEM and c.get("code") == READ_RECEIPT_CODE
               for c in codings):
        ctx.add("read.task", i, ("resource", "code"),
                f"a read receipt's code is {READ_RECEIPT_SYSTEM}|{READ_RECEIPT_CODE} (Medplum's unread searches "
                "ask for that system)")
    if isinstance(task.get("intent"), str) and task["intent"] != READ_RECEIPT_INTENT:  # (another type: structure)
        ctx.add("read.task", i, ("resource", "intent"), f"a read receipt's intent is {READ_RECEIPT_INTENT!r}, "
                                                        f"got {task.get('intent')!r}")
    if isinstance(task.get("status"), str) and task["status"] not in (READ_RECEIPT_UNREAD, READ_RECEIPT_READ):
        ctx.add("read.task", i, ("resource", "status"),
                f"a read receipt is {READ_RECEIPT_UNREAD} (unread) or {READ_RECEIPT_READ} (read), got "
                f"{task.get('status')!r}: unread searches (status={READ_RECEIPT_UNREAD}) would miss it")
    focus = ctx.target(_reference(task.get("focus")) or "")
    header = focus.entry if focus.kind == "entry" else None
    if focus.kind == "bad" and _reference(task.get("focus")) is not None:
        pass  # (ref.unresolved, ref.format)
    elif (header is None and focus.type != "Communication") or (header is not None and header not in headers):
        ctx.add("read.task", i, ("resource", "focus"), "a read receipt's focus is its thread's header "
                                                       "(a Communication without partOf)")
    owner = _reference(task.get("owner"))
    if owner is None:
        ctx.add("read.task", i, ("resource", "owner"), "a read receipt needs an owner: the recipient who reads")
        return
    _owner(ctx, i, task, owner, comms, recipients.get(header, None) if header is not None else None,
           messages_by_token)


def _owner(ctx: RuleContext, i: int, task: Mapping[str, Any], owner: str, comms: Mapping[int, dict[str, Any]],
           people: list[str] | None, messages_by_token: Mapping[str, int]) -> None:
    if people is not None and owner not in people:
        ctx.add("read.task-owner", i, ("resource", "owner"),
                f"{owner} is not a participant of the thread (its header's recipients): unread counts would "
                "count a message they never got")
        return
    for tok in tokens(task):
        parts = read_receipt_parts(tok)
        m = messages_by_token.get(parts[0]) if parts else None
        if m is not None and owner not in _recipients(comms[m]):
            ctx.add("read.task-owner", i, ("resource", "owner"),
                    f"{owner} is not a recipient of the message it is the read receipt of (entry {m})", related=m)
