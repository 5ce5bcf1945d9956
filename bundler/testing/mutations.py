"""Break a valid bundle in exactly one way, one function per bundle rule code (`bundler.check.BUNDLE_RULES`).

    broken = MUTATIONS["thread.header-payload"](bundle, random.Random(7))
    assert {i.code for i in validate(broken)} == {"thread.header-payload"}

Each mutation takes a valid Bundle as the builder makes it (a header first, then its messages, in one
thread) and a `random.Random` (or a hypothesis `draw`-backed one, see `rng_from_draw`), and returns a
deep copy broken surgically: no other rule fires. A mutation that needs more than the bundle has (most
need at least one message, a few two) raises `NotApplicable`.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import random
import re
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from ..build import READ_RECEIPT_MARK
from ..vocabulary import (
    MAX_CONDITIONAL_ENTRIES,
    READ_RECEIPT_CODE,
    READ_RECEIPT_INTENT,
    READ_RECEIPT_SYSTEM,
    READ_RECEIPT_UNREAD,
    READ_STATE_EXTENSION,
    READ_STATUS,
    format_instant,
    parse_instant,
)

Bundle = dict[str, Any]
Mutation = Callable[[Bundle, random.Random], Bundle]


class NotApplicable(ValueError):
    """The bundle lacks what the mutation needs (e.g. a message to break)."""


def rng_from_draw(draw: Callable[[Any], Any]) -> random.Random:
    """A `random.Random` whose every call (`choice`, `randrange`, `getrandbits`, ...) is a hypothesis `draw`, not
    a seeded sequence: a mutation's choices shrink with the data, each towards the first option, the lowest number."""
    from hypothesis import strategies as st

    rng: random.Random = draw(st.randoms(use_true_random=False))
    return rng


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _uuids(rng: random.Random) -> Iterator[str]:
    """Version-4 uuids from `rng`, none given twice (a hypothesis-backed rng may draw the same bits again: a
    mutation that needs several fresh resources gets distinct ones)."""
    given: set[str] = set()
    while True:
        bits = rng.getrandbits(128)
        while (value := str(uuid.UUID(int=bits, version=4))) in given:
            bits = (bits + 1) % 2**128  # (the lowest bit is not one uuid's version or variant bits)
        given.add(value)
        yield value


def _copy(bundle: Bundle, min_messages: int = 1) -> tuple[Bundle, list[dict[str, Any]]]:
    out = copy.deepcopy(bundle)
    entries = out["entry"]
    if len(_messages(entries)) < min_messages:
        raise NotApplicable(f"needs a bundle with at least {min_messages} message(s)")
    return out, entries


def _messages(entries: list[dict[str, Any]], *, sent: bool = False, free: bool = False) -> list[int]:
    """Indexes of the messages (Communications with partOf; not the read receipts after them); with `sent` only
    those that have a sent (not drafts), with `free` only those no read state points at (lastRead)."""
    held = _last_read_targets(entries) if free else set()
    return [i for i, e in enumerate(entries) if e["resource"].get("resourceType") == "Communication"
            and "partOf" in e["resource"] and (not sent or "sent" in e["resource"]) and e["fullUrl"] not in held]


def _last_read_targets(entries: list[dict[str, Any]]) -> set[str]:
    return {sub["valueReference"]["reference"] for ext in entries[0]["resource"].get("extension", [])
            for sub in ext.get("extension", []) if sub.get("url") == "lastRead"}


