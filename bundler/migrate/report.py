"""Migration summaries as JSON, and adding up the summaries of the shards of one migration.

Each shard of a migration (`--shard K/N`, say one pod of a Kubernetes Indexed Job) writes its own
summary (`migrate --summary shard-K.json`); `combine` adds them up into one, and says whether they make
a whole migration (every shard of N there once):

    total = combine(["shard-0.json", "shard-1.json"])
    print(total.summary.table(), total.missing_shards)
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from ..errors import Problem, SpecError
from .stream import MigrateSummary

FORMAT = "thread-bundler migrate summary 1"


def summary_json(summary: MigrateSummary, *, shard: tuple[int, int] | None = None, load_ok: bool = True
                 ) -> dict[str, Any]:
    """A summary as plain JSON data (what `migrate --summary` writes and `combine` reads)."""
    return {
        "format": FORMAT,
        "shard": list(shard) if shard is not None else None,
        "rows_read": summary.rows_read, "rows_other_shards": summary.rows_other_shards,
        "messages": summary.messages, "threads": summary.threads,
        "threads_all_rejected": summary.threads_all_rejected,
        "rejected": dict(summary.rejects), "warnings": dict(summary.warnings), "skipped": dict(summary.skipped_by),
        "loaded": summary.loaded, "load_ok": load_ok,
        "output": str(summary.output) if summary.output else None,
        "rejects_file": str(summary.rejects_file) if summary.rejects_file else None,
    }


@dataclass
class Combined:
    """The shards' summaries added up. `rows_read` of the whole input is that of one shard (each reads every
    row); `messages`, `rejects` and so on are the sums."""

    summary: MigrateSummary
    files: list[str] = field(default_factory=list)
    shards: list[tuple[int, int]] = field(default_factory=list)
    load_ok: bool = True

    @property
    def missing_shards(self) -> list[str]:
        """Shards of the migration (K/N) of which no summary was given (or given twice)."""
        counts = {n for _, n in self.shards}
        if len(counts) != 1:
            return [] if not self.shards else ["the summaries are of shards of different N"]
        n = counts.pop()
        seen = Counter(k for k, _ in self.shards)
        return [f"{k}/{n}" + (" (given twice)" if seen[k] > 1 else "") for k in range(n) if seen[k] != 1]

    @property
    def ok(self) -> bool:
        s = self.summary
        return s.rejected == 0 and s.messages > 0 and self.load_ok and not self.missing_shards


def _read(path: str) -> dict[str, Any]:
    try:
        data = orjson.loads(Path(path).read_bytes())
    except OSError as exc:
        raise SpecError([Problem(path, None, None, "", f"cannot read: {exc.strerror}")]) from None
    except orjson.JSONDecodeError as exc:
        raise SpecError([Problem(path, None, None, "", f"not JSON: {exc}")]) from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise SpecError([Problem(path, None, None, "", f"not a migrate summary (`migrate --summary FILE` writes "
                                                       f"them; format {FORMAT!r})")])
    return data


def combine(paths: Sequence[str | Path]) -> Combined:
    """The summaries at `paths` added up; SpecError naming a file that is not one."""
    out = Combined(MigrateSummary())
    s = out.summary
    for path in map(str, paths):
        data = _read(path)
        out.files.append(path)
        if data.get("shard"):
            k, n = data["shard"]
            out.shards.append((int(k), int(n)))
        s.rows_read = max(s.rows_read, int(data["rows_read"]))  # every shard reads every row
        s.messages += int(data["messages"])
        s.threads += int(data["threads"])
        s.threads_all_rejected += int(data["threads_all_rejected"])
        s.rejects.update(data["rejected"])
        s.warnings.update(data["warnings"])
        s.skipped_by.update(data["skipped"])
        if data.get("loaded") is not None:
            s.loaded = dict(Counter(s.loaded or {}) + Counter(data["loaded"]))
        out.load_ok = out.load_ok and bool(data.get("load_ok", True))
    s.rows_other_shards = s.rows_read - s.messages - s.rejected - s.skipped if out.shards else 0
    return out
