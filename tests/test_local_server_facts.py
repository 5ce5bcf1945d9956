"""The local server (medplum-local/, JavaScript) states Medplum's facts that `bundler.vocabulary` holds, and reads the
settings `bundler.medplum.localserver` sends it: each JS constant and each side of that contract is held here to
the Python one, so a change on one side that the other does not follow fails a test instead of a load."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from bundler import assets
from bundler.medplum import localserver
from bundler.medplum.localserver import _CONFIG_KEYS, _QUOTA_KEYS, LocalServer, _config_payload
from bundler.vocabulary import (
    DEFAULT_QUOTA_PER_MINUTE,
    HISTORY_POINTS,
    MAX_BODY_BYTES,
    QUOTA_POLICY,
    QUOTA_WINDOW_SECONDS,
    READ_POINTS,
    SEARCH_POINTS,
    WRITE_POINTS,
)

_SOURCES = assets.asset_dir("medplum-local")


def _source(name: str) -> str:
    return (Path(_SOURCES) / name).read_text(encoding="utf-8")


def _number(expression: str) -> int:
    """A JS product of integer literals (`1024 * 1024`, `50_000`) as a number."""
    value = 1
    for factor in expression.split("*"):
        assert re.fullmatch(r"[0-9][0-9_]*", factor.strip()), expression
        value *= int(factor.strip())
    return value


def _one(pattern: str, text: str) -> str:
    found = re.findall(pattern, text)
    assert len(found) == 1, f"{pattern!r} found {len(found)} times"
    return str(found[0])


def test_the_body_limit_is_medplums() -> None:
    assert _number(_one(r"const MAX_JSON_BYTES = ([^;]+);", _source("server.mjs"))) == MAX_BODY_BYTES


def test_quota_costs_are_medplums() -> None:
    body = _one(r"export const COST = \{([^}]*)\};", _source("lib/repository.mjs"))
    costs = {k: _number(v) for k, v in re.findall(r"(\w+): ([0-9_]+)", body)}
    assert costs == {"read": READ_POINTS, "history": HISTORY_POINTS, "search": SEARCH_POINTS, "write": WRITE_POINTS}


def test_default_quota_and_its_policy_name_are_medplums() -> None:
    server = _source("server.mjs")
    assert _number(_one(r"envInt\('MEDPLUM_LOCAL_QUOTA_POINTS', ([0-9_]+)\)", server)) == DEFAULT_QUOTA_PER_MINUTE
    assert _number(_one(r"envInt\('MEDPLUM_LOCAL_QUOTA_WINDOW', ([0-9_]+)\)", server)) == QUOTA_WINDOW_SECONDS
    assert _one(r"QuotaTracker\(quotaBook, `fhir:[^`]*`, '(\w+)'", server) == QUOTA_POLICY
    server_defaults = LocalServer()._defaults["quota"]
    assert (server_defaults["points"], server_defaults["windowSeconds"]) == (DEFAULT_QUOTA_PER_MINUTE,
                                                                            QUOTA_WINDOW_SECONDS)


def _apply_config() -> str:
    return _one(r"(?s)function applyConfig\(patch\) \{(.*?)\n\}\n", _source("server.mjs"))


def test_admin_config_keys_are_the_ones_the_server_reads() -> None:
    body = _apply_config()
    top = set(re.findall(r"case '(\w+)':", body))
    quota = {"enabled", *re.findall(r"'(\w+)'", _one(r"\} else if \((\[[^\]]*\])\.includes\(qk\)\)", body))}
    assert set(_CONFIG_KEYS.values()) | {"quota"} == top
    assert set(_QUOTA_KEYS.values()) == quota


@pytest.mark.parametrize("settings", [{"transaction_bundles": False}, {"token_ttl": 5},
                                      {"check_references_on_write": True}, {"quota": True},
                                      {"quota": {"points": 10, "window_seconds": 3}}, {"quota_requests": 7}])
def test_every_python_setting_becomes_a_key_the_server_reads(settings: dict[str, object]) -> None:
    body = _apply_config()
    payload = _config_payload(settings)
    known_top = set(re.findall(r"case '(\w+)':", body))
    assert set(payload) <= known_top
    for key in payload.get("quota", {}):
        assert key in set(_QUOTA_KEYS.values())


def test_the_environment_python_hands_the_server_is_the_one_it_reads() -> None:
    server = _source("server.mjs")
    read = set(re.findall(r"env(?:Int|Bool)\('(MEDPLUM_LOCAL_\w+)'", server))
    read |= set(re.findall(r"process\.env\.(MEDPLUM_LOCAL_\w+)", server))
    python = inspect.getsource(localserver)
    handed = set(re.findall(r'"(MEDPLUM_LOCAL_\w+)"', python))
    assert handed <= read, handed - read
