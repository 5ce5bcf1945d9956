"""Hypothesis strategies for thread specs and bundles: the one source of generated data for our tests
and for users' own property-based tests (`pip install '.[testing]'` from a clone).

    from hypothesis import given
    from bundler.testing.strategies import bundles, invalid_bundles, thread_specs

    @given(thread_specs(max_messages=5))
    def test_my_code(spec): ...

    @given(invalid_bundles(rule="thread.reply-target"))
    def test_my_checker_refuses_it(bundle): ...

Specs are plain dicts exactly as they would be read from a YAML or JSON file, valid per
`schemas/thread-spec.schema.json` and `bundler.parse_spec`; `bundles()` builds them with
`bundler.build_bundle`, and every bundle it makes validates clean (no errors, no warnings).
`invalid_bundles(rule=...)` breaks such a bundle in exactly one way, named by a validator rule code.

Every strategy shrinks towards a small, readable case: one participant `Patient/0`, no optional
fields, short ASCII text, instants in UTC. The building blocks (`keys`, `texts`, `references`,
`participants`, `instants`, `messages`, `categories`) compose: pass your own `text=`, `key=`, ... to
the bigger ones. `sample_specs` is not a strategy: it makes many specs fast, for volume tests.
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Sequence
from typing import Any

from hypothesis import reject
from hypothesis import strategies as st

from ..build import DEFAULT_IDENTIFIER_SYSTEM, build_bundle
from ..check.issues import RULES
from ..vocabulary import (
    COMMUNICATION_CATEGORY_CODES,
    COMMUNICATION_CATEGORY_SYSTEM,
    COMMUNICATION_TARGETS,
    DRAFT_STATUS,
    READ_MODELS,
    REQUEST_PRIORITIES,
    SIMPLE_MAX_PARTICIPANTS,
    format_instant,
    is_offset,
    offset_zone,
    parse_instant,
)
from .mutations import MUTATIONS, NotApplicable, rng_from_draw

__all__ = [
    "PARTICIPANT_TYPES",
    "PRECISIONS",
    "REFERENCE_STYLES",
    "SAMPLE_TEXTS",
    "ZONES",
    "bundles",
    "categories",
    "instants",
    "invalid_bundles",
    "keys",
    "messages",
    "participants",
    "references",
    "sample_specs",
    "texts",
    "thread_specs",
]

KEY_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ._-:"
ALIAS_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz._-"
ID_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz-."
PARTICIPANT_TYPES = ("Patient", "Practitioner", "RelatedPerson", "PractitionerRole", "Organization")
"""Default participant resource types (each may send and receive a Communication in FHIR R4)."""
STATUSES = ("preparation", "in-progress", "completed", "on-hold", "entered-in-error")
REFERENCE_STYLES = ("literal", "conditional")
"""`literal`: `Patient/123`; `conditional`: `Patient?identifier=https://example.org/ids|123`."""
ZONES = ("Z", "+00:00", "+02:00", "-05:00", "+05:30", "+14:00", "-12:00")
"""Default time zones of generated instants: 'Z' or '±hh:mm' (FHIR allows -12:00 to +14:00)."""
PRECISIONS = (0, 3, 6, 9)
"""Default fraction digits of generated instants (FHIR allows 0 to 9)."""
CONDITIONAL_SYSTEM = "https://example.org/ids"
CATEGORY_SYSTEM = COMMUNICATION_CATEGORY_SYSTEM
CATEGORY_CODES = COMMUNICATION_CATEGORY_CODES
TOPICS = ("Lab results", "Appointment follow-up", "Résultats d'analyse", "処方箋について", "💊 refill")
DISPLAYS = ("Homer Simpson", "Dr. Alice Smith", "Ана Петрова", "李雷", "محمد علي")

# Text: any printable unicode (emoji, RTL scripts, combining marks), no control or surrogate characters.
TEXT_ALPHABET = st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="\x85\u2028\u2029")
SAMPLE_TEXTS = (
    "Hi Homer — your results are in.",
    "مرحبا، نتائجك جاهزة",  # RTL
    "שלום! התוצאות מוכנות",  # RTL
    "👩‍⚕️ Results ready 🧪✅",
    "Line one\nline two\n\nline four",
    "Zalgo t̶e̷x̸t and ﬁ ligatures, ＦＵＬＬＷＩＤＴＨ",
)
"""Hand-picked texts mixed into the default `texts()`: RTL scripts, emoji sequences, line breaks."""

_PER_CENT = 100


def _chance(draw: st.DrawFn, share: float) -> bool:
    """True with probability `share`; shrinks to False (unless share is 1), so minimal examples stay plain."""
    if share <= 0 or share >= 1:
        return share >= 1  # no choice to make: nothing drawn, nothing to shrink
    return draw(st.integers(0, _PER_CENT - 1)) >= _PER_CENT - round(share * _PER_CENT)


def _check_share(name: str, value: float) -> None:
    if not 0 <= value <= 1:
        raise ValueError(f"{name} must be between 0 and 1, got {value!r}")


def _check_instant_options(precisions: Sequence[int], zones: Sequence[str]) -> None:
    if not precisions or any(not 0 <= p <= 9 for p in precisions):
        raise ValueError(f"precisions must be fraction digit counts 0-9, got {precisions!r}")
    bad = [z for z in zones if not is_offset(z)]
    if not zones or bad:
        raise ValueError(f"zones must be 'Z' or '±hh:mm' between -14:00 and +14:00, got {bad or zones!r}")


# --- building blocks ---------------------------------------------------------------------------------


def keys(*, max_size: int = 40, thread: bool = False) -> st.SearchStrategy[str]:
    """Message ids (and, with `thread=True`, thread keys): 1-`max_size` letters, digits, '.', '_', '-', ':'; a
    thread key does not start with '.'.

        keys(max_size=8).example()   # e.g. 'a:7_Q.'
    """
    if not thread:
        return st.text(KEY_ALPHABET, min_size=1, max_size=max_size)
    first = st.sampled_from(KEY_ALPHABET.replace(".", ""))
    return st.tuples(first, st.text(KEY_ALPHABET, max_size=max_size - 1)).map("".join)


def texts(*, alphabet: str | st.SearchStrategy[str] | None = None, max_size: int = 200, long_text: bool = True,
          long_share: float = 0.05, max_long_size: int = 10_000) -> st.SearchStrategy[str]:
    """Message text: non-empty, no leading or trailing whitespace.

    By default any printable unicode (emoji, RTL scripts, combining marks, line breaks) up to
    `max_size` characters, mixed with `SAMPLE_TEXTS`; with `long_text`, a share `long_share` of texts
    are 1,000-`max_long_size` characters long. `alphabet` (a string of characters, or a strategy for
    one character) restricts every text, the long ones included, and drops the samples.

        texts(alphabet="abc ", max_size=10).example()      # e.g. 'ab c'
        messages(["a"], text=texts(long_text=False))
    """
    _check_share("long_share", long_share)
    chars: st.SearchStrategy[str]
    if alphabet is None:
        chars = TEXT_ALPHABET
    elif isinstance(alphabet, str):
        if not any(not c.isspace() for c in alphabet):
            raise ValueError("alphabet needs at least one character that is not whitespace")
        chars = st.sampled_from(sorted(set(alphabet)))
    else:
        chars = alphabet
    first = chars.filter(lambda c: not c.isspace())  # a small space, rarely rejected
    short = st.builds(lambda head, rest: head + rest.rstrip(), first, st.text(chars, max_size=max(max_size - 1, 0)))
    long = st.builds(lambda unit, size: (unit * (size // len(unit) + 1))[:size].rstrip(), short,
                     st.integers(1_000, max(max_long_size, 1_000)))
    samples = alphabet is None

    @st.composite
    def build(draw: st.DrawFn) -> str:
        if long_text and _chance(draw, long_share):
            text: str = draw(long)
        elif samples and _chance(draw, 0.2):
            text = draw(st.sampled_from(SAMPLE_TEXTS))
        else:
            text = draw(short)
        return text

    return build()


def references(*, styles: Sequence[str] = REFERENCE_STYLES,
               types: Sequence[str] = PARTICIPANT_TYPES) -> st.SearchStrategy[str]:
    """`Type/id` (style 'literal') or `Type?identifier=https://example.org/ids|value` ('conditional').

        references(styles=["conditional"], types=["Patient"]).example()
        # e.g. 'Patient?identifier=https://example.org/ids|4-a'
    """
    unknown = set(styles) - set(REFERENCE_STYLES)
    if not styles or unknown:
        raise ValueError(f"styles must be some of {REFERENCE_STYLES}, got {list(styles)!r}")
    if not types:
        raise ValueError("types must name at least one resource type")
    out = []
    if "literal" in styles:
        out.append(st.builds(lambda t, i: f"{t}/{i}", st.sampled_from(types),
                             st.text(ID_ALPHABET, min_size=1, max_size=36)))
    if "conditional" in styles:
        out.append(st.builds(lambda t, v: f"{t}?identifier={CONDITIONAL_SYSTEM}|{v}", st.sampled_from(types),
                             st.text(ID_ALPHABET, min_size=1, max_size=20)))
    return st.one_of(*out)


def participants(*, min_size: int = 1, max_size: int = 5, styles: Sequence[str] = REFERENCE_STYLES,
                 types: Sequence[str] = PARTICIPANT_TYPES, display_share: float = 0.5, create_share: float = 0.2
                 ) -> st.SearchStrategy[dict[str, dict[str, Any]]]:
    """A spec's `participants`: alias → {reference, display?, create?}, with unique references.

    `types` are the resource types to refer to (each must be able to send a Communication in FHIR R4,
    so Group and CareTeam are not allowed); `styles` the reference styles; `display_share` how often a
    participant has a display name; `create_share` how often one with a conditional reference says instead
    how to create it (`create`: a resource of its type with that identifier, and a name now and then; not a
    RelatedPerson, which FHIR cannot create without its patient).

        participants(min_size=2, max_size=2, types=["Patient", "Practitioner"]).example()
        # e.g. {'0': {'reference': 'Patient/0'}, 'dr': {'reference': 'Practitioner?identifier=...|x'}}
    """
    not_senders = sorted(set(types) - COMMUNICATION_TARGETS["sender"])
    if not_senders:
        raise ValueError(f"participant types must be able to send a Communication (one of "
                         f"{', '.join(sorted(COMMUNICATION_TARGETS['sender']))}), got {', '.join(not_senders)}")
    if min_size < 1 or max_size < min_size:
        raise ValueError(f"need 1 <= min_size <= max_size, got {min_size}, {max_size}")
    _check_share("display_share", display_share)
    _check_share("create_share", create_share)
    refs = references(styles=styles, types=types)

    @st.composite
    def one(draw: st.DrawFn) -> tuple[str, dict[str, Any], str]:
        alias = draw(st.text(ALIAS_ALPHABET, min_size=1, max_size=12))
        reference = draw(refs)
        entry: dict[str, Any] = {"reference": reference}
        if "?" in reference and not reference.startswith("RelatedPerson") and _chance(draw, create_share):
            entry["create"] = _created(draw, reference)  # (with the reference it makes: readers of data find it)
        if _chance(draw, display_share):
            entry["display"] = draw(st.sampled_from(DISPLAYS))
        return alias, entry, reference

    # one list of (alias, participant, its reference): the shrinker drops a participant whole
    people = st.lists(one(), min_size=min_size, max_size=max_size, unique_by=(lambda p: p[0], lambda p: p[2]))
    return people.map(lambda items: {alias: entry for alias, entry, _ in items})


def _created(draw: st.DrawFn, reference: str) -> dict[str, Any]:
    """A resource to create whose conditional reference is `reference` (`Type?identifier=system|value`)."""
    kind, query = reference.split("?identifier=", 1)
    system, value = query.split("|", 1)
    out: dict[str, Any] = {"resourceType": kind, "identifier": [{"system": system, "value": value}]}
    if kind in ("Patient", "Practitioner") and _chance(draw, 0.5):
        out["name"] = [{"given": [draw(st.sampled_from(DISPLAYS)).split()[0]], "family": "Test"}]
    return out


def _instant(moment: dt.datetime, precision: int, zone: str) -> str:
    """`moment` (naive, taken as UTC) written in `zone` ('Z' or '±hh:mm') with `precision` (0-9) fraction digits."""
    local = moment.replace(tzinfo=dt.UTC).astimezone(offset_zone(zone))
    return format_instant(local, digits=precision, zulu=zone == "Z")


def instants(*, min_value: dt.datetime = dt.datetime(2000, 1, 1), max_value: dt.datetime = dt.datetime(2035, 12, 31),
             precisions: Sequence[int] = PRECISIONS, zones: Sequence[str] = ZONES) -> st.SearchStrategy[str]:
    """FHIR instants between two naive UTC datetimes: seconds, `precisions` fraction digits, one of `zones`.

        instants(precisions=[0], zones=["+05:30"]).example()   # e.g. '2013-07-01T05:30:00+05:30'
    """
    _check_instant_options(precisions, zones)
    return st.builds(_instant, st.datetimes(min_value, max_value), st.sampled_from(precisions),
                     st.sampled_from(zones))


def _fresh_id(candidate: str, used: Sequence[str], position: int) -> str:
    """`candidate`, changed so that it is not an earlier message's id, nor a later message's default id
    (its 1-based position)."""
    if candidate.isdigit() and int(candidate) > position + 1:
        candidate = f"m{candidate}"
    while candidate in used:
        candidate += "_"
    return candidate


def messages(aliases: Sequence[str], *, min_size: int = 0, max_size: int = 8, reply_share: float = 0.3,
             attachments: bool = True, attachment_share: float = 0.1, recipient_share: float = 0.2,
             id_share: float = 0.5, text: st.SearchStrategy[str] | None = None,
             alphabet: str | st.SearchStrategy[str] | None = None, precisions: Sequence[int] = PRECISIONS,
             zones: Sequence[str] = ZONES, start: dt.datetime = dt.datetime(2024, 4, 10, 9),
             max_gap: dt.timedelta = dt.timedelta(days=1), read_share: float = 0.3, received_share: float = 0.1,
             priority_share: float = 0.1, draft_share: float = 0.0) -> st.SearchStrategy[list[dict[str, Any]]]:
    """A spec's `messages` for a thread with these participant `aliases`, sent in order after `start`
    (naive UTC), at most `max_gap` apart.

    Shares (0-1) set how often a message replies to an earlier one (`reply_share`), carries an
    attachment (`attachment_share`, 0 when `attachments` is False; such a message may have no text),
    names its recipients (`recipient_share`; else every participant but the sender) and has an
    explicit id (`id_share`; else its 1-based position), is read by some of its recipients (`read_share`:
    `read_by`, each at or after `sent`), has a `received` time (`received_share`), a `priority`
    (`priority_share`), or is a draft (`draft_share`, default 0: status preparation, no sent, nobody read it). Text
    comes from `text`, default `texts(alphabet=alphabet)`; `sent` is written with one of `precisions` and `zones`.

        messages(["homer", "alice"], min_size=2, reply_share=1.0, zones=["Z"]).example()
        # e.g. [{'sender': 'homer', 'sent': '2024-04-10T09:00:00Z', 'text': '0'},
        #       {'sender': 'homer', 'sent': '2024-04-10T09:00:00Z', 'text': '0', 'reply_to': '1'}]
    """
    if not aliases:
        raise ValueError("messages need at least one participant alias")
    lists = _MessageLists(min_size=min_size, max_size=max_size, reply_share=reply_share, attachments=attachments,
                          attachment_share=attachment_share, recipient_share=recipient_share, id_share=id_share,
                          text=text, alphabet=alphabet, precisions=precisions, zones=zones, max_gap=max_gap,
                          max_aliases=len(aliases), read_share=read_share, received_share=received_share,
                          priority_share=priority_share, draft_share=draft_share)
    names = list(aliases)
    return lists.drafts.map(lambda drafts: lists.assemble(drafts, names, start))


class _MessageLists:
    """`messages()` in two steps: `drafts` (a strategy, independent of the aliases: made once, as a new
    strategy object costs hypothesis much more to draw from the first time) and `assemble(drafts,
    aliases, start)`, which makes ids unique, picks senders and recipients, and points replies back."""

    def __init__(self, *, min_size: int, max_size: int, reply_share: float, attachments: bool,
                 attachment_share: float, recipient_share: float, id_share: float,
                 text: st.SearchStrategy[str] | None, alphabet: str | st.SearchStrategy[str] | None,
                 precisions: Sequence[int], zones: Sequence[str], max_gap: dt.timedelta, max_aliases: int,
                 read_share: float = 0.0, received_share: float = 0.0, priority_share: float = 0.0,
                 draft_share: float = 0.0) -> None:
        for name, value in (("reply_share", reply_share), ("attachment_share", attachment_share),
                            ("recipient_share", recipient_share), ("id_share", id_share), ("read_share", read_share),
                            ("received_share", received_share), ("priority_share", priority_share),
                            ("draft_share", draft_share)):
            _check_share(name, value)
        _check_instant_options(precisions, zones)
        text_strategy = text if text is not None else texts(alphabet=alphabet)
        attachment_share = attachment_share if attachments else 0.0
        gap = st.integers(0, int(max_gap.total_seconds()))
        formats = st.sampled_from([(p, z) for z in zones for p in precisions])  # one choice: shrinks faster
        ids = keys(max_size=20)
        people = st.integers(0, max(max_aliases - 1, 0))  # an alias, by index modulo their number
        recipients = st.lists(people, min_size=1, max_size=max(max_aliases - 1, 1), unique=True)
        replies = st.integers(0, max(max_size - 1, 0))  # an earlier message, by index modulo its position
        reads = st.lists(st.tuples(people, gap), min_size=1, max_size=max(max_aliases - 1, 1))  # (reader, delay)

        @st.composite
        def draft(draw: st.DrawFn) -> dict[str, Any]:
            msg: dict[str, Any] = {"gap": draw(gap)}
            if _chance(draw, id_share):
                msg["id"] = draw(ids)
            msg["sender"] = draw(people)
            msg["sent"] = draw(formats)
            has_attachment = _chance(draw, attachment_share)
            if not has_attachment or _chance(draw, 0.5):
                msg["text"] = draw(text_strategy)
            if has_attachment:
                msg["attachments"] = [{"url": f"Binary/{draw(st.uuids())}", "contentType": "image/png",
                                       "title": "scan.png"}]
            if max_aliases > 1 and _chance(draw, recipient_share):
                msg["recipient"] = draw(recipients)
            if _chance(draw, reply_share):
                msg["reply_to"] = draw(replies)
            msg.update(draw(read_state))
            return msg

        read_state = _read_state_drafts(gap, reads, priority_share=priority_share, draft_share=draft_share,
                                        received_share=received_share, read_share=read_share)

        # a list of independent drafts: the shrinker drops or simplifies one message at a time
        self.drafts = st.lists(draft(), min_size=min_size, max_size=max_size)

    @staticmethod
    def assemble(drafts: list[dict[str, Any]], aliases: Sequence[str], start: dt.datetime) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        used: list[str] = []
        moment = start
        shown: dt.datetime | None = None  # the last message's sent as written: sent never goes back
        for i, d in enumerate(drafts):
            moment += dt.timedelta(seconds=d["gap"])
            sent = _instant(moment, *d["sent"])
            if shown is not None and parse_instant(sent) < shown:  # fewer digits than the last one cut it earlier
                moment += dt.timedelta(seconds=1)
                sent = _instant(moment, *d["sent"])
            shown = parse_instant(sent)
            msg: dict[str, Any] = {}
            if "id" in d:
                mid = msg["id"] = _fresh_id(d["id"], used, i)
            else:
                mid = str(i + 1)
                if mid in used:  # an earlier explicit id took this position's default
                    mid = msg["id"] = _fresh_id(f"m{mid}", used, i)
            sender = msg["sender"] = aliases[d["sender"] % len(aliases)]
            msg["sent"] = sent  # (a draft's goes in `read_state`)
            for field in ("text", "attachments"):
                if field in d:
                    msg[field] = d[field]
            if "recipient" in d:
                chosen = dict.fromkeys(aliases[k % len(aliases)] for k in d["recipient"])
                chosen.pop(sender, None)
                if chosen:
                    msg["recipient"] = list(chosen)
            if i and "reply_to" in d:
                msg["reply_to"] = used[d["reply_to"] % i]
            _MessageLists.read_state(d, msg, aliases, moment)
            used.append(mid)
            out.append(msg)
        return out

    @staticmethod
    def read_state(d: dict[str, Any], msg: dict[str, Any], aliases: Sequence[str], moment: dt.datetime) -> None:
        """A message's priority, draft status, received time and readers (recipients only, at or after `moment`,
        when it was sent), from its draft `d`."""
        if "priority" in d:
            msg["priority"] = d["priority"]
        if d.get("draft"):
            del msg["sent"]
            msg["status"] = DRAFT_STATUS
            return
        zone = msg["sent"][-6:] if msg["sent"][-1] != "Z" else "Z"
        if "received" in d:
            msg["received"] = _instant(moment + dt.timedelta(seconds=d["received"] + 1), 0, zone)
        recipients = msg.get("recipient") or [a for a in aliases if a != msg["sender"]]
        read_by = {recipients[k % len(recipients)]: _instant(moment + dt.timedelta(seconds=delay + 1), 0, zone)
                   for k, delay in d.get("reads", ()) if recipients}
        if read_by:
            msg["read_by"] = read_by


def categories(*, codes: Sequence[str] = CATEGORY_CODES, system: str = CATEGORY_SYSTEM,
               max_size: int = 2) -> st.SearchStrategy[list[Any]]:
    """A spec's `category`: codes as 'system|code' strings or {system, code, display} mappings.

        categories(codes=["alert"], max_size=1).example()
        # e.g. ['http://terminology.hl7.org/CodeSystem/communication-category|alert']
    """
    code = st.sampled_from(codes)
    return st.lists(st.one_of(code.map(lambda c: f"{system}|{c}"),
                              st.builds(lambda c: {"system": system, "code": c, "display": c.title()}, code)),
                    max_size=max_size)


@st.composite
def _read_state_drafts(draw: st.DrawFn, gap: st.SearchStrategy[int], reads: st.SearchStrategy[list[Any]], *,
                       priority_share: float, draft_share: float, received_share: float, read_share: float
                       ) -> dict[str, Any]:
    """A message draft's priority, and whether it is a draft, or else its received delay and readers (by index,
    with their delays after sent: `_MessageLists.read_state` makes them aliases and instants)."""
    out: dict[str, Any] = {}
    if _chance(draw, priority_share):
        out["priority"] = draw(st.sampled_from(REQUEST_PRIORITIES))
    if _chance(draw, draft_share):
        out["draft"] = True
        return out
    if _chance(draw, received_share):
        out["received"] = draw(gap)
    if _chance(draw, read_share):
        out["reads"] = draw(reads)
    return out


@st.composite
def _thread_read_state(draw: st.DrawFn, participants: int, read_models: Sequence[str | None]) -> dict[str, Any]:
    """A thread's priority and read model (simple only for two participants or fewer)."""
    out: dict[str, Any] = {}
    if _chance(draw, 0.1):
        out["priority"] = draw(st.sampled_from(REQUEST_PRIORITIES))
    fits = [m for m in read_models if m != "simple" or participants <= SIMPLE_MAX_PARTICIPANTS]
    if fits and (model := draw(st.sampled_from(fits))) is not None:
        out["read_model"] = model
    return out


