"""Hypothesis strategies for thread specs and bundles: the one source of generated data for our tests
and for users' own property-based tests.

    from hypothesis import given
    from bundler.strategies import thread_specs, bundles

    @given(thread_specs(max_messages=5))
    def test_my_code(spec): ...

Specs are plain dicts exactly as they would be read from a YAML or JSON file, valid per
`schemas/thread-spec.schema.json`; `bundles()` builds them with `bundler.build_bundle`.
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Sequence
from typing import Any

from hypothesis import strategies as st

from .build import DEFAULT_IDENTIFIER_SYSTEM, build_bundle

KEY_ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-:"
ALIAS_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789._-"
ID_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789-."
PARTICIPANT_TYPES = ("Patient", "Practitioner", "RelatedPerson", "PractitionerRole", "Organization")
STATUSES = ("preparation", "in-progress", "completed", "on-hold", "entered-in-error")

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


def keys(*, max_size: int = 40) -> st.SearchStrategy[str]:
    """Thread keys and message ids: 1-`max_size` letters, digits, '.', '_', '-', ':'."""
    return st.text(KEY_ALPHABET, min_size=1, max_size=max_size)


def texts(*, alphabet: st.SearchStrategy[str] | None = None, max_size: int = 200,
          long_text: bool = True) -> st.SearchStrategy[str]:
    """Message text: full unicode by default, plus hand-picked RTL/emoji/multi-line samples and long text."""
    generated = st.text(alphabet or TEXT_ALPHABET, min_size=1, max_size=max_size).filter(lambda s: s.strip() == s and s)
    choices = [st.sampled_from(SAMPLE_TEXTS), generated]
    if long_text:
        choices.append(st.integers(1, 20).map(lambda n: "Lorem ipsum dolor sit amet. " * n * 50))
    return st.one_of(*choices).filter(lambda s: s.strip() == s)


def references(*, styles: Sequence[str] = ("literal", "conditional"),
               types: Sequence[str] = PARTICIPANT_TYPES) -> st.SearchStrategy[str]:
    """`Type/id` (literal) or `Type?identifier=system|value` (conditional) reference strings."""
    out = []
    if "literal" in styles:
        out.append(st.builds(lambda t, i: f"{t}/{i}", st.sampled_from(types), st.text(ID_ALPHABET, min_size=1, max_size=36)))
    if "conditional" in styles:
        out.append(st.builds(lambda t, v: f"{t}?identifier=https://example.org/ids|{v}", st.sampled_from(types),
                             st.text(ID_ALPHABET, min_size=1, max_size=20)))
    return st.one_of(*out)


def participants(*, min_size: int = 1, max_size: int = 5, styles: Sequence[str] = ("literal", "conditional"),
                 types: Sequence[str] = PARTICIPANT_TYPES) -> st.SearchStrategy[dict[str, dict[str, str]]]:
    """alias → {reference, display}; references are unique."""

    @st.composite
    def build(draw: st.DrawFn) -> dict[str, dict[str, str]]:
        aliases = draw(st.lists(st.text(ALIAS_ALPHABET, min_size=1, max_size=12), min_size=min_size,
                                max_size=max_size, unique=True))
        refs = draw(st.lists(references(styles=styles, types=types), min_size=len(aliases), max_size=len(aliases),
                             unique=True))
        out: dict[str, dict[str, str]] = {}
        for alias, ref in zip(aliases, refs, strict=True):
            entry = {"reference": ref}
            if draw(st.booleans()):
                entry["display"] = draw(st.sampled_from(("Homer Simpson", "Dr. Alice Smith", "Ана Петрова", "李雷")))
            out[alias] = entry
        return out

    return build()


def instants(*, min_value: dt.datetime = dt.datetime(2000, 1, 1), max_value: dt.datetime = dt.datetime(2035, 12, 31),
             precisions: Sequence[int] = (0, 3, 6), zones: Sequence[str] = ("Z", "+00:00", "+02:00", "-05:00", "+05:30",
                                                                               "+14:00", "-12:00")
             ) -> st.SearchStrategy[str]:
    """FHIR instants (seconds, optional fraction, a time zone), as written by people and systems."""
    return st.builds(format_instant, st.datetimes(min_value, max_value), st.sampled_from(precisions),
                     st.sampled_from(zones))


def format_instant(moment: dt.datetime, precision: int, zone: str) -> str:
    """`moment` (naive, taken as UTC) written in `zone` ('Z' or '+hh:mm') with `precision` fraction digits."""
    if zone == "Z":
        local, suffix = moment, "Z"
    else:
        sign = 1 if zone[0] == "+" else -1
        offset = dt.timedelta(hours=int(zone[1:3]), minutes=int(zone[4:6])) * sign
        local, suffix = moment + offset, zone
    text = local.strftime("%Y-%m-%dT%H:%M:%S")
    if precision:
        text += "." + f"{local.microsecond:06d}{'0' * 3}"[:precision]
    return text + suffix


def messages(aliases: Sequence[str], *, min_size: int = 0, max_size: int = 8, reply_share: float = 0.3,
             attachments: bool = True, text: st.SearchStrategy[str] | None = None,
             start: dt.datetime = dt.datetime(2024, 4, 10, 9)) -> st.SearchStrategy[list[dict[str, Any]]]:
    """A message list for a thread with these participant `aliases`, sent after `start` in order."""

    @st.composite
    def build(draw: st.DrawFn) -> list[dict[str, Any]]:
        n = draw(st.integers(min_size, max_size))
        out: list[dict[str, Any]] = []
        moment = start
        ids: list[str] = []
        for i in range(n):
            moment += dt.timedelta(seconds=draw(st.integers(0, 86_400)))
            msg: dict[str, Any] = {}
            if draw(st.booleans()):
                mid = draw(keys(max_size=20).filter(lambda k, used=tuple(ids), pos=i: k not in used
                                                     and not (k.isdigit() and int(k) > pos + 1)))
                msg["id"] = mid
            else:
                mid = str(i + 1)
                if mid in ids:
                    msg["id"] = mid = draw(keys().filter(lambda k, used=tuple(ids): k not in used and not k.isdigit()))
            ids.append(mid)
            sender = draw(st.sampled_from(aliases))
            msg["sender"] = sender
            msg["sent"] = format_instant(moment, draw(st.sampled_from((0, 3))), draw(st.sampled_from(("Z", "+02:00",
                                                                                                     "-05:00"))))
            has_attachment = attachments and draw(st.integers(0, 9)) == 0
            if not has_attachment or draw(st.booleans()):
                msg["text"] = draw(text or texts())
            if has_attachment:
                msg["attachments"] = [{"url": f"Binary/{draw(st.uuids())}", "contentType": "image/png",
                                       "title": "scan.png"}]
            if draw(st.integers(0, 5)) == 0:
                others = [a for a in aliases if a != sender]
                if others:
                    msg["recipient"] = draw(st.lists(st.sampled_from(others), min_size=1, unique=True))
            if i and draw(st.floats(0, 1)) < reply_share:
                msg["reply_to"] = draw(st.sampled_from(ids[:-1]))
            out.append(msg)
        return out

    return build()


def categories() -> st.SearchStrategy[list[Any]]:
    """Category codes as 'system|code' strings or {system, code, display} mappings."""
    code = st.sampled_from(("notification", "reminder", "instruction", "alert"))
    system = "http://terminology.hl7.org/CodeSystem/communication-category"
    return st.lists(st.one_of(code.map(lambda c: f"{system}|{c}"),
                              st.builds(lambda c: {"system": system, "code": c, "display": c.title()}, code)),
                    max_size=2)


def thread_specs(*, min_participants: int = 1, max_participants: int = 5, min_messages: int = 0,
                 max_messages: int = 8, reply_share: float = 0.3, attachments: bool = True, with_category: bool = True,
                 text: st.SearchStrategy[str] | None = None, styles: Sequence[str] = ("literal", "conditional"),
                 key: st.SearchStrategy[str] | None = None) -> st.SearchStrategy[dict[str, Any]]:
    """A thread spec as plain data, valid per the JSON Schema and the spec rules."""

    @st.composite
    def build(draw: st.DrawFn) -> dict[str, Any]:
        people = draw(participants(min_size=min_participants, max_size=max_participants, styles=styles))
        aliases = list(people)
        start = draw(st.datetimes(dt.datetime(2000, 1, 1), dt.datetime(2030, 1, 1)))
        spec: dict[str, Any] = {"thread": draw(key or keys()), "topic": draw(st.sampled_from(
            ("Lab results", "Appointment follow-up", "Résultats d'analyse", "処方箋について", "💊 refill")))}
        patients = [a for a in aliases if people[a]["reference"].startswith("Patient")]
        if patients and draw(st.booleans()):
            spec["subject"] = draw(st.sampled_from(patients))  # FHIR R4: a subject is a Patient or a Group
        if draw(st.booleans()):
            spec["sender"] = draw(st.sampled_from(aliases))
        if draw(st.booleans()):
            spec["sent"] = format_instant(start, 3, "Z")
        if draw(st.booleans()):
            spec["status"] = draw(st.sampled_from(("in-progress", "completed")))
        if with_category and draw(st.booleans()):
            spec["category"] = draw(categories())
        spec["participants"] = people
        spec["messages"] = draw(messages(aliases, min_size=min_messages, max_size=max_messages,
                                         reply_share=reply_share, attachments=attachments, text=text,
                                         start=start + dt.timedelta(seconds=1)))
        return spec

    return build()


def sample_specs(threads: int, messages_per_thread: int, *, seed: int = 1, prefix: str = "sample"
                 ) -> list[dict[str, Any]]:
    """Many valid thread specs fast, reproducible by `seed`, for load tests and benchmarks (hypothesis is
    for exploring; this is for volume). Keys are `<prefix>-<seed>-<n>`; messages are ids m0, m1, …"""
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
                                   "sent": format_instant(moment, 3, "Z"),
                                   "text": " ".join(rng.choice(words) for _ in range(rng.randint(3, 30)))}
            if m and rng.random() < 0.2:
                msg["reply_to"] = f"m{rng.randrange(m)}"
            msgs.append(msg)
        out.append({"thread": f"{prefix}-{seed}-{t}", "topic": f"Thread {t}", "subject": "p0", "sender": "doc",
                    "sent": format_instant(start + dt.timedelta(minutes=t), 3, "Z"),
                    "category": ["http://terminology.hl7.org/CodeSystem/communication-category|notification"],
                    "participants": people, "messages": msgs})
    return out


def bundles(*, identifier_system: str = DEFAULT_IDENTIFIER_SYSTEM, **spec_options: Any
            ) -> st.SearchStrategy[dict[str, Any]]:
    """Transaction Bundles built from `thread_specs(**spec_options)`."""
    return thread_specs(**spec_options).map(lambda s: build_bundle(s, identifier_system=identifier_system))
