"""Writing throughput of the series file: raw frames and the frames table.

Raw frames: ours stores each frame's bitshuffle-LZ4 blob as the detector sent it, with a
direct chunk write (:class:`~livediff.sinks.series_file.SeriesFile`); the peer writes the
decoded pixels through h5py with hdf5plugin's bitshuffle-LZ4 filter, compressing on
write, which is what a writer without the blobs has to do.  Frames table: ours buffers
rows and appends them in chunks of 50 (the default ``flush_frames``); the peer appends
each row with its own resize and write.  The checks read both files back.
"""
from __future__ import annotations

import atexit
import itertools
import shutil
import tempfile
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..model import SeriesStart
from ..outputs import Layout
from ..sinks.h5tables import BSLZ4
from ..sinks.series_file import SeriesFile
from ..sources import codecs
from . import core

_POOL = 4


def _tmpdir() -> Path:
    path = Path(tempfile.mkdtemp(prefix="livediff-bench-hdf5-"))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def _frames(shape: tuple[int, int], dtype: str) -> list[np.ndarray]:
    from simulators import DiffractionSimulator

    sim = DiffractionSimulator(shape=shape, dtype=dtype, n_frames=_POOL, n_spots=200)
    return [sim.frame(i) for i in range(_POOL)]


class _Ours:
    """A series file taking one frame per call; raw frames as blobs, or rows only."""

    def __init__(self, start: SeriesStart, frames: list[np.ndarray], raw: bool) -> None:
        self.start, self.frames, self.raw = start, frames, raw
        self.blobs = [codecs.encode_bslz4(f) for f in frames]
        self.counter = itertools.count()
        self.file = SeriesFile(_tmpdir() / "ours.h5", start, Layout(), "", save_raw=raw, save_corrected=False)
        atexit.register(self.file.file.close)

    def __call__(self) -> None:
        i = next(self.counter)
        self.file.add_frame({"frame": i, "timestamp": 0.0, "received": 0.0, "latency_s": 0.0},
                            raw=("bslz4", self.blobs[i % _POOL]) if self.raw else None)
        if self.file.pending >= 50:
            self.file.flush()

    def read(self, n: int) -> Any:
        self.file.flush()
        if self.raw:
            return self.file.raw.dataset[:n]
        return self.file.frames.dataset["frame"][:n]


class _Peer:
    """Plain h5py: compress-on-write frames, or one resize+write per row."""

    def __init__(self, start: SeriesStart, frames: list[np.ndarray], raw: bool) -> None:
        self.frames, self.raw = frames, raw
        self.counter = itertools.count()
        self.file = h5py.File(_tmpdir() / "peer.h5", "w", libver="latest")
        atexit.register(self.file.close)
        if raw:
            self.data = self.file.create_dataset("data", shape=(0, *start.shape), maxshape=(None, *start.shape),
                                                 dtype=start.dtype, chunks=(1, *start.shape), **BSLZ4)
        else:
            self.data = self.file.create_dataset("frame", shape=(0,), maxshape=(None,), dtype="i8", chunks=(4096,))

    def __call__(self) -> None:
        i = next(self.counter)
        self.data.resize((i + 1, *self.data.shape[1:]))
        self.data[i] = self.frames[i % _POOL] if self.raw else i

    def read(self, n: int) -> Any:
        self.file.flush()
        return self.data[:n]


def _case(shape: tuple[int, int], dtype: str, raw: bool) -> core.Case:
    frames = _frames(shape, dtype)
    start = SeriesStart(1, shape, dtype)
    ours, peer = _Ours(start, frames, raw), _Peer(start, frames, raw)

    def check() -> None:
        for _ in range(_POOL):
            ours()
            peer()
        expected = np.stack(frames) if raw else np.arange(_POOL)
        np.testing.assert_array_equal(ours.read(_POOL), expected)
        np.testing.assert_array_equal(peer.read(_POOL), expected)

    what = "HDF5 raw frames (bslz4 blobs, direct chunk)" if raw else "HDF5 frames table row"
    peer_name = "h5py + hdf5plugin bslz4 filter" if raw else "h5py resize+write per row"
    return core.Case(what, shape, dtype, ours, peer_name, peer, check=check)


def cases(quick: bool) -> list[core.Case]:
    shape = (541, 517) if quick else (2162, 2068)
    return [_case(shape, "uint32", raw=True), _case(shape, "uint32", raw=False)]
