"""The service: source -> run loop -> sinks on one asyncio event loop; it wires the layers.

Tasks: the receiver (owns the source socket), the run loop (runs the chain through the
executor the config chooses, in order, and hands results to the sinks: the HDF5 writer,
then the publisher, then the hand-off exporters of ``[output] export``, then the live page), the
live page's HTTP server, the control socket (``[control]``: live changes, :mod:`.commands`),
the heartbeat (status messages and the terminal progress line) and, with no source endpoint
configured, the embedded simulator on a thread of its own.  CPU work never runs on the loop.
SIGHUP reloads the config file (operator parameters only, as the ``reload`` command).

Shutdown (SIGINT/SIGTERM, or the last series of ``max_series`` done) is ordered: stop
receiving, end the open series as ``"shutdown"``, drain the queue (bounded), finish
the operators, publish the series end, close the publisher (it lingers, bounded, so that
subscribers still get what was published), the HDF5 file and the other sockets.
"""
from __future__ import annotations

import asyncio
import dataclasses
import inspect
import logging
import math
import resource
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import zmq
import zmq.asyncio

from . import executors, schema
from .commands import Commands
from .config import Config
from .control import ControlServer, dispatch
from .executors.runloop import STOP, RunLoop
from .executors.warmup import WARM_FRAMES
from .model import Frame, Geometry, SeriesStart
from .queues import EventQueue
from .sinks.exports import create_exporters
from .sinks.hdf5 import HDF5Writer
from .sinks.publisher import Publisher
from .sources import codecs
from .sources.receiver import Receiver
from .web.sink import LiveView

log = logging.getLogger(__name__)

