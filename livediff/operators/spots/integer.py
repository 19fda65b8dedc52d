"""DIALS' dispersion test on integer images in 32-bit integer arithmetic: the fast path.

``threshold.dispersion_block`` works for any image in 64-bit sums.  Integer images (the
detectors' counts) allow narrower sums that are still exact, and 32-bit lanes put twice as
many pixels in a vector instruction:

- A pixel is *usable* when valid and ``vmin <= value <= vmax`` (the ``max_value`` rule in
  the image's own dtype).  The test is folded into the values (an unusable pixel adds 0),
  so the sums need no branch.
- Column sums over the 2 kh + 1 rows around the current row are slid row by row (the
  entering row added and the leaving one subtracted in one pass), in int32 with wrapping
  adds: a sum modulo 2**32 is the sum itself whenever the sum fits.
- The count n and the sum x share one column sum, ``(x << shift) + n`` with 2**shift above
  the window's area: the box sum along a row then gives m (its low bits, always exact) and
  x (the rest, exact while |x| < 2**(31 - shift)), 7 additions for both.  A window can only
  pass that bound if it holds a value of |v| >= huge (:func:`limits`; 684,785 for 7 x 7):
  rows holding one are counted per column, every pixel within reach is tested one by one
  from the image, and a block with more of them than a few per thousand rows goes to the
  general kernel.
- Sums of squares y are kept modulo 2**32 too: a column's is exact when its values have
  |v| < big (24,770 for 7 rows).  Windows near a larger value (a bright Bragg peak) take
  their sums from the image.
- The strong test runs first on every pixel in float32, as a necessary condition with a
  relative margin (``factor`` is sigma_s**2 g (1 - SLACK)): b > 0 and b**2 > factor x m,
  b = m v - x exact in int32.  float32 rounding moves each side by less than 3e-7
  relative and DIALS' float64 rounding by less than 1e-15, so no pixel DIALS calls strong
  is rejected.  The pixels that pass (about 1 % of the background) go through DIALS' own
  float64 formulas (``threshold._strong``) on the exact sums: the result is DIALS' formula
  exactly.

Arithmetic is through the ``add32``/``sub32``/``mul32``/``and32``/``shl32``/``ashr32``
intrinsics (:mod:`livediff.operators.intrinsics`), which stay in int32 and wrap: numba's
integer operators widen to int64, which halves the vector width.
"""
from __future__ import annotations

import math
from typing import Any

import numba
import numpy as np
from numba import types
from numba.extending import overload

from ..intrinsics import add32, and32, ashr32, low_byte, mul32, prefetch_span, shl32, sub32
from .label import add_pixel
from .threshold import _row, _strong

#: relative margin of the float32 pre-test
SLACK = 1e-5

#: the largest window (pixels) of the fast path: its count packs in 7 bits
MAX_AREA = 127

#: columns the pre-test takes between prefetches of the next row
PREFETCH_COLUMNS = 64


def _in_range(v, vmin, vmax):  # noqa: ANN001, ANN202
    """``vmin <= v <= vmax``, a bound that is None not tested (one the dtype cannot pass)."""
    raise NotImplementedError("only callable from numba code")


@overload(_in_range)
def _in_range_impl(v, vmin, vmax):  # noqa: ANN001, ANN202
    low, high = (not isinstance(t, types.NoneType) for t in (vmin, vmax))
    if low and high:
        return lambda v, vmin, vmax: (v >= vmin) & (v <= vmax)
    if low:
        return lambda v, vmin, vmax: v >= vmin
    if high:
        return lambda v, vmin, vmax: v <= vmax
    return lambda v, vmin, vmax: True


