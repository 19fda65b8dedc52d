"""The processing loop: queue -> executor -> sinks, in order, one series at a time.

Frames run on the executor's workers (up to ``workers`` in flight); results leave in
arrival order through the collector step to the HDF5 writer and the publisher.  Series
starts and ends, snapshots and the stop marker wait until no frame is in flight, so
every operator state they read is complete.
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import schema
from .config import Config
from .executors import ThreadExecutor
from .model import Frame, SeriesEnd, SeriesStart
from .pipeline import row
from .queues import EventQueue
from .sinks.hdf5 import HDF5Writer
from .sinks.publisher import Publisher

log = logging.getLogger(__name__)

#: queued after the last event at shutdown
STOP = object()


@dataclasses.dataclass
class SeriesProgress:
    """What the processor knows of the series it is working on."""

    start: SeriesStart
    file: Path
    processed: int = 0
    failed: int = 0
    last_frame: int = -1
    not_saved_before: int = 0


class Processor:
    """Consume ``queue`` until :data:`STOP`, feeding results to ``writer`` and ``publisher``.

    ``on_series_end`` is called with each series' summary.
    """

    def __init__(self, config: Config, queue: EventQueue, executor: ThreadExecutor, writer: HDF5Writer,
                 publisher: Publisher, on_series_end: Callable[[dict[str, Any]], None]) -> None:
        self.config = config
        self.queue = queue
        self.executor = executor
        self.writer = writer
        self.publisher = publisher
        self.on_series_end = on_series_end
        self.current: SeriesProgress | None = None
        self.totals = {"processed": 0, "failed": 0}
        self.rate = RateMeter()
        self._last_snapshot = time.monotonic()

    async def run(self) -> None:
        """Take events in order; keep up to ``workers`` frames in flight; emit in order."""
        inflight: deque[tuple[Frame, Any, asyncio.Future]] = deque()
        getter: asyncio.Future | None = None
        try:
            while True:
                if getter is None and len(inflight) < self.executor.workers:
                    getter = asyncio.ensure_future(self.queue.get())
                waiting = {f for f in (getter, inflight[0][2] if inflight else None) if f is not None}
                await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                while inflight and inflight[0][2].done():
                    await self._emit(*inflight.popleft())
                if self._snapshot_due():
                    await self._drain(inflight)
                    await self._snapshot(final=False)
                if getter is None or not getter.done():
                    continue
                event, getter = getter.result(), None
                if isinstance(event, Frame):
                    raw = self._raw(event)
                    inflight.append((event, raw, asyncio.ensure_future(self.executor.process(event))))
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

    async def _drain(self, inflight: deque) -> None:
        while inflight:
            frame, raw, fut = inflight.popleft()
            await asyncio.wait({fut})
            await self._emit(frame, raw, fut)

    def _raw(self, frame: Frame) -> Any:
        """What to record of ``frame`` as received: its bslz4 blob, or its pixels."""
        if not self.config.output.save_raw:
            return None
        if frame.raw is not None and frame.encoding == "bslz4":
            return ("bslz4", frame.raw)
        return frame.data

    async def _start_series(self, start: SeriesStart) -> None:
        await self.executor.start(start)
        layout = self.executor.layout
        path = self.writer.start_series(start, layout, self.config.text)
        self.current = SeriesProgress(start, path, not_saved_before=self.writer.not_saved)
        self._last_snapshot = time.monotonic()
        for op in layout.rows:
            if op not in schema.TOPICS:
                log.warning("operator %r emits rows but topic %r is not in the schema: written to HDF5 only", op, op)
        self.publisher.publish("series", "start",
                               schema.series_start(start, config_hash=self.config.digest, file=str(path)))
        log.info("series %d started: %s %s, %s frames -> %s", start.series, start.dtype, start.shape,
                 start.n_frames if start.n_frames is not None else "?", path)

    async def _emit(self, frame: Frame, raw: Any, fut: asyncio.Future) -> None:
        cur = self.current
        try:
            frame = await self.executor.collect(fut.result())
        except Exception as exc:  # an operator failed on this frame: count it, keep going
            cur.failed += 1
            self.totals["failed"] += 1
            log.error("series %d frame %d: processing failed: %s: %s", frame.series, frame.index,
                      type(exc).__name__, exc)
            return
        cur.processed += 1
        cur.last_frame = frame.index
        self.totals["processed"] += 1
        self.rate.add(1)
        layout = self.executor.layout
        values = row(frame, layout.columns, time.time())
        arrays = {op: {name: frame.results[op][name] for name in decl} for op, decl in layout.arrays.items()
                  if op in frame.results}
        rows = {op: frame.results[op]["rows"] for op in layout.rows if "rows" in frame.results.get(op, {})}
        self.writer.add_frame({"row": values, "arrays": arrays, "rows": rows, "raw": raw,
                               "corrected": frame.data if self.config.output.save_corrected else None})
        self.publisher.publish("stats", "frame", {"series": frame.series, **values, **arrays})
        self._emit_rows(frame.series, frame.index, rows, write=False)

    def _emit_rows(self, series: int, index: int, rows: dict[str, dict[str, Any]], *, write: bool) -> None:
        """Publish operators' rows on their topics (and queue them for the file if ``write``)."""
        if write and rows:
            self.writer.add_rows(index, rows)
        for op, columns in rows.items():
            if op in schema.TOPICS:
                n = len(next(iter(columns.values()))) if columns else 0
                self.publisher.publish(op, op, {"series": series, "frame": index, "n": n, **columns})

    def _snapshot_due(self) -> bool:
        period = self.config.pipeline.snapshot_period
        return (self.current is not None and period > 0 and self.executor.layout.reductions
                and time.monotonic() - self._last_snapshot >= period)

    async def _snapshot(self, *, final: bool) -> None:
        """Publish and save the running results (``final``: the series' last word)."""
        self._last_snapshot = time.monotonic()
        cur = self.current
        results = await (self.executor.finish() if final else self.executor.snapshot())
        if final:
            self._emit_rows(cur.start.series, cur.last_frame,
                            {op: results[op]["rows"] for op in self.executor.layout.rows
                             if "rows" in results.get(op, {})}, write=True)
        declared = self.executor.layout.reductions
        results = {op: {k: v for k, v in values.items() if k in declared.get(op, {})}
                   for op, values in results.items()}
        if not any(results.values()):
            return
        self.writer.write_reductions(results)
        for op, values in results.items():
            self.publisher.publish("image", "snapshot", {"series": cur.start.series, "operator": op,
                                                          "frame": cur.last_frame, "processed": cur.processed,
                                                          "final": final, **values})

    async def _end_series(self, end: SeriesEnd) -> None:
        cur = self.current
        await self._snapshot(final=True)
        self.current = None
        summary = {"series": end.series, "reason": end.reason, **end.counts,
                   "processed": cur.processed, "failed": cur.failed,
                   "dropped": end.counts.get("received", 0) - cur.processed - cur.failed,
                   "not_saved": self.writer.not_saved - cur.not_saved_before, "file": str(cur.file)}
        self.writer.end_series(summary)
        self.publisher.publish("series", "end", summary)
        log.info("series %d ended (%s): %s", end.series, end.reason,
                 ", ".join(f"{k} {summary[k]}" for k in ("expected", "received", "processed", "dropped",
                                                         "lost", "bad", "failed", "not_saved")))
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
