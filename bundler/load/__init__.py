"""Loading threads into a project exactly once (`loader`, `journal`, `plan`) and reading them back (`verify`,
`compare`)."""

from .loader import LoadReport, LoadWatcher, NotAtomic, Outcome, ThreadResult, default_journal, load
from .verify import VerifyResult, read_thread, verify

__all__ = ["LoadReport", "LoadWatcher", "NotAtomic", "Outcome", "ThreadResult", "VerifyResult", "default_journal",
           "load", "read_thread", "verify"]
