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
from dataclasses import replace

import numpy as np

from ..model import Frame, RowDecoder, SeriesStart
from ..pipeline import OperatorSpec
from .offline import process_frames

log = logging.getLogger(__name__)

#: synthetic frames per warm-up: enough for a reference, a few registrations and a live dark
WARM_FRAMES = 6


#: bright spots per synthetic frame: more than the ten off the ice rings ``mx`` needs for a resolution
WARM_SPOTS = 32

#: largest side of the crop of the series the chain is warmed on: numba compiles per pixel
#: type and array layout, not per shape, so a small crop compiles what a 16M frame needs
WARM_SIDE = 256


def warm_up(specs: Sequence[OperatorSpec], series: SeriesStart, *, fuse: bool = True,
            rows: RowDecoder | None = None) -> float:
    """Run ``specs`` (fused as ``fuse`` says) over a few synthetic frames like ``series``' ones;
    returns the seconds it took.  With ``rows``, every other frame comes compressed as ``rows``
    decodes row by row, so the kernels a chain runs on such frames are ready too.

    The frames are a crop of the series (at most :data:`WARM_SIDE` pixels a side, around
    the beam centre, with the crop of its mask and geometry); a chain that cannot start on
    the crop (a reference file has the full shape) is warmed on the full shape instead.
    Operators that fail on synthetic data are not an error here: the real frames will say
    so; what compiled before the failure stays compiled.  What the operators log below
    ERROR while warming (a geometry the series lacks, say) is left out: the real series
    logs it, once.
    """
    t0 = time.perf_counter()
    operators = logging.getLogger("livediff.operators")
    level = operators.level
    operators.setLevel(logging.ERROR)
    try:
        for candidate in (crop(series, WARM_SIDE), series):
            frames = [Frame(series.series, i, data) if rows is None or i % 2 == 0
                      else Frame(series.series, i, None, payload=rows.sample(data))
                      for i, data in enumerate(synthetic_frames(candidate, WARM_FRAMES))]
            try:
                process_frames(specs, candidate, frames, fuse=fuse, rows=rows)
                break
            except Exception as exc:  # the real series will report it, once, where it matters
                log.debug("warm-up on %s %s stopped early: %s: %s", candidate.dtype, candidate.shape,
                          type(exc).__name__, exc)
    finally:
        operators.setLevel(level)
    return time.perf_counter() - t0


def crop(series: SeriesStart, side: int) -> SeriesStart:
    """``series`` cut to at most ``side`` x ``side`` pixels around its beam centre (or its middle)."""
    rows, cols = series.shape
    if rows <= side and cols <= side:
        return series
    centre = series.geometry.beam_center or ((rows - 1) / 2, (cols - 1) / 2)
    r0, c0 = (int(min(max(c - side / 2, 0), n - min(n, side))) for c, n in zip(centre, series.shape))
    window = np.s_[r0:r0 + side, c0:c0 + side]
    bc = series.geometry.beam_center
    return replace(series, shape=(min(rows, side), min(cols, side)),
                   mask=None if series.mask is None else series.mask[window].copy(),
                   geometry=replace(series.geometry, beam_center=None if bc is None else (bc[0] - r0, bc[1] - c0)))


def synthetic_frames(series: SeriesStart, n: int, *, seed: int = 0) -> list[np.ndarray]:
    """``n`` frames of ``series``' shape and pixel type: a low background and bright spots,
    drifting by a pixel per frame (so alignment, spot finding and binning all run, and enough
    spots, :data:`WARM_SPOTS`, for the per-image analysis to estimate a resolution)."""
    rng = np.random.default_rng(seed)
    rows, cols = series.shape
    centres = rng.integers((2, 2), (max(rows - 6, 3), max(cols - 6, 3)), (WARM_SPOTS, 2))
    peak = min(400, np.iinfo(series.dtype).max // 2) if np.dtype(series.dtype).kind in "ui" else 400
    frames = []
    for i in range(n):
        frame = rng.integers(0, 10, series.shape).astype(series.dtype)
        for cy, cx in centres:
            y, x = (cy + i) % max(rows - 3, 1), (cx + i) % max(cols - 3, 1)
            frame[y:y + 3, x:x + 3] += np.array(peak, dtype=series.dtype)
        frames.append(frame)
    return frames
