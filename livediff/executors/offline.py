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

from ..model import Frame, SeriesStart
from ..pipeline import OperatorSpec
from .threads import ThreadExecutor


def process_frames(specs: Sequence[OperatorSpec], series: SeriesStart, frames: Iterable[Frame], *,
                   workers: int = 1) -> tuple[list[Frame | BaseException], dict[str, dict[str, Any]]]:
    """Process ``frames`` (in this order) through the chain ``specs`` on ``workers`` threads.

    Returns
    -------
    (frames, results) : each processed frame in order, or the exception its operators
    raised; and the operators' final results (``finish``), by label.
    """
    return asyncio.run(_process(specs, series, frames, workers))


async def _process(specs: Sequence[OperatorSpec], series: SeriesStart, frames: Iterable[Frame],
                   workers: int) -> tuple[list[Frame | BaseException], dict[str, dict[str, Any]]]:
    executor = ThreadExecutor(specs, workers, warm=False)  # frames in memory: nothing waits for them
    try:
        await executor.start(series)
        done: list[Frame | BaseException] = []
        inflight: deque = deque()

        async def emit() -> None:
            job = inflight.popleft()
            await asyncio.wait({job.future})
            try:
                done.append(await executor.collect(job))
            except Exception as exc:  # the frame failed: keep going, as the service does
                done.append(exc)

        for frame in frames:
            if len(inflight) == workers:
                await emit()
            inflight.append(executor.process(frame))
        while inflight:
            await emit()
        return done, await executor.finish()
    finally:
        executor.close()
