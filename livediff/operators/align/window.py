"""Integer search of the masked NCC over a window of lags, with FFTs (Padfield 2012).

:class:`LagSearch` computes the masked normalised cross-correlation of a frame with a
fixed reference at every integer lag of a window and returns the largest.
:class:`~livediff.operators.align.register.Registration` runs it on the coarsest level of
its pyramid (the whole frame when the frame is small) and refines the lag it finds with
the direct sums of :mod:`.local`.
"""
from __future__ import annotations

import math

import numba
import numpy as np
import scipy.fft as sfft

__all__ = ["LagSearch", "centre"]

#: relative size below which a variance term counts as zero (float32 FFT round-off is ~1e-6)
VARIANCE_RTOL = 1e-4


@numba.njit(nogil=True, cache=True)
def centre(image, mask, out):
    """out[0] = (image - mean) on valid pixels, 0 elsewhere; out[1] = out[0]**2.

    Returns (n valid, sum of out[1], mean over valid pixels); masked pixels are never read.
    """
    rows, cols = image.shape
    total = 0.0
    n = 0
    for r in range(rows):
        for c in range(cols):
            if mask[r, c]:
                total += image[r, c]
                n += 1
    mean = total / n if n else 0.0
    energy = 0.0
    for r in range(rows):
        for c in range(cols):
            if mask[r, c]:
                v = image[r, c] - mean
                out[0, r, c] = v
                out[1, r, c] = v * v
                energy += v * v
            else:
                out[0, r, c] = 0.0
                out[1, r, c] = 0.0
    return n, energy, mean


@numba.njit(nogil=True, cache=True)
def _ncc_value(s_fg, s_g, s_gg, mean_f, inv_n, weight, tol):
    """NCC at one lag from the frame's terms and the reference's (see :class:`LagSearch`); NaN if undefined."""
    v_g = s_gg - s_g * s_g * inv_n
    if weight == 0.0 or v_g <= tol:
        return np.nan
    return (s_fg - mean_f * s_g) * weight / math.sqrt(v_g)


@numba.njit(nogil=True, cache=True)
def _ncc_peak(terms, row_offset, mean_f, inv_n, weight, ly, lx, radius2, tol):
    """Largest masked NCC over the lags within ``radius2``.

    ``terms`` = (S_fg, S_g, S_gg) with lag dy at row ``(dy + row_offset) % rows`` and dx at
    column ``dx % cols``; the reference's arrays have lag (dy, dx) at (dy + ly, dx + lx).
    Returns (value, dy, dx) of the maximum; value is -inf when no lag is usable.
    """
    t_rows, t_cols = terms.shape[1], terms.shape[2]
    best, by, bx = -np.inf, 0, 0
    for iy in range(2 * ly + 1):
        dy2 = float(iy - ly) ** 2
        if dy2 > radius2:
            continue
        r = (iy - ly + row_offset) % t_rows
        reach = int(min(float(lx), math.sqrt(radius2 - dy2)))
        for ix in range(lx - reach, lx + reach + 1):
            c = ix - lx if ix >= lx else ix - lx + t_cols
            v = _ncc_value(terms[0, r, c], float(terms[1, r, c]), terms[2, r, c],
                           mean_f[iy, ix], inv_n[iy, ix], weight[iy, ix], tol)
            if v > best:
                best, by, bx = v, iy - ly, ix - lx
    return best, by, bx


def _forward(a: np.ndarray, shape: tuple[int, int], workers: int | None) -> np.ndarray:
    """2-D real FFT of ``a`` (..., rows, cols) zero-padded to ``shape`` (padding rows not transformed)."""
    half = sfft.rfft(a, n=shape[1], axis=-1, workers=workers)
    return sfft.fft(half, n=shape[0], axis=-2, workers=workers, overwrite_x=True)


def _inverse_rows(spec: np.ndarray, shape: tuple[int, int], ly: int,
                  workers: int | None) -> tuple[np.ndarray, int]:
    """Inverse of :func:`_forward` keeping only the rows of lags -ly..ly when that saves work.

    Returns the real array and the offset that maps lag dy to row ``(dy + offset) % rows``.
    """
    spec = sfft.ifft(spec, axis=-2, workers=workers, overwrite_x=True)
    offset = 0
    if 2 * ly + 1 <= shape[0] // 2:
        rows = np.r_[shape[0] - ly: shape[0], 0: ly + 1]
        spec, offset = spec[..., rows, :], ly
    return sfft.irfft(spec, n=shape[1], axis=-1, workers=workers, overwrite_x=True), offset


def _lag_window(terms: np.ndarray, offset: int, ly: int, lx: int) -> np.ndarray:
    """The (2 ly + 1, 2 lx + 1) lag window of circular correlation terms, lag (0, 0) at the centre."""
    rows = (np.arange(-ly, ly + 1) + offset) % terms.shape[-2]
    cols = np.arange(-lx, lx + 1) % terms.shape[-1]
    return terms[..., rows[:, None], cols[None, :]]


