"""Sub-pixel translation of frames that moves the mask with the data.

:func:`shift_image` applies the shift that :func:`livediff.operators.align.register.register`
measures, as two separable 1-D passes of a bilinear or Keys cubic filter.
"""
from __future__ import annotations

import math

import numba
import numpy as np

from ..checks import all_valid, check_image, check_mask

__all__ = ["shift_image"]

#: fractional shifts closer than this to a whole pixel are treated as whole (px)
_SNAP = 1e-6


@numba.njit(nogil=True, cache=True)
def _row_pass(row, m_row, use_valid, offsets, weights, lo, hi, out, out_valid):
    """out[c] = sum_k weights[k] row[c + offsets[k]] for lo <= c < hi (0 elsewhere); valid there
    (and where every tap is valid, with ``use_valid``)."""
    out[:] = 0.0
    out_valid[:] = False
    out_valid[lo:hi] = True
    o_seg, v_seg = out[lo:hi], out_valid[lo:hi]
    for k in range(offsets.size):
        w = weights[k]
        seg = row[lo + offsets[k]: hi + offsets[k]]
        for c in range(hi - lo):
            o_seg[c] += w * seg[c]
        if use_valid:
            m_seg = m_row[lo + offsets[k]: hi + offsets[k]]
            for c in range(hi - lo):
                v_seg[c] &= m_seg[c]


@numba.njit(nogil=True, cache=True)
def _shift(src, valid, use_valid, off_x, w_x, off_y, w_y, fill, out, out_valid):
    """Separable filter of ``src``: along rows with (off_x, w_x), then along columns with (off_y, w_y)
    (consecutive offsets), in one pass over the rows: the row-filtered rows an output row needs
    are kept in a ring.  Output pixels with a tap outside the image or invalid get ``fill``."""
    rows, cols = src.shape
    lo = max(0, -off_x.min())
    hi = max(lo, min(cols, cols - off_x.max()))
    span = off_y.max() - off_y.min() + 1
    ring = np.empty((span, cols), out.dtype)
    ring_valid = np.empty((span, cols), np.bool_)
    done = 0  # source rows filtered so far
    for r in range(rows):
        o_row, v_row = out[r], out_valid[r]
        first, last = r + off_y.min(), r + off_y.max()
        if first < 0 or last >= rows:
            o_row[:] = fill
            v_row[:] = False
            continue
        done = max(done, first)
        while done <= last:
            _row_pass(src[done], valid[done], use_valid, off_x, w_x, lo, hi, ring[done % span],
                      ring_valid[done % span])
            done += 1
        o_row[:] = 0.0
        v_row[:] = True
        for k in range(off_y.size):
            slot, w = (r + off_y[k]) % span, w_y[k]
            t_row, t_valid = ring[slot], ring_valid[slot]
            for c in range(cols):
                o_row[c] += w * t_row[c]
                v_row[c] &= t_valid[c]
        for c in range(cols):
            if not v_row[c]:
                o_row[c] = fill


def _taps(shift: float, order: int) -> tuple[np.ndarray, np.ndarray]:
    """Source offsets and weights of one output pixel for a shift along one axis."""
    base = math.floor(-shift)
    t = -shift - base
    if t < _SNAP or t > 1.0 - _SNAP:  # a whole-pixel shift up to round-off: move pixels exactly
        base, t = round(-shift), 0.0
    if order == 1:
        offsets, weights = np.array([0, 1]), np.array([1.0 - t, t])
    else:  # Keys (1981) cubic convolution, a = -0.5
        u = np.array([1.0 + t, t, 1.0 - t, 2.0 - t])
        near = 1.5 * u ** 3 - 2.5 * u ** 2 + 1.0
        far = -0.5 * u ** 3 + 2.5 * u ** 2 - 4.0 * u + 2.0
        offsets, weights = np.arange(-1, 3), np.where(u <= 1.0, near, far)
    keep = weights != 0.0
    return (offsets[keep] + base).astype(np.int64), weights[keep]


def shift_image(image: np.ndarray, shift: tuple[float, float], mask: np.ndarray | None = None,
                fill_value: float = 0.0, *, order: int = 3) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Translate ``image`` by ``shift`` = (rows, cols) pixels; the mask moves with it.

    Parameters
    ----------
    image : (rows, cols) array of any real dtype (not modified).
    shift : (shift_y, shift_x) in pixels: output pixel (r, c) takes the value of the
        input at (r - shift_y, c - shift_x).  :func:`~.align_kernels.register` returns the
        shift aligning a frame with its reference.
    mask : bool array, True = valid, or None (all valid).
    fill_value : value of output pixels that are not valid.
    order : 1 (bilinear) or 3 (Keys cubic convolution, interpolating, 4 x 4 pixels).

    Returns
    -------
    shifted : float32 array (float64 for a float64 image) of the image's shape.
    shifted_mask : bool array, only when ``mask`` is given: an output pixel is valid when
        every input pixel it interpolates from (with a nonzero weight) lies inside the
        image and is valid.  Without a mask, only the pixels the shift uncovers are
        invalid.  Invalid pixels hold ``fill_value``.

    Raises
    ------
    ValueError
        If the image is not 2-D, ``order`` is not 1 or 3, the shift is not finite, or the
        mask's shape differs.
    TypeError
        If the image is not real-valued or the mask is not boolean.

    Notes
    -----
    A translation has the same interpolation weights at every pixel, so the shift is two
    1-D passes of a 2- or 4-tap filter.  Keys' kernel (a = -0.5) is
    ``W(u) = 1.5|u|^3 - 2.5|u|^2 + 1`` for ``|u| <= 1`` and
    ``-0.5|u|^3 + 2.5|u|^2 - 4|u| + 2`` for ``1 < |u| < 2``; it reproduces quadratics and
    needs no prefilter, so a masked pixel affects only the 4 x 4 outputs around it and an
    integer shift moves pixels exactly.  R. Keys, "Cubic convolution interpolation for
    digital image processing", IEEE Trans. ASSP 29(6), 1153-1160 (1981).
    """
    image = check_image(image)
    mask = check_mask(mask, image.shape)
    has_mask = mask is not None
    if order not in (1, 3):
        raise ValueError(f"order must be 1 (bilinear) or 3 (cubic), got {order}")
    shift_y, shift_x = (float(s) for s in shift)
    if not (math.isfinite(shift_y) and math.isfinite(shift_x)):
        raise ValueError(f"shift must be finite, got {tuple(shift)}")
    dtype = np.float64 if image.dtype == np.float64 else np.float32
    (off_y, w_y), (off_x, w_x) = _taps(shift_y, order), _taps(shift_x, order)
    out = np.empty(image.shape, dtype=dtype)
    out_valid = np.empty(image.shape, dtype=np.bool_)
    _shift(image, mask if has_mask else all_valid(image.shape), has_mask, off_x, w_x.astype(dtype), off_y,
           w_y.astype(dtype), dtype(fill_value), out, out_valid)
    return (out, out_valid) if has_mask else out
