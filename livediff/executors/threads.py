"""Run chains on a pool of worker threads, one chain (and partial state) per worker.

Operators' kernels release the GIL (numba ``nogil=True``), so threads run them in
parallel.  The caller keeps at most :attr:`workers` frames in flight and restores their
order; at a snapshot or the series end the workers' partial states are merged with the
operators' own ``merge`` (Chan's formulas), so N workers give the answer of one.
"""
from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ..model import Frame, SeriesStart
from ..pipeline import Chain


class ThreadExecutor:
    """A pool of ``workers`` threads, each with its own :class:`Chain`.

    Parameters
    ----------
    make_chain : builds a fresh chain (called once per worker, plus one for merging).
    workers : number of worker threads.
    """

    def __init__(self, make_chain: Callable[[], Chain], workers: int = 1) -> None:
        self.workers = workers
        self._chains = [make_chain() for _ in range(workers)]
        self._merged = make_chain() if workers > 1 else self._chains[0]
        self._idle = list(self._chains)
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="livediff-worker")
        self._series: SeriesStart | None = None

    @property
    def columns(self) -> dict[str, str]:
        return self._chains[0].columns

    async def start(self, series: SeriesStart) -> None:
        """Start every chain on the new series (allocation happens off the loop)."""
        self._series = series
        await asyncio.gather(*(self._run(c.start, series) for c in self._chains))

    async def process(self, frame: Frame) -> Frame:
        """Run ``frame`` through an idle chain; the caller keeps <= ``workers`` in flight."""
        if not self._idle:
            raise RuntimeError(f"more than {self.workers} frames in flight")
        chain = self._idle.pop()
        try:
            return await self._run(chain.process, frame)
        finally:
            self._idle.append(chain)

    async def snapshot(self) -> dict[str, dict[str, Any]]:
        """Merged snapshot of all workers (call with no frame in flight)."""
        return await self._run(self._merge_then, "snapshot")

    async def finish(self) -> dict[str, dict[str, Any]]:
        """Merged final results of the series (call with no frame in flight)."""
        return await self._run(self._merge_then, "finish")

    def _merge_then(self, method: str) -> dict[str, dict[str, Any]]:
        if self._merged not in self._chains:  # a fresh chain, holding the sum of all workers
            self._merged.start(self._series)
            for chain in self._chains:
                self._merged.merge(chain.state())
        return getattr(self._merged, method)()

    async def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
