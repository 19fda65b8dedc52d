"""Run chains on Dask workers: one chain per worker, frames shipped as received, a ledger against loss.

The service stays the only consumer of the detector stream.  Each frame goes, still
compressed where it arrived so, straight to a chain resident on a Dask worker (a
:class:`~.dask_actor.ChainActor`, called directly, not through the scheduler), which
decodes, processes and keeps its partial reductions; the frame's results come back as
soon as it is done.  Around that:

- **Batches and credits.**  A worker has at most ``credits`` calls in flight; a frame goes
  out at once when a worker has a free credit, else it waits and joins the next call,
  up to ``batch_mb``: small, fast frames travel many to a call, large or slow ones one by
  one.  Faster workers free their credits sooner and get more frames.
- **In order on the service.**  ``collect`` steps and the folding of series-wide state
  run here, in arrival order, on the same :class:`~.base.InOrder` as the threads executor;
  a frame leaves only once the state its epoch names is folded, and the versions it needs
  travel with it (a worker keeps the newest it was sent), so a worker that joins
  mid-series gets them with its first frame.
- **What comes back** for a frame is small: its results, its contributions to series-wide
  state (folded here) and, only when a sink wants them (``save_corrected``), the output
  frame.  The payload as received stays here for the sinks that record it; the service never
  decodes it, but a sink that needs the pixels decodes them on its own thread
  (:meth:`~livediff.outputs.FrameOutput.pixels`).
- **Partial states** are pulled from every worker and merged (``merge``) at each
  snapshot and at the series end.
- **The ledger** (:mod:`.ledger`) keeps each frame until the state holding its
  contribution has been pulled.  When a worker is lost (it left the cluster, a call
  failed, or a call did not return within ``wait_s``), its chain is re-created on a
  surviving or new worker, started on the series, and sent again every frame whose
  contribution was lost (``resent``); results already delivered are not delivered twice.
  When the ledger holds more than ``ledger_mb`` the workers' states are pulled one
  worker at a time (a forced snapshot of the partial states) and the ledger empties.
  A frame lost with :data:`MAX_ATTEMPTS` workers, or that finds no worker for ``wait_s``,
  is given up: the run loop counts it as failed.

Dask is an optional extra (``pip install 'livediff[dask]'``); this module is imported
only when ``[pipeline] executor = "dask"``.
"""
from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from ..model import Codec, Frame, SeriesStart
from ..outputs import Layout
from ..pipeline import Chain, OperatorSpec
from .base import InOrder, Job, Outcome, report
from .dask_actor import FrameRecord, FrameResult
from .dask_cluster import Cluster, Slot, is_loss
from .ledger import Entry, Ledger

log = logging.getLogger(__name__)

#: most frames in one call, whatever their size
MAX_BATCH = 256
#: workers a frame may be lost with before it is given up (counted as failed)
MAX_ATTEMPTS = 3


class FrameLost(RuntimeError):
    """A frame no Dask worker could process: counted as failed."""


