"""Per-frame summary: sum, mean and maximum over valid pixels, and saturated pixels.

This is what the ``stats`` topic and the frames table show for every frame, so that a
user sees at a glance whether the beam is on and whether the detector saturates.

In an integer frame, the top value of its dtype (2**bits - 1, 2**31 - 1 for int32) is not
a count: DECTRIS detectors send it for gap, defective and overflowing pixels, whether or
not the header's pixel mask marks them.  Such pixels are invalid here by default (not
summed, not counted valid or saturated), so that the sum of a real EIGER frame is the sum
of its counts, not of a million gap markers; ``flatfield`` masks them too.
"""
from __future__ import annotations

import math
from typing import Any

import numba
import numpy as np
from numba.extending import overload
from numba.np.numpy_support import as_dtype

from ..model import Frame, SeriesStart
from .base import BaseOperator
from .checks import all_valid, check_image, check_mask


@numba.njit(nogil=True, cache=True)
def _summarise_float(data: np.ndarray, mask: np.ndarray, saturation: float) -> tuple[float, float, int, int]:
    total = 0.0
    peak = -np.inf
    n_valid = 0
    n_saturated = 0
    rows, cols = data.shape
    for r in range(rows):
        drow = data[r]
        mrow = mask[r]
        for c in range(cols):
            if mrow[c]:
                v = float(drow[c])
                total += v
                n_valid += 1
                if v > peak:
                    peak = v
                if v >= saturation:
                    n_saturated += 1
    return total, peak, n_valid, n_saturated


_LOWEST = np.int64(-(2**62))  # below any int32 pixel: the max of a row with no valid pixel
_NO_TOP = 2**63 - 1           # above any uint32 pixel: no value is a marker


@numba.njit(nogil=True, cache=True)
def _summarise_int(data: np.ndarray, mask: np.ndarray, saturation: float, top: int) -> tuple[float, float, int, int]:
    # branch-free int64 row sums, so LLVM vectorises the inner loop (~3x the branchy float loop)
    total = 0.0
    peak = -np.inf
    n_valid = 0
    n_saturated = 0
    rows, cols = data.shape
    for r in range(rows):
        drow = data[r]
        mrow = mask[r]
        row_sum = np.int64(0)
        row_max = _LOWEST
        row_valid = 0
        row_saturated = 0
        for c in range(cols):
            m = mrow[c] & (np.int64(drow[c]) < top)
            v = np.int64(drow[c]) * m
            row_sum += v
            row_valid += m
            row_max = max(row_max, v if m else _LOWEST)
            row_saturated += m & (drow[c] >= saturation)
        total += row_sum
        n_valid += row_valid
        n_saturated += row_saturated
        if row_valid and row_max > peak:
            peak = row_max
    return total, peak, n_valid, n_saturated


@numba.njit(nogil=True, cache=True)
def _summarise_uint(data: np.ndarray, mask: np.ndarray, saturation: Any, count_saturated: bool, top: Any,
                    top_invalid: bool) -> tuple[float, float, int, int]:
    # unsigned pixels: tests, maxima and counts in the pixels' own width (twice the lanes of int64),
    # row sums in uint64; the same answers as _summarise_int
    total = 0.0
    peak = -np.inf
    n_valid = 0
    n_saturated = 0
    rows, cols = data.shape
    zero = data.dtype.type(0)
    for r in range(rows):
        drow = data[r]
        mrow = mask[r]
        row_sum = np.uint64(0)
        row_max = zero
        row_valid = np.uint32(0)
        row_saturated = np.uint32(0)
        for c in range(cols):
            d = drow[c]
            m = mrow[c] & ((d < top) | (not top_invalid))
            v = d if m else zero
            row_sum += np.uint64(v)
            row_valid += np.uint32(m)
            row_max = max(row_max, v)  # unsigned: an invalid pixel's 0 never exceeds a valid one
            row_saturated += np.uint32(m & (d >= saturation) & count_saturated)
        total += row_sum
        n_valid += row_valid
        n_saturated += row_saturated
        if row_valid and float(row_max) > peak:
            peak = float(row_max)
    return total, peak, n_valid, n_saturated