def limits(kh: int, kw: int) -> tuple[int, int, int]:
    """(shift, big, huge) of a window: the count's bits in the packed sums, the smallest |value|
    whose column sums of squares may pass 2**32, the smallest whose window sum may pass
    2**(31 - shift) (see the module docstring)."""
    area = (2 * kh + 1) * (2 * kw + 1)
    shift = area.bit_length()
    return shift, math.isqrt((2 ** 32 - 1) // (2 * kh + 1)) + 1, ((1 << (31 - shift)) - 1) // area + 1


def fits(dtype: np.dtype, kh: int, kw: int) -> bool:
    """Whether images of ``dtype`` and windows of half-sizes (kh, kw) can take the fast path."""
    return dtype.kind in "ui" and dtype.itemsize <= 4 and (2 * kh + 1) * (2 * kw + 1) <= MAX_AREA


@numba.njit(nogil=True, cache=True)
def _slide(irow, imask, use_in, orow, omask, use_out, vmin, vmax, shift, cp, cy):
    """Add the usable pixels of ``irow`` (if ``use_in``) to the packed column sums ``cp`` and
    the sums of squares ``cy``, and remove those of ``orow`` (if ``use_out``); return the
    extremes of the added values."""
    hi = np.int32(0)
    lo = np.int32(0)
    for c in range(irow.size):
        v = irow[c]
        u = orow[c]
        ok_in = imask[c] & use_in & _in_range(v, vmin, vmax)
        ok_out = omask[c] & use_out & _in_range(u, vmin, vmax)
        a = and32(v, sub32(0, ok_in))
        b = and32(u, sub32(0, ok_out))
        d = sub32(a, b)
        cp[c] = add32(cp[c], add32(shl32(d, shift), sub32(ok_in, ok_out)))
        cy[c] = add32(cy[c], mul32(d, add32(a, b)))
        hi = max(hi, a)
        lo = min(lo, a)
    return hi, lo


@numba.njit(nogil=True, cache=True)
def _count_big(row, mask, step, vmin, vmax, svmin, svmax, shift, cp, cy, big, huge, bc, hc):
    """After ``_slide`` added (``step`` 1) or removed (-1) ``row``: take out again the values
    that the slide's range [svmin, svmax] let in and [vmin, vmax] does not, and add ``step``
    to ``bc`` at the usable values with |value| >= big and to ``hc`` at those >= huge.
    Returns the number of the latter."""
    n = 0
    for c in range(row.size):
        v = row[c]
        if not (mask[c] and _in_range(v, svmin, svmax)):
            continue
        if not _in_range(v, vmin, vmax):
            a = add32(v, 0)
            cp[c] = sub32(cp[c], mul32(step, add32(shl32(a, shift), 1)))
            cy[c] = sub32(cy[c], mul32(step, mul32(a, a)))
        elif v >= big or v <= -big:
            bc[c] += step
            if v >= huge or v <= -huge:
                hc[c] += step
                n += 1
    return n


@numba.njit(nogil=True, cache=True)
def _sums(image, mask, r, c, kh, kw, vmin, vmax):
    """(m, x, y) of the window around (r, c) in int64, summed from the image."""
    rows, cols = image.shape
    m = x = y = 0
    for i in range(max(r - kh, 0), min(r + kh + 1, rows)):
        mrow = _row(mask, i)
        for j in range(max(c - kw, 0), min(c + kw + 1, cols)):
            v = image[i, j]
            if mrow[j] and _in_range(v, vmin, vmax):
                m += 1
                x += np.int64(v)
                y += np.int64(v) * np.int64(v)
    return m, x, y


@numba.njit(nogil=True, cache=True, inline="always")
def _maybe_strong(v, w, valid, factor, low, shift):
    """The float32 necessary condition of the strong test, from the packed box sum ``w``."""
    m = and32(w, (1 << shift) - 1)
    x = ashr32(w, shift)
    b = sub32(mul32(m, v), x)
    f = np.float32(b)
    return valid & (add32(v, 0) > low) & (b > 0) & (f * f > factor * np.float32(x) * np.float32(m))


@numba.njit(nogil=True, cache=True, inline="always")
def _pretest_span(irow, mrow, frow, low, cp, span, shift, cand, c0, c1):
    """``cand[c]`` = :func:`_maybe_strong` for the columns c0 <= c < c1 of a row."""
    if span == 7:  # DIALS' default window: the box sum written out, so that the loop vectorises
        for c in range(c0, c1):
            w = add32(add32(add32(cp[c], cp[c + 1]), add32(cp[c + 2], cp[c + 3])),
                      add32(add32(cp[c + 4], cp[c + 5]), cp[c + 6]))
            cand[c] = _maybe_strong(irow[c], w, mrow[c], frow[c], low, shift)
        return
    for c in range(c0, c1):
        w = np.int32(0)
        for j in range(c, c + span):
            w = add32(w, cp[j])
        cand[c] = _maybe_strong(irow[c], w, mrow[c], frow[c], low, shift)


@numba.njit(nogil=True, cache=True)
def _pretest(irow, mrow, frow, low, cp, span, shift, cand, next_row, next_mask):
    """``cand[c]`` = :func:`_maybe_strong` at every pixel of a row, while the row the slide
    reads next (``next_row``, ``next_mask``) is fetched: the memory is otherwise idle here,
    and the slide then finds that row in cache (a frame larger than the cache: 12 % off the
    kernel's time on a 16M int32 frame, 25 % on a 4M uint32 one)."""
    cols = irow.size
    # whole chunks first: with a computed end (min(c0 + 64, cols)) LLVM left the loop scalar
    full = cols - cols % PREFETCH_COLUMNS
    for c0 in range(0, full, PREFETCH_COLUMNS):
        prefetch_span(next_row, c0, c0 + PREFETCH_COLUMNS)
        prefetch_span(next_mask, c0, c0 + PREFETCH_COLUMNS)
        _pretest_span(irow, mrow, frow, low, cp, span, shift, cand, c0, c0 + PREFETCH_COLUMNS)
    _pretest_span(irow, mrow, frow, low, cp, span, shift, cand, full, cols)


@numba.njit(nogil=True, cache=True)
def _force(hc, kw, cand):
    """Make every pixel within kw columns of a column counted in ``hc`` a candidate."""
    cols = hc.size
    for j in range(cols):
        if hc[j]:
            cand[max(j - kw, 0):min(j + kw + 1, cols)] = 1


def row_hook(r: int, counted: bool, prepared: Any) -> None:
    """What :func:`dispersion_rows` calls for each row before it first reads it; numba only.

    With ``prepared`` None, nothing.  A module that fuses its own row work into the pass
    adds an ``overload`` of this function for the type of its ``prepared`` (a NamedTuple
    class of its own: ``livediff.operators.fused``), chosen when numba compiles.
    """
    raise NotImplementedError("only callable from numba code")


@overload(row_hook)
def _no_hook(r, counted, prepared):  # noqa: ANN001, ANN202
    if isinstance(prepared, types.NoneType):
        return lambda r, counted, prepared: None
    return None


@numba.njit(nogil=True, cache=True)
def dispersion_block_int(image, mask, gain, has_gain, factor, kh, kw, sigma_b, sigma_s, min_local, threshold, low,
                         vmin, vmax, svmin, svmax, shift, big, huge, r0, r1, out):
    """DIALS' dispersion test on rows [r0, r1) of an integer image: strong pixels into ``out``
    (:func:`dispersion_rows` with no row hook)."""
    return dispersion_rows(None, image, mask, gain, has_gain, factor, kh, kw, sigma_b, sigma_s,
                           min_local, threshold, low, vmin, vmax, svmin, svmax, shift, big, huge, r0, r1, out)


# not cached on its own: compiled into each caller's cache (dispersion_block_int here, with no hook; a
# fused pass in its module, with its hook), so a change to a hook invalidates the code that calls it
@numba.njit(nogil=True)
def dispersion_rows(prepared, image, mask, gain, has_gain, factor, kh, kw, sigma_b, sigma_s, min_local,
                    threshold, low, vmin, vmax, svmin, svmax, shift, big, huge, r0, r1, out):
    """DIALS' dispersion test on rows [r0, r1) of an integer image: strong pixels into ``out``.

    A single pass over the rows: the one other pass that needs each row of the frame can
    run in it, while the row is in cache (``livediff.operators.fused``).

    Parameters
    ----------
    prepared : ``row_hook(row, counted, prepared)`` runs once for each row the block
        reads (rows r0 - kh to r1 + kh - 1 within the image), in order, before the kernel
        first reads that row of ``image`` or ``mask``; ``counted`` is True for the block's
        own rows [r0, r1).  It may write that row of ``mask`` (safe with a single block
        only: neighbouring blocks share kh rows).
    image : (rows, cols) C-ordered integer array of at most 32 bits.
    mask, gain, has_gain, kh, kw, sigma_b, sigma_s, min_local, threshold, out : as
        ``threshold.dispersion_block``'s (``out`` may be None: the runs only); :func:`fits` holds.
    factor : float32 (rows, cols) or (1, cols): sigma_s**2 g (1 - SLACK).
    low : int32, the global threshold rounded down (clipped to int32): the pre-test's
        value > low.
    vmin, vmax : usable pixels have vmin <= value <= vmax (of the image's dtype); a bound is
        None when no value of the dtype passes it.
    svmin, svmax : the range the column sums test, as wide as (vmin, vmax) or wider when
        every value outside (vmin, vmax) is a big one (a signed 32-bit image with the
        default max_value): then :func:`_count_big` takes those values out again, and the
        vectorised loop saves its range test.
    shift, big, huge : :func:`limits` of (kh, kw).
    r0, r1 : the rows to test (any; the sums are exact, so blocks need no alignment).

    Returns
    -------
    runs : (n, 3) int32 runs (row, col0, col1) of the strong pixels, in scan order.
    complete : False when the rows hold too many values of |v| >= huge (:func:`limits`) to
        test them one by one; then ``out`` and ``runs`` are partial and the caller runs
        the general kernel on these rows.
    """
    rows, cols = image.shape
    span = 2 * kw + 1
    cp = np.zeros(cols + span, np.int32)  # packed column sums: (x << shift) + n, wrapping
    cy = np.zeros(cols + span, np.int32)  # column sums of squares, modulo 2**32
    bc = np.zeros(cols + span, np.int32)  # usable |value| >= big per column, in the window's rows
    hc = np.zeros(cols, np.int32)  # the same for |value| >= huge
    cpv, cyv, bcv = cp[kw:kw + cols], cy[kw:kw + cols], bc[kw:kw + cols]
    big_rows = np.zeros(rows, np.bool_)
    n_big = n_huge = seen_huge = 0  # rows of the window with a big value; huge values in it, in all
    budget = 64 + (r1 - r0 + 2 * kh) * cols // 8192
    cand = np.zeros((cols + 7) // 8 * 8, np.uint8)
    words = cand.view(np.uint64)
    runs = np.empty((max((r1 - r0) * (cols + 1) // 2, 1), 3), np.int32)  # the most there can be
    n_runs = 0
    for r in range(r0 - 2 * kh, r1):  # rows before r0 only fill the sums of row r0's window
        ri, ro = r + kh, r - kh - 1
        use_in, use_out = 0 <= ri < rows, r > r0 and ro >= 0
        if use_in:
            row_hook(ri, r0 <= ri < r1, prepared)
        if use_in or use_out:
            ri, ro = min(max(ri, 0), rows - 1), max(ro, 0)  # a row the slide reads but does not use if not use_*
            hi, lo = _slide(image[ri], _row(mask, ri), use_in, image[ro], _row(mask, ro), use_out, svmin, svmax,
                            shift, cpv, cyv)
            if use_out and big_rows[ro]:
                n_huge += _count_big(image[ro], _row(mask, ro), -1, vmin, vmax, svmin, svmax, shift, cpv, cyv, big,
                                     huge, bcv, hc)
                n_big -= 1
            if use_in and (hi >= big or lo <= -big):
                added = _count_big(image[ri], _row(mask, ri), 1, vmin, vmax, svmin, svmax, shift, cpv, cyv, big,
                                   huge, bcv, hc)
                big_rows[ri] = True
                n_big += 1
                n_huge += added
                seen_huge += added
                if seen_huge > budget:
                    return runs[:n_runs], False
        if r < r0:
            continue
        irow, mrow, grow = image[r], _row(mask, r), _row(gain, r)
        ahead = min(r + kh + 1, rows - 1)  # the row the next slide adds
        _pretest(irow, mrow, _row(factor, r), low, cp, span, shift, cand, image[ahead], _row(mask, ahead))
        if n_huge:  # the packed sums of these windows may have wrapped: test every pixel near one
            _force(hc, kw, cand)
        for k in range(words.size):
            w = words[k]
            while w:
                c = 8 * k + low_byte(w)
                w &= w - np.uint64(1)
                v = irow[c]
                if not (mrow[c] and _in_range(v, vmin, vmax) and float(v) > threshold):
                    continue
                if n_big and bc[c:c + span].any():
                    m, x, y = _sums(image, mask, r, c, kh, kw, vmin, vmax)
                else:
                    p = np.int32(0)
                    y = 0
                    for j in range(c, c + span):
                        p = add32(p, cp[j])
                        y += np.int64(cy[j]) & 0xFFFFFFFF
                    m, x = p & ((1 << shift) - 1), ashr32(p, shift)
                if m >= min_local and x >= 0 and _strong(float(m), float(x), float(y), float(v), grow[c],
                                                         has_gain, sigma_b, sigma_s):
                    if out is not None:  # None: the runs only (numba drops the test)
                        out[r, c] = True
                    n_runs = add_pixel(runs, n_runs, r, c)
    return runs[:n_runs], True