class DaskExecutor:
    """Chains on ``workers`` Dask workers, fed from this process.

    Parameters
    ----------
    specs : the configured chain.
    workers : chains to run, at most one per worker thread (fewer while the cluster has
        fewer threads; more join as workers do).
    scheduler : ``"local"`` (a ``LocalCluster`` of ``workers`` processes on this machine) or
        the address of a running scheduler, e.g. ``"tcp://host:8786"``.
    credits : calls in flight per worker.
    batch_mb : the most payload one call carries (a frame larger than that goes alone).
    ledger_mb : the ledger's bound; beyond it, partial states are pulled.
    wait_s : a call that has not returned after this long counts its worker as lost;
        frames that find no worker for this long are given up.
    decode : the codec the workers decode payloads with (``livediff.sources.codecs.decode_payload``); the
        sinks decode with it the frames they need as received (this process does not decode them).
    warm : compile the kernels before a series of a new pixel type starts.
    fuse : run operators that allow it as one pass over each frame (``Chain``'s ``fuse``).
    """

    def __init__(self, specs: Sequence[OperatorSpec], workers: int = 1, *, decode: Codec,
                 scheduler: str = "local", credits: int = 2, batch_mb: float = 4.0, ledger_mb: float = 1024.0,
                 wait_s: float = 60.0, warm: bool = True, fuse: bool = True) -> None:
        self.workers = workers
        self.decode = decode
        self.resent = 0
        self.checkpoints = 0  # forced pulls of the partial states (the ledger was full)
        self._specs = list(specs)
        self._credits = credits
        self._batch_bytes = batch_mb * 2**20
        self._ledger_bytes = ledger_mb * 2**20
        self._wait = wait_s
        self._warm = warm
        self._warmed: set[tuple[str, bool]] = set()
        self._cluster = Cluster(scheduler, workers, specs, decode, warm=warm, fuse=fuse, wait_s=wait_s,
                                on_ready=self._slot_ready, on_lost=self._lose)
        self._local = Chain(specs, fuse=fuse)  # the layout, and the merged partial states
        self._inorder = InOrder(specs)
        self._fold_pool = ThreadPoolExecutor(1, thread_name_prefix="livediff-fold")
        self._ledger = Ledger()
        self._waiting: deque[Entry] = deque()  # until the series-wide state they need is folded
        self._ready: deque[Entry] = deque()  # to send; re-sent frames go first
        self._retired: list[dict[str, dict[str, Any]]] = []  # last pulled states of lost chains
        self._series: SeriesStart | None = None
        self._used: dict[int, dict[str, int]] = {}  # seq -> the versions it uses, until collected
        self._low: dict[str, int] = {}  # the versions the last collected frame used
        self._payload = 0.0  # mean payload bytes per frame
        self._checkpointing = False
        self._checkpoint: asyncio.Task | None = None
        self._changed = asyncio.Event()
        self._watcher: asyncio.Task | None = None

    # ------------------------------------------------------------------ the protocol
    @property
    def layout(self) -> Layout:
        return self._local.layout

    @property
    def capacity(self) -> int:
        """Frames the run loop may keep in flight: every credit of every worker with a full
        batch, and one batch gathering."""
        per_batch = int(min(MAX_BATCH, max(1.0, self._batch_bytes // max(self._payload, 1.0))))
        return self.workers * (self._credits + 1) * per_batch

    async def warm_up(self, series: SeriesStart) -> None:
        """Connect, create the chains, and compile the kernels for frames like ``series``'
        here (the in-order side) and on every worker."""
        await self._prepare(series)
        context = (series, False)
        await asyncio.gather(*(self._cluster.start(s, context) for s in list(self._cluster.slots)))

    async def start(self, series: SeriesStart, *, output: bool = True) -> Layout:
        """Start the chains on a new series (``output``: ship the output frames back)."""
        self._series = series
        self._ledger.clear()
        self._waiting.clear()
        self._ready.clear()
        self._retired.clear()
        self._used.clear()
        self._low = {}
        self.resent = 0
        self._payload = float(np.prod(series.shape) * np.dtype(series.dtype).itemsize)
        self._cluster.context = context = (series, output)
        await self._prepare(series)
        await self._run(self._local.start, series)
        await self._run(self._inorder.start, series, self._local.inputs)
        await asyncio.gather(*(self._cluster.start(s, context) for s in list(self._cluster.slots)
                               if s.context is not context))
        if not self._cluster.slots:
            raise RuntimeError(f"no Dask worker could start the chain for series {series.series} "
                               f"(scheduler {self._cluster.scheduler})")
        if self._watcher is None:
            self._watcher = asyncio.ensure_future(self._watch())
        return self.layout

    async def restart(self, specs: Sequence[OperatorSpec], label: str) -> None:
        """Refused: live changes of parameters are not supported on Dask yet.

        Raises
        ------
        ValueError
            Always, saying why and what to do instead.
        """
        raise ValueError("the dask executor cannot change or restart operators while it runs: its chains live "
                         "on the Dask workers and in the ledger's re-sent frames, which would mix parameters; "
                         "change the config file and restart the service, or use executor = \"threads\"")

    def process(self, frames: Sequence[Frame]) -> list[Job]:
        """Queue a batch of ``frames`` (call in arrival order), a job per frame: they leave, many to
        a call (``batch_mb``), as soon as a worker has a credit, and each frame's result resolves
        its job, so a frame whose series-wide state needs an earlier one never waits for its batch."""
        return [self._queue(frame) for frame in frames]

    def _queue(self, frame: Frame) -> Job:
        epochs = self._inorder.number(frame)
        if frame.payload is not None:  # shipped as received: the worker decodes it
            encoding, payload = frame.payload.encoding, np.frombuffer(frame.payload.buffer, dtype=np.uint8)
        else:
            encoding, payload = "raw", frame.data
        record = FrameRecord(frame.seq, frame.index, frame.timestamp, frame.received, frame.position, encoding,
                             payload, frame.mask)
        self._payload += (record.nbytes - self._payload) / 16
        job = Job([frame], [frame.data])
        job.future = asyncio.get_running_loop().create_future()
        entry = Entry(job, record, epochs)
        self._ledger.add(entry)
        self._waiting.append(entry)
        self._settle()
        self._pump()
        return job

    async def collect(self, job: Job) -> list[Outcome]:
        """The in-order step; call it for each job in arrival order.  Returns the frame's outcome."""
        (frame,), (outcome,) = job.frames, job.future.result()
        if self._inorder.chain.operators:
            published = await self._run(self._inorder.fold, frame, not isinstance(outcome, BaseException))
            self._inorder.folded_through(frame, published)
            self._low = self._used.pop(frame.seq, self._low)
            self._forget()
            self._settle()
            self._pump()
        return [outcome]

    async def snapshot(self) -> dict[str, dict[str, Any]]:
        """Merged snapshot of every worker's partial state (call with no frame in flight)."""
        return await self._report("snapshot")

    async def finish(self) -> dict[str, dict[str, Any]]:
        """Merged final results of the series (call with no frame in flight)."""
        return await self._report("finish")

    def status(self) -> dict[str, Any]:
        return {"ledger_frames": len(self._ledger),
                "ledger_mb": (self._ledger.nbytes + self._inorder.versions_nbytes) / 2**20}

    async def close(self) -> None:
        for task in (self._watcher, self._checkpoint):
            if task is not None:
                task.cancel()
        try:
            await self._cluster.close()
        finally:
            self._fold_pool.shutdown(wait=True, cancel_futures=True)

    # ------------------------------------------------------------------ frames out and back
    def _settle(self) -> None:
        """Move the frames whose series-wide state is folded to the send queue, naming their versions."""
        while self._waiting:
            entry = self._waiting[0]
            frame = entry.job.frames[0]
            if self._inorder.need(frame, entry.epochs) > self._inorder.folded:
                return
            self._waiting.popleft()
            keys = {name: key for name, (key, _) in self._inorder.versions_for(frame, entry.epochs).items()}
            entry.record.keys = keys
            if keys:
                self._used[frame.seq] = keys
            self._ready.append(entry)

    def _pump(self) -> None:
        """Send queued frames while some worker has a free credit: to the one with the most."""
        while self._ready:
            free = [s for s in self._cluster.slots
                    if s.context is self._cluster.context and not s.draining and s.inflight < self._credits]
            if not free:
                return
            slot = max(free, key=lambda s: (-s.inflight, -s.sent))
            batch = [self._ready.popleft()]
            size = batch[0].record.nbytes
            while (self._ready and len(batch) < MAX_BATCH
                   and size + self._ready[0].record.nbytes <= self._batch_bytes):
                batch.append(self._ready.popleft())
                size += batch[-1].record.nbytes
            self._send(slot, batch)

    def _send(self, slot: Slot, batch: list[Entry]) -> None:
        """One call: the frames, and the versions of series-wide state they use that ``slot`` lacks."""
        versions: dict[str, dict[int, Any]] = {}
        for entry in batch:
            entry.slot, entry.done = slot, False
            for name, key in entry.record.keys.items():
                if key != slot.has.get(name, -1):
                    versions.setdefault(name, {})[key] = self._inorder.versions[name].get(key)
        for name in self._inorder.stateful:  # what the actor keeps once the call is done: the newest
            slot.has[name] = max(slot.has.get(name, -1), *(e.record.keys[name] for e in batch))
        slot.inflight += 1
        slot.sent += len(batch)
        task = self._cluster.call(slot, "process", [e.record for e in batch], versions, timeout=self._wait)
        task.add_done_callback(functools.partial(self._returned, slot, batch))

    def _returned(self, slot: Slot, batch: list[Entry], task: asyncio.Task) -> None:
        slot.inflight -= 1
        self._notify()
        if task.cancelled() or slot.lost:
            return
        exc = task.exception()
        if exc is not None and is_loss(exc):
            self._lose(slot, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
            return
        if exc is not None:  # the chain's call itself failed (not a frame): the frames fail, the worker stays
            log.error("Dask worker %s: processing %d frames failed: %s: %s", slot.address, len(batch),
                      type(exc).__name__, exc)
            for entry in batch:
                entry.done = True
                self._deliver(entry, exc)
            self._pump()
            return
        for entry, result in zip(batch, task.result()):
            entry.done = True
            if entry.job is not None:
                self._deliver(entry, result)
            elif result.error is not None:  # sent again after a loss: its results went out the first time
                log.error("series %d frame %d, processed again: %s: %s", self._series.series, entry.record.index,
                          type(result.error).__name__, result.error)
        self._pump()
        if (self._ledger.nbytes + self._inorder.versions_nbytes > self._ledger_bytes
                and not self._checkpointing):
            self._checkpointing = True
            self._checkpoint = asyncio.ensure_future(self._rolling_checkpoint())

    @staticmethod
    def _deliver(entry: Entry, result: FrameResult | BaseException) -> None:
        """Resolve ``entry``'s job with its result (or error); the ledger keeps only the payload then."""
        job, entry.job = entry.job, None
        error = result if isinstance(result, BaseException) else result.error
        if error is not None:
            job.future.set_result([error])
            return
        frame = job.frames[0]
        frame.results, frame.shared, frame.data = result.results, result.shared, result.data
        job.future.set_result([frame])

    def _forget(self) -> None:
        """Drop the versions no frame still to be processed or re-sent can use."""
        oldest = self._ledger.oldest_keys() or {}
        for name, key in self._low.items():
            self._inorder.versions[name].forget_before(min(key, oldest.get(name, key)))

    # ------------------------------------------------------------------ loss
    def _lose(self, slot: Slot, why: str) -> None:
        """``slot``'s chain is gone: queue again what its partial state held, start another."""
        if slot.lost:
            return
        slot.lost = True
        self._cluster.drop(slot)
        if slot.state is not None:
            self._retired.append(slot.state)
        again = []
        for entry in self._ledger.held_by(slot):
            entry.slot, entry.done = None, False
            entry.attempts += 1
            if entry.attempts >= MAX_ATTEMPTS:
                self._give_up(entry, f"lost with {entry.attempts} Dask workers")
            else:
                again.append(entry)
        self._ready.extendleft(reversed(again))
        self.resent += len(again)
        log.warning("Dask worker %s lost (%s): its chain is re-created elsewhere, %d frames sent again",
                    slot.address, why, len(again))
        self._pump()
        self._notify()

    def _give_up(self, entry: Entry, why: str) -> None:
        self._ledger.remove(entry)
        index = entry.record.index
        if entry.job is not None:
            self._deliver(entry, FrameLost(f"frame {index}: {why}; not processed"))
        else:
            log.error("series %d frame %d: %s; its contribution to the reductions is lost", self._series.series,
                      index, why)

    async def _watch(self) -> None:
        """Give up the frames that found no worker for ``wait_s``."""
        while True:
            await asyncio.sleep(min(1.0, self._wait / 4))
            if self._cluster.slots or self._cluster.starting:
                continue
            stale = [e for e in self._ready if time.monotonic() - e.queued > self._wait]
            for entry in stale:
                self._ready.remove(entry)
                self._give_up(entry, f"no Dask worker for {self._wait:g} s")
            if stale:
                log.error("no Dask worker for %g s: %d frames given up", self._wait, len(stale))
                self._notify()

    # ------------------------------------------------------------------ partial states
    async def _report(self, method: str) -> dict[str, dict[str, Any]]:
        """Pull every chain's partial state (again after a loss, until every frame is in one)."""
        while True:
            await self._until(lambda: not (self._ready or self._waiting or self._cluster.starting)
                              and all(s.inflight == 0 for s in self._cluster.slots))
            pulled = await asyncio.gather(*(self._pull(s) for s in list(self._cluster.slots)))
            if all(pulled) and not self._ready:
                break
        states = [*self._retired, *(s.state for s in self._cluster.slots if s.state is not None)]
        return await self._run(report, self._local, self._series, states, self._inorder.chain, method)

    async def _rolling_checkpoint(self) -> None:
        """The ledger is full: pull each chain's state in turn (the others keep working)."""
        self._checkpointing = True
        try:
            self.checkpoints += 1
            for slot in list(self._cluster.slots):
                await self._pull(slot)
        finally:
            self._checkpointing = False

    async def _pull(self, slot: Slot) -> bool:
        """Pull ``slot``'s partial state once its calls have returned; its frames are safe then."""
        slot.draining = True
        try:
            await self._until(lambda: slot.lost or slot.inflight == 0)
            if slot.lost:
                return False
            try:
                state = await self._cluster.call(slot, "pull", timeout=self._wait)
            except asyncio.CancelledError:
                if slot.lost:
                    return False
                raise
            except Exception as exc:
                self._lose(slot, f"pulling its state: {type(exc).__name__}: {exc}")
                return False
            slot.state = state
            self._ledger.safe(slot)
            self._forget()
            return True
        finally:
            slot.draining = False
            self._pump()

    # ------------------------------------------------------------------ workers
    async def _prepare(self, series: SeriesStart) -> None:
        """Connect, compile the kernels here for ``series``' pixel type, create the missing chains."""
        await self._cluster.connect()
        key = (series.dtype, series.mask is not None)
        if self._warm and key not in self._warmed:
            self._warmed.add(key)
            from .warmup import warm_up  # the in-order side runs here: its kernels too

            await asyncio.to_thread(warm_up, self._specs, series)
        await self._cluster.ensure()

    def _slot_ready(self, slot: Slot) -> None:
        self._pump()
        self._notify()

    # ------------------------------------------------------------------ plumbing
    async def _until(self, condition: Callable[[], bool]) -> None:
        """Wait until ``condition()`` holds; it is checked again at every change."""
        while not condition():
            changed = self._changed
            await changed.wait()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._fold_pool, fn, *args)
