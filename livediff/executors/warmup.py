"""Compile the chain's kernels before frames arrive, so the first frames do not wait for numba.

numba compiles a kernel the first time it sees a combination of argument types (or loads
it from its on-disk cache), which takes seconds on a fresh install and still a fraction of
a second per kernel afterwards.  :func:`warm_up` runs a throwaway copy of the chain over a
few synthetic frames with the series' shape, pixel type, mask and geometry, so every
kernel the real frames will call is ready; the real chains and their state are untouched.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import numpy as np

from ..model import Frame, SeriesStart
from ..pipeline import OperatorSpec
from .offline import process_frames

log = logging.getLogger(__name__)

#: synthetic frames per warm-up: enough for a reference, a few registrations and a live dark
WARM_FRAMES = 6


def warm_up(specs: Sequence[OperatorSpec], series: SeriesStart) -> float:
    """Run ``specs`` over a few synthetic frames shaped like ``series``; returns the seconds it took.

    A chain that cannot start on ``series`` (e.g. a reference file of another shape) or
    operators that fail on synthetic data are not an error here: the real frames will say
    so; what compiled before the failure stays compiled.
    """
    t0 = time.perf_counter()
    frames = [Frame(series.series, i, data) for i, data in enumerate(synthetic_frames(series, WARM_FRAMES))]
    try:
        process_frames(specs, series, frames)
    except Exception as exc:  # the real series will report it, once, where it matters
        log.debug("warm-up for %s %s stopped early: %s: %s", series.dtype, series.shape, type(exc).__name__, exc)
    return time.perf_counter() - t0


def synthetic_frames(series: SeriesStart, n: int, *, seed: int = 0) -> list[np.ndarray]:
    """``n`` frames of ``series``' shape and pixel type: Poisson background and a few bright
    spots, drifting by a pixel per frame (so alignment, spot finding and binning all run)."""
    rng = np.random.default_rng(seed)
    rows, cols = series.shape
    y, x = np.ogrid[:rows, :cols]
    centres = rng.uniform((0.2 * rows, 0.2 * cols), (0.8 * rows, 0.8 * cols), (8, 2))
    top = np.iinfo(series.dtype).max if np.dtype(series.dtype).kind in "ui" else np.inf
    frames = []
    for i in range(n):
        expected = np.full(series.shape, 5.0)
        for cy, cx in centres + i:
            expected += 400.0 * np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / 4.0)
        frames.append(np.minimum(rng.poisson(expected), top).astype(series.dtype))
    return frames
