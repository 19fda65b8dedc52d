"""Run chains on a pool of worker threads, one chain (and partial state) per worker.

Operators' kernels release the GIL (numba ``nogil=True``), so threads run them in
parallel.  The caller keeps at most :attr:`workers` frames in flight and restores their
order; operators with a ``collect`` step then see every frame, in order, on one more
thread (the collector).  At a snapshot or the series end the workers' partial states
are merged with the operators' own ``merge`` (Chan's formulas), so N workers give the
answer of one; collecting operators report from their collector instance.
"""
from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ..config import OperatorConfig
from ..model import Frame, SeriesStart
from ..pipeline import Chain, Layout


class ThreadExecutor:
    """A pool of ``workers`` threads, each with its own :class:`Chain`, plus a collector.

    Parameters
    ----------
    operators : the configured chain.
    workers : number of worker threads.
    """

    def __init__(self, operators: Sequence[OperatorConfig], workers: int = 1) -> None:
        self.workers = workers
        self._chains = [Chain(operators) for _ in range(workers)]
        self._collector = Chain(operators, only_collecting=True)
        self._collecting = {op.name for op in self._collector.operators}
        self._merged = Chain(operators) if workers > 1 else self._chains[0]
        self._idle = list(self._chains)
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="livediff-worker")
        self._collect_pool = ThreadPoolExecutor(1, thread_name_prefix="livediff-collector")
        self._series: SeriesStart | None = None

    @property
    def layout(self) -> Layout:
        return self._chains[0].layout

    async def start(self, series: SeriesStart) -> None:
        """Start every chain on the new series (allocation happens off the loop)."""
        self._series = series
        await asyncio.gather(*(self._run(self._pool, c.start, series) for c in self._chains),
                             self._run(self._collect_pool, self._collector.start, series))

    async def process(self, frame: Frame) -> Frame:
        """Run ``frame`` through an idle chain; the caller keeps <= ``workers`` in flight."""
        if not self._idle:
            raise RuntimeError(f"more than {self.workers} frames in flight")
        chain = self._idle.pop()
        try:
            return await self._run(self._pool, chain.process, frame)
        finally:
            self._idle.append(chain)

    async def collect(self, frame: Frame) -> Frame:
        """The in-order step; call it for each processed frame in arrival order."""
        if not self._collecting:
            return frame
        return await self._run(self._collect_pool, self._collector.collect, frame)

    async def snapshot(self) -> dict[str, dict[str, Any]]:
        """Merged snapshot of all workers (call with no frame in flight)."""
        return await self._run(self._collect_pool, self._report, "snapshot")

    async def finish(self) -> dict[str, dict[str, Any]]:
        """Merged final results of the series (call with no frame in flight)."""
        return await self._run(self._collect_pool, self._report, "finish")

    def _report(self, method: str) -> dict[str, dict[str, Any]]:
        merged = self._merged
        if merged is not self._chains[0]:  # restarted empty, then holding the sum of all workers
            merged.start(self._series)
            for chain in self._chains:
                merged.merge(chain.state())
        out = {k: v for k, v in getattr(merged, method)().items() if k not in self._collecting}
        out.update(getattr(self._collector, method)())
        return out

    @staticmethod
    async def _run(pool: ThreadPoolExecutor, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._collect_pool.shutdown(wait=True, cancel_futures=True)
