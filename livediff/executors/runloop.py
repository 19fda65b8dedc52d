"""The run loop: queue -> executor -> sinks, in order, one series at a time.

Frames travel in batches: the run loop takes as many frames as have arrived, up to
``batch_frames`` and ``batch_mb`` (a series start or end, and a pause or a live change,
always fall between batches), hands the batch to the executor, and hands each job's
outputs to the sinks together (``add_frames``, see :mod:`livediff.sinks.base`).  At a low
rate a batch is one frame, as soon as it arrives.  Frames run on the executor's workers
(up to its ``capacity`` in flight); results leave in arrival order through the executor's
in-order step to every sink.  Series starts and
ends, snapshots and the stop marker wait until no frame is in flight, so every operator
state they read is complete.  The run loop knows no socket and no file: it hands typed
outputs (:mod:`livediff.outputs`) to a list of :class:`~livediff.sinks.base.Sink`.

Live control (:meth:`RunLoop.change`, :meth:`~RunLoop.pause`, :meth:`~RunLoop.resume`,
:meth:`~RunLoop.snapshot_now`) runs between frames, with none in flight.  A change of
operator parameters, or a restart of operators, opens a new configuration **epoch**: every
frame is tagged with the epoch it is dispatched under, so all of a frame's operators, on
whichever worker, use that epoch's parameters, and every worker switches at the same frame.
The restarted operators' reductions so far are handed to the sinks first, ``closed`` under
the epoch that ends.
"""
from __future__ import annotations

import asyncio
import dataclasses
import inspect
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from ..errors import DecodeError
from ..model import Frame, SeriesEnd, SeriesStart
from ..outputs import FrameOutput, Reductions, SeriesContext
from ..pipeline import OperatorSpec
from ..queues import EventQueue
from ..sinks.base import Sink, add_frames, new_epoch
from .base import Executor, Job
from .maps import MapAssembler

log = logging.getLogger(__name__)

#: queued after the last event at shutdown
STOP = object()


@dataclasses.dataclass
class SeriesProgress:
    """What the run loop knows of the series it is working on."""

    start: SeriesStart
    facts: dict[str, Any]
    maps: MapAssembler | None = None
    processed: int = 0
    failed: int = 0
    last_frame: int = -1
    epoch: int = 0  # the last configuration epoch the sinks were told of