# --- threads and bundles -----------------------------------------------------------------------------

_READ_SHARES: dict[str, float] = {"read_share": 0.3, "received_share": 0.1, "priority_share": 0.1}


def thread_specs(*, min_participants: int = 1, max_participants: int = 5, min_messages: int = 1,
                 max_messages: int = 8, reply_share: float = 0.3, attachments: bool = True,
                 attachment_share: float = 0.1, recipient_share: float = 0.2, id_share: float = 0.5,
                 with_category: bool = True,
                 text: st.SearchStrategy[str] | None = None, alphabet: str | st.SearchStrategy[str] | None = None,
                 styles: Sequence[str] = REFERENCE_STYLES, participant_types: Sequence[str] = PARTICIPANT_TYPES,
                 precisions: Sequence[int] = PRECISIONS, zones: Sequence[str] = ZONES,
                 key: st.SearchStrategy[str] | None = None, read_state: bool = True,
                 read_models: Sequence[str | None] = (None, *READ_MODELS), drafts: bool = False
                 ) -> st.SearchStrategy[dict[str, Any]]:
    """A thread spec as plain data (as read from YAML/JSON), valid per the JSON Schema and `parse_spec`.

    Header fields (subject: a Patient, sender, sent, status, category) are each present or not; between
    `min_messages` and `max_messages` messages (at least one by default: a thread of no messages, `messages: []`,
    is valid but rare in life; `min_messages=0` asks for it too); participants and messages as in `participants()`
    and `messages()` (`styles` and
    `participant_types` go to `participants`, the message options to `messages`); `key` draws the thread key
    (default `keys(thread=True)`; hypothesis repeats examples, so against a server set a fresh key in the test body).
    With `read_state` (the default) messages may have readers, a received time or a priority (see `messages()`),
    the thread a priority and one of `read_models` (`simple` only for threads of two participants or fewer);
    without it, none of these. With `drafts`, some messages are drafts (status preparation, without `sent`: off
    by default, as code that reads `sent` of every message would fail on them).

        @given(thread_specs(max_participants=2, max_messages=3, alphabet="abc", zones=["Z"]))
        def test_round_trip(spec): assert my_export(my_import(spec)) == spec
    """
    _check_instant_options(precisions, zones)
    if min_messages < 0 or max_messages < min_messages:
        raise ValueError(f"need 0 <= min_messages <= max_messages, got {min_messages}, {max_messages}")
    people_strategy = participants(min_size=min_participants, max_size=max_participants, styles=styles,
                                   types=participant_types)
    patient_refs = references(styles=styles, types=("Patient",))
    keys_ = key if key is not None else keys(thread=True)
    starts = st.datetimes(dt.datetime(2000, 1, 1), dt.datetime(2030, 1, 1))
    formats = st.sampled_from([(p, z) for z in zones for p in precisions])
    statuses = st.sampled_from(("in-progress", "completed"))
    topics = st.sampled_from(TOPICS)
    codes = categories()
    message_lists = _MessageLists(
        min_size=min_messages, max_size=max_messages, reply_share=reply_share, attachments=attachments,
        attachment_share=attachment_share, recipient_share=recipient_share, id_share=id_share, text=text,
        alphabet=alphabet, precisions=precisions, zones=zones, max_gap=dt.timedelta(days=1),
        max_aliases=max_participants, **(_READ_SHARES if read_state else {}), draft_share=0.05 if drafts else 0.0)
    @st.composite
    def build(draw: st.DrawFn) -> dict[str, Any]:
        people = draw(people_strategy)
        aliases = list(people)
        start = draw(starts)
        spec: dict[str, Any] = {"thread": draw(keys_), "topic": draw(topics)}
        if _chance(draw, 0.5):  # FHIR R4: a subject is a Patient (or a Group): an alias, or a reference
            patients = [a for a in aliases if people[a]["reference"].startswith("Patient")]
            spec["subject"] = draw(st.sampled_from(patients) if patients and _chance(draw, 0.8) else patient_refs)
        if _chance(draw, 0.5):
            spec["sender"] = draw(st.sampled_from(aliases))
        if _chance(draw, 0.5):
            spec["sent"] = _instant(start, *draw(formats))
        if _chance(draw, 0.5):
            spec["status"] = draw(statuses)
        if with_category and _chance(draw, 0.5):
            spec["category"] = draw(codes)
        if read_state:
            spec.update(draw(_thread_read_state(len(people), read_models)))
        spec["participants"] = people
        spec["messages"] = message_lists.assemble(draw(message_lists.drafts), aliases, start + dt.timedelta(seconds=1))
        return spec

    return build()


