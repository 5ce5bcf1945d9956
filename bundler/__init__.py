"""thread-bundler: conversation thread specs → FHIR R4 transaction Bundles for Medplum.

The pipeline, one module a stage: `spec` (files → ThreadSpec, with positions) → `build` (pure) →
`validate` (pure) → `load` (client, journal, scheduler) → report.
"""

from .build import DEFAULT_IDENTIFIER_SYSTEM, build_bundle, build_bundles, dumps, full_url
from .errors import AuthError, BundleInvalid, BundlerError, Problem, ServerError, SpecError, UnknownOutcome
from .output import build_files
from .spec import ThreadSpec, load_specs, parse_spec

__all__ = [
    "DEFAULT_IDENTIFIER_SYSTEM",
    "AuthError",
    "BundleInvalid",
    "BundlerError",
    "Problem",
    "ServerError",
    "SpecError",
    "ThreadSpec",
    "UnknownOutcome",
    "build_bundle",
    "build_bundles",
    "build_files",
    "dumps",
    "full_url",
    "load_specs",
    "parse_spec",
]