class RunLoop:
    """Consume ``queue`` until :data:`STOP`, handing results to every sink in ``sinks``.

    Parameters
    ----------
    queue : events from the receiver (series starts, frames, series ends).
    executor : runs the chain.
    sinks : called in order (the HDF5 writer first: it reports the file the others announce).
    snapshot_period : seconds between snapshots of running results (0: only at series end).
    config_text, config_hash : the configuration, for the sinks (epoch 0's; a change brings its own).
    on_series_end : called with each series' summary.
    batch_frames, batch_mb : the most frames, and payload, taken from the queue as one batch.
    on_batch : called with the size of each batch taken (for benchmarks).

    Attributes
    ----------
    epoch : the configuration epoch frames are dispatched under now (0, then +1 per change).
    batches, batch_max : batches of frames taken from the queue, and the most frames in one.
    paused : whether frames wait in the queue instead of being processed.
    """

    def __init__(self, queue: EventQueue, executor: Executor, sinks: Sequence[Sink], *, snapshot_period: float,
                 config_text: str, config_hash: str, on_series_end: Callable[[dict[str, Any]], None],
                 batch_frames: int = 1, batch_mb: float = 4.0, on_batch: Callable[[int], None] | None = None) -> None:
        self.queue = queue
        self.executor = executor
        self.sinks = list(sinks)
        self.snapshot_period = snapshot_period
        self.config_text = config_text
        self.config_hash = config_hash
        self.on_series_end = on_series_end
        self.batch_frames = batch_frames
        self.batch_bytes = batch_mb * 2**20
        self.on_batch = on_batch
        self.current: SeriesProgress | None = None
        self.totals = {"processed": 0, "failed": 0, "undecodable": 0}  # undecodable: failed, payload corrupt
        self.rate = RateMeter()
        self.batches = 0
        self.batch_max = 0
        self.epoch = 0
        self.paused = False
        self._last_snapshot = time.monotonic()
        self._commands: asyncio.Queue[tuple[Callable[[], Awaitable[dict[str, Any]]], asyncio.Future]] = \
            asyncio.Queue()

    async def run(self) -> None:
        """Take events in order, frames in batches; keep up to the executor's ``capacity`` frames
        in flight; emit in order; run control commands between batches."""
        inflight: deque[Job] = deque()
        getter: asyncio.Future | None = None
        commands = asyncio.ensure_future(self._commands.get())
        try:
            while True:
                capacity = self.executor.capacity
                room = capacity - sum(len(job.frames) for job in inflight)
                # wait for room for a good batch: taking frames as single places free up would
                # keep a full pipeline at batches of one frame, however fast frames come
                if getter is None and not self.paused and room >= (min(self.batch_frames, capacity // 2)
                                                                   if inflight else 1):
                    getter = asyncio.ensure_future(self.queue.get_many(min(room, self.batch_frames),
                                                                       self.batch_bytes, _nbytes))
                waiting = {f for f in (getter, commands, inflight[0].future if inflight else None) if f is not None}
                await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                while inflight and inflight[0].future.done():
                    await self._emit(inflight.popleft())
                if self._snapshot_due():
                    await self._drain(inflight)
                    await self._snapshot(final=False)
                if commands.done():
                    await self._drain(inflight)
                    await self._command(*commands.result())
                    commands = asyncio.ensure_future(self._commands.get())
                if getter is not None and self.paused and not getter.done():
                    getter.cancel()  # nothing is taken from the queue while paused
                    await asyncio.wait({getter})
                    if getter.cancelled():
                        getter = None
                if getter is None or not getter.done():
                    continue
                events, getter = getter.result(), None
                if isinstance(events[0], Frame):
                    for frame in events:  # a change or a pause happens between batches: one epoch each
                        frame.epoch = self.epoch
                    inflight.extend(self.executor.process(events))
                    self.batches += 1
                    self.batch_max = max(self.batch_max, len(events))
                    if self.on_batch is not None:
                        self.on_batch(len(events))
                    continue
                event, = events
                await self._drain(inflight)
                if event is STOP:
                    return
                if isinstance(event, SeriesStart):
                    await self._start_series(event)
                elif isinstance(event, SeriesEnd):
                    await self._end_series(event)
        finally:
            commands.cancel()
            if getter is not None:
                getter.cancel()

    # ------------------------------------------------------------------ live control
    async def change(self, specs: Sequence[OperatorSpec], label: str, config_text: str,
                     config_hash: str) -> dict[str, Any]:
        """Between frames: give the executor ``specs`` (the same operators with new parameters, or
        the same ones for a plain restart), restart the operator ``label`` and those after it,
        and open a new configuration epoch whose effective configuration is ``config_text``.

        Returns
        -------
        ``{"epoch": the new epoch, "after_frame": the last frame processed under the previous
        one (None with no series open), "restarted": [labels]}``.

        Raises
        ------
        ValueError
            When the executor cannot apply it (nothing changed then).
        """
        return await self._submit(lambda: self._change(specs, label, config_text, config_hash))

    async def pause(self) -> dict[str, Any]:
        """Stop taking frames from the queue once the frames in flight are done (they keep being
        received and queued, up to the queue bound, under the overflow policy)."""
        return await self._submit(lambda: self._set_paused(True))

    async def resume(self) -> dict[str, Any]:
        """Take frames from the queue again."""
        return await self._submit(lambda: self._set_paused(False))

    async def snapshot_now(self) -> dict[str, Any]:
        """Hand the running results to the sinks now (published and saved); ``{"frame": last frame}``."""
        return await self._submit(self._snapshot_command)

    async def _submit(self, action: Callable[[], Awaitable[dict[str, Any]]]) -> dict[str, Any]:
        done = asyncio.get_running_loop().create_future()
        await self._commands.put((action, done))
        return await done

    @staticmethod
    async def _command(action: Callable[[], Awaitable[dict[str, Any]]], done: asyncio.Future) -> None:
        try:
            result = await action()
        except Exception as exc:  # refused (ValueError) or a bug: the caller gets it, the loop goes on
            if not done.cancelled():
                done.set_exception(exc)
            return
        if not done.cancelled():
            done.set_result(result)

    async def _set_paused(self, paused: bool) -> dict[str, Any]:
        self.paused = paused
        log.info("processing %s", "paused" if paused else "resumed")
        cur = self.current
        return {"paused": paused, "after_frame": None if cur is None else cur.last_frame}

    async def _snapshot_command(self) -> dict[str, Any]:
        if self.current is None:
            raise ValueError("no series is open: there are no running results to snapshot")
        await self._snapshot(final=False)
        return {"frame": self.current.last_frame}

    async def _change(self, specs: Sequence[OperatorSpec], label: str, config_text: str,
                      config_hash: str) -> dict[str, Any]:
        cur = self.current
        closing = await self.executor.snapshot() if cur is not None and cur.processed else {}
        declared = self.executor.layout.reductions
        await self.executor.restart(specs, label)
        order = [spec.label for spec in specs]
        restarted = order[order.index(label):]
        self.epoch += 1
        self.config_text, self.config_hash = config_text, config_hash
        values = {name: {k: v for k, v in closing[name].items() if k in declared[name]}
                  for name in restarted if name in declared and name in closing}
        if cur is not None and values:
            reductions = Reductions(cur.start.series, cur.last_frame, cur.processed, False, values,
                                    epoch=self.epoch - 1, closed=True)
            for sink in self.sinks:
                sink.write_reductions(reductions)
        log.info("configuration epoch %d from the next frame%s: %s restarted", self.epoch,
                 f" after frame {cur.last_frame}" if cur is not None else "", ", ".join(restarted))
        return {"epoch": self.epoch, "after_frame": None if cur is None else cur.last_frame,
                "restarted": restarted}

    async def _drain(self, inflight: deque[Job]) -> None:
        while inflight:
            job = inflight.popleft()
            await asyncio.wait({job.future})
            await self._emit(job)

    async def _start_series(self, start: SeriesStart) -> None:
        output = any(getattr(sink, "wants_output", True) for sink in self.sinks)
        layout = await self.executor.start(start, output=output)
        context = SeriesContext(start, layout, self.config_text, self.config_hash, self.epoch)
        for sink in self.sinks:
            context.facts.update(sink.start_series(context) or {})
        if layout.maps and layout.scan is None:
            log.warning("series %d: %s declare maps but the series has no scan (set one in the source or in "
                        "[source] scan): no maps", start.series, ", ".join(layout.maps))
        maps = MapAssembler(layout) if layout.maps and layout.scan is not None else None
        self.current = SeriesProgress(start, context.facts, maps, epoch=self.epoch)
        self._last_snapshot = time.monotonic()
        log.info("series %d started: %s %s, %s frames -> %s", start.series, start.dtype, start.shape,
                 start.n_frames if start.n_frames is not None else "?", context.facts.get("file", "no file"))

    async def _emit(self, job: Job) -> None:
        """Account for a job's frames, in order, and hand their outputs to the sinks together;
        a frame processed under a new configuration epoch first tells the sinks of it."""
        cur = self.current
        layout = self.executor.layout
        outcomes = await self.executor.collect(job)
        done = time.time()
        outs: list[FrameOutput] = []
        processed = 0
        for frame, received, outcome in zip(job.frames, job.received, outcomes):
            if isinstance(outcome, BaseException):  # its payload did not decode or an operator failed: count it
                cur.failed += 1
                self.totals["failed"] += 1
                if isinstance(outcome, DecodeError):  # well framed at the receiver, corrupt inside: found by its worker
                    self.totals["undecodable"] += 1
                    log.error("series %d frame %d failed: its payload does not decode: %s", frame.series,
                              frame.index, outcome)
                else:
                    log.error("series %d frame %d: processing failed: %s: %s", frame.series, frame.index,
                              type(outcome).__name__, outcome)
                continue
            cur.processed += 1
            processed += 1
            cur.last_frame = outcome.index
            out = layout.output_of(outcome, received, done, decode=self.executor.decode)
            if out.epoch != cur.epoch:  # the first frame of a change: the configuration history gains it
                self._hand(outs)
                outs = []
                cur.epoch = out.epoch
                for sink in self.sinks:
                    new_epoch(sink, out.epoch, out.index, self.config_text)
            if cur.maps is not None:
                cur.maps.place(out)
            outs.append(out)
        self.totals["processed"] += processed
        self.rate.add(processed)
        self._hand(outs)

    def _hand(self, outs: list[FrameOutput]) -> None:
        if outs:
            for sink in self.sinks:
                add_frames(sink, outs)

    def _snapshot_due(self) -> bool:
        period = self.snapshot_period
        return (self.current is not None and period > 0
                and bool(self.executor.layout.reductions or self.current.maps is not None)
                and time.monotonic() - self._last_snapshot >= period)

    async def _snapshot(self, *, final: bool) -> None:
        """Hand the running results to the sinks (``final``: the series' last word)."""
        self._last_snapshot = time.monotonic()
        cur = self.current
        layout = self.executor.layout
        results = await (self.executor.finish() if final else self.executor.snapshot())
        if final:
            rows = {label: results[label]["rows"] for label in layout.rows if "rows" in results.get(label, {})}
            if rows:
                for sink in self.sinks:
                    sink.add_rows(cur.start.series, cur.last_frame, rows, self.epoch)
        values = {label: {k: v for k, v in found.items() if k in layout.reductions.get(label, {})}
                  for label, found in results.items()}
        values = {label: found for label, found in values.items() if found}
        if final and cur.maps is not None:  # what waited for neighbours that never came
            for label, entries in layout.placed_of(results).items():
                cur.maps.place_at(label, entries)
        maps = cur.maps.snapshot() if cur.maps is not None else {}
        if not values and not maps:
            return
        reductions = Reductions(cur.start.series, cur.last_frame, cur.processed, final, values, maps,
                                epoch=self.epoch)
        for sink in self.sinks:
            sink.write_reductions(reductions)

    async def _end_series(self, end: SeriesEnd) -> None:
        cur = self.current
        await self._snapshot(final=True)
        self.current = None
        summary = {"series": end.series, "reason": end.reason, **end.counts,
                   "processed": cur.processed, "failed": cur.failed, "resent": self.executor.resent,
                   "dropped": end.counts.get("received", 0) - cur.processed - cur.failed, **cur.facts,
                   "map_holes": None if cur.maps is None else cur.maps.holes, "epoch": self.epoch}
        for sink in self.sinks:
            facts = sink.end_series(summary)
            summary.update((await facts if inspect.isawaitable(facts) else facts) or {})
        log.info("series %d ended (%s): %s", end.series, end.reason,
                 ", ".join(f"{k} {summary[k]}" for k in ("expected", "received", "processed", "dropped",
                                                         "lost", "bad", "failed", "not_saved") if k in summary))
        self.on_series_end(summary)


class RateMeter:
    """Events per second over the last few seconds."""

    def __init__(self, window_s: float = 2.0) -> None:
        self._window = window_s
        self._times: deque[float] = deque()

    def add(self, n: int) -> None:
        now = time.monotonic()
        self._times.extend([now] * n)
        self._trim(now)

    def rate(self) -> float:
        now = time.monotonic()
        self._trim(now)
        return len(self._times) / self._window

    def _trim(self, now: float) -> None:
        while self._times and self._times[0] < now - self._window:
            self._times.popleft()


def _nbytes(frame: Frame) -> int:
    """A frame's pixels in bytes, decoded or not yet (the work it brings to a batch)."""
    return frame.payload.nbytes if frame.payload is not None else frame.data.nbytes