def bundles(*, specs: st.SearchStrategy[dict[str, Any]] | None = None,
            identifier_system: str = DEFAULT_IDENTIFIER_SYSTEM,
            **spec_options: Any) -> st.SearchStrategy[dict[str, Any]]:
    """Transaction Bundles built by `bundler.build_bundle` from `specs` (default
    `thread_specs(**spec_options)`). Each validates clean with `bundler.validate`.

        @given(bundles(max_messages=3, styles=["literal"]))
        def test_my_sender(bundle): assert my_sender.accepts(bundle)

        bundles(specs=thread_specs(min_messages=1).map(add_my_defaults))
    """
    if specs is not None and spec_options:
        raise TypeError(f"pass either specs= or thread_specs options, not both ({', '.join(spec_options)})")
    source = specs if specs is not None else thread_specs(**spec_options)
    return source.map(lambda s: build_bundle(s, identifier_system=identifier_system))


def invalid_bundles(rule: str | None = None, **bundle_options: Any) -> st.SearchStrategy[dict[str, Any]]:
    """Bundles from `bundles(**bundle_options)` broken in exactly one way: `validate(bundle)` (default
    'medplum' limits) reports issues of rule `rule` (a code of `bundler.check.RULES`) and of no other.
    `rule=None` picks any rule. Every bundle has at least one message (most rules need one to break).

        @given(invalid_bundles(rule="thread.reply-target"))
        def test_my_checker(bundle): assert "thread.reply-target" in my_checker(bundle)

        # knowing which rule was broken:
        st.sampled_from(BUNDLE_RULES).flatmap(lambda r: st.tuples(st.just(r), invalid_bundles(rule=r)))

    Raises ValueError for an unknown rule code (listing the known ones).
    """
    if rule is not None and rule not in MUTATIONS:
        if rule in RULES:
            raise ValueError(f"rule {rule!r} has no mutation in bundler.testing.mutations yet")
        raise ValueError(f"unknown rule {rule!r}; known rules: {', '.join(MUTATIONS)}")
    if "specs" not in bundle_options:
        bundle_options["min_messages"] = max(1, bundle_options.get("min_messages", 1))
    valid = bundles(**bundle_options)
    codes = st.just(rule) if rule is not None else st.sampled_from(list(MUTATIONS))

    @st.composite
    def build(draw: st.DrawFn) -> dict[str, Any]:
        code = draw(codes)
        bundle = draw(valid)
        try:
            return MUTATIONS[code](bundle, rng_from_draw(draw))
        except NotApplicable:
            reject()  # e.g. specs= gave a bundle without messages

    return build()


