"""The bounded queue between the receiver and the pipeline, with the overflow policy.

``block``: a full queue makes the receiver wait, so ZeroMQ's high-water marks push back
on the sender and nothing is lost.  ``drop``: a frame arriving at a full queue evicts
the oldest queued frame (live view wants the newest), and the eviction is counted and
logged as a warning: the first drop at once, then at most one line every
:data:`DROP_LOG_PERIOD` seconds while dropping goes on, with the count.  Series starts
and ends are never dropped.

:meth:`EventQueue.get_many` takes the frames that have arrived together (a batch, up to a
bound in items and bytes), so that the run loop pays its per-call cost per batch.
"""
from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

from .throttle import Throttle

log = logging.getLogger(__name__)

#: Seconds between two warnings about dropped frames.
DROP_LOG_PERIOD = 5.0

T = TypeVar("T")


class EventQueue(Generic[T]):
    """Bounded FIFO; ``droppable`` tells which items the ``drop`` policy may evict."""

    def __init__(self, maxsize: int, overflow: str, droppable: type) -> None:
        if overflow not in ("block", "drop"):
            raise ValueError(f"overflow must be 'block' or 'drop', got {overflow!r}")
        self.maxsize = maxsize
        self.overflow = overflow
        self.dropped = 0
        self._log_drops = Throttle(DROP_LOG_PERIOD, burst=1)
        self._droppable = droppable
        self._items: deque[T] = deque()
        self._changed = asyncio.Condition()

    def qsize(self) -> int:
        return len(self._items)

    async def put(self, item: T) -> None:
        async with self._changed:
            if (self.overflow == "drop" and isinstance(item, self._droppable)
                    and len(self._items) >= self.maxsize):
                self._evict_oldest()
            await self._changed.wait_for(lambda: len(self._items) < self.maxsize)
            self._items.append(item)
            self._changed.notify_all()

    async def get(self) -> T:
        return (await self.get_many(1))[0]

    async def get_many(self, limit: int, max_bytes: float = float("inf"),
                       size: Callable[[T], int] | None = None) -> list[T]:
        """The next item; when it is droppable (a frame), with the droppable items queued right
        behind it, up to ``limit`` items and ``max_bytes`` (by ``size``; the first item is taken
        whatever its size).  A series start or end is always taken alone, so a batch never
        crosses a series boundary."""
        async with self._changed:
            await self._changed.wait_for(lambda: bool(self._items))
            taken = [self._items.popleft()]
            if isinstance(taken[0], self._droppable):
                total = size(taken[0]) if size is not None else 0
                while len(taken) < limit and self._items and isinstance(self._items[0], self._droppable):
                    if size is not None:
                        total += size(self._items[0])
                        if total > max_bytes:
                            break
                    taken.append(self._items.popleft())
            self._changed.notify_all()
            return taken

    def _evict_oldest(self) -> None:
        for i, old in enumerate(self._items):
            if isinstance(old, self._droppable):
                del self._items[i]
                self.dropped += 1
                self._log_drops.log(log, "drop", "queue full (overflow = 'drop'): the pipeline is slower than the "
                                    "stream; the oldest queued frame was dropped, %d so far", self.dropped)
                return
