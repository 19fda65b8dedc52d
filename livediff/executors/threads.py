"""Run chains on a pool of worker threads, one chain (and partial state) per worker.

Operators' kernels release the GIL (numba ``nogil=True``), so threads run them in
parallel; a frame that arrived compressed is decoded by the worker that processes it, so
decoding scales with the workers too.  The run loop hands batches of frames; a batch (or
each run of it, see :meth:`~.base.InOrder.runs`) is one job, processed on one worker thread
in one hop, so the cost of a thread hop and a future is paid per batch.  Jobs wait in one
queue, in order, and a worker that finishes one takes the next itself
(:mod:`.workers`); the run loop collects them in arrival order; the
folding chain (operators with a ``collect`` step or series-wide state) then sees every
frame, in that order, on one more thread.  A frame
whose operators need series-wide state waits, on the event loop, until the frames its
epoch names have been folded, and its worker adopts that version first: no thread ever
waits for another's frame.  At a snapshot or the series end the workers' partial states
are merged with the operators' own ``merge`` (Chan's formulas), so N workers give the
answer of one; in-order operators report from the folding chain.
"""
from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from ..model import Codec, Frame, RowDecoder, SeriesStart
from ..outputs import Layout
from ..pipeline import Chain, OperatorSpec
from .base import InOrder, Job, Outcome, merged_report, report
from .blas import single_threaded_blas
from .workers import ChainWorkers

log = logging.getLogger(__name__)


