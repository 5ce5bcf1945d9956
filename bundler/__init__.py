"""thread-bundler: conversation thread specs → FHIR R4 transaction Bundles for Medplum.

The pipeline, one module a stage: `spec` (files → ThreadSpec, with positions) → `build` (pure) →
`validate` (pure) → `load` (client, journal, scheduler) → report.

Names are imported on first use (PEP 562), so `import bundler.<module>` — the pytest plugin, say —
does not pay for the whole package.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_WHERE = {
    "DEFAULT_IDENTIFIER_SYSTEM": "build", "build_bundle": "build", "build_bundles": "build", "bundle_bytes": "build",
    "dumps": "build", "full_url": "build",
    "AuthError": "errors", "BundleInvalid": "errors", "BundlerError": "errors", "Problem": "errors",
    "ServerError": "errors", "SpecError": "errors", "UnknownOutcome": "errors",
    "build_files": "output",
    "ThreadSpec": "spec", "load_specs": "spec", "parse_spec": "spec",
}

__all__ = [
    "DEFAULT_IDENTIFIER_SYSTEM", "AuthError", "BundleInvalid", "BundlerError", "Problem", "ServerError", "SpecError",
    "ThreadSpec", "UnknownOutcome", "build_bundle", "build_bundles", "build_files", "bundle_bytes", "dumps", "full_url",
    "load_specs", "parse_spec",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'bundler' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:
    from .build import DEFAULT_IDENTIFIER_SYSTEM, build_bundle, build_bundles, bundle_bytes, dumps, full_url
    from .errors import AuthError, BundleInvalid, BundlerError, Problem, ServerError, SpecError, UnknownOutcome
    from .output import build_files
    from .spec import ThreadSpec, load_specs, parse_spec
