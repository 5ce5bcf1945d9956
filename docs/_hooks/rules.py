"""MkDocs hook: the validator's rules page is written from `bundler.check.issues.RULES`, the one list of codes.

A page holding the line `<!-- rules -->` gets, in its place, one table per family of codes (the part before the
dot), each code with its severity, what it checks, and whether it is checked on bundles (`BUNDLE_RULES`, each
broken on purpose by `invalid_bundles(rule=...)`) or on specs (`SPEC_RULES`). Nothing is copied: a rule added,
renamed or reworded in the registry shows here at the next build, and `mkdocs build --strict` runs in the tests.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # the site documents this checkout (mkdocs-click and mkdocstrings too), not an install
    sys.path.insert(0, str(ROOT))

from bundler.check.issues import RULES, SPEC_RULES  # noqa: E402

PLACEHOLDER = "<!-- rules -->"
FAMILIES = {"bundle": "The Bundle", "entry": "Entries", "ref": "References", "thread": "Threads",
            "read": "Read state", "fhir": "FHIR structure", "limit": "Server limits"}


def rules_markdown() -> str:
    by_family: dict[str, list[str]] = {}
    for code in RULES:
        by_family.setdefault(code.split(".", 1)[0], []).append(code)
    out = [f"{len(RULES)} rules: {sum(1 for s, _ in RULES.values() if s == 'error')} errors, "
           f"{sum(1 for s, _ in RULES.values() if s == 'warning')} warnings.", ""]
    for family, codes in by_family.items():
        out += [f"## {FAMILIES.get(family, family)}", "", "| code | severity | checks | on |", "|---|---|---|---|"]
        for code in codes:
            severity, description = RULES[code]
            where = "specs" if code in SPEC_RULES else "bundles"
            text = description.replace("|", "\\|")
            out.append(f"| `{code}` | {severity} | {text} | {where} |")
        out.append("")
    return "\n".join(out)


def on_page_markdown(markdown: str, page: Any, **_: Any) -> str:
    if PLACEHOLDER not in markdown:
        return markdown
    return markdown.replace(PLACEHOLDER, rules_markdown())
