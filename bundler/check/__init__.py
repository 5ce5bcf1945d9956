"""Checking Bundles before they are sent: every rule a Medplum server would reject or silently corrupt.

`issues` (the rule registry and `Issue`), `rules` (bundle, entry, reference and thread rules), `readstate` (the
read models' rules), `context` (what those two share while they check one bundle),
`structure` (FHIR R4 structure), `limits` (server profiles), `validate` (all of them, on one or many
bundles), `files` (Bundles, NDJSON and specs from files).
"""

from .files import Report, validate_files
from .issues import BUNDLE_RULES, RULES, SPEC_RULES, Issue, Severity
from .limits import PROFILES, Limits
from .validate import Origin, has_errors, locate, spec_origin, validate, validate_many

__all__ = ["BUNDLE_RULES", "PROFILES", "RULES", "SPEC_RULES", "Issue", "Limits", "Origin", "Report", "Severity",
           "has_errors", "locate", "spec_origin", "validate", "validate_files", "validate_many"]
