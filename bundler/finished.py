"""`Finished`: futures handed to a pool, and each as it finishes, in the order they do.

The load's and the export's main threads settle their workers' results one at a time as they come. Asking
`concurrent.futures.wait(pending, FIRST_COMPLETED)` for each would hang a waiter on every pending future and take
it off again, each time: the square of the futures in flight, under the interpreter's lock the workers need
too. Here each future, when it finishes, puts itself on a queue (a callback), and the next finished one is taken
from there.
"""

from __future__ import annotations

import queue
from concurrent.futures import Future
from typing import Generic, TypeVar

T = TypeVar("T")


class Finished(Generic[T]):
    """The futures `add`ed and not yet taken (`pending`); `next` takes the one that finished first."""

    def __init__(self) -> None:
        self.pending: set[Future[T]] = set()
        self._queue: queue.SimpleQueue[Future[T]] = queue.SimpleQueue()

    def add(self, future: Future[T]) -> Future[T]:
        self.pending.add(future)
        future.add_done_callback(self._queue.put)
        return future

    def next(self, timeout: float | None = None) -> Future[T] | None:
        """The next future to finish (at once, if one has), no longer pending; None if none finished within
        `timeout` seconds (None: wait as long as it takes)."""
        try:
            future = self._queue.get(timeout=timeout)
        except queue.Empty:
            return None
        self.pending.discard(future)
        return future

    def __len__(self) -> int:
        return len(self.pending)
