"""Run a chain over frames already in memory: notebooks, scripts, tests, benchmarks.

:func:`process_frames` feeds a series through an executor exactly as the service does
(arrival order, at most ``workers`` in flight, the in-order step, series-wide state),
without sockets or files, and returns the processed frames and the final results.
"""
from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterable, Sequence
from typing import Any

from ..model import Codec, Frame, RowDecoder, SeriesStart
from ..pipeline import OperatorSpec
from .base import Job
from .threads import ThreadExecutor


def process_frames(specs: Sequence[OperatorSpec], series: SeriesStart, frames: Iterable[Frame], *,
                   workers: int = 1, fuse: bool = True, decode: Codec | None = None,
                   rows: RowDecoder | None = None) -> tuple[list[Frame | BaseException], dict[str, dict[str, Any]]]:
    """Process ``frames`` (in this order) through the chain ``specs`` on ``workers`` threads
    (operators that allow it fused into one pass, unless not ``fuse``); frames that came
    compressed are decoded with ``decode`` or row by row with ``rows`` (:class:`.ThreadExecutor`).

    Returns
    -------
    (frames, results) : each processed frame in order, or the exception its operators
    raised; and the operators' final results (``finish``), by label.
    """
    return asyncio.run(_process(series, frames, workers,
                                specs=specs, fuse=fuse, decode=decode, rows=rows))


async def _process(series: SeriesStart, frames: Iterable[Frame], workers: int,
                   **settings: Any) -> tuple[list[Frame | BaseException], dict[str, dict[str, Any]]]:
    executor = ThreadExecutor(workers=workers, warm=False, **settings)  # frames in memory: nothing waits for them
    try:
        await executor.start(series)
        done: list[Frame | BaseException] = []
        inflight: deque[Job] = deque()
        for frame in frames:  # a frame at a time, so that up to ``workers`` run at once
            if len(inflight) == workers:
                done += await _collect(executor, inflight.popleft())
            inflight.extend(executor.process([frame]))
        while inflight:
            done += await _collect(executor, inflight.popleft())
        return done, await executor.finish()
    finally:
        executor.close()


async def _collect(executor: ThreadExecutor, job: Job) -> list[Frame | BaseException]:
    await asyncio.wait({job.future})
    return await executor.collect(job)
