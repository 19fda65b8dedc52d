"""The run loop: queue -> executor -> sinks, in order, one series at a time.

Frames run on the executor's workers (up to its ``capacity`` in flight); results leave in
arrival order through the executor's in-order step to every sink.  Series starts and
ends, snapshots and the stop marker wait until no frame is in flight, so every operator
state they read is complete.  The run loop knows no socket and no file: it hands typed
outputs (:mod:`livediff.outputs`) to a list of :class:`~livediff.sinks.base.Sink`.
"""
from __future__ import annotations

import asyncio
import dataclasses
import inspect
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from ..model import Frame, SeriesEnd, SeriesStart
from ..outputs import Reductions, SeriesContext
from ..queues import EventQueue
from ..sinks.base import Sink
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


class RunLoop:
    """Consume ``queue`` until :data:`STOP`, handing results to every sink in ``sinks``.

    Parameters
    ----------
    queue : events from the receiver (series starts, frames, series ends).
    executor : runs the chain.
    sinks : called in order (the HDF5 writer first: it reports the file the others announce).
    snapshot_period : seconds between snapshots of running results (0: only at series end).
    config_text, config_hash : the configuration, for the sinks.
    on_series_end : called with each series' summary.
    """

    def __init__(self, queue: EventQueue, executor: Executor, sinks: Sequence[Sink], *, snapshot_period: float,
                 config_text: str, config_hash: str, on_series_end: Callable[[dict[str, Any]], None]) -> None:
        self.queue = queue
        self.executor = executor
        self.sinks = list(sinks)
        self.snapshot_period = snapshot_period
        self.config_text = config_text
        self.config_hash = config_hash
        self.on_series_end = on_series_end
        self.current: SeriesProgress | None = None
        self.totals = {"processed": 0, "failed": 0}
        self.rate = RateMeter()
        self._last_snapshot = time.monotonic()

    async def run(self) -> None:
        """Take events in order; keep up to the executor's ``capacity`` frames in flight; emit in order."""
        inflight: deque[Job] = deque()
        getter: asyncio.Future | None = None
        try:
            while True:
                if getter is None and len(inflight) < self.executor.capacity:
                    getter = asyncio.ensure_future(self.queue.get())
                waiting = {f for f in (getter, inflight[0].future if inflight else None) if f is not None}
                await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                while inflight and inflight[0].future.done():
                    await self._emit(inflight.popleft())
                if self._snapshot_due():
                    await self._drain(inflight)
                    await self._snapshot(final=False)
                if getter is None or not getter.done():
                    continue
                event, getter = getter.result(), None
                if isinstance(event, Frame):
                    inflight.append(self.executor.process(event))
                    continue
                await self._drain(inflight)
                if event is STOP:
                    return
                if isinstance(event, SeriesStart):
                    await self._start_series(event)
                elif isinstance(event, SeriesEnd):
                    await self._end_series(event)
        finally:
            if getter is not None:
                getter.cancel()

    async def _drain(self, inflight: deque[Job]) -> None:
        while inflight:
            job = inflight.popleft()
            await asyncio.wait({job.future})
            await self._emit(job)

    async def _start_series(self, start: SeriesStart) -> None:
        output = any(getattr(sink, "wants_output", True) for sink in self.sinks)
        layout = await self.executor.start(start, output=output)
        context = SeriesContext(start, layout, self.config_text, self.config_hash)
        for sink in self.sinks:
            context.facts.update(sink.start_series(context) or {})
        if layout.maps and layout.scan is None:
            log.warning("series %d: %s declare maps but the series has no scan (set one in the source or in "
                        "[source] scan): no maps", start.series, ", ".join(layout.maps))
        maps = MapAssembler(layout) if layout.maps and layout.scan is not None else None
        self.current = SeriesProgress(start, context.facts, maps)
        self._last_snapshot = time.monotonic()
        log.info("series %d started: %s %s, %s frames -> %s", start.series, start.dtype, start.shape,
                 start.n_frames if start.n_frames is not None else "?", context.facts.get("file", "no file"))

    async def _emit(self, job: Job) -> None:
        cur = self.current
        try:
            frame = await self.executor.collect(job)
        except Exception as exc:  # an operator failed on this frame: count it, keep going
            cur.failed += 1
            self.totals["failed"] += 1
            log.error("series %d frame %d: processing failed: %s: %s", job.frame.series, job.frame.index,
                      type(exc).__name__, exc)
            return
        cur.processed += 1
        cur.last_frame = frame.index
        self.totals["processed"] += 1
        self.rate.add(1)
        out = self.executor.layout.output_of(frame, job.received)
        if cur.maps is not None:
            cur.maps.place(out)
        for sink in self.sinks:
            sink.add_frame(out)

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
                    sink.add_rows(cur.start.series, cur.last_frame, rows)
        values = {label: {k: v for k, v in found.items() if k in layout.reductions.get(label, {})}
                  for label, found in results.items()}
        values = {label: found for label, found in values.items() if found}
        if final and cur.maps is not None:  # what waited for neighbours that never came
            for label, entries in layout.placed_of(results).items():
                cur.maps.place_at(label, entries)
        maps = cur.maps.snapshot() if cur.maps is not None else {}
        if not values and not maps:
            return
        reductions = Reductions(cur.start.series, cur.last_frame, cur.processed, final, values, maps)
        for sink in self.sinks:
            sink.write_reductions(reductions)

    async def _end_series(self, end: SeriesEnd) -> None:
        cur = self.current
        await self._snapshot(final=True)
        self.current = None
        summary = {"series": end.series, "reason": end.reason, **end.counts,
                   "processed": cur.processed, "failed": cur.failed, "resent": self.executor.resent,
                   "dropped": end.counts.get("received", 0) - cur.processed - cur.failed, **cur.facts,
                   "map_holes": None if cur.maps is None else cur.maps.holes}
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
