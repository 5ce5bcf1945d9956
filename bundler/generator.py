"""Generated threads for seeding and load tests: realistic clinical messaging from our own templates.

    summary = generate(200, out=Path("seed"), seed=1)     # seed/participants.yaml, seed/threads/*.yaml
    # thread-bundler load seed/threads --participants seed/participants.yaml

Only `random.Random(seed)` decides: the same arguments give the same bytes. The cast (patients, clinicians,
a care team) is created on demand (`create` with identifiers), unless a participants file is given, whose
participants are the cast then (patients by their Patient type, the others as staff). Threads are about a
patient; a clinician or the patient opens, the other side answers (replies marked now and then), in working
hours of a clinic's time zone; categories and statuses in proportions a messaging inbox has; now and then a
small generated file is attached.
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import OptionError
from .files import staged_folder
from .spec.dump import dump_yaml
from .spec.model import Participant
from .spec.participants import ParticipantsFile, read_participants
from .spec.source import shown
from .vocabulary import COMMUNICATION_CATEGORY_SYSTEM, THREAD_KEY_HINT, display_string, is_thread_key

MRN_SYSTEM = "https://example.org/mrn"
NPI_SYSTEM = "http://hl7.org/fhir/sid/us-npi"
CARE_TEAM_SYSTEM = "https://example.org/care-team"

GIVEN = ["Ada", "Ben", "Carmen", "Dev", "Elena", "Farid", "Grace", "Hiro", "Imani", "Jonas", "Kavya", "Luis",
         "Maya", "Noah", "Olga", "Priya", "Quinn", "Rosa", "Sam", "Tomas", "Uma", "Victor", "Wen", "Yusuf", "Zoe"]
FAMILY = ["Abbott", "Bauer", "Chen", "Diaz", "Eriksen", "Fischer", "Garcia", "Haddad", "Ito", "Johnson", "Kowalski",
          "Lopez", "Mensah", "Nakamura", "Okafor", "Patel", "Rossi", "Silva", "Tanaka", "Umar", "Varga", "Weber",
          "Yilmaz", "Zhang"]
ROLES = ["Dr.", "Dr.", "Dr.", "Nurse", "Nurse", "Pharmacist"]

TOPICS: list[tuple[str, list[str], list[str], list[str]]] = [
    # (topic, openers from the patient, answers from the clinician, follow-ups from the patient)
    ("Lab results", ["Are my blood test results back yet?", "I saw new lab results in the portal. What do they mean?",
                     "Could you explain my cholesterol numbers?"],
     ["Your results are back and look normal. No changes needed.",
      "Your LDL is a little high. Let's talk about diet and recheck in three months.",
      "Most values are in range; your vitamin D is low, so I recommend a supplement."],
     ["Thank you, that's a relief.", "Should I fast before the recheck?", "Which vitamin D dose should I take?"]),
    ("Prescription refill", ["I am almost out of my blood pressure medication. Can you send a refill?",
                             "Could you renew my inhaler prescription?", "My pharmacy says the refill needs approval."],
     ["Refill approved and sent to your pharmacy.", "Approved for 90 days. Please book a check-up before it runs out.",
      "I sent it to the pharmacy on file. Let us know if you changed pharmacies."],
     ["Got it, thanks!", "I switched to the pharmacy on Main Street.", "Will it be ready today?"]),
    ("Appointment", ["Can I move my appointment next week to the afternoon?", "I need to cancel Thursday's visit.",
                     "Is a video visit possible instead of coming in?"],
     ["We moved you to Tuesday at 3 pm.", "Cancelled. Reply here when you want to rebook.",
      "Yes, a video visit works. You will get a link the day before."],
     ["Perfect, see you then.", "Thanks, I will write when I know my schedule.", "Do I need to install anything?"]),
    ("Side effects", ["Since starting the new medication I feel dizzy in the mornings.",
                      "I have a rash that started after the antibiotic.", "The new pills upset my stomach."],
     ["Please take it with food and stand up slowly. If it continues, we will adjust the dose.",
      "Stop the antibiotic and send a photo of the rash if you can.",
      "Try taking it after dinner. Call us if you have severe pain."],
     ["It is better when I take it with breakfast.", "I attached a photo.", "Taking it after dinner helped."]),
    ("Follow-up after visit", ["You asked me to report how my knee feels after physio: much better.",
                               "The swelling went down but it still hurts on stairs.",
                               "I finished the course of treatment you prescribed."],
     ["Good to hear. Keep doing the exercises twice a day.",
      "Let's get an X-ray to be safe. I placed the order.", "Thanks for the update. No follow-up visit needed."],
     ["Will do.", "Where do I go for the X-ray?", "Thank you for your help."]),
    ("Vaccination", ["Am I due for a flu shot this year?", "Do I need a tetanus booster before my trip?",
                     "Can my son get his vaccines at the same visit as me?"],
     ["Yes, you are due. Walk-in hours are 9 to 4 on weekdays.",
      "Your last booster was 12 years ago, so yes. We can do it at your next visit.",
      "Yes, book a family slot and we will do both."],
     ["Great, I will come by Friday.", "Can I come in this week?", "Booked for next Monday."]),
    ("Billing question", ["I received a bill for a visit that insurance should cover.",
                          "Can I pay my balance in instalments?", "Why was I charged a copay twice?"],
     ["I forwarded this to our billing team; they will contact you within two days.",
      "Yes, billing can set up a payment plan. I shared your request.",
      "That looks like an error. Billing will refund the second copay."],
     ["Thank you.", "How many instalments are possible?", "When will I see the refund?"]),
    ("Medical records", ["Could you send my records to my new specialist?", "I need a copy of my vaccination record.",
                         "Please correct my date of birth in my file."],
     ["Sent to the specialist's office today.", "Your vaccination record is attached.",
      "Corrected. Thank you for letting us know."],
     ["Thanks!", "Perfect, that is what I needed.", "Much appreciated."]),
    ("Home monitoring", ["My blood pressure readings this week were around 150 over 95.",
                         "My blood sugar was high two mornings in a row.",
                         "The home oxygen monitor shows 93 percent."],
     ["Please keep measuring twice a day and send the readings on Friday.",
      "Check it again before dinner today and tell us the value.",
      "93 is acceptable for you. Call if it drops below 90 or you feel short of breath."],
     ["Here are this week's readings.", "Before dinner it was 7.8.", "Understood, thank you."]),
    ("Referral", ["Did the referral to the dermatologist go through?",
                  "The cardiology office has not called me yet.", "Can I choose which physiotherapist I see?"],
     ["Yes, they received it. Expect a call this week.",
      "I called them: your appointment is on the 14th at 10 am.",
      "Yes, any in-network physiotherapist works. I attached a list."],
     ["Thanks for checking.", "The 14th works for me.", "I will pick one near my home."]),
]
CLINICIAN_OPENERS = [
    "Your test results came in. Please reply so we can go over them.",
    "This is a reminder to book your annual check-up.",
    "We noticed you missed your appointment. Would you like to reschedule?",
    "Please remember to fast for 8 hours before tomorrow's blood draw.",
    "How are you feeling since we changed your medication last week?",
]
PATIENT_MORE = ["Thanks for the quick answer.", "OK, understood.", "Is this something urgent?",
                "Sorry, one more question: can I still exercise?", "That works for me.", "Thank you, have a nice day."]
CLINICIAN_MORE = ["You're welcome. Let us know if anything changes.", "Not urgent, but please don't wait too long.",
                  "Yes, light exercise is fine.", "Glad to help.", "We will follow up at your next visit."]
ZONES = [("America/Los_Angeles", -8), ("America/Chicago", -6), ("America/New_York", -5), ("Europe/London", 0),
         ("Europe/Berlin", 1), ("Asia/Kolkata", 5.5), ("Australia/Sydney", 10)]
CATEGORIES = [("notification", 50), ("instruction", 25), ("reminder", 15), ("alert", 10)]
FILES = [("visit-summary", "Visit summary", "text/plain"), ("readings", "Home readings", "text/csv")]


@dataclass(frozen=True)
class GenerateSummary:
    """What `generate` wrote: how many threads and messages, the files, and the participants file to load with."""

    threads: int
    messages: int
    files: list[Path]
    participants: Path


@dataclass(frozen=True)
class _Cast:
    patients: list[str]
    staff: list[str]  # those who may send: practitioners (and, from a file, any sender type but a patient)
    teams: list[str]  # recipients only: a care team


def generate(threads: int, *, out: str | Path, messages: tuple[int, int] = (2, 8), seed: int = 0,
             participants: str | Path | ParticipantsFile | None = None, prefix: str = "gen") -> GenerateSummary:
    """Write `threads` generated thread specs into `out/threads/` (one file each, with the odd attachment file
    beside them) and, unless `participants` (a participants file to draw the cast from) is given, the cast as
    `out/participants.yaml`. All of it or nothing. OptionError for a count or range that cannot be, or a `prefix`
    that makes thread keys (`<prefix>-<number>`) the key grammar refuses."""
    low, high = messages
    if threads < 1 or not 1 <= low <= high:
        raise OptionError(f"need at least 1 thread and 1 <= MIN <= MAX messages (got {threads}, {low}..{high})")
    if not is_thread_key(longest := thread_key(prefix, threads)):  # (the keys only grow longer with the count)
        raise OptionError(f"prefix {shown(prefix)}: thread keys are <prefix>-<number>, and {shown(longest)} "
                          f"{THREAD_KEY_HINT}")
    rng = random.Random(seed)
    shared = read_participants(participants) if participants is not None else None
    people, cast = _from_file(shared) if shared is not None else _make_cast(rng, threads, prefix)
    out = Path(out)
    written: list[Path] = []
    total = 0
    with staged_folder(out / "threads") as staging:
        for n in range(1, threads + 1):
            spec, files = _thread(rng, n, cast, people, (low, high), prefix)
            total += len(spec["messages"])
            name = f"{spec['thread']}.yaml"
            (staging / name).write_bytes(dump_yaml(spec))
            written.append(out / "threads" / name)
            for file_name, data in files:
                (staging / file_name).write_bytes(data)
                written.append(out / "threads" / file_name)
        if shared is None:
            with staged_folder(out) as top:
                (top / "participants.yaml").write_bytes(dump_yaml({"participants": people}))
    where = out / "participants.yaml" if shared is None else Path(shared.file)
    return GenerateSummary(threads, total, written, where)


def thread_key(prefix: str, n: int) -> str:
    """The key of the `n`-th generated thread: also the start of its identifier values and of its files' names."""
    return f"{prefix}-{n:05d}"