class ThreadExecutor:
    """A pool of ``workers`` threads, each with its own :class:`Chain`, plus a folding thread.

    Nothing is ever re-sent (``resent`` stays 0) and nothing waits in a ledger.

    Parameters
    ----------
    specs : the configured chain.
    workers : number of worker threads.
    batch_frames, batch_mb : the most frames, and MiB of them, in a batch (:attr:`capacity` is a
        batch per worker and one more).
    warm : compile the kernels (:mod:`.warmup`) before a series of a new pixel type starts.
    decode : the codec for frames that arrived compressed (``livediff.sources.codecs.decode_payload``),
        run on the worker thread that processes the frame; None: every frame comes decoded.
    rows : decodes compressed frames row by row as a chain's first pass reads them, where the chain
        and the payload allow it (``livediff.sources.codecs.BitshuffleRows``; :meth:`Chain.take`).
    fuse : run operators that allow it as one pass over each frame (``Chain``'s ``fuse``).

    Creating one limits BLAS to one thread, process-wide (:mod:`.blas`): the workers parallelise over
    frames, and BLAS threads on top of them would oversubscribe the cores.
    """

    resent = 0

    def __init__(self, specs: Sequence[OperatorSpec], workers: int = 1, *, batch_frames: int = 1,
                 batch_mb: float = 4.0, warm: bool = True, decode: Codec | None = None, rows: RowDecoder | None = None,
                 fuse: bool = True) -> None:
        single_threaded_blas()  # parallel over frames: BLAS's own threads would oversubscribe the cores
        self.workers = workers
        self.batch_frames = batch_frames
        self.batch_mb = batch_mb
        self._per_batch = batch_frames  # frames in a full batch of the current series' frames
        self.decode = decode
        self.rows = rows
        self._warm = warm
        self._warmed: set[tuple[str, bool]] = set()  # (dtype, has a mask) the kernels were compiled for
        self.fuse = fuse
        self._build(specs)
        self._workers = ChainWorkers(workers)
        self._fold_pool = ThreadPoolExecutor(1, thread_name_prefix="livediff-fold")
        self._series: SeriesStart | None = None

    @property
    def layout(self) -> Layout:
        return self._chains[0].layout

    @property
    def capacity(self) -> int:
        """Frames in flight: a full batch per worker, and one more waiting for the first free
        worker, a batch being at most ``batch_frames`` and ``batch_mb`` of the series' frames
        (so large frames are not held by the hundred)."""
        return (self.workers + 1) * self._per_batch

    async def warm_up(self, series: SeriesStart) -> None:
        """Compile the chain's kernels for frames like ``series``' (once per pixel type and mask)."""
        key = (series.dtype, series.mask is not None)
        if not self._warm or key in self._warmed:
            return
        self._warmed.add(key)
        from .warmup import warm_up  # it runs a chain offline, on an executor of this kind

        seconds = await asyncio.to_thread(warm_up, self._specs, series, fuse=self.fuse, rows=self.rows)
        log.info("kernels ready for %s frames%s in %.2f s (compiled, or loaded from numba's cache)", series.dtype,
                 " with a mask" if series.mask is not None else "", seconds)

    async def start(self, series: SeriesStart, *, output: bool = True) -> Layout:
        """Start every chain on the new series (allocation happens off the loop), after compiling
        the kernels for its pixel type if no series had it before.  ``output`` changes nothing
        here: the output frames are in this process anyway."""
        await self.warm_up(series)
        self._series = series
        frame_bytes = math.prod(series.shape) * np.dtype(series.dtype).itemsize
        self._per_batch = max(1, min(self.batch_frames, int(self.batch_mb * 2**20 // max(frame_bytes, 1))))
        await asyncio.gather(*(asyncio.to_thread(c.start, series) for c in self._chains))
        await self._run(self._fold_pool, self._inorder.start, series, self._chains[0].inputs)
        self._adopted = {id(chain): dict.fromkeys(self._inorder.stateful, -1) for chain in self._chains}
        self._used: dict[int, dict[str, int]] = {}  # seq -> the version key each stateful operator used
        self._folded_changed = asyncio.Condition()
        return self.layout

    async def restart(self, specs: Sequence[OperatorSpec], label: str) -> None:
        """Take ``specs`` (the same operators, in the same order, with new parameters) and
        restart the operator ``label`` and those after it; call with no frame in flight, so
        every worker switches at the same frame.  With no series open, the next series
        simply starts with ``specs``.

        Raises
        ------
        ValueError
            When the new parameters would change what the chain declared for the open
            series (its outputs, or which operators run in order): the reasons, one per line.
        """
        if self._series is None:
            self._build(specs)
            return
        probe = Chain(specs, fuse=self.fuse)
        await self._run(self._fold_pool, probe.start, self._series)
        problems = self._chains[0].differences(probe)
        if problems:
            raise ValueError("\n".join(problems))
        self._specs = list(specs)
        await asyncio.gather(*(asyncio.to_thread(c.restart, specs, label) for c in self._chains))
        restarted = await self._run(self._fold_pool, self._inorder.restart, specs, label, self._chains[0].inputs)
        for adopted in self._adopted.values():
            adopted.update(dict.fromkeys(restarted, -1))
        if self._merged is not self._chains[0]:  # it is started afresh on every report
            self._merged = Chain(specs, fuse=self.fuse)

    def _build(self, specs: Sequence[OperatorSpec]) -> None:
        """A chain per worker, the in-order side and the merging chain, from ``specs``."""
        self._specs = list(specs)
        self._chains = [Chain(specs, fuse=self.fuse) for _ in range(self.workers)]
        self._inorder = InOrder(specs)
        self._merged = Chain(specs, fuse=self.fuse) if self.workers > 1 else self._chains[0]

    def process(self, frames: Sequence[Frame]) -> list[Job]:
        """Queue a batch of ``frames`` (in arrival order) for the next idle worker, a job per run
        (:meth:`~.base.InOrder.runs`); call in arrival order, <= :attr:`capacity` frames in flight."""
        jobs = []
        for run, epochs in self._inorder.runs(frames):
            job = Job(run, [frame.data for frame in run])  # a compressed frame's pixels: set by its worker
            job.future = asyncio.ensure_future(self._process(job, epochs))
            jobs.append(job)
        return jobs

    async def _process(self, job: Job, epochs: list[dict[str, int | None]]) -> list[Outcome]:
        frames = job.frames
        need = max(self._inorder.need(f, e) for f, e in zip(frames, epochs))
        if need > self._inorder.folded:
            async with self._folded_changed:
                await self._folded_changed.wait_for(lambda: self._inorder.folded >= need)
        versions = [self._inorder.versions_for(f, e) for f, e in zip(frames, epochs)]  # settled now
        for frame, found in zip(frames, versions):
            if found:
                self._used[frame.seq] = {name: key for name, (key, _) in found.items()}
        return await self._workers.submit(self._process_on, job, versions)

    def _process_on(self, worker: int, job: Job, versions: list[dict[str, tuple[int, Any]]]) -> list[Outcome]:
        """On worker thread ``worker``, with its chain: decode the frames that came compressed, or leave them to
        the chain's first pass to decode as it reads them (:meth:`Chain.take`; a corrupt payload fails its
        frame only), then run the chain on each stretch of frames that use the same
        versions of series-wide state, after adopting them."""
        outcomes: list[Outcome | None] = [None] * len(job.frames)
        chain = self._chains[worker]
        good = []
        for i, frame in enumerate(job.frames):
            try:
                job.received[i] = chain.take(frame, self.decode, self.rows)
            except Exception as exc:  # DecodeError: well framed at the receiver, corrupt inside
                outcomes[i] = exc
            else:
                good.append(i)
        adopted = self._adopted[id(chain)]
        start = 0
        for end in range(1, len(good) + 1):
            if end < len(good) and _keys(versions[good[end]]) == _keys(versions[good[start]]):
                continue
            for name, (key, state) in versions[good[start]].items():
                if adopted[name] != key:
                    chain.by_name[name].use(state)
                    adopted[name] = key
            stretch = good[start:end]
            for i, outcome in zip(stretch, chain.process_batch([job.frames[i] for i in stretch])):
                outcomes[i] = outcome
            start = end
        return outcomes

    async def collect(self, job: Job) -> list[Outcome]:
        """The in-order step; call it for each job in arrival order.  Returns each frame's outcome."""
        error = job.future.exception()
        outcomes = [error] * len(job.frames) if error is not None else job.future.result()
        if self._inorder.chain.operators:  # nothing to fold: no thread hop
            published = await self._run(self._fold_pool, self._inorder.fold_all, job.frames, outcomes)
            for frame, versions in zip(job.frames, published):
                for name, key in self._used.pop(frame.seq, {}).items():
                    self._inorder.versions[name].forget_before(key)
                self._inorder.folded_through(frame, versions)
        if self._inorder.stateful:
            async with self._folded_changed:
                self._folded_changed.notify_all()
        return outcomes

    async def snapshot(self) -> dict[str, dict[str, Any]]:
        """Merged snapshot of all workers (call with no frame in flight)."""
        return await self._run(self._fold_pool, self._report, "snapshot")

    async def finish(self) -> dict[str, dict[str, Any]]:
        """Merged final results of the series (call with no frame in flight); the series is over."""
        try:
            return await self._run(self._fold_pool, self._report, "finish")
        finally:
            self._series = None

    def _report(self, method: str) -> dict[str, dict[str, Any]]:
        if self._merged is self._chains[0]:  # one worker: its chain holds everything
            return merged_report(self._merged, self._inorder.chain, method)
        return report(self._merged, self._series, (c.state() for c in self._chains), self._inorder.chain, method)

    def status(self) -> dict[str, Any]:
        return {"ledger_frames": 0, "ledger_mb": 0.0}

    @staticmethod
    async def _run(pool: ThreadPoolExecutor, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)

    def close(self) -> None:
        self._workers.close()
        self._fold_pool.shutdown(wait=True, cancel_futures=True)


def _keys(versions: dict[str, tuple[int, Any]]) -> dict[str, int]:
    return {name: key for name, (key, _) in versions.items()}