# --- volume ------------------------------------------------------------------------------------------


def sample_specs(threads: int, messages_per_thread: int, *, seed: int = 1, prefix: str = "sample"
                 ) -> list[dict[str, Any]]:
    """Many valid thread specs fast, reproducible by `seed`, for load tests and benchmarks (hypothesis is
    for exploring; this is for volume). Keys are `<prefix>-<seed>-<n>`; messages are ids m0, m1, …

        specs = sample_specs(100, 20, seed=7)
    """
    rng = random.Random(seed)
    start = dt.datetime(2024, 1, 1)
    words = ("results", "ready", "thanks", "appointment", "tomorrow", "lab", "specimen", "—", "merci", "😀", "dose")
    out = []
    for t in range(threads):
        people = {f"p{i}": {"reference": f"Patient/p{t}-{i}", "display": f"Person {i}"} for i in range(3)}
        people["doc"] = {"reference": f"Practitioner/d{t % 50}", "display": "Dr. Who"}
        aliases = list(people)
        moment = start + dt.timedelta(minutes=t)
        msgs = []
        for m in range(messages_per_thread):
            moment += dt.timedelta(seconds=rng.randint(1, 3600))
            msg: dict[str, Any] = {"id": f"m{m}", "sender": rng.choice(aliases),
                                   "sent": _instant(moment, 3, "Z"),
                                   "text": " ".join(rng.choice(words) for _ in range(rng.randint(3, 30)))}
            if m and rng.random() < 0.2:
                msg["reply_to"] = f"m{rng.randrange(m)}"
            msgs.append(msg)
        out.append({"thread": f"{prefix}-{seed}-{t}", "topic": f"Thread {t}", "subject": "p0", "sender": "doc",
                    "sent": _instant(start + dt.timedelta(minutes=t), 3, "Z"),
                    "category": [f"{CATEGORY_SYSTEM}|notification"],
                    "participants": people, "messages": msgs})
    return out
