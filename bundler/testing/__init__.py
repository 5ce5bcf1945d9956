"""For tests of code that makes or loads thread bundles (`pip install '.[testing]'`).

`strategies` (hypothesis strategies), `mutations` (a valid bundle broken in exactly one way, one function per
rule: what `strategies.invalid_bundles` draws from), `assertions` (`assert_valid_thread_bundle`, `assert_same_thread`,
`fetch_thread`, re-exported here) and `pytest_plugin` (the `medplum_server` and `medplum_client`
fixtures). Names are imported on first use: pytest loads the plugin in every session of anyone who
installs the package, and it must not pay for the rest.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_WHERE = {"assert_same_thread": "assertions", "assert_valid_thread_bundle": "assertions",
          "fetch_thread": "assertions", "MedplumServer": "server"}

__all__ = ["MedplumServer", "assert_same_thread", "assert_valid_thread_bundle", "fetch_thread"]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'bundler.testing' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


if TYPE_CHECKING:
    from .assertions import assert_same_thread, assert_valid_thread_bundle, fetch_thread
    from .server import MedplumServer
