"""`migrate`: legacy message exports (one row per message, CSV or JSON Lines) → thread specs and bundles.

Rows are read as a stream, grouped by conversation in a throwaway SQLite database (so memory does
not grow with the number of messages), ordered by sent instant then input order, and assembled into
ThreadSpecs. Every row becomes a message or a line in the reject file, never nothing.

    summary = migrate(["export.csv.gz"], "mapping.yaml", to="ndjson", out="bundles.ndjson")
    with iter_threads(["export.csv"], "mapping.yaml", rejects="rejects.jsonl") as threads:
        for spec in threads: ...

The modules, in the order rows meet them: `mapping` (the mapping file), `readers` (CSV/JSONL/gzip),
`extract` (one row → a record or a reject), `records` (MessageRecord, Tombstone, their stored form),
`grouping` (on-disk grouping), `assemble` (records → ThreadSpec), `rejects` (reason codes, the reject
file), `stream` (one process's run: ThreadStream), `pipeline` (`migrate`: the writers, and the run
over several processes), `report` (summaries as JSON, and the shards' summaries added up: `combine`).
"""

from .mapping import MigrationMapping, load_mapping
from .pipeline import migrate, spec_yaml
from .rejects import REASONS, Reject
from .report import Combined, combine, summary_json
from .stream import MigrateSummary, Progress, RowRejected, Shard, ThreadStream, iter_threads

__all__ = [
    "REASONS",
    "Combined",
    "MigrateSummary",
    "MigrationMapping",
    "Progress",
    "Reject",
    "RowRejected",
    "Shard",
    "ThreadStream",
    "combine",
    "iter_threads",
    "load_mapping",
    "migrate",
    "spec_yaml",
    "summary_json",
]
