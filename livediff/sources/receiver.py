"""The receiving end: one ZeroMQ socket, a decoder, frame-loss accounting, the queue.

The receiver task owns its socket from creation to close.  Every message is counted,
once, as exactly one of: bad (it failed to decode, wholly or in part: a
:class:`DecodeError`, or anything else a decoder raised, which is a bug or a codec failing
on untrusted bytes and never stops the receiver), silent (it decoded to no event yet: a
header still in pieces, a Stream v2 start waiting for its first image, a message type
that is ignored) or decoded (it gave one or more events).  Bad messages are logged in one
line each, throttled (:class:`~livediff.throttle.Throttle`: the first of each kind, then
at most one line every 10 s per kind with the number not logged).  The series tracker
decides what reaches the pipeline queue; an open series with no message for
``end_timeout`` seconds is ended as a timeout.  :meth:`Receiver.accounting` gives the
counts and the identities they satisfy.
"""
from __future__ import annotations

import asyncio
import functools
import logging
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any, Literal

import zmq
import zmq.asyncio
from zmq.utils.monitor import parse_monitor_message

from ..endpoints import check_endpoint
from ..errors import DecodeError
from ..model import Scan, SeriesEnd, SeriesStart
from ..params import param
from ..queues import EventQueue
from ..throttle import Throttle
from . import dectris_v1, dectris_v2, native
from .fields import MAX_FRAME_MB, MAX_FRAME_PIXELS, Limits
from .tracker import Event, SeriesTracker

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SourceSettings:
    """Where frames come from (``[source]``).  No ``endpoint`` = the embedded simulator."""

    protocol: Literal["native", "dectris-stream1", "dectris-stream2"] = param(
        "native", doc="wire protocol: livediff's own, DECTRIS SIMPLON Stream v1 (JSON multipart, detector "
                      "port 9999) or Stream v2 (CBOR, port 31001)")
    channel: str | None = param(None, doc="Stream v2 channel (threshold) to process, e.g. 'threshold_2'; "
                                          "unset = the first the detector announces")
    endpoint: str | None = None
    pattern: Literal["pull", "sub"] = "pull"
    bind: bool = False
    end_timeout: float = param(30.0, gt=0, doc="seconds without a frame before an open series is ended")
    rcvhwm: int = param(64, ge=1, doc="ZeroMQ receive high-water mark (messages)")
    max_frame_pixels: int = param(MAX_FRAME_PIXELS, ge=1, doc="largest frame accepted, rows x cols (default "
                                  "2**26, 64 Mpixel): a series start or image beyond it is refused, from its header")
    max_frame_mb: int = param(MAX_FRAME_MB, ge=1, doc="largest decoded frame accepted, MiB of rows x cols x "
                              "bytes per pixel, checked from the header before anything is decompressed")
    scan: tuple[int, int] | None = param(None, ge=1, doc="the scan (rows, cols) of every series, for streams that "
                                                          "do not send one (DECTRIS); overrides the header's")
    scan_order: Literal["raster", "serpentine"] = "raster"
    scan_flyback: int = param(0, ge=0, doc="frames recorded at the end of each scan line while the beam flies back")

    def __post_init__(self) -> None:
        if self.endpoint is not None:
            check_endpoint(self.endpoint)

    @property
    def scan_grid(self) -> Scan | None:
        """The configured scan, or None."""
        return None if self.scan is None else Scan(self.scan, order=self.scan_order, flyback=self.scan_flyback)

    @property
    def limits(self) -> Limits:
        """The frame size limits every decoder checks."""
        return Limits(self.max_frame_pixels, self.max_frame_mb << 20)

#: What a decoder returns for one message: an event, or the events it completes in order
#: (possibly none; a DecodeError in the list is a frame that failed after a series start).
Decoded = Event | list[Event | DecodeError]

#: protocol -> factory of the decoder one receiver uses: ``decode(parts, series=open_series)``
#: returning :data:`Decoded` or raising DecodeError.  The DECTRIS decoders keep state
#: across messages (a header may come in pieces), hence one per receiver.  Each checks
#: the settings' frame size limits from the headers.
DECODERS: dict[str, Callable[[SourceSettings], Callable[..., Decoded]]] = {
    "native": lambda config: functools.partial(native.decode, limits=config.limits),
    "dectris-stream1": lambda config: dectris_v1.StreamV1Decoder(limits=config.limits),
    "dectris-stream2": lambda config: dectris_v2.StreamV2Decoder(channel=config.channel, limits=config.limits),
}

