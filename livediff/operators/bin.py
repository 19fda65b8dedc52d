"""The ``bin`` operator: k x k binning, mask-aware, geometry rescaled.

Binning by k (DESIGN.md) crops the frame to a multiple of k, bins the mask (a binned
pixel is valid when at least ``min_valid`` of its k*k pixels are) and rescales the
geometry: beam centre c -> (c + 0.5)/k - 0.5, pixel size x k.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal

import numba
import numpy as np

from ..model import Frame, Geometry, SeriesStart
from .base import BaseOperator, param
from .checks import check_choice, check_image, check_mask


@numba.njit(nogil=True, cache=True, error_model="numpy")
def _bin(image, k, mask, need, mean, fill, out, valid):
    orows, ocols = out.shape
    total = np.empty(ocols)
    count = np.empty(ocols, np.int64)
    full = k * k
    for i in range(orows):
        total[:] = 0.0
        count[:] = 0
        for di in range(k):
            x = image[i * k + di]
            if mask is None:
                for j in range(ocols):
                    s = 0.0
                    for dj in range(k):
                        s += np.float64(x[j * k + dj])
                    total[j] += s
                    count[j] += k
            else:
                m = mask[i * k + di]
                for j in range(ocols):
                    s = 0.0
                    n = 0
                    for dj in range(k):
                        ok = m[j * k + dj]
                        s += np.float64(x[j * k + dj]) * ok
                        n += ok
                    total[j] += s
                    count[j] += n
        o = out[i]
        v = valid[i]
        for j in range(ocols):
            ok = count[j] >= need
            v[j] = ok
            if not ok:
                o[j] = fill
            elif mean:
                o[j] = total[j] / count[j]
            else:
                o[j] = total[j] * full / count[j]


def valid_needed(k: int, min_valid: float) -> int:
    """Valid pixels a k x k block needs: ``ceil(min_valid * k**2)``, at least 1."""
    if not 0 < min_valid <= 1:
        raise ValueError(f"min_valid must be in (0, 1], got {min_valid}")
    return max(1, math.ceil(min_valid * k * k - 1e-9))


def bin_frame(image: np.ndarray, k: int, mask: np.ndarray | None = None, *, reduce: str = "sum",
              min_valid: float = 1.0, fill_value: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Sum or mean over k x k blocks, excluding masked pixels.

    Parameters
    ----------
    image : (rows, cols), any real dtype; rows and cols beyond a multiple of k are dropped.
    k : block size, >= 1.
    mask : bool, True = valid; None = all valid.
    reduce : ``"sum"`` or ``"mean"``.
    min_valid : fraction of a block's pixels that must be valid for the binned pixel to be
        valid; 1.0 = all of them.
    fill_value : value of invalid binned pixels.

    Returns
    -------
    (binned, binned_mask) : new float32 array of shape (rows // k, cols // k) and its bool mask.

    Raises
    ------
    ValueError
        k < 1 or larger than the frame, bad ``reduce`` or ``min_valid``, mask shape mismatch.

    Notes
    -----
    With :math:`n` valid pixels of values :math:`x_i` in a block, the sum is
    :math:`\\frac{k^2}{n}\\sum x_i` (the valid pixels' sum scaled to the whole block; the plain
    sum when all are valid) and the mean :math:`\\frac{1}{n}\\sum x_i`.  Sums run in float64,
    so integer inputs never overflow.
    """
    image = check_image(image)
    mask = check_mask(mask, image.shape)
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k!r}")
    shape = binned_shape(image.shape, k)
    check_choice(reduce, ("sum", "mean"), "reduce")
    out = np.empty(shape, dtype=np.float32)
    valid = np.empty(shape, dtype=np.bool_)
    _bin(image, int(k), mask, valid_needed(k, min_valid), reduce == "mean", np.float32(fill_value), out, valid)
    return out, valid


def binned_shape(shape: tuple[int, int], k: int, *, name: str = "k", of: str = "image") -> tuple[int, int]:
    """(rows // k, cols // k): the shape of a frame of ``shape`` binned by k.

    Raises
    ------
    ValueError
        When k exceeds a side; ``name`` and ``of`` name k and the frame in the message
        (``k = 7 is larger than the image (5, 6)``).
    """
    if k > min(shape):
        raise ValueError(f"{name} = {k} is larger than the {of} {tuple(shape)}")
    return shape[0] // k, shape[1] // k


def bin_geometry(geometry: Geometry, k: int) -> Geometry:
    """Geometry of a frame binned by k: beam centre c -> (c + 0.5)/k - 0.5, pixel size x k."""
    bc, ps = geometry.beam_center, geometry.pixel_size
    return replace(geometry,
                   beam_center=None if bc is None else tuple((c + 0.5) / k - 0.5 for c in bc),
                   pixel_size=None if ps is None else tuple(p * k for p in ps))


@dataclass(frozen=True)
class BinParams:
    """Parameters of :class:`Bin`."""

    k: int = param(2, ge=1, doc="block size, px")
    reduce: Literal["sum", "mean"] = "sum"
    min_valid: float = param(1.0, gt=0, le=1, doc="fraction of a block that must be valid")
    fill_value: float = param(0.0, doc="value of invalid binned pixels")


class Bin(BaseOperator):
    """Replaces each frame by its k x k binned version (:func:`bin_frame`) and its binned mask.

    The frames after it are (rows // k, cols // k) float32 with the binned series mask and
    geometry (:func:`bin_geometry`); saturation no longer applies to binned values.
    """

    kind = "bin"
    Params = BinParams

    def start(self, series: SeriesStart) -> None:
        super().start(series)
        k = self.params.k
        shape = binned_shape(series.shape, k, name="bin: k", of="frame")
        mask = None
        if series.mask is not None:
            _, mask = bin_frame(np.zeros(series.shape, np.uint8), k, series.mask, min_valid=self.params.min_valid)
        self._output = replace(series, shape=shape, dtype="float32", mask=mask,
                               geometry=bin_geometry(series.geometry, k), saturation=None)

    def output_series(self, series: SeriesStart) -> SeriesStart:
        return self._output

    def process(self, frame: Frame) -> Frame:
        p = self.params
        frame.data, frame.mask = bin_frame(frame.data, p.k, frame.mask, reduce=p.reduce, min_valid=p.min_valid,
                                           fill_value=p.fill_value)
        return frame
