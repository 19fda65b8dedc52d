"""The ``hot_pixels`` operator: pixels found bright in most frames are masked for the rest of the series.

:func:`bright_pixels` is the per-frame test (a pixel well above the median of its 8
neighbours); :class:`HotPixels` counts it over blocks of frames.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numba
import numpy as np

from ..model import Frame, SeriesStart
from .base import BaseOperator, param
from .checks import all_valid, check_image, check_mask

__all__ = ["HotPixels", "HotPixelParams", "bright_pixels"]


@numba.njit(nogil=True, cache=True, error_model="numpy")
def _valid_row(x, m, buf):
    for c in range(x.size):
        v = np.float64(x[c])
        buf[c + 1] = v if m[c] and np.isfinite(v) else np.inf


@numba.njit(nogil=True, cache=True, error_model="numpy")
def _bright(image, mask, n_sigma, out):
    rows, cols = image.shape
    rings = np.full((3, cols + 2), np.inf)  # rows r-1, r, r+1; invalid and outside = inf
    near = np.empty(8)
    _valid_row(image[0], mask[0], rings[1])
    for r in range(rows):
        if r + 1 < rows:
            _valid_row(image[r + 1], mask[r + 1], rings[2])
        else:
            rings[2, :] = np.inf
        up, mid, down = rings[0], rings[1], rings[2]
        o = out[r]
        for c in range(cols):
            v = mid[c + 1]
            lo = min(min(up[c], up[c + 1], up[c + 2]), min(mid[c], mid[c + 2]),
                     min(down[c], down[c + 1], down[c + 2]))
            # lo <= median, and m + n sqrt(max(m, 1)) grows with m: most pixels stop here
            o[c] = v != np.inf and lo != np.inf and v > lo + n_sigma * math.sqrt(max(lo, 1.0))
        for c in range(cols):
            if o[c]:
                n = 0
                for k in range(9):  # insertion sort of the valid neighbours
                    w = rings[k // 3, c + k % 3]
                    if k != 4 and w != np.inf:
                        j = n
                        while j > 0 and near[j - 1] > w:
                            near[j] = near[j - 1]
                            j -= 1
                        near[j] = w
                        n += 1
                m = near[n // 2] if n % 2 else 0.5 * (near[n // 2 - 1] + near[n // 2])
                o[c] = mid[c + 1] > m + n_sigma * math.sqrt(max(m, 1.0))
        rings[0, :] = rings[1]
        rings[1, :] = rings[2]


def bright_pixels(image: np.ndarray, mask: np.ndarray | None = None, *, n_sigma: float = 8.0) -> np.ndarray:
    """Pixels much brighter than their neighbours in one frame (candidate hot pixels).

    Parameters
    ----------
    image : (rows, cols) counts, any real dtype.
    mask : bool, True = valid; invalid pixels are neither tested nor used as neighbours.
    n_sigma : threshold in Poisson standard deviations of the neighbourhood level.

    Returns
    -------
    New bool array: True where the pixel is valid, finite and

    .. math:: x > m + n_\\sigma \\sqrt{\\max(m, 1)},

    with :math:`m` the median of its valid, finite 8-neighbours (fewer at the border; a
    pixel without any is never bright).

    Notes
    -----
    The threshold assumes counts (Poisson noise :math:`\\sqrt{m}`): test raw frames, before
    the flat field.  A Bragg spot spreads over several pixels, so its neighbours' median
    is raised with it; a lone bright pixel is not.  Only pixels brighter than the bound
    from their smallest neighbour pay for the median.
    """
    image = check_image(image)
    mask = check_mask(mask, image.shape)
    if not n_sigma > 0:
        raise ValueError(f"n_sigma must be > 0, got {n_sigma}")
    out = np.empty(image.shape, dtype=np.bool_)
    _bright(image, all_valid(image.shape) if mask is None else mask, float(n_sigma), out)
    return out


@dataclass(frozen=True)
class HotPixelParams:
    """Parameters of :class:`HotPixels`."""

    n_sigma: float = param(8.0, gt=0, doc="a pixel is bright above median(8 neighbours) + n_sigma*sqrt(median)")
    window: int = param(20, ge=1, le=65535, doc="frames per test block")
    fraction: float = param(0.9, gt=0, le=1, doc="hot when bright in at least this fraction of a block")


class HotPixels(BaseOperator):
    """Masks pixels found bright in most frames (see :func:`bright_pixels`), from then on.

    Frames are counted in blocks of ``window`` in arrival order; at the end of a block,
    pixels bright in at least ``ceil(fraction * window)`` of its frames become hot and stay
    masked until the series ends (``frame.mask`` is replaced by a new array; the column
    ``n_hot`` counts them), from the first frame of the next block on.  The hot map is
    series-wide state (``livediff.operators.base``): every worker applies the same map to
    the same frames, whatever the number of workers.  Place it before ``flatfield``: the
    test assumes counts.
    """

    kind = "hot_pixels"
    Params = HotPixelParams

    def __init__(self, params: HotPixelParams | None = None, *, name: str | None = None) -> None:
        super().__init__(params, name=name)
        self.series_state = True

    def start(self, series: SeriesStart) -> None:
        super().start(series)
        self.columns = {"n_hot": "i8"}
        self.reductions = {"hot": (tuple(series.shape), "u1")}
        self._need = math.ceil(self.params.fraction * self.params.window - 1e-9)
        self._counts: np.ndarray | None = None  # folding side: bright counts in the current block
        self.use(np.zeros(series.shape, dtype=np.bool_))

    def process(self, frame: Frame) -> Frame:
        frame.shared[self.name] = bright_pixels(frame.data, frame.mask, n_sigma=self.params.n_sigma)
        if self._n_hot:
            frame.mask = self._not_hot if frame.mask is None else frame.mask & self._not_hot
        frame.results[self.name] = {"n_hot": self._n_hot}
        return frame

    # ------------------------------------------------------------------ hot map (series-wide state)
    def epoch(self, seq: int, index: int) -> int:
        return seq - seq % self.params.window

    def fold(self, seq: int, contribution: np.ndarray | None) -> bool:
        if self._counts is None:
            self._counts = np.zeros(self._hot.shape, dtype=np.uint16)
        if contribution is not None:
            self._counts += contribution
        if (seq + 1) % self.params.window:
            return False
        hot = self._hot | (self._counts >= self._need)
        self._counts[...] = 0
        if np.array_equal(hot, self._hot):
            return False
        self.use(hot)
        return True

    def shared(self) -> np.ndarray:
        return self._hot

    def use(self, state: np.ndarray | None) -> None:
        if state is None:  # no block folded yet (a chain sent a frame from before its current map)
            state = np.zeros(self.series.shape, dtype=np.bool_)
        self._hot = state
        self._hot.setflags(write=False)
        self._n_hot = int(state.sum())
        self._not_hot = ~state
        self._not_hot.setflags(write=False)

    def snapshot(self) -> dict[str, np.ndarray]:
        return {"hot": self._hot.astype(np.uint8)}
