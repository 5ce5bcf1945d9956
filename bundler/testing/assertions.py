"""Assertions for tests of code that makes or loads thread bundles (`pip install '.[testing]'` from a clone).

    from bundler.testing import assert_same_thread, assert_valid_thread_bundle, fetch_thread

    assert_valid_thread_bundle(my_exporter(records))          # no validator errors, no warnings
    medplum_client.transaction(orjson.dumps(bundle), entries=len(bundle["entry"]))
    assert_same_thread(spec, fetch_thread(medplum_client, spec["thread"]))

Generated data comes from `bundler.testing.strategies`; the `medplum_server` and `medplum_client` fixtures
from the pytest plugin `bundler.testing.pytest_plugin` (loaded automatically once the package is installed).
Each assertion raises AssertionError with one line per problem, so pytest shows them all at once.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import orjson

from ..build import DEFAULT_IDENTIFIER_SYSTEM
from ..check.limits import Limits
from ..check.validate import validate
from ..load.compare import diff_thread
from ..spec.model import ThreadSpec, parse_spec
from ..vocabulary import identifier_token
from .server import MedplumServer

if TYPE_CHECKING:
    from ..medplum.client import FhirClient

__all__ = ["MedplumServer", "assert_same_thread", "assert_valid_thread_bundle", "fetch_thread"]


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def assert_valid_thread_bundle(bundle: Mapping[str, Any] | bytes | str, *, limits: str | Limits = "medplum",
                               allow_warnings: bool = False, structure: bool = True) -> None:
    """Fail unless `bundle` (a dict, or its JSON) passes `bundler.validate`: no errors, and no
    warnings unless `allow_warnings`. `limits` is the server profile ('medplum', 'none') or a `Limits`;
    `structure=False` skips the (slower) FHIR R4 structure check.

        >>> assert_valid_thread_bundle({"resourceType": "Bundle", "type": "collection", "entry": []})
        Traceback (most recent call last):
        AssertionError: 2 errors, 0 warnings in the bundle:
          error[bundle.type] Bundle.type: must be 'transaction' or 'batch', got 'collection'
          error[bundle.empty] Bundle.entry: a transaction needs at least one entry
    """
    __tracebackhide__ = True
    data = orjson.loads(bundle) if isinstance(bundle, bytes | str) else bundle
    issues = validate(data, limits=limits, structure=structure)
    shown = [i for i in issues if i.severity == "error" or not allow_warnings]
    if shown:
        errors = sum(i.severity == "error" for i in issues)
        lines = [f"{_plural(errors, 'error')}, {_plural(len(issues) - errors, 'warning')} in the bundle:"]
        lines += [f"  {i.severity}[{i.code}] {i.path}: {i.message}" for i in shown]
        raise AssertionError("\n".join(lines))


def _resources(found: Iterable[Mapping[str, Any]] | Mapping[str, Any]) -> list[Mapping[str, Any]]:
    if isinstance(found, Mapping):
        if found.get("resourceType") == "Bundle":  # a searchset, or a response with resources
            return [e["resource"] for e in found.get("entry") or () if isinstance(e, Mapping) and "resource" in e]
        return [found]
    return list(found)


def assert_same_thread(spec: ThreadSpec | Mapping[str, Any], resources: Iterable[Mapping[str, Any]] | Mapping[str, Any],
                       *, identifier_system: str = DEFAULT_IDENTIFIER_SYSTEM) -> None:
    """Fail unless `resources` (the thread's header and messages as a server returned them, in any
    order; or a Bundle of them) hold exactly what `spec` (a `ThreadSpec` or spec data) says.
    Server-assigned ids, `meta` and the rewriting of `urn:uuid:` references are not differences.

        assert_same_thread(spec, fetch_thread(medplum_client, spec["thread"]))
        # AssertionError: thread 'lab-1' differs from its spec (1 difference):
        #   messages[0] (1).payload[0].contentString: expected 'Hi', got 'Hi!'
    """
    __tracebackhide__ = True
    thread = spec if isinstance(spec, ThreadSpec) else parse_spec(spec)
    differences = diff_thread(thread, _resources(resources), identifier_system=identifier_system)
    if differences:
        lines = [f"thread {thread.key!r} differs from its spec ({_plural(len(differences), 'difference')}):"]
        lines += [f"  {d}" for d in differences]
        raise AssertionError("\n".join(lines))


def fetch_thread(client: FhirClient, key: str, *, identifier_system: str = DEFAULT_IDENTIFIER_SYSTEM
                 ) -> list[dict[str, Any]]:
    """What the server holds for thread `key`: every header with its identifier, then each header's
    messages (as apps read them: part-of the header, by sent) and read receipts (tasks read model). Empty when
    the thread is not there."""
    from ..load.verify import read_thread

    headers = client.search("Communication", {"identifier": identifier_token(identifier_system, key)})
    return headers + [m for h in headers for m in read_thread(client, h["id"], receipts=True)]
