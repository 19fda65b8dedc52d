"""Strong pixels by DIALS' dispersion test: the threshold kernels of the spotfinder.

A pixel's window is the (2 kh + 1) x (2 kw + 1) box around it, clipped at the image
edge.  Only *usable* pixels count in a window: valid in the mask and with a value in
(-max_value, max_value) (2**24 by default, so that a hot or gap pixel cannot poison its
neighbours; NaN is never usable).  m, x and y are the number, sum and sum of squares of
the usable values in the window.

The window sums run O(1) per pixel: column sums of the (2 kh + 1) rows around the
current row are updated row by row (one row added, one removed), and the box sum along
the row is taken from them.  No full-frame temporaries are allocated.  The test has two
stages: a branch-free, vectorised pre-filter that needs only m and x (the strong test
squared, with a relative margin of 1e-12 so that rounding can never reject a strong
pixel), then, for the rare candidates (0.1-1 % of background pixels), the exact DIALS
formulas, with y summed from the column sums of squares.  For integer-valued images
every sum is exact, so the mask is identical to that of any exact implementation of the
formulas (float64 summed-area tables, say).

Integer images of at most 32 bits take a faster path with the same result, in 32-bit
integer arithmetic (``integer.dispersion_block_int``); :func:`dispersion_block` serves
float images, 64-bit integers, windows of more than 127 pixels and the blocks the fast
path hands back.  All numba kernels release the GIL; :func:`run_blocks` splits the rows
into blocks for worker threads.  The public entry point is ``spots.dispersion_mask``.
"""
from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from typing import Any

import numba
import numpy as np
from numba import types
from numba.extending import overload

from .label import add_pixel

#: values at or above this (and at or below its negative) never count in a window (DIALS)
MAX_VALUE = 2 ** 24

#: column sums restart from scratch every RESTART rows, and row blocks start on such rows,
#: so that results never depend on the number of threads (not even in float rounding)
RESTART = 64

#: relative slack of the pre-filter: far above float64 rounding, far below any real margin
_SLACK = 1.0 - 1e-12


def _wide(v: Any) -> Any:
    """int64 of an integer, float64 of a float (the accumulator type); numba only."""
    raise NotImplementedError("only callable from numba code")


@overload(_wide)
def _wide_impl(v):  # noqa: ANN001, ANN202 - numba matches these names against the lambdas'
    if isinstance(v, (types.Integer, types.Boolean)):
        return lambda v: np.int64(v)
    return lambda v: np.float64(v)


def _sum_buffer(image: np.ndarray, n: int) -> np.ndarray:
    """Zeros to sum ``image``'s values in: int64 for integer images, float64 otherwise; numba only."""
    raise NotImplementedError("only callable from numba code")


@overload(_sum_buffer)
def _sum_buffer_impl(image, n):  # noqa: ANN001, ANN202
    if isinstance(image.dtype, (types.Integer, types.Boolean)):
        return lambda image, n: np.zeros(n, np.int64)
    return lambda image, n: np.zeros(n, np.float64)


@numba.njit(nogil=True, cache=True)
def _row(a: np.ndarray, r: int) -> np.ndarray:
    """Row ``r`` of a per-pixel map, or its only row when it holds one value per column."""
    return a[r] if a.shape[0] > 1 else a[0]


@numba.njit(nogil=True, cache=True)
def _usable(v: Any, valid: bool, limit: Any) -> bool:
    return valid & (v < limit) & (v > -limit)


@numba.njit(nogil=True, cache=True)
def _move_rows(image, mask, r_in, use_in, r_out, use_out, limit, cn, cx, cy):
    """Add row ``r_in``'s usable pixels to the column sums (if ``use_in``) and remove row
    ``r_out``'s (if ``use_out``), in one pass."""
    irow, mrow = image[r_in], _row(mask, r_in)
    orow, nrow = image[r_out], _row(mask, r_out)
    for c in range(irow.size):
        v, u = irow[c], orow[c]
        ok_in = _usable(v, mrow[c], limit) & use_in
        ok_out = _usable(u, nrow[c], limit) & use_out
        a = _wide(v) if ok_in else _wide(0)
        b = _wide(u) if ok_out else _wide(0)
        cn[c] += np.int32(ok_in) - np.int32(ok_out)
        cx[c] += a - b
        cy[c] += a * a - b * b


@numba.njit(nogil=True, cache=True)
def _columns(image, mask, r, fresh, kh, limit, cn, cx, cy):
    """Column sums over rows [r - kh, r + kh] (clipped): from scratch if ``fresh``, else
    slid from row ``r - 1``'s.  ``cn``, ``cx``, ``cy`` are views starting at column 0."""
    rows = image.shape[0]
    if fresh:
        cn[:] = 0
        cx[:] = 0
        cy[:] = 0
        for i in range(max(r - kh, 0), min(r + kh + 1, rows)):
            _move_rows(image, mask, i, True, i, False, limit, cn, cx, cy)
    elif r + kh < rows or r - kh - 1 >= 0:
        _move_rows(image, mask, min(r + kh, rows - 1), r + kh < rows, max(r - kh - 1, 0), r - kh - 1 >= 0,
                   limit, cn, cx, cy)


