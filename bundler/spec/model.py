"""Thread specs: files → checked `ThreadSpec` objects, or every problem found, with its file and line.

    specs = load_specs(["fixtures/threads"])          # raises SpecError listing every problem
    spec = parse_spec({"thread": "t1", ...})           # one thread from plain data
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
from jsonschema.exceptions import ValidationError as _SchemaError
from jsonschema.exceptions import best_match

from .. import assets
from ..errors import Problem, SpecError
from ..vocabulary import COMMUNICATION_TARGETS as TARGET_TYPES
from ..vocabulary import DEFAULT_STATUS, instant_problem, is_instant_shaped, reference_type
from .source import Document, Path_, decode, parse_text, split_threads

SPEC_SCHEMA = "thread-spec.schema.json"
SPEC_SUFFIXES = (".yaml", ".yml", ".json")


@dataclass(frozen=True, slots=True)
class Participant:
    alias: str
    reference: str
    display: str | None = None


@dataclass(frozen=True, slots=True)
class Coding:
    code: str
    system: str | None = None
    display: str | None = None


@dataclass(frozen=True, slots=True)
class Attachment:
    url: str
    content_type: str | None = None
    title: str | None = None


@dataclass(frozen=True, slots=True)
class Message:
    id: str
    sender: str
    sent: str
    text: str | None = None
    attachments: tuple[Attachment, ...] = ()
    recipient: tuple[str, ...] | None = None  # None: every participant but the sender
    reply_to: str | None = None
    status: str | None = None


@dataclass(frozen=True, slots=True)
class ThreadSpec:
    key: str
    topic: str
    participants: Mapping[str, Participant]
    messages: tuple[Message, ...] = ()
    subject: str | None = None  # an alias or a reference string
    sender: str | None = None
    sent: str | None = None
    status: str = DEFAULT_STATUS
    category: tuple[Coding, ...] = ()
    source: Document | None = field(default=None, compare=False, repr=False)

    def origin(self, message_index: int | None = None, *fields: str | int) -> tuple[str, int | None]:
        """(file, line) of the thread, or of `messages[message_index]` and a field below it."""
        if self.source is None:
            return ("<spec>", None)
        path: Path_ = ("messages", message_index, *fields) if message_index is not None else tuple(fields)
        pos = self.source.position(path)
        return (self.source.file, pos[0] if pos else None)


# --- schema ----------------------------------------------------------------------------------------


def _validator() -> jsonschema.protocols.Validator:
    global _VALIDATOR
    if _VALIDATOR is None:
        cls = jsonschema.validators.validator_for(assets.schema(SPEC_SCHEMA))
        _VALIDATOR = cls(assets.schema(SPEC_SCHEMA))
    return _VALIDATOR


_VALIDATOR: jsonschema.protocols.Validator | None = None

_TYPE_NAMES = {"string": "a string", "integer": "an integer", "object": "a mapping", "array": "a list",
               "boolean": "true/false", "null": "null", "number": "a number"}


def _kind(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, int):
        return f"an integer ({value})"
    if isinstance(value, str):
        return f"a string ({value!r})"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def _schema_problems(doc: Document, error: _SchemaError) -> Iterator[Problem]:
    path: Path_ = tuple(error.absolute_path)
    custom = error.schema.get("x-message") if isinstance(error.schema, dict) else None
    v = error.validator
    if v == "anyOf" and custom:
        yield doc.problem(path, custom)
        return
    if v in ("oneOf", "anyOf"):
        subs = [e for e in error.context or () if e.validator != "type"]
        if subs:
            yield from _schema_problems(doc, best_match(subs))
            return
        yield doc.problem(path, f"{custom or 'is not valid here'}; got {_kind(error.instance)}")
        return
    if v == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        for key in sorted(set(error.instance) - set(allowed)):
            hint = f" (allowed: {', '.join(allowed)})" if allowed else ""
            yield doc.problem(path + (key,), f"unknown field '{key}'{hint}", key=True)
        return
    if v == "required":
        missing = re.findall(r"'([^']+)' is a required property", error.message)
        field_ = missing[0] if missing else "?"
        yield doc.problem(path, f"missing required field '{field_}'")
        return
    if v == "type":
        want = error.validator_value
        wants = [want] if isinstance(want, str) else list(want)
        expected = " or ".join(_TYPE_NAMES.get(w, w) for w in wants)
        hint = " (quote it in YAML)" if "string" in wants and not isinstance(error.instance, dict | list) else ""
        yield doc.problem(path, f"expected {expected}, got {_kind(error.instance)}{hint}")
        return
    if v == "propertyNames":
        for sub in error.context or ():
            name = str(sub.instance)
            yield doc.problem(path + (name,), f"{name!r} {sub.schema.get('x-message', sub.message)}", key=True)
        return
    if v == "enum":
        options = ", ".join(map(str, error.validator_value))
        yield doc.problem(path, f"{error.instance!r} {custom or 'is not allowed'} (one of: {options})")
        return
    if v in ("pattern", "maxLength") and custom:
        yield doc.problem(path, f"{error.instance!r} {custom}")
        return
    if v == "minLength":
        yield doc.problem(path, "must not be empty")
        return
    if v in ("minItems", "minProperties"):
        yield doc.problem(path, custom or "must not be empty")
        return
    yield doc.problem(path, custom or error.message)


def _schema_check(doc: Document) -> list[Problem]:
    return [p for error in _validator().iter_errors(doc.data) for p in _schema_problems(doc, error)]


# --- meaning ---------------------------------------------------------------------------------------

def _text(value: Any) -> str:
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


def _is_alias(value: Any) -> bool:
    text = str(value)
    return isinstance(value, str | int) and not isinstance(value, bool) and "/" not in text and "?" not in text


def _not_allowed(kind: str, what: str, role: str) -> str:
    return f"FHIR R4 does not allow a {kind} as {what} of a Communication (allowed: " \
           f"{', '.join(sorted(TARGET_TYPES[role]))})"


def _meaning_problems(doc: Document) -> list[Problem]:
    data = doc.data
    if not isinstance(data, dict):
        return []
    out: list[Problem] = []
    parts = data.get("participants")
    aliases = [str(a) for a in parts] if isinstance(parts, dict) else None
    known = f" (known: {', '.join(sorted(aliases))})" if aliases else ""

    types: dict[str, str] = {}  # alias → resource type of its reference
    if isinstance(parts, dict):
        for alias, p in parts.items():
            if isinstance(p, dict) and isinstance(p.get("reference"), str):
                types[str(alias)] = kind = reference_type(p["reference"])
                if kind not in TARGET_TYPES["recipient"] and kind[:1].isupper():
                    out.append(doc.problem(("participants", alias, "reference"), _not_allowed(kind, "a participant",
                                                                                              "recipient")))

    def check_alias(path: Path_, value: Any, role: str | None = None) -> None:
        if aliases is not None and _is_alias(value) and str(value) not in aliases:
            out.append(doc.problem(path, f"{_text(value)!r} is not a participant{known}"))
        elif (role and (kind := types.get(str(value)) if _is_alias(value) else reference_type(str(value)))
              and kind not in TARGET_TYPES[role] and kind in TARGET_TYPES["recipient"]):
            out.append(doc.problem(path, f"{_text(value)!r} is a {kind}: " + _not_allowed(kind, f"the {role}", role)))

    if "sender" in data:
        check_alias(("sender",), data["sender"], "sender")
    if "subject" in data:
        check_alias(("subject",), data["subject"], "subject")
    def check_instant(path: Path_, value: Any) -> None:
        if isinstance(value, str) and is_instant_shaped(value) and (why := instant_problem(value)):
            out.append(doc.problem(path, why))  # (a value of the wrong form is the schema's to report)

    check_instant(("sent",), data.get("sent"))
    messages = data.get("messages")
    if not isinstance(messages, list):
        return out
    ids: dict[str, int] = {}
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict):
            continue
        mid = _text(msg["id"]) if "id" in msg else str(i + 1)
        if isinstance(mid, str):
            if mid in ids:
                first = ids[mid]
                how = "" if "id" in msg else " (its default id, from its position)"
                out.append(doc.problem(("messages", i, "id") if "id" in msg else ("messages", i),
                                       f"duplicate message id {mid!r}{how}: messages[{first}] has it too"))
            else:
                ids[mid] = i
        if "sender" in msg:
            check_alias(("messages", i, "sender"), msg["sender"], "sender")
        if isinstance(msg.get("recipient"), list):
            seen: set[str] = set()
            for j, r in enumerate(msg["recipient"]):
                check_alias(("messages", i, "recipient", j), r)
                if str(r) in seen:
                    out.append(doc.problem(("messages", i, "recipient", j), f"{_text(r)!r} is listed twice"))
                seen.add(str(r))
        check_instant(("messages", i, "sent"), msg.get("sent"))
        if "reply_to" in msg and isinstance(target := _text(msg["reply_to"]), str):
            if target in ids and ids[target] != i:
                pass
            elif any(_text(m.get("id", j + 1)) == target for j, m in enumerate(messages) if isinstance(m, dict)):
                out.append(doc.problem(("messages", i, "reply_to"),
                                       f"replies to {target!r}, which is not an earlier message (a reply must follow "
                                       "what it answers)"))
            else:
                out.append(doc.problem(("messages", i, "reply_to"),
                                       f"no message with id {target!r} in this thread"
                                       + (f" (ids: {', '.join(ids)})" if ids else "")))
    return out


# --- construction ----------------------------------------------------------------------------------


def _coding(value: Any) -> Coding:
    if isinstance(value, str):
        system, code = value.split("|", 1)
        return Coding(code=code, system=system)
    return Coding(code=value["code"], system=value.get("system"), display=value.get("display"))


def _to_spec(doc: Document) -> ThreadSpec:
    data = doc.data
    participants = {str(alias): Participant(str(alias), p["reference"], p.get("display"))
                    for alias, p in data["participants"].items()}
    messages = []
    for i, m in enumerate(data.get("messages") or ()):
        messages.append(Message(
            id=_text(m["id"]) if "id" in m else str(i + 1),
            sender=_text(m["sender"]),
            sent=m["sent"],
            text=m.get("text"),
            attachments=tuple(Attachment(a["url"], a.get("contentType"), a.get("title"))
                              for a in m.get("attachments", ())),
            recipient=tuple(_text(r) for r in m["recipient"]) if "recipient" in m else None,
            reply_to=_text(m["reply_to"]) if "reply_to" in m else None,
            status=m.get("status"),
        ))
    return ThreadSpec(
        key=_text(data["thread"]),
        topic=data["topic"],
        participants=participants,
        messages=tuple(messages),
        subject=_text(data["subject"]) if "subject" in data else None,
        sender=_text(data["sender"]) if "sender" in data else None,
        sent=data.get("sent"),
        status=data.get("status", DEFAULT_STATUS),
        category=tuple(_coding(c) for c in data.get("category", ())),
        source=doc,
    )


def check_document(doc: Document) -> tuple[ThreadSpec | None, list[Problem]]:
    """A ThreadSpec from one parsed document, or the problems that stop it being one."""
    if not isinstance(doc.data, dict):
        why = f"expected a thread (a mapping with thread, topic, participants), got {_kind(doc.data)}"
        return None, [doc.problem((), why)]
    problems = _schema_check(doc) + _meaning_problems(doc)
    if problems:
        return None, problems
    return _to_spec(doc), []


def parse_spec(data: Mapping[str, Any], *, file: str = "<spec>") -> ThreadSpec:
    """One ThreadSpec from plain data (as loaded from YAML/JSON); raises SpecError listing every problem."""
    spec, problems = check_document(Document(file, data))
    if problems:
        raise SpecError(problems)
    assert spec is not None
    return spec


# --- files -----------------------------------------------------------------------------------------


def spec_files(paths: Iterable[str | Path], suffixes: tuple[str, ...] = SPEC_SUFFIXES, *, stdin: bool = True
               ) -> tuple[list[Path | str], list[Problem]]:
    """Expand folders (recursively, files with `suffixes`, sorted) and check the paths exist; '-' is stdin."""
    files: list[Path | str] = []
    problems: list[Problem] = []
    for raw in paths:
        if stdin and str(raw) == "-":
            files.append("-")
            continue
        path = Path(raw)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.suffix in suffixes and p.is_file())
            if not found:
                kinds = ", ".join(f"*{s}" for s in suffixes)
                problems.append(Problem(str(path), None, None, "", f"folder has no {kinds} files"))
            files.extend(found)
        elif path.is_file():
            files.append(path)
        elif path.exists():
            problems.append(Problem(str(path), None, None, "", "not a regular file or folder"))
        else:
            problems.append(Problem(str(path), None, None, "", "no such file or folder"))
    return files, problems


def read_documents(file: Path | str) -> tuple[list[Document], list[Problem]]:
    """The thread documents in one file (or '-' for stdin)."""
    name = "<stdin>" if file == "-" else str(file)
    try:
        raw = sys.stdin.buffer.read() if file == "-" else Path(file).read_bytes()
    except OSError as exc:
        return [], [Problem(name, None, None, "", f"cannot read: {exc.strerror}")]
    text, problems = decode(raw, name)
    if text is None:
        return [], problems
    kind = None if file == "-" else ("json" if Path(file).suffix == ".json" else "yaml")
    docs, problems = parse_text(text, name, kind=kind)
    if not docs and not problems:
        problems = [Problem(name, None, None, "", "no thread in this file")]
    return list(split_threads(docs)), problems


def load_specs(paths: Iterable[str | Path]) -> list[ThreadSpec]:
    """Every thread in `paths`, checked; raises SpecError with every problem in every file."""
    files, problems = spec_files(paths)
    specs: list[ThreadSpec] = []
    seen: dict[str, ThreadSpec] = {}
    for file in files:
        docs, file_problems = read_documents(file)
        problems.extend(file_problems)
        for doc in docs:
            spec, doc_problems = check_document(doc)
            problems.extend(doc_problems)
            if spec is None:
                continue
            if spec.key in seen:
                other_file, other_line = seen[spec.key].origin()
                problems.append(doc.problem(("thread",), f"thread key {spec.key!r} is already used by "
                                                         f"{other_file}:{other_line}"))
                continue
            seen[spec.key] = spec
            specs.append(spec)
    if problems:
        raise SpecError(problems)
    return specs
