"""Thread specs: files → checked `ThreadSpec` objects, or every problem found, with its file and line.

`source` reads YAML and JSON keeping the position of every value; `model` is the spec format itself.
"""

from .model import (
    DEFAULT_STATUS,
    Attachment,
    Coding,
    Message,
    Participant,
    ThreadSpec,
    check_document,
    load_specs,
    parse_spec,
    read_documents,
    spec_files,
)

__all__ = ["DEFAULT_STATUS", "Attachment", "Coding", "Message", "Participant", "ThreadSpec", "check_document",
           "load_specs", "parse_spec", "read_documents", "spec_files"]
