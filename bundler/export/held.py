"""A thread's messages as an export holds them while it shapes the thread: each as its JSON bytes, read back when
asked for.

A message the server returns takes several KB as Python data and about 1 KB as bytes: a thread of 100,000 messages
held as data took 420 MB before it was shaped. `Held` takes the messages a page at a time as they are read
(`add`), keeps the first read of each (a page that shifted while the thread was read brings one again) with its
attachment urls as the server stores them (`shape.unsigned`), and gives them back one at a time, in the order
`shape` wants (`in_order`), each decoded when it is asked for and not kept.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import orjson

from ..lazy import Lazy


class Held(Lazy[Mapping[str, Any]]):
    """Messages held as bytes (see the module docstring); a Sequence of them, each decoded when asked for."""

    def __init__(self, messages: Iterable[Mapping[str, Any]] = (), *,
                 prepare: Callable[[Mapping[str, Any]], Mapping[str, Any]] | None = None) -> None:
        self._data: list[bytes] = []
        self._seen: set[str] = set()
        self._prepare = prepare
        self.add(messages)

    def add(self, messages: Iterable[Mapping[str, Any]]) -> None:
        """Hold `messages` (a page), but for those held already (by id: the first read is kept)."""
        for m in messages:
            key = str(m.get("id"))
            if key in self._seen:
                continue
            self._seen.add(key)
            data = orjson.dumps(self._prepare(m) if self._prepare is not None else m)
            self._data.append(bytes(memoryview(data)))  # (a copy: orjson's bytes keep the room they were written in)

    def sort(self, *, key: Callable[[Mapping[str, Any]], Any]) -> None:
        """Put them in the order of `key` (stable: ties keep their order), each decoded once for its key."""
        keys = [key(m) for m in self]
        order = sorted(range(len(keys)), key=keys.__getitem__)
        self._data = [self._data[n] for n in order]

    def clear(self) -> None:
        """Let them go (what was read is not needed any more)."""
        self._data, self._seen = [], set()

    def __len__(self) -> int:
        return len(self._data)

    def item(self, n: int) -> Mapping[str, Any]:
        return orjson.loads(self._data[n])  # type: ignore[no-any-return]

    def __iter__(self) -> Iterator[Mapping[str, Any]]:
        return (orjson.loads(b) for b in self._data)


class Patched(Lazy[Mapping[str, Any]]):
    """`resources` (a Sequence, `Held` for one), each with `patch(resource)` applied when it is asked for; those for
    which it gives None left out (positions are the kept ones')."""

    def __init__(self, resources: Sequence[Mapping[str, Any]], kept: list[int],
                 patch: Callable[[Mapping[str, Any]], Mapping[str, Any]]) -> None:
        self._resources, self._kept, self._patch = resources, kept, patch

    def __len__(self) -> int:
        return len(self._kept)

    def item(self, n: int) -> Mapping[str, Any]:
        return self._patch(self._resources[self._kept[n]])

    def __iter__(self) -> Iterator[Mapping[str, Any]]:
        return (self._patch(self._resources[i]) for i in self._kept)
