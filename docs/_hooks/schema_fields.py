"""MkDocs hook: a page holding `<!-- schema-fields: schemas/NAME.schema.json -->` gets, in its place, every field of
that JSON Schema with its description, one table per top-level section, read from the schema at build time (the
schema is where each field is described; the page does not copy it)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
MARKER = re.compile(r"<!-- schema-fields: (\S+) -->")


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _rows(prefix: str, node: dict[str, Any], defs: dict[str, Any]) -> list[tuple[str, str]]:
    if "$ref" in node:
        node = {**defs[node["$ref"].rsplit("/", 1)[1]], **{k: v for k, v in node.items() if k != "$ref"}}
    rows = [(prefix, node.get("description", ""))] if prefix else []
    properties = node.get("properties") or node.get("items", {}).get("properties") or {}
    for name, child in properties.items():
        rows += _rows(f"{prefix}.{name}" if prefix else name, child, defs)
    return rows


def schema_fields(path: str) -> str:
    schema = json.loads((ROOT / path).read_text(encoding="utf-8"))
    defs = schema.get("$defs", {})
    out: list[str] = []
    for section, node in schema.get("properties", {}).items():
        rows = _rows(section, node, defs)
        out += [f"### `{section}`", "", _cell(rows[0][1]), "", "| field | what it says |", "|---|---|"]
        out += [f"| `{name}` | {_cell(text)} |" for name, text in rows[1:]]
        out.append("")
    return "\n".join(out)


def on_page_markdown(markdown: str, page: Any, **_: Any) -> str:
    return MARKER.sub(lambda m: schema_fields(m.group(1)), markdown)
