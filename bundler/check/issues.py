"""What `validate` reports: `Issue`, and `RULES`, the registry of every rule code it can fire (`BUNDLE_RULES` on
bundles, `SPEC_RULES` on the specs they are built from).

    for code, (severity, description) in RULES.items(): ...
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Severity = Literal["error", "warning"]

RULES: dict[str, tuple[Severity, str]] = {
    # the Bundle itself
    "bundle.resource-type": ("error", "the document is a JSON object with resourceType Bundle"),
    "bundle.type": ("error", "Bundle.type is transaction or batch"),
    "bundle.empty": ("error", "Bundle.entry is a list of at least one entry"),
    # entries
    "entry.resource": ("error", "entries are objects; POST/PUT/PATCH entries carry a resource of a known type"),
    "entry.fullurl-missing": ("error", "every entry that carries a resource has a fullUrl"),
    "entry.fullurl-duplicate": ("error", "no two entries share a fullUrl"),
    "entry.fullurl-format": ("error", "fullUrls are lowercase canonical urn:uuid: (others are stored unresolved)"),
    "entry.request": ("error", "request has a method (GET/HEAD/POST/PUT/DELETE/PATCH), a url, a valid ifNoneExist"),
    "entry.request-url": ("error", "request.url fits method and resource (POST Type; PUT Type/id or Type?query)"),
    "entry.client-id": ("error", "no client-chosen resource id on a create (POST, or conditional PUT)"),
    # references
    "ref.unresolved": ("error", "every urn:uuid: reference resolves to an entry's fullUrl"),
    "ref.format": ("error", "literal references are Type/id (or #contained, urn:uuid:, an absolute URL)"),
    "ref.type-unknown": ("error", "references name a known FHIR R4 resource type"),
    "ref.conditional": ("error", "conditional references are Type?param=value[&param=value...]"),
    "ref.in-text": ("warning", "no text other than a reference contains a fullUrl (the server would rewrite it)"),
    "ref.target-type": ("error", "Communication subject/sender/recipient point at resource types FHIR R4 allows"),
    "ref.query-encoding": ("warning", "a conditional reference or ifNoneExist is percent-encoded as the server reads "
                                      "it: no raw '+' (read as a space), no '%' but before two hex digits"),
    "ref.display-replaced": ("warning", "a participant's display on a conditional reference is the one Medplum "
                                        "stores: it replaces it with its own name for the resource it matches"),
    "ref.created-identifier": ("error", "a conditional create on an identifier (a participant created when missing) "
                                        "carries that identifier (else every run creates it again, and conditional "
                                        "references to it match nothing)"),
    # threads
    "thread.header-count": ("error", "each thread has exactly one header, each message exactly one thread"),
    "thread.header-payload": ("error", "a thread header has no payload"),
    "thread.header-partof": ("error", "a thread header has no partOf"),
    "thread.message-payload": ("error", "a message (a Communication with partOf) has a payload"),
    "thread.message-partof": ("error", "a message (a Communication with a payload) has a partOf to its header"),
    "thread.partof-target": ("error", "partOf points at a header in the bundle or an existing Communication/<id>"),
    "thread.reply-target": ("error", "inResponseTo points at a message of the same thread"),
    "thread.sent": ("error", "sent is a real FHIR instant with a time zone"),
    "thread.sent-order": ("warning", "no message is sent before its thread header"),
    "thread.reply-order": ("warning", "no reply is sent before the message it answers (read by sent, it would "
                                      "show above it)"),
    "thread.header-recipients": ("warning", "the header's recipients include every message's sender and recipients"),
    # read state (Medplum's read models)
    "read.simple-group": ("warning", "no message is marked read by status completed and received (the simple read "
                                     "model) in an open thread of more than two participants"),
    "read.extension": ("error", "thread-read-state extensions hold participant (a thread participant), lastRead (a "
                                "message of the thread) and lastReadAt (an instant), each once; one per participant"),
    "read.task": ("error", "read-receipt Tasks have code https://medplum.com/task-codes|read-receipt, intent order, "
                           "status requested or completed, focus on a thread header, an owner"),
    "read.task-owner": ("error", "a read receipt's owner is a participant of its thread and a recipient of its "
                                 "message"),
    # FHIR structure
    "fhir.structure": ("error", "every resource is valid FHIR R4 for fhir.resources (types, cardinality, elements)"),
    "fhir.code": ("error", "coded elements we emit hold a code of their required binding (status, priority, "
                           "intent, contentType)"),
    "fhir.base64": ("error", "base64Binary values (Attachment.data and .hash, Binary.data) are canonical base64"),
    # server limits (profile-dependent)
    "limit.body-size": ("warning", "the serialized Bundle fits the server's request body limit (posted as is, it "
                                   "is refused; `load` cuts it into parts that fit)"),
    "limit.entry-size": ("error", "every entry fits one request on its own (`load` cuts a thread between entries, "
                                  "never inside one)"),
    "limit.conditional-entries": ("error", "a transaction with a conditional entry has at most the allowed entries"),
    "limit.put-entries": ("error", "a transaction has at most the allowed PUT entries"),
    "limit.uuid-id": ("error", "ids in PUT urls are UUIDs (Medplum refuses other client ids)"),
}

SPEC_RULES: frozenset[str] = frozenset({"ref.display-replaced"})
"""Rules of thread specs rather than of a bundle: `validate_files` checks them on the specs it reads (`displays`);
no bundle breaks them."""
BUNDLE_RULES: tuple[str, ...] = tuple(code for code in RULES if code not in SPEC_RULES)
"""The rules `validate` checks a bundle against (each broken on purpose by `mutations.MUTATIONS`)."""


@dataclass(frozen=True, slots=True)
class Issue:
    """One thing wrong with a bundle: rule `code`, FHIRPath-like `path`, and where it came from if known.

    `entry` is the entry index (None for the Bundle as a whole); `file`/`line` are filled from an
    `origin` callback (spec-built bundles) or by the file reader. `related` is another entry the issue
    is about (the message a reply answers, say), and `related_line` where that one came from.
    """

    severity: Severity
    code: str
    path: str
    message: str
    file: str | None = None
    line: int | None = None
    entry: int | None = None
    related: int | None = None
    related_line: int | None = None

    @property
    def text(self) -> str:
        """`severity[code] path: message`, with the related entry's line when it is known."""
        also = f" (entry {self.related}: line {self.related_line})" if self.related_line is not None else ""
        return f"{self.severity}[{self.code}] {self.path}: {self.message}{also}"

    def __str__(self) -> str:
        where = ""
        if self.file is not None:
            where = f"{self.file}:{self.line}: " if self.line is not None else f"{self.file}: "
        return where + self.text

    def to_dict(self) -> dict[str, object]:
        """A JSON-ready mapping of every field."""
        return {"severity": self.severity, "code": self.code, "path": self.path, "message": self.message,
                "file": self.file, "line": self.line, "entry": self.entry, "related": self.related,
                "related_line": self.related_line}


def make_issue(code: str, path: str, message: str, entry: int | None = None, related: int | None = None) -> Issue:
    """An Issue with the severity its rule has in RULES."""
    return Issue(RULES[code][0], code, path, message, entry=entry, related=related)


def entry_path(index: int | None, *parts: str | int) -> str:
    """`entry_path(3, "resource", "partOf", 0, "reference")` → `Bundle.entry[3].resource.partOf[0].reference`."""
    out = "Bundle" if index is None else f"Bundle.entry[{index}]"
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out
