"""`Lazy`: a Sequence whose items are made when they are asked for, and not kept.

What a long thread is made of (100,000 entries, identifiers, messages read from a server) is held as something
small (a spec, values, bytes) and made into each item on demand: `build.BuiltEntries`, `load.thread.Identifiers`,
`export.held.Held` are such sequences. A subclass gives `__len__` and `item(n)` (n in range), and may give a faster
`__iter__`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar, overload

T = TypeVar("T")


class Lazy(Sequence[T]):
    """A Sequence whose item n is `item(n)`, made each time it is asked for; slices are lists of them."""

    def item(self, n: int) -> T:
        raise NotImplementedError

    def __len__(self) -> int:
        raise NotImplementedError

    @overload
    def __getitem__(self, n: int) -> T: ...

    @overload
    def __getitem__(self, n: slice) -> list[T]: ...

    def __getitem__(self, n: int | slice) -> T | list[T]:
        if isinstance(n, slice):
            return [self.item(i) for i in range(*n.indices(len(self)))]
        if n < 0:
            n += len(self)
        if not 0 <= n < len(self):
            raise IndexError(n)
        return self.item(n)