@numba.njit(nogil=True, cache=True)
def _box_row(col, span, out):
    """``out[c] = sum(col[c : c + span])`` along a row of zero-padded column sums.

    The terms are written out so that each loop vectorises: all seven for DIALS' default
    window (kernel_size 3), chunks of 4, 2 and 1 otherwise.
    """
    if span == 7:
        for c in range(out.size):
            out[c] = col[c] + col[c + 1] + col[c + 2] + col[c + 3] + col[c + 4] + col[c + 5] + col[c + 6]
        return
    out[:] = 0
    j = 0
    while span - j >= 4:
        for c in range(out.size):
            out[c] += col[c + j] + col[c + j + 1] + col[c + j + 2] + col[c + j + 3]
        j += 4
    if span - j >= 2:
        for c in range(out.size):
            out[c] += col[c + j] + col[c + j + 1]
        j += 2
    if span - j == 1:
        for c in range(out.size):
            out[c] += col[c + j]


@numba.njit(nogil=True, cache=True)
def _window_at(image, mask, r, c, kh, kw, limit):
    """(m, x) of the clipped window around (r, c), summed directly from the image."""
    rows, cols = image.shape
    n = 0
    x = 0
    for i in range(max(r - kh, 0), min(r + kh + 1, rows)):
        mrow = _row(mask, i)
        for j in range(max(c - kw, 0), min(c + kw + 1, cols)):
            v = image[i, j]
            if _usable(v, mrow[j], limit):
                n += 1
                x += _wide(v)
    return n, x


@numba.njit(nogil=True, cache=True)
def _dispersed(m, x, y, g, has_gain, sigma_b):
    """DIALS' dispersion test on float64 window sums: variance/mean > g (1 + sigma_b sqrt(2/(m-1)))."""
    if has_gain:
        return m * y - x * x > g * x * (m - 1 + sigma_b * np.sqrt(2 * (m - 1)))
    return m * y - x * x - x * (m - 1) > x * sigma_b * np.sqrt(2 * (m - 1))


@numba.njit(nogil=True, cache=True)
def _strong(m, x, y, v, g, has_gain, sigma_b, sigma_s):
    """Both DIALS tests on float64 window sums; the strong one is v > mean + sigma_s sqrt(g mean)."""
    return _dispersed(m, x, y, g, has_gain, sigma_b) & (m * v - x > sigma_s * np.sqrt(g * x * m))


@numba.njit(nogil=True, cache=True)
def _buffers(image, cols, span):
    """Zero-padded column sums (n, x, y) and row box sums (n, x) for one block."""
    size = cols + span
    return (np.zeros(size, np.int32), _sum_buffer(image, size), _sum_buffer(image, size),
            np.zeros(cols, np.int32), _sum_buffer(image, cols))


