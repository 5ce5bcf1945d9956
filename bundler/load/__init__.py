"""Loading threads into a project exactly once, and syncing them with their specs (`loader`, `thread`,
`journal`, `plan`, `report`) reading them back (`verify`, `compare`), and keeping one copy of
threads concurrent loads both made (`dedupe`)."""

from ..errors import JournalBusy, JournalError, NotAtomic
from .dedupe import DedupeResult, dedupe
from .inputs import default_journal
from .loader import DEFAULT_LATE_MARGIN, LoadInterrupted, load
from .report import LoadReport, LoadWatcher, Outcome, Plan, ReportWriter, ThreadResult
from .verify import VerifyResult, read_thread, verify

__all__ = ["DEFAULT_LATE_MARGIN", "DedupeResult", "JournalBusy", "JournalError", "LoadInterrupted", "LoadReport",
           "LoadWatcher", "NotAtomic", "Outcome", "Plan", "ReportWriter", "ThreadResult", "VerifyResult", "dedupe",
           "default_journal", "load", "read_thread", "verify"]
