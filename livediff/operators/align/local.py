"""Local refinement of a registration: the masked NCC around one integer lag, by direct sums.

:func:`symmetric_sums` computes, in one pass over a frame, the sums from which
:func:`patch_ncc` makes the masked NCC at the 3 x 3 lags around a lag ``k``, over pairs of
pixels chosen symmetrically (see :class:`~livediff.operators.align.register.Registration`,
Notes); :func:`peak_offset` fits the sub-pixel maximum of that patch.  :func:`bin2` builds
the levels of the coarse-to-fine pyramid.
"""
from __future__ import annotations

import numba
import numpy as np

__all__ = ["bin2", "bin2_mask", "patch_ncc", "peak_offset", "symmetric_sums"]

# least-squares fit of z = c0 + c1 y + c2 x + c3 y^2 + c4 x^2 + c5 x y over a 3 x 3 neighbourhood
_YY, _XX = (a.ravel().astype(np.float64) for a in np.mgrid[-1:2, -1:2])
_QUADRATIC_FIT = np.linalg.pinv(np.stack([np.ones(9), _YY, _XX, _YY ** 2, _XX ** 2, _YY * _XX], axis=1))

#: a variance term smaller than this fraction of its sum of squares counts as zero
_CANCELLATION = 1e-6


@numba.njit(nogil=True, cache=True)
def bin2_mask(valid):
    """2 x 2 binning of a mask (odd last row / column dropped): valid when all four pixels are."""
    rows, cols = valid.shape[0] // 2, valid.shape[1] // 2
    out = np.empty((rows, cols), np.bool_)
    for r in range(rows):
        top, bottom = valid[2 * r], valid[2 * r + 1]
        for c in range(cols):
            out[r, c] = top[2 * c] & top[2 * c + 1] & bottom[2 * c] & bottom[2 * c + 1]
    return out


@numba.njit(nogil=True, cache=True)
def bin2(src, valid, out):
    """out = mean of each 2 x 2 block of ``src`` where ``valid`` (the binned mask), else 0.

    Only the pixels of valid blocks are read, so masked garbage (NaN, gap markers) never is.
    """
    rows, cols = out.shape
    for r in range(rows):
        top, bottom = src[2 * r], src[2 * r + 1]
        for c in range(cols):
            if valid[r, c]:
                total = (np.float64(top[2 * c]) + np.float64(top[2 * c + 1])
                         + np.float64(bottom[2 * c]) + np.float64(bottom[2 * c + 1]))
                out[r, c] = 0.25 * total
            else:
                out[r, c] = 0.0


@numba.njit(nogil=True, cache=True, fastmath=True)
def _pair_row(g, m, n, y, ky, kx, c, d, h, h2):
    """Row ``y`` of D = m(x) n(x + k) (inside both images), H = D (g(x + k) - c) and H**2.

    Rows are padded by one zero on each side (column x at index x + 1); a row outside the
    image is all zero.  ``g`` is read at every pixel of the overlap, but a value under the
    mask (NaN, a gap marker) is never used.
    """
    rows, cols = m.shape
    d[:] = 0.0
    h[:] = 0.0
    h2[:] = 0.0
    yy = y + ky
    if y < 0 or y >= rows or yy < 0 or yy >= rows:
        return
    zero, one, c32 = np.float32(0.0), np.float32(1.0), np.float32(c)
    x0, x1 = max(0, -kx), min(cols, cols - kx)
    m_row, n_row, g_row = m[y, x0:x1], n[yy, x0 + kx:x1 + kx], g[yy, x0 + kx:x1 + kx]
    for x in range(x1 - x0):
        ok = m_row[x] & n_row[x]
        v = np.float32(g_row[x]) - c32
        v = v if ok else zero
        d[x + x0 + 1] = one if ok else zero
        h[x + x0 + 1] = v
        h2[x + x0 + 1] = v * v