def summarise(image: np.ndarray, mask: np.ndarray | None = None, *,
              saturation: float | None = None, top_invalid: bool = True) -> dict[str, float | int]:
    """Sum, mean, maximum, valid and saturated pixel counts of one frame.

    Parameters
    ----------
    image : (rows, cols) array of any real dtype.
    mask : bool array of the same shape, True = valid; None = all valid.
    saturation : value at and above which a valid pixel counts as saturated;
        None = the top of an integer dtype (2**bits - 1), never for floats.
    top_invalid : in an integer frame, pixels at the top of the dtype (DECTRIS' gap,
        defect and overflow marker) are invalid as well as those ``mask`` excludes.  So
        with the default ``saturation`` none is counted saturated; pass the detector's
        saturation level (the series header's) for that.

    Returns
    -------
    dict with ``sum`` (float64 accumulator; exact for integer frames below 2**53),
    ``mean``, ``max`` (NaN when no pixel is valid), ``n_valid`` and ``n_saturated``.

    Raises
    ------
    ValueError
        ``image`` is not 2-D or ``mask`` has another shape.
    TypeError
        ``image`` is not real-valued or ``mask`` is not bool.
    """
    image = check_image(image)
    mask = check_mask(mask, image.shape)
    if mask is None:
        mask = all_valid(image.shape)
    return summary_dict(*_kernel(image.dtype)(image, mask, *kernel_args(image.dtype, saturation, top_invalid)))


def _kernel(dtype: np.dtype) -> Any:
    """The kernel for frames of ``dtype``: unsigned pixels of at most 32 bits (row sums fit in
    uint64 below 2**32 columns), other integers, floats."""
    dtype = np.dtype(dtype)
    if dtype.kind == "u" and dtype.itemsize <= 4:
        return _summarise_uint
    return _summarise_int if dtype.kind in "ui" else _summarise_float


def kernel_args(dtype: np.dtype, saturation: float | None = None, top_invalid: bool = True) -> tuple:
    """The arguments after (data, mask) of the kernel that summarises frames of ``dtype`` (see
    :func:`summarise` for ``saturation`` and ``top_invalid``); :func:`summarise_rows` takes them."""
    dtype = np.dtype(dtype)
    if dtype.kind not in "ui":
        return (np.inf if saturation is None else float(saturation),)
    top = int(np.iinfo(dtype).max)
    if _kernel(dtype) is _summarise_uint:
        level = (top if saturation is None else math.ceil(saturation) if math.isfinite(saturation)  # d >= s <=> d >= ceil(s)
                 else 0 if saturation < 0 else top + 1)  # -inf: every pixel; inf or NaN: none
        return dtype.type(min(max(level, 0), top)), level <= top, dtype.type(top), top_invalid
    return float(top if saturation is None else saturation), top if top_invalid else _NO_TOP


def summarise_rows(data: np.ndarray, mask: np.ndarray, args: tuple) -> tuple[float, float, int, int]:
    """(sum, max, n_valid, n_saturated) of ``data`` (rows of a frame: sums of integer frames are
    exact, so they add up row block by row block to the frame's), ``args`` from
    :func:`kernel_args`; numba only: a pass over a frame that reads each row anyway
    (``livediff.operators.fused``) summarises the row while it is in cache."""
    raise NotImplementedError("only callable from numba code")


@overload(summarise_rows)
def _summarise_rows_impl(data, mask, args):  # noqa: ANN001, ANN202
    kernel = _kernel(as_dtype(data.dtype))
    return lambda data, mask, args: kernel(data, mask, *args)


def summary_dict(total: float, peak: float, n_valid: int, n_saturated: int) -> dict[str, float | int]:
    """:func:`summarise`'s dict from its kernel's (sum, max, n_valid, n_saturated)."""
    return {
        "sum": total,
        "mean": total / n_valid if n_valid else np.nan,
        "max": peak if n_valid else np.nan,
        "n_valid": n_valid,
        "n_saturated": n_saturated,
    }


class Summary(BaseOperator):
    """Adds ``results["summary"]`` = :func:`summarise` of each frame (over its valid pixels, the
    top value of an integer dtype invalid; saturated at the header's ``saturation``)."""

    kind = "summary"

    def start(self, series: SeriesStart) -> None:
        super().start(series)
        self.columns = {"sum": "f8", "mean": "f8", "max": "f8", "n_valid": "i8", "n_saturated": "i8"}

    def process(self, frame: Frame) -> Frame:
        frame.results[self.name] = summarise(frame.data, frame.mask, saturation=self.series.saturation)
        return frame

    def kernel_args(self, dtype: np.dtype) -> tuple:
        """:func:`kernel_args` of this operator's frames of ``dtype`` (for :func:`summarise_rows`)."""
        return kernel_args(dtype, self.series.saturation)

    def add_summary(self, frame: Frame, total: float, peak: float, n_valid: int, n_saturated: int) -> Frame:
        """The frame's results from (sum, max, n_valid, n_saturated) summed elsewhere (``operators.fused``)."""
        frame.results[self.name] = summary_dict(total, peak, n_valid, n_saturated)
        return frame
