"""Writing plain data (a spec's `to_data()`, a participants file) as YAML that our reader reads back equal.

libyaml's emitter when PyYAML has it, the pure-Python one otherwise (same output). Strings are never
left to implicit typing: anything our reader could take for something else is quoted by the emitter
(it resolves with the full YAML 1.1 set, a superset of ours); multi-line text is a literal block.
"""

from __future__ import annotations

from typing import Any

import yaml

from .fastyaml import fast_yaml

try:
    from yaml import CSafeDumper as _Base
except ImportError:  # pragma: no cover - PyYAML built without libyaml
    from yaml import SafeDumper as _Base  # type: ignore[assignment]


class _Dumper(_Base):
    pass


def _str(dumper: _Dumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value and value == value.strip() and "\r" not in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def dump_yaml(data: Any) -> bytes:
    """`data` (dicts, lists, strings, numbers, booleans, None) as UTF-8 YAML, keys in their given order."""
    text = fast_yaml(data)  # the common case, the same bytes written directly
    if text is None:
        text = yaml.dump(data, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=120)
    return text.encode("utf-8")
