"""Replay a recorded series as a live detector stream.

A series recorded by livediff (``[output] save_raw = true``), an NXmx / EIGER master
file (:mod:`livediff.readers.series`), a 4D-STEM / EBSD stack in any HDF5 file
(:mod:`livediff.readers.stack`, with its scan) or the EBSD pattern files users have
(:mod:`livediff.readers.ebsd`: image folders and zips, h5ebsd, NORDIF, EDAX) is sent
over ZeroMQ PUSH exactly as a detector sends one: its original header (shape, pixel type, mask, geometry, count time,
saturation, announced frame count), then every recorded frame, then the end, in any
protocol livediff reads.  The frames are read one chunk at a time; with
``encoding="bslz4"``, bitshuffle-LZ4 chunks are forwarded as stored, never decompressed.
Replaying a livediff file through the chain that wrote it reproduces its results.

Frame timestamps are those of the replay, not the recording: a live stream's latency is
measured from them.
"""
from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import zmq

from .model import Scan
from .readers.ebsd import is_ebsd, open_patterns
from .readers.series import open_series
from .readers.stack import StackSeries, is_stack
from .sources.sender import PEER_TIMEOUT, stream_series


def replay(path: str | Path, endpoint: str, *, rate: float = 0.0, protocol: str = "native",
           encoding: str = "bslz4", bind: bool = False, series: int | None = None,
           stop: threading.Event | None = None, context: zmq.Context | None = None,
           on_bound: Callable[[str], None] | None = None, sndhwm: int = 16,
           scan: Scan | None = None, peer_timeout: float = PEER_TIMEOUT) -> tuple[int, int]:
    """Stream the series recorded in ``path`` to ``endpoint``.

    Parameters
    ----------
    path : livediff series file, NXmx / EIGER master file, ``FILE.h5::/dataset`` holding
        a (rows, cols, H, W) or (N, H, W) stack (:mod:`livediff.readers.stack`), or EBSD
        patterns: a directory or zip of TIFF / PNG / BMP files, an h5ebsd file, NORDIF
        ``.dat``, EDAX ``.up1`` / ``.up2`` (:mod:`livediff.readers.ebsd`).
    endpoint : ZeroMQ endpoint, e.g. ``tcp://127.0.0.1:9999``.
    rate : frames per second; 0 sends as fast as the receiver takes them.
    protocol : ``"native"``, ``"dectris-stream1"`` or ``"dectris-stream2"``.
    encoding : pixel payload: ``"bslz4"`` (stored bitshuffle-LZ4 chunks forwarded as they
        are), ``"lz4"`` or ``"raw"``.
    bind : bind the PUSH socket, as a detector does, instead of connecting.
    series : series number to announce; default the recorded one (1 for NXmx files).
    stop : set it to end the series early (the end message is still sent).
    context : ZeroMQ context; default the process' shared one.
    on_bound : called with the actual endpoint once bound (for ``tcp://...:*``).
    sndhwm : send high-water mark, in messages.
    scan : the scan of a stack or of EBSD patterns (required for an (N, H, W) stack, or images
        in natural order, to make maps; images named by position and h5ebsd files carry it).
    peer_timeout : seconds to wait for a receiver to be connected.

    Returns
    -------
    (sent, recorded) : frames sent, frames the file holds.

    Raises
    ------
    OSError
        The file, or a data file it links to, is missing or not HDF5.
    ValueError
        No frames in the file, unusable metadata, or an unknown protocol or encoding.
    zmq.ZMQError
        The endpoint cannot be bound or connected.
    TimeoutError
        No receiver connected within ``peer_timeout`` seconds.
    """
    if is_stack(path):
        source = StackSeries(path, scan=scan, series=series or 1)
    elif is_ebsd(path):
        source = open_patterns(path, scan=scan, series=series or 1)
    else:
        source = open_series(path, series=series)
    with source:
        sent = stream_series(source, endpoint, rate=rate, bind=bind, protocol=protocol, encoding=encoding,
                             stop=stop, context=context, on_bound=on_bound, sndhwm=sndhwm,
                             peer_timeout=peer_timeout)
        return sent, len(source.indices)
