"""Centre of a diffraction pattern (its centre of inversion symmetry), and the operator finding it.

:func:`powder_center` is livediff's counterpart of scikit-ued's ``autocenter``: the centre
of rings (powder, polycrystalline), of a direct beam or of a single-crystal pattern
(Friedel pairs), with a beam stop and saturated pixels, sub-pixel.  The
``powder_center`` operator applies it to the running mean of a series' frames.
Coordinates put the centre of pixel (r, c) at (r, c) (DESIGN.md).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from ..model import Frame, SeriesStart
from .align import Registration, accumulate_valid
from .base import BaseOperator, param
from .checks import check_image, check_mask
from .masks import finite_mask, saturation_level

log = logging.getLogger(__name__)

__all__ = ["PowderCenter", "PowderCenterParams", "powder_center"]

_COARSE_SIZE = 256      # px a side, at most, of the binned copy searched for the centre
_MIN_OVERLAP = 0.05     # smallest fraction of the frame symmetric about a candidate centre
_FLATTEN = 16           # the smooth background has sigma = (smaller side) / _FLATTEN
_MIN_VALID = 64         # valid pixels needed


def powder_center(image: np.ndarray, mask: np.ndarray | None = None, *,
                  guess: tuple[float, float] | None = None, saturation: float | None = None,
                  ) -> tuple[float, float]:
    """Centre of inversion symmetry of a diffraction pattern, sub-pixel.

    The counterpart of scikit-ued's ``skued.autocenter(im, mask)``, for any pattern: the
    centre of concentric rings (powder, polycrystalline), of a direct beam, or of a
    single-crystal pattern (Friedel pairs are symmetric about it), with a beam stop and
    saturated pixels.  Unlike ``autocenter``, it returns sub-pixel (row, col) floats
    and never reads masked pixels.

    Parameters
    ----------
    image : (rows, cols) real array of intensities (counts or any scale); not written.
    mask : bool array of the same shape, True = valid; None = all valid.  Mask the beam
        stop, gaps and other asymmetric features; non-finite pixels are ignored.
    guess : (row, col) to search around (within about 5 % of the frame's size); None =
        search the whole frame.
    saturation : values at and above it are invalid (a saturated peak is flat-topped
        and its Friedel mate may not be); None = the top of an integer dtype
        (2**bits - 1: overflow and gap markers), none for floats.

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
    A pattern symmetric about ``c`` satisfies ``I(x) = I(2c - x)``: mirrored through a
    point ``t / 2`` (``t`` integer), it is the pattern moved by ``2c - t``.  The centre is
    found by registering the pattern with its mirror image by masked normalised
    cross-correlation (:class:`~livediff.operators.align.Registration`: Padfield 2012,
    sub-pixel over symmetric pixel pairs), as scikit-ued does with its 180° rotation
    (L. C. Liu, *Chemistry in Action: Making Molecular Movies with Ultrafast Electron
    Diffraction and Data Science*, ch. 2, Springer 2020).

    Intensities are compared as ``a = sqrt(I - min I)``, which weighs weak rings and
    spots against a bright beam and, for counts, makes the Poisson noise alike
    everywhere (the Anscombe transform up to a constant).  The whole frame is searched on
    a copy binned to at most 256 px a side, twice: as it is, and flattened (minus its
    background, a Gaussian average of sigma = side / 16 over valid pixels), which
    removes smooth asymmetric intensity such as the gradient of Ewald-sphere walk-off
    in single-crystal patterns, but is itself asymmetric near a mask.  Each candidate is
    scored by the correlation between the pattern flattened over the pixels valid in
    both it and its mirror, so symmetric about the candidate, and that mirror; the best
    is refined at full resolution (twice for the flattened form, re-flattened about the
    new centre), the search limited to a few pixels around it.
    """
    image = check_image(image)
    mask = check_mask(mask, image.shape)
    valid = finite_mask(image, mask)
    level = saturation_level(image.dtype, saturation)
    if level < math.inf:
        valid &= image < level
    if valid.sum() < _MIN_VALID:
        raise ValueError(f"powder_center needs at least {_MIN_VALID} valid pixels, got {int(valid.sum())}")
    low = float(image[valid].min())
    a = np.sqrt(np.maximum(np.where(valid, image, low).astype(np.float64) - low, 0.0))
    k = max(1, math.ceil(max(image.shape) / _COARSE_SIZE))
    coarse, coarse_valid = _bin(a, valid, k)
    sigma = max(1.0, min(coarse.shape) / _FLATTEN)
    around = None if guess is None else (np.asarray(guess, dtype=np.float64) + 0.5) / k - 0.5
    reach = None if guess is None else 0.1 * max(coarse.shape) + 2
    candidates = []
    for flat in (False, True):
        pattern = _flatten(coarse, coarse_valid, sigma) if flat else coarse
        centre = _mirror_centre(pattern, coarse_valid, around, reach, k)
        candidates.append((_symmetry(coarse, coarse_valid, centre, sigma), flat, centre))
    score, flat, centre = max(candidates, key=lambda c: c[0])
    if not np.isfinite(score):
        raise ValueError(f"too few pixels with a valid mirror image through {_show((centre + 0.5) * k - 0.5)}; "
                         f"is the centre on the frame?")
    centre = (centre + 0.5) * k - 0.5
    for _ in range(2 if flat else 1):
        if flat:
            pattern, used = _flatten_about(a, valid, centre, k, sigma)
        else:
            pattern, used = a, valid
        centre = _mirror_centre(pattern, used, centre, 2.0 * k + 2.0, 1)
    return float(centre[0]), float(centre[1])


def _show(point: np.ndarray) -> str:
    return f"({point[0]:.2f}, {point[1]:.2f})"


def _bin(a: np.ndarray, valid: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean of k x k blocks (cropped to a multiple of k); a block is valid when all its pixels are."""
    if k == 1:
        return a, valid
    r, c = a.shape[0] // k * k, a.shape[1] // k * k
    blocks = (r // k, k, c // k, k)
    return a[:r, :c].reshape(blocks).mean(axis=(1, 3)), valid[:r, :c].reshape(blocks).all(axis=(1, 3))


def _mirror(a: np.ndarray, twice: np.ndarray, fill: Any) -> np.ndarray:
    """``a`` reflected through the point ``twice / 2`` (``twice`` integer): out[x] = a[twice - x], else ``fill``."""
    out = np.full_like(a, fill)
    spans = []
    for t, n in zip(twice, a.shape):
        lo, hi = max(0, t - (n - 1)), min(n - 1, t)  # output indices whose source t - x is inside
        if lo > hi:
            return out
        spans.append((slice(lo, hi + 1), slice(t - hi, t - lo + 1)))
    (rows, src_rows), (cols, src_cols) = spans
    out[rows, cols] = a[src_rows, src_cols][::-1, ::-1]
    return out


def _mirror_centre(a: np.ndarray, valid: np.ndarray, around: np.ndarray | None, reach: float | None,
                   k: int) -> np.ndarray:
    """Centre from registering ``a`` with its mirror through ``around`` (None: the frame's centre, any shift);
    ``a`` is binned by ``k`` (for messages)."""
    twice = np.array(a.shape) - 1 if around is None else np.rint(2.0 * np.asarray(around)).astype(np.int64)
    mirrored = _mirror(valid, twice, False)
    if mirrored.sum() < _MIN_VALID // 4:
        raise ValueError(f"too few valid pixels around the centre {_show((twice / 2.0 + 0.5) * k - 0.5)} to "
                         f"search for it ({int(mirrored.sum())}); is it on the frame?")
    registration = Registration(a, mirrored, reference_mask=valid, overlap_ratio=_MIN_OVERLAP, max_shift=reach,
                                levels=0 if around is None else None)
    shift = registration(_mirror(a, twice, 0.0))
    if not np.isfinite(shift[0]):
        raise ValueError(f"too few pixels with a valid mirror image through {_show((twice / 2.0 + 0.5) * k - 0.5)}"
                         f"; is the centre on the frame?")
    return (twice + np.array(shift[:2])) / 2.0


def _flatten(a: np.ndarray, valid: np.ndarray, sigma: float) -> np.ndarray:
    """``a`` minus its Gaussian average over valid pixels (normalised convolution), 0 where invalid."""
    total = ndimage.gaussian_filter(np.where(valid, a, 0.0), sigma, mode="constant")
    weight = ndimage.gaussian_filter(valid.astype(np.float64), sigma, mode="constant")
    return np.where(valid, a - total / np.maximum(weight, 1e-12), 0.0)


def _symmetry(a: np.ndarray, valid: np.ndarray, centre: np.ndarray, sigma: float) -> float:
    """Correlation of ``a``, flattened over the pixels valid in it and its mirror through ``centre``, with that
    mirror; -inf when fewer than 64 pixels are."""
    twice = np.rint(2.0 * centre).astype(np.int64)
    both = valid & _mirror(valid, twice, False)
    if both.sum() < _MIN_VALID:
        return -math.inf
    flat = _flatten(a, both, sigma)
    x, y = flat[both], _mirror(flat, twice, 0.0)[both]
    spread = x.std() * y.std()
    return float(np.mean((x - x.mean()) * (y - y.mean())) / spread) if spread > 0 else -math.inf


def _flatten_about(a: np.ndarray, valid: np.ndarray, centre: np.ndarray, k: int,
                   sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """``a`` minus its background over the pixels valid in it and its mirror through ``centre`` (so symmetric
    about ``centre`` when ``a`` is), the background computed binned by ``k`` and interpolated back."""
    twice = np.rint(2.0 * centre).astype(np.int64)
    both = valid & _mirror(valid, twice, False)
    coarse, coarse_valid = _bin(np.where(both, a, 0.0), both, k)
    total = ndimage.gaussian_filter(np.where(coarse_valid, coarse, 0.0), sigma, mode="constant")
    weight = ndimage.gaussian_filter(coarse_valid.astype(np.float64), sigma, mode="constant")
    background = total / np.maximum(weight, 1e-12)
    if k > 1:  # full-resolution pixel x sits at (x + 0.5) / k - 0.5 on the binned grid
        rows, cols = ((np.arange(n) + 0.5) / k - 0.5 for n in a.shape)
        background = ndimage.map_coordinates(background, np.meshgrid(rows, cols, indexing="ij"), order=1,
                                             mode="nearest")
    return np.where(both, a - background, 0.0), both


@dataclass(frozen=True)
class PowderCenterParams:
    """Parameters of the ``powder_center`` operator."""

    snapshot_after: int = param(0, ge=0, doc="also compute the centre at each snapshot once this many frames "
                                             "are in; 0 = at the series end only")


class PowderCenter(BaseOperator):
    """:func:`powder_center` of the running mean of the frames (over each pixel's valid frames).

    Finds the centre of rings, of a direct beam or of a single-crystal pattern alike.
    The state is the per-pixel sum and count of valid frames (merged by addition).  The
    centre costs a few tenths of a second on a 2048 x 2048 frame, so it is computed at
    the series end and, when ``snapshot_after`` > 0, at each snapshot once that many
    frames are in (a snapshot waits for it).  Output: ``reductions`` ``center`` =
    (row, col) px, NaN until computed or when the mean has too few valid pixels (logged).
    """

    kind = "powder_center"
    Params = PowderCenterParams

    def start(self, series: SeriesStart) -> None:
        super().start(series)
        self.reductions = {"center": ((2,), "f8")}
        self._sum = np.zeros(series.shape, dtype=np.float64)
        self._count = np.zeros(series.shape, dtype=np.int32)
        self._frames = 0
        self._center = (np.full(2, np.nan), 0)  # (centre, number of frames it was computed from)

    def process(self, frame: Frame) -> Frame:
        accumulate_valid(self._sum, self._count, frame.data, self.valid(frame))
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