class Service:
    """Wire source, pipeline and sinks for ``config``.

    Parameters
    ----------
    config : the validated configuration.
    max_series : stop after this many series have ended (None: run until signalled).
        The embedded simulator sends one series, so it defaults to 1 there.
    on_status : called with the status (the heartbeat's content) several times a second,
        e.g. to draw progress (:mod:`livediff.progress`).
    """

    def __init__(self, config: Config, *, max_series: int | None = None,
                 on_status: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.config = config
        self.embedded = config.source.endpoint is None
        self.max_series = 1 if max_series is None and self.embedded else max_series
        self.on_status = on_status
        self.stopping = asyncio.Event()
        self.ready = asyncio.Event()  # set once the sockets are bound and the receiver listens
        self.series_done: list[dict[str, Any]] = []
        self.publisher: Publisher | None = None
        self.control: ControlServer | None = None
        self._reloading: asyncio.Future | None = None
        self._started = time.monotonic()

    # ------------------------------------------------------------------ lifecycle
    async def run(self, *, install_signals: bool = False) -> list[dict[str, Any]]:
        """Run until stopped; returns the summary of every series that ended."""
        loop = asyncio.get_running_loop()
        if install_signals:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, self._on_signal, sig)
            loop.add_signal_handler(signal.SIGHUP, self._on_hangup)
        context = zmq.asyncio.Context()
        cfg = self.config
        source = cfg.source
        if self.embedded:
            source = dataclasses.replace(source, endpoint="tcp://127.0.0.1:*", bind=True)
        self.queue: EventQueue = EventQueue(cfg.pipeline.queue_size, cfg.pipeline.overflow, Frame)
        self.receiver = Receiver(context, source, self.queue)
        self.publisher = Publisher(zmq.Context.shadow(context.underlying), cfg.publisher)
        self.writer = HDF5Writer(cfg.output)
        self.exporters = create_exporters(cfg.output.export)
        self.executor = executors.create(cfg.pipeline, cfg.operators, decode=codecs.decode_payload,
                                         rows=codecs.BitshuffleRows(buffers=2 * cfg.pipeline.workers + 2))
        self.web = (LiveView(cfg.http, status=self.status, protocol=source.protocol, control=self._command)
                    if cfg.http.enabled else None)
        sinks = [self.writer, self.publisher, *self.exporters, *([self.web] if self.web else [])]
        self.run_loop = RunLoop(self.queue, self.executor, sinks,
                               snapshot_period=cfg.pipeline.snapshot_period, config_text=cfg.effective,
                               config_hash=cfg.digest, on_series_end=self._series_ended,
                               batch_frames=cfg.pipeline.batch_frames, batch_mb=cfg.pipeline.batch_mb)
        self.commands = Commands(cfg, self.run_loop)
        sim_stop = threading.Event()
        tasks: list[asyncio.Task] = []
        try:
            if cfg.control.endpoint:
                self.control = ControlServer(context, cfg.control.endpoint, self.commands.handlers())
                tasks.append(asyncio.create_task(self.control.run(), name="control"))
            if self.web is not None:
                await self.web.start()
            receiving = asyncio.create_task(self.receiver.run(), name="receiver")
            processing = asyncio.create_task(self.run_loop.run(), name="run-loop")
            tasks += [receiving, processing]
            await _first(self.receiver.ready.wait(), receiving)
            await asyncio.to_thread(codecs.prepare)  # the chunk decoder, before the first compressed frame
            await self.executor.warm_up(self._expected_series())
            self.ready.set()  # the first heartbeat says so to subscribers
            tasks.append(asyncio.create_task(self._heartbeat(), name="heartbeat"))
            if self.embedded:
                tasks.append(asyncio.create_task(self._simulate(sim_stop), name="simulator"))
            await _first(self.stopping.wait(), receiving, processing)
            sim_stop.set()
            receiving.cancel()
            await asyncio.gather(receiving, return_exceptions=True)
            await self._drain(processing)
        finally:
            sim_stop.set()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if self.web is not None:
                await self.web.stop()
            if self.control is not None:
                self.control.close()
            closing = self.executor.close()
            if inspect.isawaitable(closing):
                await closing
            self.publisher.close()  # closed with a linger: what is still queued goes out while the file closes
            self.writer.close()
            for exporter in self.exporters:
                exporter.close()
            context.destroy(linger=0)  # the publisher's socket is closed: this waits for its linger only
            if install_signals:
                for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                    loop.remove_signal_handler(sig)
        return self.series_done

    def _on_signal(self, sig: int) -> None:
        log.info("%s received: shutting down", signal.Signals(sig).name)
        self.stopping.set()

    def _on_hangup(self) -> None:
        log.info("SIGHUP received: reloading %s", self.config.path)
        self._reloading = asyncio.ensure_future(self._reload())  # kept: a task nobody holds may be collected

    async def _reload(self) -> None:
        try:
            reply = await self.commands.reload({})
        except ValueError as exc:  # ConfigError too: the file's problems, one per line
            log.error("reload refused, nothing changed:\n%s", exc)
            return
        log.info("reloaded: %s", ", ".join(reply["changed"]) or "nothing changed")

    async def _drain(self, processing: asyncio.Task) -> None:
        """End the open series, let the run loop finish what is queued, then stop it."""
        if processing.done():
            processing.result()  # re-raise a run-loop crash: it is a bug, not bad input
            return
        await self.receiver.close_open_series("shutdown")
        if self.run_loop.paused:  # what is queued is still processed and saved
            await self.run_loop.resume()
        await self.queue.put(STOP)
        try:
            await asyncio.wait_for(asyncio.shield(processing), timeout=30.0)
        except asyncio.TimeoutError:
            log.error("shutdown: %d queued frames not processed after 30 s; abandoning them", self.queue.qsize())

    def _simulator(self) -> Any:
        from simulators import DiffractionSimulator

        s = self.config.simulator
        return DiffractionSimulator(shape=s.shape, dtype=s.dtype, n_frames=s.frames, seed=s.seed,
                                    n_spots=s.n_spots, background=s.background, drift=s.drift, series=s.series)

    def _expected_series(self) -> SeriesStart:
        """What the first series will most likely look like, to compile the chain for it at start:
        the embedded simulator's, else a detector header of the pixel type the protocol usually
        sends (a series of another type compiles when it starts)."""
        if self.embedded:
            return self._simulator().series_start()
        dtype = "uint16" if self.config.source.protocol == "native" else "uint32"
        shape = (256, 320)
        mask = np.ones(shape, dtype=bool)
        mask[::17, ::13] = False
        return SeriesStart(series=0, shape=shape, dtype=dtype, n_frames=WARM_FRAMES, mask=mask,
                           geometry=Geometry(beam_center=(127.5, 159.5), pixel_size=(75e-6, 75e-6), distance=0.1,
                                             wavelength=1.0))

    async def _simulate(self, stop: threading.Event) -> None:
        from .sources.sender import stream_series

        s = self.config.simulator
        sim = self._simulator()
        endpoint = self.receiver.endpoint_bound
        log.info("embedded simulator: %d frames of %s %s at %s Hz -> %s", s.frames, s.dtype, s.shape,
                 s.rate or "max", endpoint)
        await asyncio.to_thread(stream_series, sim, endpoint, rate=s.rate, stop=stop,
                                protocol=self.config.source.protocol)

    def _series_ended(self, summary: dict[str, Any]) -> None:
        self.series_done.append(summary)
        if self.max_series is not None and len(self.series_done) >= self.max_series:
            self.stopping.set()

    async def _command(self, request: dict[str, Any]) -> dict[str, Any]:
        """A live-control request from the live page: the control socket's reply."""
        return await dispatch(self.commands.handlers(), request)

    # ------------------------------------------------------------------ status
    def status(self) -> dict[str, Any]:
        """The heartbeat's content: throughput, counts, queue depth, uptime."""
        proc = self.run_loop
        cur = proc.current
        return {
            "uptime_s": time.monotonic() - self._started,
            "fps": proc.rate.rate(),
            "series": cur.start.series if cur else None,
            "n_frames": cur.start.n_frames if cur else None,
            "received": self.receiver.tracker.counts.received if cur else 0,
            "processed": cur.processed if cur else 0,
            "dropped": self.queue.dropped,
            "queue": self.queue.qsize(),
            "total_processed": proc.totals["processed"],
            "total_failed": proc.totals["failed"],
            "batches": proc.batches,
            "batch_max": proc.batch_max,
            **self.receiver.status(),
            "hdf5_not_saved": self.writer.not_saved,
            "hdf5_errors": self.writer.errors,
            "published": self.publisher.sent,
            "cpu_s": time.process_time(),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            **self.executor.status(),
            "epoch": proc.epoch,
            "paused": proc.paused,
        }

    async def _heartbeat(self) -> None:
        """Publish the status every ``status_period``; hand it to ``on_status`` several times a second."""
        period = self.config.publisher.status_period
        tick = min(period, 0.25) if self.on_status is not None else period
        published = -math.inf
        while True:
            status = self.status()
            if time.monotonic() - published >= period - 1e-3:
                self.publisher.publish("status", "heartbeat", schema.status_heartbeat(**status))
                published = time.monotonic()
            if self.on_status is not None:
                self.on_status(status)
            await asyncio.sleep(tick)


async def _first(*aws: Any) -> None:
    """Wait until the first of ``aws`` completes (others keep running); re-raise its error."""
    futures = [asyncio.ensure_future(a) for a in aws]
    done, pending = await asyncio.wait(futures, return_when=asyncio.FIRST_COMPLETED)
    for f in pending:
        if not isinstance(aws[futures.index(f)], asyncio.Task):
            f.cancel()
    for f in done:
        if f.exception() is not None:
            raise f.exception()
