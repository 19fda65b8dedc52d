"""The executor protocol, the job it returns, and the bookkeeping of series-wide state versions."""
from __future__ import annotations

import asyncio
import bisect
from dataclasses import dataclass
from typing import Any, Protocol

from ..model import Frame, SeriesStart
from ..outputs import Layout


@dataclass
class Job:
    """A frame handed to an executor: ``future`` resolves to the processed frame.

    ``received`` keeps the pixels as the source delivered them (operators replace
    ``frame.data``), for sinks that record frames as received.
    """

    frame: Frame
    received: Any
    future: asyncio.Future


class Executor(Protocol):
    """What the run loop uses (see :mod:`livediff.executors`)."""

    workers: int

    @property
    def layout(self) -> Layout: ...

    async def warm_up(self, series: SeriesStart) -> None: ...
    async def start(self, series: SeriesStart) -> Layout: ...
    def process(self, frame: Frame) -> Job: ...
    async def collect(self, job: Job) -> Frame: ...
    async def snapshot(self) -> dict[str, dict[str, Any]]: ...
    async def finish(self) -> dict[str, dict[str, Any]]: ...
    def close(self) -> None: ...


class Versions:
    """The published versions of one operator's series-wide state.

    A version is keyed by the number of frames (in arrival order) folded when it was
    published; a frame whose epoch is ``e`` uses the last version with key <= ``e``.
    """

    def __init__(self) -> None:
        self._keys: list[int] = []
        self._states: list[Any] = []

    def publish(self, key: int, state: Any) -> None:
        self._keys.append(key)
        self._states.append(state)

    def at(self, epoch: int | None) -> tuple[int, Any]:
        """(key, state) of the version for ``epoch``; (-1, None) when none was published by then."""
        i = -1 if epoch is None else bisect.bisect_right(self._keys, epoch) - 1
        return (-1, None) if i < 0 else (self._keys[i], self._states[i])

    def forget_before(self, key: int) -> None:
        """Drop the versions older than ``key``: a frame used it, so no later frame needs them
        (the version a frame needs never goes back in arrival order)."""
        i = bisect.bisect_left(self._keys, key)
        del self._keys[:i], self._states[:i]