@numba.njit(nogil=True, cache=True)
def dispersion_block(image, mask, gain, has_gain, kh, kw, sigma_b, sigma_s, min_local, threshold, limit,
                     r0, r1, out):
    """DIALS' dispersion test on rows [r0, r1): strong pixels into ``out``.

    Parameters
    ----------
    image : (rows, cols) C-ordered integer or float array.
    mask : bool (rows, cols), or (1, cols) for one row that holds for every row.
    gain : float64 (rows, cols) or (1, cols); with ``has_gain`` False, DIALS' no-gain formulas.
    kh, kw : window half-sizes.
    sigma_b, sigma_s, min_local, threshold : as ``spots.dispersion_mask``'s.
    limit : usable pixels have ``-limit < value < limit`` (int64 for integer images, else float64).
    r0, r1 : the rows to test; r0 is 0 or a multiple of RESTART.
    out : bool (rows, cols), False on these rows; strong pixels are set True.

    Returns
    -------
    runs : (n, 3) int32 runs (row, col0, col1) of the strong pixels, in scan order.

    Notes
    -----
    Formulas in ``spots.dispersion_mask``; the pre-filter is the module docstring's.
    """
    cols = image.shape[1]
    span = 2 * kw + 1
    cn, cx, cy, wn, wx = _buffers(image, cols, span)
    runs = np.empty(((r1 - r0) * (cols + 1) // 2, 3), np.int32)  # the most there can be
    n_runs = 0
    cand = np.zeros((cols + 7) // 8 * 8, np.uint8)
    words = cand.view(np.uint64)
    ks = sigma_s * sigma_s * _SLACK
    low = max(threshold, -limit)  # v > low: above the threshold and usable from below
    for r in range(r0, r1):
        _columns(image, mask, r, r == r0 or r % RESTART == 0, kh, limit, cn[kw:], cx[kw:], cy[kw:])
        _box_row(cn, span, wn)
        _box_row(cx, span, wx)
        irow, mrow, grow = image[r], _row(mask, r), _row(gain, r)
        count = 0
        for c in range(cols):  # pre-filter: usable, above threshold, and b > d squared
            v = irow[c]
            m = float(wn[c])
            x = float(wx[c])
            b = m * float(v) - x
            ok = mrow[c] & (v < limit) & (v > low) & (b > 0.0) & (b * b > ks * grow[c] * x * m)
            cand[c] = ok
            count += ok
        if count == 0:
            continue
        for k in range(words.size):
            if words[k] == 0:
                continue
            for c in range(8 * k, min(8 * k + 8, cols)):
                if cand[c] and wn[c] >= min_local and wx[c] >= 0 and _strong(
                        float(wn[c]), float(wx[c]), float(cy[c:c + span].sum()), float(irow[c]), grow[c], has_gain,
                        sigma_b, sigma_s):
                    out[r, c] = True
                    n_runs = add_pixel(runs, n_runs, r, c)
            words[k] = 0
    return runs[:n_runs]


@numba.njit(nogil=True, cache=True)
def background_block(image, mask, gain, has_gain, kh, kw, sigma_b, min_local, limit, r0, r1, flags):
    """Step 1 of the extended variant on rows [r0, r1): flag the pixels that are not background.

    Parameters
    ----------
    image, mask, gain, has_gain, kh, kw, limit, r0, r1 : as :func:`dispersion_block`'s.
    sigma_b, min_local : of the dispersion test.
    flags : bool (rows, cols), False on these rows; set True where a pixel is not usable or
        its window is dispersed (with >= min_local usable pixels and a sum >= 0).

    Returns
    -------
    0 (the result is in ``flags``).
    """
    cols = image.shape[1]
    span = 2 * kw + 1
    cn, cx, cy, wn, wx = _buffers(image, cols, span)
    wy = np.zeros_like(wx)
    for r in range(r0, r1):
        _columns(image, mask, r, r == r0 or r % RESTART == 0, kh, limit, cn[kw:], cx[kw:], cy[kw:])
        _box_row(cn, span, wn)
        _box_row(cx, span, wx)
        _box_row(cy, span, wy)
        irow, mrow, grow = image[r], _row(mask, r), _row(gain, r)
        for c in range(cols):
            if not _usable(irow[c], mrow[c], limit):
                flags[r, c] = True
            elif wn[c] >= min_local and wx[c] >= 0:
                flags[r, c] = _dispersed(float(wn[c]), float(wx[c]), float(wy[c]), grow[c], has_gain, sigma_b)
    return 0


@numba.njit(nogil=True, cache=True)
def extended_strong(image, background, gain, rr, cc, kh, kw, sigma_s, threshold, limit, out):
    """Step 4 of the extended variant: the strong test at the core pixels (rr, cc).

    Parameters
    ----------
    image, gain, limit : as :func:`dispersion_block`'s.
    background : bool (rows, cols), the usable pixels outside the eroded core: the only
        ones that count in the window means.
    rr, cc : rows and columns of the usable core pixels.
    kh, kw : half-sizes of the (enlarged) window.
    sigma_s, threshold : of the strong test.
    out : bool (rows, cols); set to the test's result at (rr, cc).

    Notes
    -----
    Strong when v > threshold and v >= mean + sigma_s sqrt(g mean), the mean over the
    window's background pixels (0 with fewer than 2), as DIALS'
    ``DispersionExtendedThreshold``.
    """
    for i in range(rr.size):
        r, c = rr[i], cc[i]
        v = float(image[r, c])
        n, x = _window_at(image, background, r, c, kh, kw, limit)
        mean = float(x) / n if n >= 2 else 0.0
        out[r, c] = v > threshold and v >= mean + sigma_s * np.sqrt(_row(gain, r)[c] * mean)


@lru_cache(maxsize=None)
def _pool(threads: int) -> ThreadPoolExecutor:
    """One lasting pool per thread count: creating threads per frame would cost more than the work."""
    return ThreadPoolExecutor(threads, thread_name_prefix="livediff-spots")


def block_rows(threads: int, rows: int) -> list[tuple[int, int]]:
    """The row blocks (r0, r1) of :func:`run_blocks`: up to ``threads``, starting on multiples of RESTART."""
    chunks = -(-rows // RESTART)
    threads = min(int(threads), chunks)
    edges = [min(rows, RESTART * (chunks * i // threads)) for i in range(threads + 1)]
    return list(zip(edges, edges[1:]))


def run_blocks(threads: int, rows: int, kernel: Callable[..., Any], *args: Any, out: np.ndarray) -> list[Any]:
    """Run ``kernel(*args, r0, r1, out)`` on the row blocks of :func:`block_rows`.

    Blocks start on multiples of RESTART, so results do not depend on ``threads``.
    Returns the kernel's results, block by block (in row order).
    """
    blocks = block_rows(threads, rows)
    if len(blocks) == 1:
        return [kernel(*args, 0, rows, out)]
    futures = [_pool(len(blocks)).submit(kernel, *args, r0, r1, out) for r0, r1 in blocks]
    return [f.result() for f in futures]
