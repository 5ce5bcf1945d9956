"""Loading threads into a project exactly once (`loader`, `journal`, `plan`) and reading them back (`verify`,
`compare`)."""

from .loader import (
    CHANGED,
    EXISTING,
    FAILED,
    LOADED,
    OK_OUTCOMES,
    PARTIAL,
    RESUMED,
    SKIPPED,
    LoadReport,
    NotAtomic,
    Progress,
    ThreadResult,
    default_journal,
    load,
)
from .verify import VerifyResult, read_thread, verify

__all__ = ["CHANGED", "EXISTING", "FAILED", "LOADED", "OK_OUTCOMES", "PARTIAL", "RESUMED", "SKIPPED", "LoadReport",
           "NotAtomic", "Progress", "ThreadResult", "VerifyResult", "default_journal", "load", "read_thread", "verify"]