@numba.njit(nogil=True, cache=True, fastmath=True)
def symmetric_sums(f, m, g, n, ky, kx, c, with_reference, out):
    """Sums over the pairs (x, x + j), both in D, for the 3 x 3 lags j (in place, ``out`` zeroed).

    ``D(x) = m(x) n(x + k)``, the reference pixels matched at lag ``k`` = (ky, kx), and
    ``G(y) = g(y + k) - c``; for ``j`` = (a - 1, b - 1)::

        out[0, a, b] = sum D(x) D(x+j) f(x) G(x+j)    out[3, a, b] = sum D(x) D(x+j)
        out[1, a, b] = sum D(x) D(x+j) G(x+j)         out[4, a, b] = sum D(x) D(x+j) f(x)
        out[2, a, b] = sum D(x) D(x+j) G(x+j)**2      out[5, a, b] = sum D(x) D(x+j) f(x)**2

    The last three depend on the reference and masks only; they are computed when
    ``with_reference``.  ``f`` is zero where ``m`` is False; ``g`` is read only where ``n``
    is True.  Each row is summed in float32, rows in float64.
    """
    rows, cols = f.shape
    width = cols + 2
    d = np.zeros((3, width), np.float32)
    h = np.zeros((3, width), np.float32)
    h2 = np.zeros((3, width), np.float32)
    df = np.zeros(width, np.float32)
    dff = np.zeros(width, np.float32)
    out[:] = 0.0
    _pair_row(g, m, n, 0, ky, kx, c, d[0], h[0], h2[0])
    for y in range(rows):
        nxt = (y + 1) % 3
        _pair_row(g, m, n, y + 1, ky, kx, c, d[nxt], h[nxt], h2[nxt])
        dr = d[y % 3]
        f_row = f[y]
        for x in range(cols):
            df[x + 1] = dr[x + 1] * f_row[x]
            dff[x + 1] = df[x + 1] * f_row[x]
        for a in range(3):
            yy = y + a - 1
            if yy < 0 or yy >= rows:
                continue
            s = yy % 3
            _row_dots(df, h[s], dr, h[s], dr, h2[s], out[:3, a])
            if with_reference:
                _row_dots(dr, d[s], df, d[s], dff, d[s], out[3:, a])


@numba.njit(nogil=True, cache=True, fastmath=True, inline="always")
def _row_dots(u0, v0, u1, v1, u2, v2, acc):
    """acc[t, b] += sum_x u_t[x] v_t[x + b - 1] for t, b = 0, 1, 2 (padded rows, x = 1..len - 2),
    summed in float32."""
    t00 = t01 = t02 = t10 = t11 = t12 = t20 = t21 = t22 = np.float32(0.0)
    for x in range(1, u0.size - 1):
        p, q, r = u0[x], u1[x], u2[x]
        t00 += p * v0[x - 1]
        t01 += p * v0[x]
        t02 += p * v0[x + 1]
        t10 += q * v1[x - 1]
        t11 += q * v1[x]
        t12 += q * v1[x + 1]
        t20 += r * v2[x - 1]
        t21 += r * v2[x]
        t22 += r * v2[x + 1]
    acc[0, 0] += t00
    acc[0, 1] += t01
    acc[0, 2] += t02
    acc[1, 0] += t10
    acc[1, 1] += t11
    acc[1, 2] += t12
    acc[2, 0] += t20
    acc[2, 1] += t21
    acc[2, 2] += t22


def patch_ncc(frame_sums: np.ndarray, reference_sums: np.ndarray) -> np.ndarray:
    """(3, 3) Pearson correlations from the sums of :func:`symmetric_sums`; NaN where undefined."""
    s_fg, s_g, s_gg = frame_sums
    count, s_f, s_ff = reference_sums
    with np.errstate(divide="ignore", invalid="ignore"):
        v_f = s_ff - s_f * s_f / count
        v_g = s_gg - s_g * s_g / count
        ncc = (s_fg - s_f * s_g / count) / np.sqrt(v_f * v_g)
    usable = (count >= 2) & (v_f > _CANCELLATION * s_ff) & (v_g > _CANCELLATION * s_gg)
    return np.where(usable, np.minimum(ncc, 1.0), np.nan)


def peak_offset(patch: np.ndarray) -> tuple[float, float]:
    """Sub-pixel position of the maximum of a 3 x 3 correlation patch, relative to its centre.

    A quadratic is fitted by least squares to the logarithm of the values (a Gaussian peak;
    to the values themselves when one is <= 0); no refinement when a value is missing or
    the fit has no maximum within one pixel.  A patch symmetric about its centre gives
    exactly (0, 0).
    """
    if not np.all(np.isfinite(patch)):
        return 0.0, 0.0
    z = np.log(patch) if patch.min() > 0 else patch
    c = _QUADRATIC_FIT @ z.ravel()
    hessian = np.array([[2 * c[3], c[5]], [c[5], 2 * c[4]]])
    if hessian[0, 0] >= 0 or np.linalg.det(hessian) <= 0:
        return 0.0, 0.0
    dy, dx = np.linalg.solve(hessian, -c[1:3])
    if abs(dy) > 1 or abs(dx) > 1:
        return 0.0, 0.0
    return float(dy), float(dx)
