"""Thread specs: files → checked `ThreadSpec` objects, or every problem found, with its file and line.

`source` reads YAML and JSON keeping the position of every value; `model` is the spec format itself
(typed models: reading, checking, `to_data()`), with `scalars` (its constrained values) and `problems`
(its errors in our words); `files` finds and reads spec files; `dump` writes spec data as YAML;
`schema` generates the JSON Schema from the models; `schema_errors` words jsonschema's errors for the
other files we check with a schema (the migrate mapping).
"""

from .files import load_specs, read_documents, spec_files
from .model import (
    DEFAULT_STATUS,
    Attachment,
    Coding,
    Message,
    Participant,
    Participants,
    ThreadSpec,
    check_document,
    parse_spec,
)
from .participants import ParticipantsFile, read_participants

__all__ = [
    "DEFAULT_STATUS",
    "Attachment",
    "Coding",
    "Message",
    "Participant",
    "Participants",
    "ParticipantsFile",
    "ThreadSpec",
    "check_document",
    "load_specs",
    "parse_spec",
    "read_documents",
    "read_participants",
    "spec_files",
]
