"""Loading threads into a project exactly once, and syncing them with their specs (`loader`, `thread`,
`journal`, `plan`, `report`) and reading them back (`verify`, `compare`)."""

from ..errors import JournalBusy, JournalError, NotAtomic
from .inputs import default_journal
from .loader import DEFAULT_LATE_MARGIN, LoadInterrupted, load
from .report import LoadReport, LoadWatcher, Outcome, Plan, ReportWriter, ThreadResult
from .verify import VerifyResult, read_thread, verify

__all__ = ["DEFAULT_LATE_MARGIN", "JournalBusy", "JournalError", "LoadInterrupted", "LoadReport", "LoadWatcher",
           "NotAtomic", "Outcome", "Plan", "ReportWriter", "ThreadResult", "VerifyResult", "default_journal", "load",
           "read_thread", "verify"]
