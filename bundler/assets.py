"""Files the package reads at run time (JSON Schemas, the local server's sources).

In a wheel they live inside the package (`bundler/schemas/`, `bundler/medplum_local/`,
`bundler/examples/`, `bundler/examples_participants/`: copied there by the build); in a source checkout they
are the top-level `schemas/`, `medplum-local/`, `fixtures/threads/` and `fixtures/participants/` folders.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import orjson

_PACKAGE = Path(__file__).resolve().parent
_PLACES = {
    "schemas": (_PACKAGE / "schemas", _PACKAGE.parent / "schemas"),
    "medplum-local": (_PACKAGE / "medplum_local", _PACKAGE.parent / "medplum-local"),
    "examples": (_PACKAGE / "examples", _PACKAGE.parent / "fixtures" / "threads"),
    "participants": (_PACKAGE / "examples_participants", _PACKAGE.parent / "fixtures" / "participants"),
}


def asset_dir(name: str) -> Path:
    """The folder holding the asset group `name` ('schemas', 'medplum-local', 'examples' or 'participants')."""
    for place in _PLACES[name]:
        if place.is_dir():
            return place
    raise FileNotFoundError(f"thread-bundler is installed without its {name!r} files (looked in {_PLACES[name]})")


@cache
def schema(name: str) -> dict[str, Any]:
    """A JSON Schema shipped with the package, by file name."""
    data: dict[str, Any] = orjson.loads((asset_dir("schemas") / name).read_bytes())
    return data