def _last_unreferenced(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """The last entry nothing points at (a message or a read receipt); NotApplicable when every entry is pointed
    at (each message is someone's last read)."""
    held = set(re.findall(r'"reference":"([^"]*)"', json.dumps(entries, separators=(",", ":"))))
    for entry in reversed(entries):
        if entry["fullUrl"] not in held:
            found: dict[str, Any] = entry
            return found
    raise NotApplicable("every entry is pointed at")


def _header(entries: list[dict[str, Any]]) -> dict[str, Any]:
    header: dict[str, Any] = entries[0]["resource"]
    return header


def _message(entries: list[dict[str, Any]], rng: random.Random, *, free: bool = False) -> tuple[int, dict[str, Any]]:
    """A message, at random; with `free`, one no read state points at (made so if there is none)."""
    choices = _messages(entries, free=free) or _messages(entries)
    if not choices:
        raise NotApplicable("no message")
    i = rng.choice(choices)
    if free:  # every message is someone's last read: that read state goes (nothing else points at a message)
        header = _header(entries)
        kept = [b for b in header.get("extension", []) if all(
            s.get("valueReference", {}).get("reference") != entries[i]["fullUrl"] for s in b.get("extension", []))]
        if kept:
            header["extension"] = kept
        else:
            header.pop("extension", None)
    return i, entries[i]["resource"]


def _replace_strings(node: Any, old: str, new: str) -> Any:
    if isinstance(node, dict):
        return {k: _replace_strings(v, old, new) for k, v in node.items()}
    if isinstance(node, list):
        return [_replace_strings(v, old, new) for v in node]
    return new if node == old else node


def _pad(entries: list[dict[str, Any]], count: int, ids: Iterator[str]) -> None:
    """Add copies of the last message (new fullUrl and identifier, no replies to them) up to `count` entries."""
    last = entries[-1]
    n = 0
    while len(entries) < count:
        n += 1
        clone = copy.deepcopy(last)
        clone["fullUrl"] = f"urn:uuid:{next(ids)}"
        for ident in clone["resource"].get("identifier", []):
            ident["value"] = f"{ident['value']}-copy{n}"
        entries.append(clone)


# --- the Bundle ------------------------------------------------------------------------------------

def resource_type(bundle: Bundle, rng: random.Random) -> Bundle:
    out, _ = _copy(bundle, 0)
    out["resourceType"] = rng.choice(["Bundles", "bundle", "Communication"])
    return out


def bundle_type(bundle: Bundle, rng: random.Random) -> Bundle:
    out, _ = _copy(bundle, 0)
    out["type"] = rng.choice(["collection", "document", "Transaction", "searchset"])
    return out


def empty(bundle: Bundle, rng: random.Random) -> Bundle:
    out, _ = _copy(bundle, 0)
    if rng.random() < 0.5:
        out["entry"] = []
    else:
        del out["entry"]
    return out


# --- entries ---------------------------------------------------------------------------------------

def entry_resource(bundle: Bundle, rng: random.Random) -> Bundle:
    """Drop the resource of the last message (nothing refers to it)."""
    out, entries = _copy(bundle)
    del _last_unreferenced(entries)["resource"]
    return out


def fullurl_missing(bundle: Bundle, rng: random.Random) -> Bundle:
    """Drop the fullUrl of the last message (nothing refers to it)."""
    out, entries = _copy(bundle)
    del _last_unreferenced(entries)["fullUrl"]
    return out


def fullurl_duplicate(bundle: Bundle, rng: random.Random) -> Bundle:
    """Give the last message the fullUrl of an earlier entry."""
    out, entries = _copy(bundle)
    last = _last_unreferenced(entries)
    last["fullUrl"] = rng.choice([e for e in entries if e is not last])["fullUrl"]
    return out


def fullurl_format(bundle: Bundle, rng: random.Random) -> Bundle:
    """Uppercase one entry's urn, consistently in its fullUrl and every reference to it."""
    out, entries = _copy(bundle, 0)
    old = entries[rng.randrange(len(entries))]["fullUrl"]
    new = rng.choice([old.upper(), "urn:uuid:" + old[9:].upper(), old.replace("-", "")])
    out["entry"] = _replace_strings(entries, old, new)
    return out


def request(bundle: Bundle, rng: random.Random) -> Bundle:
    out, entries = _copy(bundle, 0)
    e = entries[rng.randrange(len(entries))]
    choice = rng.randrange(3 if len(entries) <= MAX_CONDITIONAL_ENTRIES else 2)  # (an ifNoneExist in a longer
    # transaction breaks limit.conditional-entries too)
    if choice == 0:
        e["request"]["method"] = rng.choice(["SEND", "post", "CREATE"])
    elif choice == 1:
        del e["request"]["url"]
    else:
        e["request"]["ifNoneExist"] = rng.choice(["identifier", "Communication?identifier=x|y", "=x"])
    return out


def request_url(bundle: Bundle, rng: random.Random) -> Bundle:
    out, entries = _copy(bundle, 0)
    e = entries[rng.randrange(len(entries))]
    e["request"]["url"] = rng.choice(["Patient", "Communication/", "/Communication", "Communications"])
    return out


def client_id(bundle: Bundle, rng: random.Random) -> Bundle:
    out, entries = _copy(bundle, 0)
    entries[rng.randrange(len(entries))]["resource"]["id"] = _uuid(rng)
    return out


# --- references ------------------------------------------------------------------------------------

def _set_subject(bundle: Bundle, reference: str) -> Bundle:
    out, entries = _copy(bundle, 0)
    _header(entries)["subject"] = {"reference": reference}
    return out


def unresolved(bundle: Bundle, rng: random.Random) -> Bundle:
    """Delete an entry others point at (the header, or a message replied to)."""
    out, entries = _copy(bundle)
    targets = {r["reference"] for e in entries[1:] for r in e["resource"].get("inResponseTo", [])}
    candidates = [0] + [i for i, e in enumerate(entries) if e["fullUrl"] in targets]
    del entries[rng.choice(candidates)]
    return out


def ref_format(bundle: Bundle, rng: random.Random) -> Bundle:
    return _set_subject(bundle, rng.choice(["Patient/", "Patient/has space", "patient", "Patient//1",
                                            "urn:oid:1.2.3", "Patient/" + "x" * 65]))


def type_unknown(bundle: Bundle, rng: random.Random) -> Bundle:
    return _set_subject(bundle, rng.choice([f"Pateint/{_uuid(rng)}", "Patients?identifier=a|b", "Customer/1"]))


def conditional(bundle: Bundle, rng: random.Random) -> Bundle:
    return _set_subject(bundle, rng.choice(["Patient?identifier", "Patient?", "Patient?=x", "Patient?identifier=",
                                            "Patient?identifier=a&", "Patient?na me=x"]))


def query_encoding(bundle: Bundle, rng: random.Random) -> Bundle:
    """A conditional subject whose query is not percent-encoded as the server reads it."""
    return _set_subject(bundle, rng.choice(["Patient?identifier=tel|+1-312-555-0777", "Patient?identifier=urn:x|100%",
                                            "Patient?identifier=urn:x|a%zz", "Patient?identifier=a+b"]))


def in_text(bundle: Bundle, rng: random.Random) -> Bundle:
    """Mention an entry's fullUrl in the header's topic text."""
    out, entries = _copy(bundle, 0)
    url = entries[rng.randrange(len(entries))]["fullUrl"]
    topic = _header(entries).setdefault("topic", {})
    topic["text"] = f"{topic.get('text', 'Thread')} (see {url})"
    return out


def target_type(bundle: Bundle, rng: random.Random) -> Bundle:
    return _set_subject(bundle, f"{rng.choice(['Location', 'Practitioner', 'Observation'])}/{_uuid(rng)}")


# --- threads ---------------------------------------------------------------------------------------

def header_count(bundle: Bundle, rng: random.Random) -> Bundle:
    """Add a second header with the same identifier (a new fullUrl, nothing points at it)."""
    out, entries = _copy(bundle, 0)
    clone = copy.deepcopy(entries[0])
    clone["fullUrl"] = f"urn:uuid:{_uuid(rng)}"
    clone["resource"].pop("extension", None)  # (its read state points at the other header's messages)
    entries.insert(rng.randrange(1, len(entries) + 1), clone)
    return out


def header_payload(bundle: Bundle, rng: random.Random) -> Bundle:
    out, entries = _copy(bundle)
    _header(entries)["payload"] = [{"contentString": rng.choice(["Welcome", "Hi all", "Thread opened"])}]
    return out


def header_partof(bundle: Bundle, rng: random.Random) -> Bundle:
    out, entries = _copy(bundle)
    _header(entries)["partOf"] = [{"reference": f"Communication/{_uuid(rng)}"}]
    return out


def message_payload(bundle: Bundle, rng: random.Random) -> Bundle:
    out, entries = _copy(bundle)
    del _message(entries, rng)[1]["payload"]
    return out


def message_partof(bundle: Bundle, rng: random.Random) -> Bundle:
    out, entries = _copy(bundle)
    del _message(entries, rng, free=True)[1]["partOf"]
    return out


def partof_target(bundle: Bundle, rng: random.Random) -> Bundle:
    """Point a message's partOf at another message, or at a resource that is not a Communication."""
    out, entries = _copy(bundle)
    i, msg = _message(entries, rng, free=True)
    others = [entries[k]["fullUrl"] for k in _messages(entries) if k != i]
    target = rng.choice(others) if others and rng.random() < 0.5 else f"Patient/{_uuid(rng)}"
    msg["partOf"] = [{"reference": target}]
    return out


def reply_target(bundle: Bundle, rng: random.Random) -> Bundle:
    """Point a reply at the header, or at a message outside the (new) thread."""
    out, entries = _copy(bundle)
    _, msg = _message(entries, rng)
    target = entries[0]["fullUrl"] if rng.random() < 0.5 else f"Communication/{_uuid(rng)}"
    msg["inResponseTo"] = [{"reference": target}]
    return out


def sent(bundle: Bundle, rng: random.Random) -> Bundle:
    out, entries = _copy(bundle)
    _message(entries, rng)[1]["sent"] = rng.choice(["2024-02-30T10:00:00Z", "2024-04-10T10:00:00",
                                                     "2024-04-10T24:30:00Z", "2023-02-29T10:00:00+01:00"])
    return out


def sent_order(bundle: Bundle, rng: random.Random) -> Bundle:
    """Make a message older than its header (moving the header's sent after it if the message has none)."""
    out, entries = _copy(bundle)
    header = _header(entries)
    sent = _messages(entries, sent=True)
    if not sent:
        raise NotApplicable("every message is a draft")
    msg = entries[sent[0]]["resource"]  # the first one sent: it answers nothing sent, so no reply ends up before
    # its target
    hours = dt.timedelta(hours=rng.randint(1, 48))
    if "sent" in header:
        start = parse_instant(header["sent"])
        msg["sent"] = format_instant(start.replace(microsecond=0) - hours)
    else:
        latest = max(parse_instant(entries[k]["resource"]["sent"]) for k in sent)
        header["sent"] = format_instant(latest.replace(microsecond=0) + hours)
    return out


def reply_order(bundle: Bundle, rng: random.Random) -> Bundle:
    """Make the last message reply to the one before it, and move that one's sent after the reply's."""
    out, entries = _copy(bundle, 2)
    messages = _messages(entries)
    question, answer = entries[messages[-2]], entries[messages[-1]]
    if "sent" not in answer["resource"]:  # a draft: give it the latest sent there is
        known = [parse_instant(e["resource"]["sent"]) for e in entries if "sent" in e["resource"]]
        answer["resource"]["sent"] = format_instant(max(known)) if known else "2024-04-10T10:00:00Z"
    answer["resource"]["inResponseTo"] = [{"reference": question["fullUrl"]}]
    later = parse_instant(answer["resource"]["sent"]) + dt.timedelta(seconds=rng.randint(1, 3600))
    question["resource"]["sent"] = format_instant(later)
    return out


def header_recipients(bundle: Bundle, rng: random.Random) -> Bundle:
    """Drop from the header's recipients someone a message is sent by or to."""
    out, entries = _copy(bundle)
    header = _header(entries)
    people = {r["reference"] for e in (entries[k] for k in _messages(entries)) for r in
              [e["resource"].get("sender", {}), *e["resource"].get("recipient", [])] if "reference" in r}
    keep = [r for r in header.get("recipient", []) if r.get("reference") not in people]
    drop = sorted(r["reference"] for r in header.get("recipient", []) if r.get("reference") in people)
    if not drop:
        raise NotApplicable("no message sender or recipient is among the header's recipients")
    gone = rng.choice(drop)
    keep = [r for r in header["recipient"] if r.get("reference") != gone]
    if keep:
        header["recipient"] = keep
    else:
        del header["recipient"]
    return out


# --- FHIR structure and limits ---------------------------------------------------------------------

def structure(bundle: Bundle, rng: random.Random) -> Bundle:
    """An unknown element, an identifier that is not a list, or a status that is not a string. Not the status of a
    completed header: it says that its thread is closed, so that its completed messages are not read ones
    (`read.simple-group`)."""
    out, entries = _copy(bundle, 0)
    i = rng.randrange(len(entries))
    res = entries[i]["resource"]
    closes = i == 0 and res.get("status") == READ_STATUS
    choice = rng.randrange(2 if closes else 3)
    if choice == 0:
        res["colour"] = "blue"
    elif choice == 1:
        res["identifier"] = {"value": "not-a-list"}
    else:
        res["status"] = 7
    return out


def code(bundle: Bundle, rng: random.Random) -> Bundle:
    """A status, priority or attachment contentType that is not a code of its required binding."""
    out, entries = _copy(bundle)
    _, msg = _message(entries, rng)
    how = rng.randrange(3)
    if how == 0:
        msg["status"] = rng.choice(["bogus", "done", "In-Progress", "in-progress "])
    elif how == 1:
        msg["priority"] = rng.choice(["high", "URGENT", ""])
    else:
        bad = rng.choice(["png", "image", "a b/c"])
        msg["payload"] = [*msg["payload"], {"contentAttachment": {"url": f"Binary/{_uuid(rng)}", "contentType": bad}}]
    return out


def base64(bundle: Bundle, rng: random.Random) -> Bundle:
    """An attachment whose data (or hash) is not canonical base64."""
    out, entries = _copy(bundle)
    _, msg = _message(entries, rng)
    attachment = {"contentType": "text/plain", "data": "QUJD"}
    attachment[rng.choice(["data", "hash"])] = rng.choice(["QUJD=", "QU JD", "QUJ", "not base64!"])
    msg["payload"] = [*msg["payload"], {"contentAttachment": attachment}]
    return out


def body_size(bundle: Bundle, rng: random.Random) -> Bundle:
    """Make the bundle larger than a request body, each entry small enough for a request of its own: about
    550,000 bytes more in the header's topic and in a message's payload."""
    out, entries = _copy(bundle)
    topic = _header(entries).setdefault("topic", {})
    topic["text"] = topic.get("text", "Thread") + " " + "lorem ipsum " * (550_000 // 12)
    _, message = _message(entries, rng)
    message["payload"] = [*message.get("payload", []), {"contentString": "lorem ipsum " * (550_000 // 12)}]
    return out


def entry_size(bundle: Bundle, rng: random.Random) -> Bundle:
    """Make one entry larger than any request `load` makes: a text of 1,100,000 bytes, in a message's payload
    (or, in a bundle of a header alone, the header's topic)."""
    out, entries = _copy(bundle, 0)
    text = "lorem ipsum " * (1_100_000 // 12)
    if _messages(entries):
        _, message = _message(entries, rng)
        message["payload"] = [*message.get("payload", []), {"contentString": text}]
    else:
        topic = _header(entries).setdefault("topic", {})
        topic["text"] = topic.get("text", "Thread") + " " + text
    return out


def conditional_entries(bundle: Bundle, rng: random.Random) -> Bundle:
    """Make the header a conditional create in a transaction of more than 8 entries."""
    out, entries = _copy(bundle)
    _pad(entries, 9 + rng.randrange(3), _uuids(rng))
    ident = _header(entries).get("identifier", [{"system": "urn:x", "value": "thread"}])[0]
    entries[0]["request"]["ifNoneExist"] = f"identifier={ident.get('system', '')}|{ident['value']}"
    return out


def created_identifier(bundle: Bundle, rng: random.Random) -> Bundle:
    """Add a participant created when missing (a conditional create of a Patient) that searches an identifier it
    does not carry. Messages past the 7th are dropped, to stay within the cap of 8 entries a transaction with a
    conditional entry has (replies point at earlier messages only: nothing left points at them)."""
    out, entries = _copy(bundle, 0)
    del entries[7:]
    value = f"mrn-{rng.randrange(10_000)}"
    entries.append({"fullUrl": f"urn:uuid:{_uuid(rng)}",
                    "resource": {"resourceType": "Patient", "identifier": [{"system": "https://example.org/mrn",
                                                                           "value": value}]},
                    "request": {"method": "POST", "url": "Patient",
                                "ifNoneExist": f"identifier=https://example.org/mrn|{value}-other"}})
    return out


def put_entries(bundle: Bundle, rng: random.Random) -> Bundle:
    """Turn every entry into PUT Communication/<uuid> (with that id), 51 or more of them; payloads are cut
    short so that the bundle stays under the body-size limit (only the PUT count is broken)."""
    out, entries = _copy(bundle)
    ids = _uuids(rng)
    _pad(entries, 51 + rng.randrange(3), ids)
    for e in entries:
        rid = next(ids)
        e["resource"]["id"] = rid
        e["request"] = {"method": "PUT", "url": f"{e['resource']['resourceType']}/{rid}"}
        if "payload" in e["resource"]:
            e["resource"]["payload"] = [{"contentString": "."}]
    return out


def uuid_id(bundle: Bundle, rng: random.Random) -> Bundle:
    out, entries = _copy(bundle, 0)
    e = entries[rng.randrange(len(entries))]
    rid = rng.choice(["homer-simpson", "msg-1", "123"])
    e["resource"]["id"] = rid
    e["request"] = {"method": "PUT", "url": f"{e['resource']['resourceType']}/{rid}"}
    return out


# --- read state ------------------------------------------------------------------------------------

def simple_group(bundle: Bundle, rng: random.Random) -> Bundle:
    """Mark a message read by its status (the simple model) in a thread of three or more participants."""
    out, entries = _copy(bundle)
    header = _header(entries)
    people = header.setdefault("recipient", [])
    ids = _uuids(rng)
    while len(people) < 3:
        people.append({"reference": f"Practitioner/{next(ids)}"})
    header["status"] = "in-progress"  # (in a closed thread, completed messages may be closed ones)
    msg = _message(entries, rng)[1]
    msg["status"] = READ_STATUS
    msg["received"] = msg.get("sent", "2024-04-10T10:00:00Z")
    return out


def extension(bundle: Bundle, rng: random.Random) -> Bundle:
    """Give the header a read-state extension broken in one place."""
    out, entries = _copy(bundle)
    header = _header(entries)
    if not header.get("recipient"):
        header["recipient"] = [dict(entries[_message(entries, rng)[0]]["resource"]["sender"])]
    subs: list[dict[str, Any]] = [
        {"url": "participant", "valueReference": {"reference": header["recipient"][0]["reference"]}},
        {"url": "lastRead", "valueReference": {"reference": entries[_message(entries, rng)[0]]["fullUrl"]}},
        {"url": "lastReadAt", "valueDateTime": "2024-04-10T10:00:00Z"}]
    how = rng.randrange(3)
    if how == 0:
        subs[2]["valueDateTime"] = rng.choice(["2024-02-30T10:00:00Z", "yesterday"])
    elif how == 1:
        del subs[rng.randrange(3)]
    else:
        subs[1]["valueReference"] = {"reference": entries[0]["fullUrl"]}  # the header itself: not a message
    header["extension"] = [*header.get("extension", []), {"url": READ_STATE_EXTENSION, "extension": subs}]
    return out


def _receipt(entries: list[dict[str, Any]], rng: random.Random, ids: Iterator[str]) -> dict[str, Any]:
    """A valid read receipt for a message with recipients, appended to `entries`."""
    with_recipients = [k for k in _messages(entries) if entries[k]["resource"].get("recipient")]
    if with_recipients:
        msg = entries[rng.choice(with_recipients)]["resource"]
    else:  # a thread of one: someone joins, to be sent a message
        msg = _message(entries, rng)[1]
        newcomer = {"reference": f"Practitioner/{next(ids)}"}
        msg["recipient"] = [newcomer]
        _header(entries).setdefault("recipient", []).append(dict(newcomer))
    ident = msg["identifier"][0]
    reader = f"x{rng.randrange(1000)}"
    task = {"resourceType": "Task", "identifier": [{"system": ident["system"],
                                                    "value": ident["value"] + READ_RECEIPT_MARK + reader}],
            "status": READ_RECEIPT_UNREAD, "intent": READ_RECEIPT_INTENT,
            "code": {"coding": [{"system": READ_RECEIPT_SYSTEM, "code": READ_RECEIPT_CODE}]},
            "focus": {"reference": entries[0]["fullUrl"]}, "owner": dict(msg["recipient"][0])}
    entries.append({"fullUrl": f"urn:uuid:{next(ids)}", "resource": task, "request": {"method": "POST",
                                                                                         "url": "Task"}})
    return task


def task(bundle: Bundle, rng: random.Random) -> Bundle:
    """Add a read receipt with a wrong code system, intent, status or focus."""
    out, entries = _copy(bundle)
    receipt = _receipt(entries, rng, _uuids(rng))
    how = rng.randrange(4)
    if how == 0:
        receipt["code"]["coding"][0]["system"] = rng.choice(["http://example.org/task-codes", "urn:x"])
    elif how == 1:
        receipt["intent"] = rng.choice(["proposal", "plan"])
    elif how == 2:
        receipt["status"] = rng.choice(["ready", "in-progress", "cancelled"])
    else:
        receipt["focus"] = {"reference": entries[_message(entries, rng)[0]]["fullUrl"]}  # a message, not the header
    return out


def task_owner(bundle: Bundle, rng: random.Random) -> Bundle:
    """Add a read receipt owned by someone outside the thread."""
    out, entries = _copy(bundle)
    ids = _uuids(rng)
    _receipt(entries, rng, ids)["owner"] = {"reference": f"Practitioner/{next(ids)}"}
    return out


MUTATIONS: dict[str, Mutation] = {
    "bundle.resource-type": resource_type,
    "bundle.type": bundle_type,
    "bundle.empty": empty,
    "entry.resource": entry_resource,
    "entry.fullurl-missing": fullurl_missing,
    "entry.fullurl-duplicate": fullurl_duplicate,
    "entry.fullurl-format": fullurl_format,
    "entry.request": request,
    "entry.request-url": request_url,
    "entry.client-id": client_id,
    "ref.unresolved": unresolved,
    "ref.format": ref_format,
    "ref.type-unknown": type_unknown,
    "ref.conditional": conditional,
    "ref.query-encoding": query_encoding,
    "ref.in-text": in_text,
    "ref.target-type": target_type,
    "ref.created-identifier": created_identifier,
    "thread.header-count": header_count,
    "thread.header-payload": header_payload,
    "thread.header-partof": header_partof,
    "thread.message-payload": message_payload,
    "thread.message-partof": message_partof,
    "thread.partof-target": partof_target,
    "thread.reply-target": reply_target,
    "thread.sent": sent,
    "thread.sent-order": sent_order,
    "thread.reply-order": reply_order,
    "thread.header-recipients": header_recipients,
    "read.simple-group": simple_group,
    "read.extension": extension,
    "read.task": task,
    "read.task-owner": task_owner,
    "fhir.structure": structure,
    "fhir.code": code,
    "fhir.base64": base64,
    "limit.body-size": body_size,
    "limit.entry-size": entry_size,
    "limit.conditional-entries": conditional_entries,
    "limit.put-entries": put_entries,
    "limit.uuid-id": uuid_id,
}
"""rule code → mutation that breaks a valid builder bundle so that exactly that rule fires."""
