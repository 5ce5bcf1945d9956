"""thread-bundler: conversation thread specs → FHIR R4 transaction Bundles for Medplum.

The pipeline, one module a stage: `spec` (files → ThreadSpec, with positions) → `build` (pure) →
`validate` (pure) → `load` (client, journal, scheduler) → report.

`__all__` is the public API: the functions of the commands, the types they return, and the whole exception
tree (`bundler.errors`). Everything else lives in its module and may change.

Names are imported on first use (PEP 562), so `import bundler.<module>` — the pytest plugin, say —
does not pay for the whole package.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_WHERE = {
    # building and checking
    "DEFAULT_IDENTIFIER_SYSTEM": "build", "build_bundle": "build", "build_bundles": "build", "bundle_bytes": "build",
    "BuildSummary": "bundle_files", "build_files": "bundle_files",
    "generate": "generator",
    "ThreadSpec": "spec", "load_specs": "spec", "parse_spec": "spec",
    "Issue": "check", "validate": "check", "validate_files": "check",
    # talking to a server
    "BearerToken": "medplum.auth", "ClientCredentials": "medplum.auth", "FhirClient": "medplum.client",
    "DoctorReport": "medplum.doctor", "doctor": "medplum.doctor",
    "LoadReport": "load", "VerifyResult": "load", "load": "load", "verify": "load",
    "DedupeResult": "load", "dedupe": "load",
    "ExportReport": "export", "export": "export",
    "MigrateSummary": "migrate", "iter_threads": "migrate", "migrate": "migrate",
    # what goes wrong
    "Problem": "errors", "BundlerError": "errors", "SpecError": "errors", "OptionError": "errors",
    "ServerError": "errors", "AuthError": "errors", "Throttled": "errors", "Unreachable": "errors",
    "UnknownOutcome": "errors", "NotAtomic": "errors", "FileLocked": "errors", "JournalError": "errors",
    "JournalBusy": "errors", "LocalServerError": "errors", "PortInUse": "errors",
}
"""Where each public name lives; `import bundler` imports none of them until one is used."""

__all__ = [
    "DEFAULT_IDENTIFIER_SYSTEM", "AuthError", "BearerToken", "BuildSummary", "BundlerError", "ClientCredentials",
    "DedupeResult", "DoctorReport", "ExportReport", "FhirClient", "FileLocked", "Issue", "JournalBusy",
    "JournalError", "LoadReport", "LocalServerError", "MigrateSummary", "NotAtomic", "OptionError", "PortInUse",
    "Problem", "ServerError", "SpecError", "ThreadSpec", "Throttled", "UnknownOutcome", "Unreachable", "VerifyResult",
    "build_bundle", "build_bundles", "build_files", "bundle_bytes", "dedupe", "doctor", "export", "generate",
    "iter_threads", "load", "load_specs", "migrate", "parse_spec", "validate", "validate_files", "verify",
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
    from .build import DEFAULT_IDENTIFIER_SYSTEM, build_bundle, build_bundles, bundle_bytes
    from .bundle_files import BuildSummary, build_files
    from .check import Issue, validate, validate_files
    from .errors import (
        AuthError,
        BundlerError,
        FileLocked,
        JournalBusy,
        JournalError,
        LocalServerError,
        NotAtomic,
        OptionError,
        PortInUse,
        Problem,
        ServerError,
        SpecError,
        Throttled,
        UnknownOutcome,
        Unreachable,
    )
    from .export import ExportReport, export
    from .generator import generate
    from .load import LoadReport, VerifyResult, load, verify
    from .medplum.auth import BearerToken, ClientCredentials
    from .medplum.client import FhirClient
    from .medplum.doctor import DoctorReport, doctor
    from .migrate import MigrateSummary, iter_threads, migrate
    from .spec import ThreadSpec, load_specs, parse_spec
