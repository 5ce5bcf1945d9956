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
    "AuthError": "errors", "BundleInvalid": "errors", "BundlerError": "errors", "OptionError": "errors",
    "Problem": "errors", "ServerError": "errors", "SpecError": "errors", "UnknownOutcome": "errors",
    "build_files": "bundle_files", "generate": "generator",
    "ThreadSpec": "spec", "load_specs": "spec", "parse_spec": "spec",
    "validate": "check", "validate_files": "check",
    "BearerToken": "medplum.auth", "ClientCredentials": "medplum.auth", "FhirClient": "medplum.client",
    "doctor": "medplum.doctor",
    "load": "load", "verify": "load", "export": "export",
    "iter_threads": "migrate", "migrate": "migrate",
}
"""Where each public name lives; `import bundler` imports none of them until one is used."""

__all__ = [
    "DEFAULT_IDENTIFIER_SYSTEM", "AuthError", "BearerToken", "BundleInvalid", "BundlerError", "ClientCredentials",
    "FhirClient", "OptionError", "Problem", "ServerError", "SpecError", "ThreadSpec", "UnknownOutcome",
    "build_bundle", "build_bundles", "build_files", "bundle_bytes", "doctor", "dumps", "export", "full_url",
    "generate",
    "iter_threads",
    "load", "load_specs", "migrate", "parse_spec", "validate", "validate_files", "verify",
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
    from .check import validate, validate_files
    from .errors import (
        AuthError,
        BundleInvalid,
        BundlerError,
        OptionError,
        Problem,
        ServerError,
        SpecError,
        UnknownOutcome,
    )
    from .export import export
    from .generator import generate
    from .load import load, verify
    from .medplum.auth import BearerToken, ClientCredentials
    from .medplum.client import FhirClient
    from .medplum.doctor import doctor
    from .migrate import iter_threads, migrate
    from .bundle_files import build_files
    from .spec import ThreadSpec, load_specs, parse_spec