_POLL_MS = 200
_DRAIN = 256  # messages taken per wake-up at most, so a fast stream never starves the rest of the loop
#: messages smaller than this are decoded on the event loop (compressed frames are only parsed
#: and framing-checked, cheaper than a thread hop); larger ones go to the decode thread: CBOR or
#: JSON parsing copies their payload (about 2 ms of the loop's time per EIGER2 4M frame in bslz4
#: under load, which left the loop 3.2 ms per frame at 55 frames/s; 1.5 ms with the thread)
_INLINE_BYTES = 1 << 20


class Receiver:
    """Receive, decode and account for one stream, feeding ``queue``.

    Parameters
    ----------
    context : the service's ZeroMQ asyncio context.
    config : the ``[source]`` settings.
    queue : where decoded events go (its overflow policy applies to frames).
    endpoint : overrides ``config.endpoint`` (the embedded simulator binds one).
    """

    def __init__(self, context: zmq.asyncio.Context, config: SourceSettings, queue: EventQueue,
                 *, endpoint: str | None = None) -> None:
        self.config = config
        self.endpoint = endpoint or config.endpoint
        if self.endpoint is None:
            raise ValueError("no source endpoint to receive from")
        self.queue = queue
        self.tracker = SeriesTracker()
        self.messages = 0   # every message received ...
        self.bad = 0        # ... is bad,
        self.silent = 0     # or decoded to no event yet,
        self.decoded = 0    # or decoded to self.events events (series starts, frames, series ends)
        self.events = 0
        self._log_bad = Throttle()
        self._context = context
        self._decode = DECODERS[config.protocol](config)
        self._scan = config.scan_grid
        # parsing a large message (an uncompressed frame copied by CBOR or JSON parsing) takes milliseconds:
        # off the loop, on one thread (in order: the DECTRIS decoders keep state across messages)
        self._decode_pool = ThreadPoolExecutor(1, thread_name_prefix="livediff-decode")
        self.endpoint_bound = self.endpoint  # the actual endpoint once bound (tcp://...:* resolved)
        self.ready = asyncio.Event()

    async def run(self) -> None:
        """Receive until cancelled."""
        sock = self._context.socket(zmq.PULL if self.config.pattern == "pull" else zmq.SUB)
        try:
            sock.setsockopt(zmq.RCVHWM, self.config.rcvhwm)
            sock.setsockopt(zmq.LINGER, 0)
            if self.config.pattern == "sub":
                sock.setsockopt(zmq.SUBSCRIBE, b"")
            try:
                (sock.bind if self.config.bind else sock.connect)(self.endpoint)
            except zmq.ZMQError as exc:  # e.g. the port is taken: another service, or a detector bound there
                raise OSError(f"cannot receive on {self.endpoint}: {exc.strerror}") from None
            self.endpoint_bound = sock.getsockopt_string(zmq.LAST_ENDPOINT)
            log.info("receiving %s (%s) %s %s", self.config.protocol, self.config.pattern,
                     "on" if self.config.bind else "from", self.endpoint)
            self.ready.set()
            watch = None if self.config.bind else asyncio.create_task(self._watch_connection(sock))
            try:
                await self._loop(sock)
            finally:
                if watch is not None:
                    watch.cancel()
                    await asyncio.gather(watch, return_exceptions=True)
        finally:
            sock.close(linger=0)
            self._decode_pool.shutdown(wait=False, cancel_futures=True)

    async def _watch_connection(self, sock: zmq.asyncio.Socket) -> None:
        """Say, once, when the endpoint we connect to cannot be reached, and when it is."""
        monitor = sock.get_monitor_socket(zmq.EVENT_CONNECTED | zmq.EVENT_CONNECT_RETRIED)
        warned = False
        try:
            while True:
                event = parse_monitor_message(await monitor.recv_multipart())["event"]
                if event == zmq.EVENT_CONNECT_RETRIED and not warned:
                    log.warning("cannot reach %s (nothing listening there?): retrying until it answers",
                                self.endpoint)
                    warned = True
                elif event == zmq.EVENT_CONNECTED:
                    log.info("connected to %s", self.endpoint)
                    warned = False
        finally:
            sock.disable_monitor()
            monitor.close(linger=0)

    async def _loop(self, sock: zmq.asyncio.Socket) -> None:
        loop = asyncio.get_running_loop()
        last = loop.time()
        # Messages that have arrived are taken without a trip through the event loop each: at
        # thousands of small frames a second, pyzmq's asyncio recv costs more than the frame.
        ready = zmq.Socket.shadow(sock.underlying)
        while True:
            if not await sock.poll(_POLL_MS):
                if self.tracker.open is not None and loop.time() - last > self.config.end_timeout:
                    log.warning("series %d: no message for %.1f s", self.tracker.open.series,
                                self.config.end_timeout)
                    await self.queue.put(self.tracker.close("timeout"))
                continue
            for _ in range(_DRAIN):
                try:
                    parts = ready.recv_multipart(zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    break
                last = loop.time()
                await self._take([p.buffer for p in parts])

    async def _take(self, parts: list[memoryview]) -> None:
        """Decode one message, account for it, queue its events."""
        self.messages += 1
        try:
            decoded = await self._decoded(parts)
        except Exception as exc:  # noqa: BLE001 - DecodeError, or anything a decoder raised on untrusted bytes
            self._bad(exc)
            return
        events = decoded if isinstance(decoded, list) else [decoded]
        failed = [e for e in events if isinstance(e, DecodeError)]
        events = [e for e in events if not isinstance(e, DecodeError)]
        if not failed:  # a failed message is counted as bad below, once its events are in
            if events:
                self.decoded += 1
            else:
                self.silent += 1
        self.events += len(events)
        for event in events:   # a failed first image follows the start it opens: count it there
            if self._scan is not None and isinstance(event, SeriesStart):
                event = replace(event, scan=self._scan)
            for ev in self.tracker.feed(event):
                await self.queue.put(ev)
        if failed:
            self._bad(failed[0])

    async def _decoded(self, parts: list[memoryview]) -> Decoded:
        if sum(p.nbytes for p in parts) < _INLINE_BYTES:
            return self._decode(parts, series=self.tracker.open)
        return await asyncio.get_running_loop().run_in_executor(
            self._decode_pool, functools.partial(self._decode, parts, series=self.tracker.open))

    def _bad(self, exc: Exception) -> None:
        self.bad += 1
        self.tracker.bad_message()
        if isinstance(exc, DecodeError):   # its kind: the reason without its numbers
            self._log_bad.log(log, re.sub(r"\d+", "#", str(exc))[:120], "bad message #%d skipped: %s",
                              self.messages, _clip(str(exc)))
        else:  # a decoder bug, or a codec failing on untrusted bytes: say which, with the trace
            self._log_bad.log(log, type(exc), "bad message #%d skipped: the decoder raised %s: %s", self.messages,
                              type(exc).__name__, _clip(str(exc)), level=logging.ERROR, exc_info=exc)

    async def close_open_series(self, reason: str) -> SeriesEnd | None:
        """End the open series, if any (used at shutdown), and queue its end."""
        if self.tracker.open is None:
            return None
        end = self.tracker.close(reason)
        await self.queue.put(end)
        return end

    def accounting(self) -> dict[str, int]:
        """Every count of this receiver and its tracker since it started.

        They satisfy, at any moment between two messages (``t`` = the tracker's totals):
        ``messages = bad + silent + decoded``; ``events = t.starts + t.ends + t.ends_ignored
        + t.received + t.duplicates + t.stray + t.orphans``; ``bad = t.bad_in_series + t.bad_outside``;
        ``t.starts = t.closed + (1 if a series is open else 0)``.
        """
        return {"messages": self.messages, "bad": self.bad, "silent": self.silent, "decoded": self.decoded,
                "events": self.events, **self.tracker.totals}

    def status(self) -> dict[str, Any]:
        return {"messages": self.messages, "bad": self.bad, "orphans": self.tracker.orphans,
                "open_series": None if self.tracker.open is None else self.tracker.open.series}


def _clip(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[:limit] + "..."

