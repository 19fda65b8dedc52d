"""Frames a writer streams to disk leave the page cache (``livediff.sinks.page_cache``)."""
from __future__ import annotations

import ctypes
import mmap
import os
import sys
import time

import h5py
import numpy as np
import pytest

from livediff.sinks.h5tables import FrameStack
from livediff.sinks.page_cache import WrittenPages
from livediff.sources import codecs

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mincore and posix_fadvise: Linux")

SHAPE = (512, 520)  # uint32, random counts: a chunk of about 1 MB


def resident_bytes(path: os.PathLike) -> int:
    """Bytes of the file in the page cache, by mincore(2) on a read-only mapping."""
    size = os.path.getsize(path)
    libc = ctypes.CDLL(None, use_errno=True)
    with open(path, "rb") as f, mmap.mmap(f.fileno(), size, prot=mmap.PROT_READ) as m:
        view = np.frombuffer(m, np.uint8)
        pages = (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE
        vec = (ctypes.c_ubyte * pages)()
        rc = libc.mincore(ctypes.c_void_p(view.ctypes.data), ctypes.c_size_t(size), vec)
        del view
    assert rc == 0, os.strerror(ctypes.get_errno())
    return sum(v & 1 for v in vec) * mmap.PAGESIZE


def write_series(path: os.PathLike, frames: list[np.ndarray], every: int) -> int:
    """Write ``frames`` as received bslz4 chunks, at a detector's pace; returns the bytes written."""
    written = 0
    with h5py.File(path, "w", libver="latest") as f:
        stack = FrameStack(f, "data", SHAPE, "uint32")
        pages = WrittenPages(f, every)
        for i, frame in enumerate(frames):
            n = stack.write(i, ("bslz4", codecs.encode(frame, "bslz4")))
            pages.add(n)
            written += n
            time.sleep(0.005)  # the kernel writes back while the next frame comes
    return written


def test_written_frames_leave_the_page_cache_and_read_back(tmp_path):
    rng = np.random.default_rng(7)
    frames = [rng.integers(0, 2**32, SHAPE, dtype=np.uint32) for _ in range(32)]
    kept, released = tmp_path / "kept.h5", tmp_path / "released.h5"
    total = write_series(kept, frames, every=1 << 40)
    write_series(released, frames, every=4 << 20)
    assert total > 30 << 20
    assert resident_bytes(kept) > 0.9 * total  # the control: without releases the pages stay
    assert resident_bytes(released) < 0.5 * total
    with h5py.File(released, "r") as f:  # the file is whole: every frame reads back (from disk)
        assert f["data"].shape == (32, *SHAPE)
        for i in (0, 13, 31):
            np.testing.assert_array_equal(f["data"][i], frames[i])


def test_a_file_without_a_posix_descriptor_is_left_alone(tmp_path):
    with h5py.File(tmp_path / "core.h5", "w", driver="core", backing_store=False) as f:
        pages = WrittenPages(f, every=1)
        pages.add(10)  # the in-memory driver has no descriptor: nothing to release, no error
