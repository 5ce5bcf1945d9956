"""`migrate` over several processes: the pool, its failures, its progress, and what crosses between processes."""

from __future__ import annotations

import pickle

from bundler.errors import Problem, SpecError
from bundler.migrate import RowRejected
from bundler.migrate.rejects import Reject


def test_errors_of_ours_cross_processes_intact() -> None:
    spec_error = SpecError([Problem("b.csv", 2, 3, "x", "two"), Problem("a.csv", 1, None, "", "one")])
    back = pickle.loads(pickle.dumps(spec_error))
    assert type(back) is SpecError and back.problems == spec_error.problems and str(back) == str(spec_error)
    rejected = RowRejected(Reject("a.csv", 5, 7, "missing-sender", "no sender id", ["x"]))
    back_rejected = pickle.loads(pickle.dumps(rejected))
    assert back_rejected.reject == rejected.reject and str(back_rejected) == str(rejected)