def _person(rng: random.Random, used: set[str]) -> tuple[str, str]:
    while True:
        given, family = rng.choice(GIVEN), rng.choice(FAMILY)
        if f"{given} {family}" not in used:
            used.add(f"{given} {family}")
            return given, family


def _make_cast(rng: random.Random, threads: int, prefix: str) -> tuple[dict[str, Any], _Cast]:
    """Patients (about one for every four threads), clinicians (one for every 25 patients, at least 3), a care
    team: each created when missing, with its identifier."""
    used: set[str] = set()
    people: dict[str, Any] = {}
    n_patients = max(3, min(len(GIVEN) * len(FAMILY) - 60, threads // 4))
    n_staff = max(3, min(50, n_patients // 25))
    for k in range(1, n_staff + 1):
        given, family = _person(rng, used)
        role = rng.choice(ROLES)
        people[f"staff-{k}"] = {"create": {
            "resourceType": "Practitioner", "identifier": [{"system": NPI_SYSTEM, "value": f"{prefix}-{1000 + k}"}],
            "name": [{"given": [given], "family": family} | ({"prefix": [role]} if role == "Dr." else {})]}}
    for k in range(1, n_patients + 1):
        given, family = _person(rng, used)
        born = dt.date(1940, 1, 1) + dt.timedelta(days=rng.randrange(365 * 80))
        people[f"patient-{k}"] = {"create": {
            "resourceType": "Patient", "identifier": [{"system": MRN_SYSTEM, "value": f"{prefix}-{100000 + k}"}],
            "name": [{"given": [given], "family": family}], "gender": rng.choice(["female", "male", "other"]),
            "birthDate": born.isoformat()}}
    people["care-team"] = {"create": {
        "resourceType": "CareTeam", "identifier": [{"system": CARE_TEAM_SYSTEM, "value": f"{prefix}-primary"}],
        "name": "Primary care team", "status": "active"}}
    for alias, person in people.items():  # each named as Medplum names a reference to it (the display it stores)
        people[alias] = {"display": display_string(person["create"]), **person}
    aliases = list(people)
    cast = _Cast([a for a in aliases if a.startswith("patient-")], [a for a in aliases if a.startswith("staff-")],
                 ["care-team"])
    return people, cast


def _kind(p: Participant) -> str:
    return p.reference.split("/")[0].split("?")[0]


def _from_file(shared: ParticipantsFile) -> tuple[dict[str, Any], _Cast]:
    """The cast of a participants file: patients by their type; staff: any other type that may send."""
    items = list(shared.participants.items())
    patients = [a for a, p in items if _kind(p) == "Patient"]
    staff = [a for a, p in items if _kind(p) in ("Practitioner", "PractitionerRole", "Organization", "RelatedPerson",
                                                  "Device", "HealthcareService")]
    teams = [a for a, p in items if _kind(p) in ("CareTeam", "Group")]
    if not patients or not staff:
        raise OptionError(f"{shared.file}: generating threads needs at least one Patient and one participant who "
                          f"may write to them (a Practitioner, say): found {len(patients)} and {len(staff)}")
    return {a: {"display": p.display or a} for a, p in items}, _Cast(patients, staff, teams)


def _weighted(rng: random.Random, choices: Sequence[tuple[str, int]]) -> str:
    return rng.choices([c for c, _ in choices], weights=[w for _, w in choices])[0]


def _thread(rng: random.Random, n: int, cast: _Cast, people: dict[str, Any], messages: tuple[int, int],
            prefix: str) -> tuple[dict[str, Any], list[tuple[str, bytes]]]:
    topic, openers, answers, follow_ups = rng.choice(TOPICS)
    patient, clinician = rng.choice(cast.patients), rng.choice(cast.staff)
    count = rng.randint(*messages)
    patient_first = rng.random() < 0.7
    times = _times(rng, count)
    key = thread_key(prefix, n)
    spec: dict[str, Any] = {"thread": key, "topic": f"{topic}: {_name(people, patient)}" if people else topic,
                            "subject": patient}
    if rng.random() < 0.8:
        spec["category"] = [f"{COMMUNICATION_CATEGORY_SYSTEM}|{_weighted(rng, CATEGORIES)}"]
    if rng.random() < 0.7:
        spec["status"] = "completed"
    spec["sender"] = patient if patient_first else clinician
    spec["sent"] = times[0]
    team = rng.choice(cast.teams) if cast.teams and rng.random() < 0.3 else None
    said = (_shuffled(rng, follow_ups) + _shuffled(rng, PATIENT_MORE),
            _shuffled(rng, answers) + _shuffled(rng, CLINICIAN_MORE))
    spec["messages"] = [_message(rng, k, count, patient_first, (patient, clinician), times[k], openers, said)
                        for k in range(count)]
    if team is not None:  # a care team sees the thread: a recipient of its first message
        first = spec["messages"][0]
        first["recipient"] = [a for a in (patient, clinician, team) if a != first["sender"]]
    return spec, _attachment(rng, key, spec["messages"])


def _shuffled(rng: random.Random, texts: list[str]) -> list[str]:
    return rng.sample(texts, len(texts))


def _name(people: dict[str, Any], alias: str) -> str:
    return str(people[alias]["display"])


def _message(rng: random.Random, k: int, count: int, patient_first: bool, who: tuple[str, str], sent: str,
             openers: list[str], said: tuple[list[str], list[str]]) -> dict[str, Any]:
    """The k-th message: the opener, then each side's next line (nothing said twice while lines are left)."""
    from_patient = (k % 2 == 0) == patient_first
    if k == 0:
        text = rng.choice(openers) if patient_first else rng.choice(CLINICIAN_OPENERS)
    else:
        lines = said[0] if from_patient else said[1]
        text = lines[(k // 2) % len(lines)]
    message: dict[str, Any] = {"sender": who[0] if from_patient else who[1], "sent": sent, "text": text}
    if k > 0 and rng.random() < 0.3:
        message["reply_to"] = str(k)  # the message before it (ids are 1-based positions)
    if k == count - 1 and rng.random() < 0.02:
        message["status"] = "entered-in-error"
    return message


def _times(rng: random.Random, count: int) -> list[str]:
    """`count` instants in working hours (8:00-18:00) of a clinic's time zone, in order, a few minutes to a day
    apart."""
    _, offset = rng.choice(ZONES)
    tz = dt.timezone(dt.timedelta(hours=offset))
    at = dt.datetime(2024, 1, 2, 8, 0, tzinfo=tz) + dt.timedelta(days=rng.randrange(360),
                                                                   minutes=rng.randrange(9 * 60))
    out = []
    for _ in range(count):
        out.append(at.isoformat(timespec="seconds"))
        at += dt.timedelta(minutes=rng.choice([2, 5, 12, 30, 45, 90, 180, 24 * 60]))
        if not 8 <= at.hour < 18:  # after hours: the next working morning
            at = (at + dt.timedelta(days=1 if at.hour >= 18 else 0)).replace(hour=8, minute=rng.randrange(60))
    return out


def _attachment(rng: random.Random, key: str, messages: list[dict[str, Any]]) -> list[tuple[str, bytes]]:
    """Now and then (one thread in 20) a small generated file attached to a message."""
    if rng.random() >= 0.05:
        return []
    stem, title, kind = rng.choice(FILES)
    name = f"{key}-{stem}.{'csv' if kind == 'text/csv' else 'txt'}"
    if kind == "text/csv":
        rows = [f"2024-0{rng.randint(1, 9)}-{rng.randint(10, 28)},{rng.randint(110, 160)},{rng.randint(70, 100)}"
                for _ in range(rng.randint(3, 10))]
        data = ("date,systolic,diastolic\n" + "\n".join(rows) + "\n").encode()
    else:
        data = (f"{title}\n\nDiscussed: {rng.choice(TOPICS)[0].lower()}.\nPlan: {rng.choice(TOPICS)[2][0]}\n").encode()
    message = rng.choice(messages)
    message["attachments"] = [{"file": name, "title": title}]
    return [(name, data)]