class LagSearch:
    """Masked NCC of frames against one reference at every integer lag of a window.

    Parameters
    ----------
    reference : (rows, cols) float array, zero where ``reference_mask`` is False.
    reference_mask, mask : bool arrays, True = valid: the reference's pixels and the
        frames'.
    radius : search radius in pixels (``hypot(dy, dx) <= radius``), or None: every lag
        with enough overlap.
    overlap_ratio : lags with fewer valid overlapping pixels than this fraction of the
        largest overlap are ignored.
    workers : threads for scipy.fft.

    Notes
    -----
    Everything that depends only on the reference and the masks (their FFTs, the overlap
    counts, the reference's local means and variances at every lag) is computed here;
    each call costs two forward and three inverse real FFTs of the frame, zero-padded to
    ``scipy.fft.next_fast_len(rows + L)`` with ``L`` the largest lag searched, so that no
    lag searched wraps around.  The formulas are those of :class:`.Registration`
    (Padfield 2012, eq. 21).
    """

    def __init__(self, reference: np.ndarray, reference_mask: np.ndarray, mask: np.ndarray, *,
                 radius: float | None, overlap_ratio: float, workers: int | None) -> None:
        rows, cols = reference.shape
        self.mask, self.workers = mask, workers
        if radius is None:
            self._ly, self._lx = self._overlap_reach(reference_mask, overlap_ratio)
        else:
            self._ly, self._lx = min(math.ceil(radius) + 1, rows - 1), min(math.ceil(radius) + 1, cols - 1)
        self._radius2 = math.inf if radius is None else float(radius) ** 2
        self._fft_shape = (sfft.next_fast_len(rows + self._ly, real=True),
                           sfft.next_fast_len(cols + self._lx, real=True))
        self._prepare(reference, reference_mask, overlap_ratio)

    def _overlap_reach(self, ref_mask: np.ndarray, overlap_ratio: float) -> tuple[int, int]:
        """Largest |dy| and |dx| of the lags with enough overlap: the FFTs need pad no further."""
        rows, cols = ref_mask.shape
        shape = (sfft.next_fast_len(2 * rows - 1, real=True), sfft.next_fast_len(2 * cols - 1, real=True))
        spec = _forward(np.stack([ref_mask, self.mask]).astype(np.float64), shape, self.workers)
        count, offset = _inverse_rows(np.conj(spec[0]) * spec[1], shape, rows - 1, self.workers)
        count = np.rint(_lag_window(count, offset, rows - 1, cols - 1))
        iy, ix = np.nonzero(count >= max(overlap_ratio * count.max(), 2.0))
        return max(int(np.abs(iy - rows + 1).max(initial=0)), 1), max(int(np.abs(ix - cols + 1).max(initial=0)), 1)

    def _prepare(self, ref: np.ndarray, ref_mask: np.ndarray, overlap_ratio: float) -> None:
        """Reference-only terms at every lag of the window (float64 FFTs, stored as float32)."""
        centred = np.empty((2, *ref.shape))
        centre(ref, ref_mask, centred)
        spec = _forward(np.stack([centred[0], centred[1], ref_mask, self.mask]), self._fft_shape, self.workers)
        self._conj_f = np.conj(spec[0]).astype(np.complex64)
        self._conj_m = np.conj(spec[2]).astype(np.complex64)
        terms, offset = _inverse_rows(np.conj(spec[:3]) * spec[3], self._fft_shape, self._ly, self.workers)
        s_f, s_ff, count = _lag_window(terms, offset, self._ly, self._lx)
        count = np.rint(count)
        overlap = count >= max(overlap_ratio * count.max(), 2.0)
        inv_n = np.divide(1.0, count, out=np.zeros_like(count), where=overlap)
        v_f = s_ff - s_f * s_f * inv_n
        usable = overlap & (v_f > VARIANCE_RTOL * np.max(v_f, where=overlap, initial=0.0))
        self._mean_f = (s_f * inv_n).astype(np.float32)
        self._inv_n = inv_n.astype(np.float32)
        self._weight = np.divide(1.0, np.sqrt(v_f, where=usable, out=np.ones_like(v_f)),
                                 out=np.zeros_like(v_f), where=usable).astype(np.float32)

    def __call__(self, image: np.ndarray) -> tuple[float, int, int, float]:
        """(NCC, dy, dx, mean) of the largest NCC: the lag pairs reference pixel x with frame
        pixel x + (dy, dx); ``mean`` is the frame's mean over its valid pixels.  NCC is -inf
        when no lag has usable overlap and contrast (e.g. a flat frame)."""
        centred = np.empty((2, *image.shape), dtype=np.float32)
        n_valid, energy, mean = centre(image, self.mask, centred)
        if n_valid == 0 or energy <= 0:
            return -math.inf, 0, 0, mean
        spec = _forward(centred, self._fft_shape, self.workers)
        products = np.empty((3, *spec.shape[1:]), dtype=np.complex64)
        np.multiply(self._conj_f, spec[0], out=products[0])
        np.multiply(self._conj_m, spec[0], out=products[1])
        np.multiply(self._conj_m, spec[1], out=products[2])
        terms, offset = _inverse_rows(products, self._fft_shape, self._ly, self.workers)
        best, dy, dx = _ncc_peak(terms, offset, self._mean_f, self._inv_n, self._weight,
                                 self._ly, self._lx, self._radius2, VARIANCE_RTOL * energy)
        return float(best), int(dy), int(dx), float(mean)
