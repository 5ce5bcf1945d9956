"""Threads out of a Medplum project as specs: the way back from `load`.

    from bundler.export import export
    report = export(client, "threads/", subject="Patient/123")

search.py finds the headers (page by page), shape.py makes a ThreadSpec of a thread's resources and says what
it cannot hold (pure), write.py writes specs and the report, run.py runs it all on a pool of workers.
"""

from __future__ import annotations

from .run import ExportReport, export
from .search import Filters
from .shape import Shaped, shape_thread
from .write import REPORT_NAME, ThreadExport

__all__ = ["REPORT_NAME", "ExportReport", "Filters", "Shaped", "ThreadExport", "export", "shape_thread"]
