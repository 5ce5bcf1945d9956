"""A synthetic legacy message export (CSV, one row per message) of a given size and shape, by seed.

    python bench/legacy_export.py /tmp/export.csv --messages 1000000 --conversations 100000 \\
        --bad-share 0.01 --seed 1 [--ordered] [--mapping /tmp/mapping.yaml]

Messages are spread evenly over conversations and shuffled (unless --ordered); times are local
wall-clock times in America/New_York, strictly increasing within a conversation. A share of rows is
made bad on purpose (missing sender, unreadable time, empty text, unknown user, duplicate id, reply
to a message that does not exist). Same arguments, same bytes.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import random
from pathlib import Path

HEADER = ["conversation_id", "message_id", "created_at", "sender_id", "sender_name", "recipient_ids",
          "subject_line", "body", "attachment_url", "attachment_mime", "parent_id", "state"]
WORDS = ("results", "ready", "thanks", "appointment", "tomorrow", "lab", "specimen", "—", "merci", "😀", "dose",
         "refill", "pharmacy", "José", "Zoë", "\"quoted\"", "a, b", "ok")
BAD_KINDS = ("missing-sender", "bad-time", "empty-message", "unknown-participant", "duplicate-message-id",
             "reply-to-unknown")

MAPPING = """\
# The mapping of bench/legacy_export.py's synthetic exports.
thread:
  id: conversation_id
  topic: subject_line
  subject: {participant_type: Patient}
message:
  id: message_id
  sender: sender_id
  sender_display: sender_name
  recipients: {column: recipient_ids, separator: ";"}
  sent: {column: created_at, timezone: America/New_York}
  text: body
  attachment: {url: attachment_url, content_type: attachment_mime}
  reply_to: parent_id
  status: {column: state, map: {read: completed, unread: in-progress}}
participants:
  rules:
    - match: "^pt-(?P<n>[0-9]+)$"
      reference: "Patient?identifier=https://legacy.example.org/patients|{n}"
    - prefix: "dr-"
      reference: "Practitioner?identifier=https://legacy.example.org/staff|{rest}"
"""


def write_export(path: Path, messages: int, conversations: int, *, bad_share: float = 0.01, seed: int = 1,
                 shuffle: bool = True) -> dict[str, int]:
    """Write the export; returns {"rows": n, "bad": rows made bad on purpose}."""
    rng = random.Random(seed)
    order = list(range(messages))
    if shuffle:
        rng.shuffle(order)
    base = dt.datetime(2023, 1, 1, 8, 0, 0)
    bad = 0
    with path.open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(HEADER)
        for g in order:
            c, p = g % conversations, g // conversations
            patient, doctor = f"pt-{c}", f"dr-{c % 500}"
            from_patient = (p + c) % 2 == 0
            sender, recipient = (patient, doctor) if from_patient else (doctor, patient)
            moment = base + dt.timedelta(minutes=c * 7, seconds=p * 900 + (g * 7919) % 600)
            words = [rng.choice(WORDS) for _ in range(rng.randint(3, 25))]
            body = " ".join(words) + ("\nSent from my phone" if rng.random() < 0.05 else "")
            row = [f"conv-{c:07d}", f"msg-{c}-{p}", moment.strftime("%Y-%m-%d %H:%M:%S"), sender,
                   "Pat Ient" if from_patient else "Dr. Who", recipient, f"Conversation {c}" if p == 0 else "",
                   body, "", "", f"msg-{c}-{p - 1}" if p and rng.random() < 0.2 else "",
                   "read" if rng.random() < 0.8 else "unread"]
            if rng.random() < 0.03:
                row[8], row[9] = f"https://files.legacy.example.org/{g}.pdf", "application/pdf"
            if rng.random() < bad_share:
                bad += 1
                kind = rng.choice(BAD_KINDS)
                if kind == "missing-sender":
                    row[3] = ""
                elif kind == "bad-time":
                    row[2] = "n/a"
                elif kind == "empty-message":
                    row[7] = row[8] = ""
                elif kind == "unknown-participant":
                    row[3] = f"ghost-{g}"
                elif kind == "duplicate-message-id":
                    row[1] = f"msg-{c}-{max(p - 1, 0)}"
                else:
                    row[10] = f"msg-{c}-none"
            w.writerow(row)
    return {"rows": messages, "bad": bad}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--conversations", type=int, default=100_000)
    parser.add_argument("--bad-share", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--ordered", action="store_true", help="grouped by conversation, not shuffled")
    parser.add_argument("--mapping", type=Path, help="also write the matching mapping file here")
    args = parser.parse_args()
    stats = write_export(args.out, args.messages, args.conversations, bad_share=args.bad_share, seed=args.seed,
                         shuffle=not args.ordered)
    if args.mapping:
        args.mapping.write_text(MAPPING, encoding="utf-8")
    print(f"{args.out}: {stats['rows']:,} rows, {stats['bad']:,} made bad")


if __name__ == "__main__":
    main()
