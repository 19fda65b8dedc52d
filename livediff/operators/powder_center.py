"""Centre of a powder pattern (the centre of its concentric rings), and the operator finding it.

:func:`powder_center` finds the centre of inversion symmetry of one pattern, sub-pixel;
the ``powder_center`` operator applies it to the running mean of a series' frames.
Coordinates put the centre of pixel (r, c) at (r, c) (DESIGN.md).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage, optimize
from skimage.registration import phase_cross_correlation

from ..model import Frame, SeriesStart
from .base import BaseOperator, param
from .checks import check_image, check_mask
from .masks import finite_mask

log = logging.getLogger(__name__)

__all__ = ["PowderCenter", "PowderCenterParams", "powder_center"]


def powder_center(image: np.ndarray, mask: np.ndarray | None = None, *,
                  guess: tuple[float, float] | None = None) -> tuple[float, float]:
    """Centre of inversion symmetry of a pattern (the centre of concentric rings), sub-pixel.

    Parameters
    ----------
    image : (rows, cols) real array of counts; not written.  Negative values count as 0.
    mask : bool array of the same shape, True = valid; None = all valid.  Mask the beam
        stop, gaps and other asymmetric features; non-finite pixels are ignored.
    guess : (row, col) to refine from, within about a ring width of the centre; None =
        find it by masked cross-correlation, which needs the box symmetric about the
        centre to cover at least 10 % of the frame (give a guess for a centre nearer a
        corner).

    Returns
    -------
    (row, col) : the centre in pixels, pixel-centre origin.

    Raises
    ------
    ValueError
        If ``image`` is not 2-D, ``mask`` does not match it, fewer than 64 pixels are valid,
        or too few valid pixels have a valid mirror image (a centre off the frame).
    TypeError
        If ``image`` is not real-valued or ``mask`` is not bool.

    Notes
    -----
    Counts are first made homoscedastic with the Anscombe transform a = 2 sqrt(I + 3/8),
    so that Poisson noise weighs every pixel alike and a bright central beam does not
    dominate.  The coarse centre is half the shift that registers the image with its
    180°-rotated self, by masked normalised cross-correlation (Padfield, IEEE Trans. Image
    Process. 21, 2706 (2012); scikit-image), on a copy binned by k to at most 256 px a side.
    It is then refined, at binning k and at full resolution, by robust least squares
    (soft-L1) on the differences a(x) - a(2c - x) between valid pixels x (at most 200 000,
    on a regular grid) and their mirror images through c, the mirror value taken by
    cubic-spline interpolation at least 3 px away from masked pixels.  Both
    values come from the pattern smoothed by a Gaussian of sigma 1 px: without it the
    interpolation's own smoothing of the noise depends on the fractional part of 2c and
    pulls c by up to 0.1 px towards quarter pixels.
    """
    image = check_image(image)
    mask = check_mask(mask, image.shape)
    valid = finite_mask(image, mask)
    if valid.sum() < 64:
        raise ValueError(f"powder_center needs at least 64 valid pixels, got {int(valid.sum())}")
    counts = np.where(valid, image, 0).astype(np.float64)
    anscombe = 2.0 * np.sqrt(np.maximum(counts, 0.0) + 0.375)
    k = 1 << max(0, math.ceil(math.log2(max(image.shape) / _COARSE_SIZE)))
    if guess is None:
        a, v = _bin(anscombe, valid, k)
        shift = phase_cross_correlation(a, a[::-1, ::-1], reference_mask=v, moving_mask=v[::-1, ::-1],
                                        overlap_ratio=_MIN_OVERLAP)[0]
        center = ((np.array(a.shape) - 1 + shift) / 2 + 0.5) * k - 0.5
    else:
        center = np.array(guess, dtype=np.float64)
    for scale in sorted({k, 1}, reverse=True):
        a, v = _bin(anscombe, valid, scale)
        center = (_refine(a, v, (center + 0.5) / scale - 0.5) + 0.5) * scale - 0.5
    return float(center[0]), float(center[1])


_COARSE_SIZE = 256      # px a side for the coarse cross-correlation
_MIN_OVERLAP = 0.1      # smallest fraction of the frame symmetric about a candidate centre
_MAX_POINTS = 200_000   # pixel pairs per refinement
_MARGIN = 3             # px between an interpolated point and the nearest masked pixel


def _bin(a: np.ndarray, valid: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean of k x k blocks (cropped to a multiple of k); a block is valid when all its pixels are."""
    if k == 1:
        return a, valid
    r, c = a.shape[0] // k * k, a.shape[1] // k * k
    blocks = (r // k, k, c // k, k)
    return a[:r, :c].reshape(blocks).mean(axis=(1, 3)), valid[:r, :c].reshape(blocks).all(axis=(1, 3))


def _refine(a: np.ndarray, valid: np.ndarray, center: np.ndarray) -> np.ndarray:
    """Least-squares centre of symmetry of ``a`` near ``center`` (see :func:`powder_center`)."""
    half = np.minimum(center, np.array(a.shape) - 1 - center) + _MARGIN + 4
    lo = np.clip(np.floor(center - half), 0, None).astype(np.int64)
    hi = np.clip(np.ceil(center + half).astype(np.int64) + 1, 0, a.shape)
    a, valid, center = a[lo[0]:hi[0], lo[1]:hi[1]], valid[lo[0]:hi[0], lo[1]:hi[1]], center - lo
    if valid.sum() < 64:
        raise ValueError(f"too few valid pixels around the centre {_show(center + lo)} to refine it "
                         f"({int(valid.sum())}); is it on the frame?")
    nearest = ndimage.distance_transform_edt(~valid, return_distances=False, return_indices=True)
    smooth = ndimage.gaussian_filter(a[tuple(nearest)], 1.0)
    spline = ndimage.spline_filter(smooth, order=3, mode="mirror")
    safe = ndimage.binary_erosion(valid, iterations=_MARGIN, border_value=0)
    step = math.ceil(math.sqrt(valid.sum() / _MAX_POINTS))
    points = np.argwhere(valid[::step, ::step]) * step
    mirror = np.rint(2.0 * center - points).astype(np.int64)
    inside = np.all((mirror >= 0) & (mirror < a.shape), axis=1)
    inside[inside] = safe[mirror[inside, 0], mirror[inside, 1]]
    points = points[inside]
    if len(points) < 16:
        raise ValueError(f"too few pixels with a valid mirror image through {_show(center + lo)} "
                         f"({len(points)}); is the centre on the frame?")
    values = smooth[points[:, 0], points[:, 1]]
    coords = points.T.astype(np.float64)

    def residuals(c: np.ndarray) -> np.ndarray:
        return values - ndimage.map_coordinates(spline, 2.0 * c[:, None] - coords, order=3,
                                                prefilter=False, mode="mirror")

    return optimize.least_squares(residuals, center, method="trf", loss="soft_l1", f_scale=1.0).x + lo


def _show(point: np.ndarray) -> str:
    return f"({point[0]:.2f}, {point[1]:.2f})"


@dataclass(frozen=True)
class PowderCenterParams:
    """Parameters of the ``powder_center`` operator."""

    snapshot_after: int = param(0, ge=0, doc="also compute the centre at each snapshot once this many frames "
                                             "are in; 0 = at the series end only")


class PowderCenter(BaseOperator):
    """:func:`powder_center` of the running mean of the frames (over each pixel's valid frames).

    The state is the per-pixel sum and count of valid frames (merged by addition).  The
    centre costs about a second on a 2048 x 2048 frame, so it is computed at the series end
    and, when ``snapshot_after`` > 0, at each snapshot once that many frames are in (a
    snapshot waits for it).  Output: ``reductions`` ``center`` = (row, col) px, NaN until
    computed or when the mean has too few valid pixels (logged).
    """

    kind = "powder_center"
    Params = PowderCenterParams

    def start(self, series: SeriesStart) -> None:
        super().start(series)
        self.reductions = {"center": ((2,), "f8")}
        self._sum = np.zeros(series.shape, dtype=np.float64)
        self._count = np.zeros(series.shape, dtype=np.int64)
        self._frames = 0
        self._center = (np.full(2, np.nan), 0)  # (centre, number of frames it was computed from)

    def process(self, frame: Frame) -> Frame:
        valid = self.valid(frame)
        np.add(self._sum, frame.data, out=self._sum, where=valid)
        self._count += valid
        self._frames += 1
        return frame

    def state(self) -> dict[str, Any]:
        return {"sum": self._sum.copy(), "count": self._count.copy(), "frames": self._frames}

    def merge(self, other: dict[str, Any]) -> None:
        self._sum += other["sum"]
        self._count += other["count"]
        self._frames += other["frames"]

    def snapshot(self) -> dict[str, Any]:
        due = 0 < self.params.snapshot_after <= self._frames
        return {"center": (self._update() if due else self._center[0]).copy()}

    def finish(self) -> dict[str, Any]:
        return {"center": self._update().copy()}

    def _update(self) -> np.ndarray:
        if self._frames and self._frames != self._center[1]:
            mean = self._sum / np.maximum(self._count, 1)  # pixels without a frame are masked out
            try:
                found = np.array(powder_center(mean, self._count > 0))
            except ValueError as exc:
                log.warning("powder_center: no centre from the mean of %d frames: %s", self._frames, exc)
                found = np.full(2, np.nan)
            self._center = (found, self._frames)
        return self._center[0]
