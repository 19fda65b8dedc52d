"""Send a series over ZeroMQ PUSH, as a detector would: the sender of livediff's streams.

:func:`stream_series` sends any :class:`SeriesSource` (a simulated or a recorded series)
in every protocol livediff reads (:data:`ENCODERS`): the native one
(:mod:`livediff.sources.native`), DECTRIS Stream v1 and Stream v2
(:mod:`livediff.sources.dectris_encoders`), each with raw, bitshuffle-LZ4 or LZ4
payloads, so each ingest path can be tested end to end against one ground truth.  It is
used by :mod:`livediff.replay` (a source that stores bitshuffle-LZ4 chunks has them
forwarded as they are when the stream sends bslz4), by ``livediff serve``'s embedded
simulator (a thread of the service), by ``livediff simulate`` (its own process) and by
``livediff bench --e2e``.  The sender blocks when the receiver's high-water marks are
full, exactly like a detector's PUSH socket: nothing is lost on the way.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np
import zmq

from ..model import SeriesStart
from . import codecs, native
from .dectris_encoders import StreamV1Encoder, StreamV2Encoder

log = logging.getLogger(__name__)


class NativeEncoder:
    """livediff's native protocol with the encoder interface of :mod:`.dectris_encoders`."""

    def __init__(self, *, encoding: str = "raw") -> None:
        if encoding not in codecs.ENCODINGS:
            raise ValueError(f"encoding must be one of {', '.join(codecs.ENCODINGS)}, got {encoding!r}")
        self.encoding = encoding

    def start(self, start: SeriesStart) -> list[Any]:
        return native.encode_start(start)

    def image(self, series: int, index: int, data: np.ndarray, *, timestamp: float | None = None,
              blob: bytes | None = None) -> list[Any]:
        return native.encode_image(series, index, data, timestamp=timestamp, encoding=self.encoding, blob=blob)

    def end(self, series: int) -> list[Any]:
        return native.encode_end(series)


#: protocol (``source.protocol``) -> encoder class, called with ``encoding=``; one per stream.
ENCODERS: dict[str, Callable[..., NativeEncoder | StreamV1Encoder | StreamV2Encoder]] = {
    "native": NativeEncoder,
    "dectris-stream1": StreamV1Encoder,
    "dectris-stream2": StreamV2Encoder,
}

_SEND_POLL_MS = 200
#: Default seconds :func:`stream_series` waits for a receiver before it gives up.
PEER_TIMEOUT = 10.0


class SeriesSource(Protocol):
    """What :func:`stream_series` sends: a simulator or a recorded series.

    Optionally a source also has ``indices`` (the frame numbers to send, default
    ``range(n_frames)``), and ``chunk_encoding`` with ``chunk(i)`` (frame ``i`` as stored,
    in that encoding, or None), as :class:`livediff.readers.series.RecordedSeries` does.
    """

    series: int
    n_frames: int

    def series_start(self) -> SeriesStart: ...

    def frame(self, i: int) -> np.ndarray: ...


def stream_series(source: SeriesSource, endpoint: str, *, rate: float = 0.0, bind: bool = False,
                  protocol: str = "native", encoding: str = "raw", stop: threading.Event | None = None,
                  context: zmq.Context | None = None, on_bound: Callable[[str], None] | None = None,
                  sndhwm: int = 16, linger_s: float = 60.0, peer_timeout: float = PEER_TIMEOUT) -> int:
    """Send ``source``'s series (start, every frame, end) to ``endpoint``; returns frames sent.

    Parameters
    ----------
    source : a simulator or a recorded series (:class:`SeriesSource`).
    rate : frames per second; 0 sends as fast as the receiver takes them.
    bind : bind the PUSH socket (a detector does) instead of connecting.
    protocol : a key of :data:`ENCODERS`.
    encoding : pixel payload: "raw", "bslz4" (bitshuffle-LZ4) or "lz4".  With "bslz4",
        frames a source stores as bitshuffle-LZ4 chunks are sent as stored, never
        decompressed.
    stop : set it to end the series early (the end message is still sent).
    on_bound : called with the actual endpoint once bound (for ``tcp://...:*``).
    linger_s : how long closing waits for a slow receiver to take what is still queued
        (frames and the end message); a detector's stream does not vanish either.
    peer_timeout : seconds to wait for a receiver to be connected before the series start
        is sent (nothing is queued for a receiver that is not there).

    Raises
    ------
    ValueError
        Unknown protocol or encoding.
    TimeoutError
        No receiver connected within ``peer_timeout`` seconds (nobody listens at
        ``endpoint``, or nobody connects to it when bound).
    """
    if protocol not in ENCODERS:
        raise ValueError(f"protocol must be one of {', '.join(ENCODERS)}, got {protocol!r}")
    encoder = ENCODERS[protocol](encoding=encoding)
    start = source.series_start()
    indices = getattr(source, "indices", None)
    indices = range(source.n_frames) if indices is None else indices
    forward = encoding == "bslz4" and getattr(source, "chunk_encoding", None) == "bslz4"
    shape_of = np.broadcast_to(np.zeros((), dtype=start.dtype), start.shape)  # shape and dtype of a forwarded chunk
    stop = stop or threading.Event()
    ctx = context or zmq.Context.instance()
    sock = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.SNDHWM, sndhwm)
    sock.setsockopt(zmq.LINGER, int(linger_s * 1000))
    sock.setsockopt(zmq.IMMEDIATE, 1)  # room to send only on a completed connection: a receiver is there
    try:
        if bind:
            sock.bind(endpoint)
            if on_bound:
                on_bound(sock.getsockopt_string(zmq.LAST_ENDPOINT))
        else:
            sock.connect(endpoint)
        if not _send(sock, encoder.start(start), stop, timeout_s=peer_timeout):
            if stop.is_set():
                return 0
            raise TimeoutError(f"nobody receives at {endpoint}: no receiver "
                               f"{'connected to it' if bind else 'accepted the connection'} within {peer_timeout:g} s "
                               f"(is the service running, with this source endpoint?)")
        t0 = time.perf_counter()
        sent = 0
        for k, i in enumerate(map(int, indices)):
            if rate > 0:
                delay = t0 + k / rate - time.perf_counter()
                if delay > 0 and stop.wait(delay):
                    break
            blob = source.chunk(i) if forward else None
            data = shape_of if blob is not None else source.frame(i)
            if not _send(sock, encoder.image(source.series, i, data, blob=blob), stop):
                break
            sent += 1
        if not _send(sock, encoder.end(source.series), threading.Event(), timeout_s=5.0):
            log.warning("stream: receiver gone, series end not sent")
        log.info("stream: series %d, %d of %d frames sent (%s, %s%s)", source.series, sent, len(indices), protocol,
                 encoding, ", stored chunks forwarded" if forward else "")
        return sent
    finally:
        sock.close()


def _send(sock: zmq.Socket, parts: list, stop: threading.Event, timeout_s: float | None = None) -> bool:
    """Send, waiting for room while ``stop`` is clear; False if it gave up."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while not stop.is_set():
        if sock.poll(_SEND_POLL_MS, zmq.POLLOUT):
            sock.send_multipart(parts, copy=False)
            return True
        if deadline is not None and time.monotonic() > deadline:
            return False
    return False
