"""Stream a simulated series over ZeroMQ PUSH, as a detector would.

Used by ``livediff simulate`` (its own process) and by ``livediff serve``'s embedded
default (a thread of the service).  The sender blocks when the receiver's high-water
marks are full, exactly like a detector's PUSH socket: nothing is lost on the way.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import zmq

from livediff.model import SeriesStart
from livediff.sources import native

from .diffraction import DiffractionSimulator

log = logging.getLogger(__name__)

#: protocol -> (encode start, encode image, encode end)
ENCODERS: dict[str, tuple[Callable[[SeriesStart], list], Callable[..., list], Callable[[int], list]]] = {
    "native": (native.encode_start, native.encode_image, native.encode_end),
}

_SEND_POLL_MS = 200


def stream_series(sim: DiffractionSimulator, endpoint: str, *, rate: float = 0.0, bind: bool = False,
                  protocol: str = "native", stop: threading.Event | None = None,
                  context: zmq.Context | None = None, on_bound: Callable[[str], None] | None = None,
                  sndhwm: int = 16) -> int:
    """Send ``sim``'s series (start, every frame, end) to ``endpoint``; returns frames sent.

    Parameters
    ----------
    rate : frames per second; 0 sends as fast as the receiver takes them.
    bind : bind the PUSH socket (a detector does) instead of connecting.
    stop : set it to end the series early (the end message is still sent).
    on_bound : called with the actual endpoint once bound (for ``tcp://...:*``).
    """
    encode_start, encode_image, encode_end = ENCODERS[protocol]
    stop = stop or threading.Event()
    ctx = context or zmq.Context.instance()
    sock = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.SNDHWM, sndhwm)
    sock.setsockopt(zmq.LINGER, 2000)
    try:
        if bind:
            sock.bind(endpoint)
            if on_bound:
                on_bound(sock.getsockopt_string(zmq.LAST_ENDPOINT))
        else:
            sock.connect(endpoint)
        if not _send(sock, encode_start(sim.series_start()), stop):
            return 0
        t0 = time.perf_counter()
        sent = 0
        for i in range(sim.n_frames):
            if rate > 0:
                delay = t0 + i / rate - time.perf_counter()
                if delay > 0 and stop.wait(delay):
                    break
            if not _send(sock, encode_image(sim.series, i, sim.frame(i)), stop):
                break
            sent += 1
        _send(sock, encode_end(sim.series), threading.Event(), timeout_s=5.0)
        log.info("simulator: series %d, %d of %d frames sent", sim.series, sent, sim.n_frames)
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
            log.warning("simulator: receiver gone, message not sent")
            return False
    return False



