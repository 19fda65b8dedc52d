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
from .intrinsics import add32, and32


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


#: pixels whose 16-bit halves a wrapping 32-bit sum adds up exactly
_SPAN = 1 << 16


@numba.njit(nogil=True, cache=True)
def _summarise_span(data: np.ndarray, mask: np.ndarray, saturation: Any, count_saturated: bool, top: Any,
                    top_invalid: bool) -> tuple[int, Any, int, int]:
    # (sum, max, n_valid, n_saturated) of at most _SPAN unsigned pixels in 32-bit lanes: the sum
    # as the sums of the pixels' low and high 16 bits, counts in 32 bits (numba's integer
    # arithmetic is 64-bit, which halves the lanes: 1.7 -> 1.1 ms on a 4M uint32 frame in cache)
    zero = data.dtype.type(0)
    low = high = n_valid = n_saturated = np.int32(0)
    peak = zero
    for c in range(data.size):
        d = data[c]
        m = mask[c] & ((d < top) | (not top_invalid))
        v = d if m else zero
        low = add32(low, and32(v, 0xFFFF))
        high = add32(high, v >> 16)
        n_valid = add32(n_valid, m)
        peak = max(peak, v)  # unsigned: an invalid pixel's 0 never exceeds a valid one
        n_saturated = add32(n_saturated, m & (d >= saturation) & count_saturated)
    return ((np.int64(low) & 0xFFFFFFFF) + ((np.int64(high) & 0xFFFFFFFF) << 16), peak,
            np.int64(n_valid) & 0xFFFFFFFF, np.int64(n_saturated) & 0xFFFFFFFF)


@numba.njit(nogil=True, cache=True)
def _summarise_uint(data: np.ndarray, mask: np.ndarray, saturation: Any, count_saturated: bool, top: Any,
                    top_invalid: bool) -> tuple[float, float, int, int]:
    # unsigned pixels of at most 32 bits: the same answers as _summarise_int, in 32-bit lanes
    total = 0.0
    peak = -np.inf
    n_valid = 0
    n_saturated = 0
    rows, cols = data.shape
    for r in range(rows):
        row_sum = 0
        row_max = data.dtype.type(0)
        row_valid = 0
        for c in range(0, cols, _SPAN):
            span_sum, span_max, span_valid, span_saturated = _summarise_span(
                data[r, c:c + _SPAN], mask[r, c:c + _SPAN], saturation, count_saturated, top, top_invalid)
            row_sum += span_sum
            row_max = max(row_max, span_max)
            row_valid += span_valid
            n_saturated += span_saturated
        total += row_sum
        n_valid += row_valid
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
