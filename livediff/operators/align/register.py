"""Kernels of the ``align`` family: masked registration of frames (their shifting is in :mod:`.shift`).

:func:`register` measures the translation between a frame and a reference by masked
normalised cross-correlation (Padfield 2012), so that masked pixels (beam stop, module
gaps, dead pixels) take no part in it; :class:`Registration` does it for a stream of
frames against one reference, computing once what depends only on the reference and the
masks.  :func:`shift_image`, which applies the shift and moves the mask with the data,
lives in :mod:`livediff.operators.align.shift` and is re-exported here.
"""
from __future__ import annotations

import math

import numba
import numpy as np
import scipy.fft as sfft

from ..checks import all_valid, check_image, check_mask, check_shape
from .shift import shift_image

__all__ = ["Registration", "check_roi", "register", "shift_image"]

#: relative size below which a variance term counts as zero (float32 FFT round-off is ~1e-6)
_VARIANCE_RTOL = 1e-4

# least-squares fit of z = c0 + c1 y + c2 x + c3 y^2 + c4 x^2 + c5 x y over a 3 x 3 neighbourhood
_YY, _XX = (a.ravel().astype(np.float64) for a in np.mgrid[-1:2, -1:2])
_QUADRATIC_FIT = np.linalg.pinv(np.stack([np.ones(9), _YY, _XX, _YY ** 2, _XX ** 2, _YY * _XX], axis=1))


@numba.njit(nogil=True, cache=True)
def _centre(image, mask, out):
    """out[0] = (image - mean) on valid pixels, 0 elsewhere; out[1] = out[0]**2; returns (n valid, sum out[1])."""
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
    return n, energy


@numba.njit(nogil=True, cache=True)
def _ncc_value(s_fg, s_g, s_gg, mean_f, inv_n, weight, tol):
    """NCC at one lag from the frame's terms and the reference's (see :class:`Registration`); NaN if undefined."""
    v_g = s_gg - s_g * s_g * inv_n
    if weight == 0.0 or v_g <= tol:
        return np.nan
    return (s_fg - mean_f * s_g) * weight / math.sqrt(v_g)


@numba.njit(nogil=True, cache=True)
def _ncc_peak(terms, row_offset, mean_f, inv_n, weight, ly, lx, radius2, tol):
    """Largest masked NCC over the lags within ``radius2`` and the 3 x 3 values around it.

    ``terms`` = (S_fg, S_g, S_gg) with lag dy at row ``(dy + row_offset) % rows`` and dx at
    column ``dx % cols``; the reference's arrays have lag (dy, dx) at (dy + ly, dx + lx).
    Returns (value, iy, ix, patch) with (iy, ix) = lag + (ly, lx) of the maximum; value is
    -inf when no lag is usable.
    """
    t_rows, t_cols = terms.shape[1], terms.shape[2]
    best, by, bx = -np.inf, -1, -1
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
                best, by, bx = v, iy, ix
    patch = np.full((3, 3), np.nan)
    if 1 <= by < 2 * ly and 1 <= bx < 2 * lx:
        for a in range(3):
            r = (by + a - 1 - ly + row_offset) % t_rows
            for b in range(3):
                c = (bx + b - 1 - lx) % t_cols
                iy, ix = by + a - 1, bx + b - 1
                patch[a, b] = _ncc_value(terms[0, r, c], float(terms[1, r, c]), terms[2, r, c],
                                         mean_f[iy, ix], inv_n[iy, ix], weight[iy, ix], tol)
    return best, by, bx, patch


def _peak_offset(patch: np.ndarray) -> tuple[float, float]:
    """Sub-pixel position of the maximum of a 3 x 3 correlation patch, relative to its centre.

    A quadratic is fitted by least squares to the logarithm of the values (a Gaussian peak;
    to the values themselves when one is <= 0); no refinement when a value is missing or
    the fit has no maximum within one pixel.
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


def check_roi(roi: tuple[int, int, int, int] | None, shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """``roi`` = (row_start, row_stop, col_start, col_stop) checked against ``shape``; None = the whole image.

    Raises
    ------
    ValueError
        If the region is not at least 2 x 2 pixels inside the image.
    """
    rows, cols = shape
    if roi is None:
        return 0, rows, 0, cols
    r0, r1, c0, c1 = (int(v) for v in roi)
    if not (0 <= r0 < r1 <= rows and 0 <= c0 < c1 <= cols) or min(r1 - r0, c1 - c0) < 2:
        raise ValueError(f"roi (row_start, row_stop, col_start, col_stop) = {tuple(roi)} is not a "
                         f"region of at least 2 x 2 pixels inside the image of shape {tuple(shape)}")
    return r0, r1, c0, c1


class Registration:
    """Masked normalised cross-correlation of frames against one fixed reference.

    Everything that depends only on the reference and the masks (their FFTs, the overlap
    counts, the reference's local means and variances at every lag) is computed here,
    once; each call then costs two forward and three inverse real FFTs of the frame.
    Calls do not modify the object, so one instance may serve several threads.

    Parameters
    ----------
    reference : (rows, cols) array, the image frames are aligned with.
    mask : bool array of the frames' shape, True = valid, or None (all valid): the pixels
        of the frames to use (the beam stop, gaps and dead pixels never move).
    reference_mask : the reference's valid pixels; None = ``mask``.
    max_shift : search radius in pixels: only shifts with ``hypot(dy, dx) <= max_shift``
        are considered, which also shrinks the FFTs (padding to ``rows + max_shift``
        instead of ``rows + (1 - overlap_ratio) rows`` or so).  None = any shift with
        enough overlap.
    roi : (row_start, row_stop, col_start, col_stop) of the region registered, or None
        (the whole frame).  The shift found applies to the whole frame.
    overlap_ratio : lags whose number of valid overlapping pixels is below this fraction
        of the largest overlap are ignored (scikit-image's ``overlap_ratio``).
    workers : threads for scipy.fft (None = scipy's default).

    Raises
    ------
    ValueError
        If an image is not 2-D, shapes disagree, the ROI is empty or outside the frame,
        ``max_shift`` or ``overlap_ratio`` are out of range, or the reference has no
        valid pixel.
    TypeError
        If an image is not real-valued or a mask is not boolean.

    Notes
    -----
    With ``f``, ``g`` the reference and the frame minus their means over valid pixels,
    ``m``, ``n`` their masks and all sums over ``x``, the NCC at lag ``d`` is
    (Padfield 2012, eq. 21)::

        N   = sum m(x) n(x+d)                  S_f  = sum f m(x) n(x+d)
        S_g = sum m(x) (g n)(x+d)              S_fg = sum f m(x) (g n)(x+d)
        V_f = sum f^2 m(x) n(x+d) - S_f^2 / N  V_g  = sum m(x) (g^2 n)(x+d) - S_g^2 / N
        NCC(d) = (S_fg - S_f S_g / N) / sqrt(V_f V_g)

    i.e. the Pearson correlation of the two images over the pixels valid in both at that
    lag.  Each sum is a cross-correlation computed with real FFTs zero-padded to
    ``scipy.fft.next_fast_len(rows + L)``, ``L`` the largest lag searched (or with enough
    overlap), so that no lag searched wraps around.  The
    integer maximum is refined by fitting a quadratic to the logarithm of the 3 x 3 NCC
    values around it (a Gaussian peak fit).  The frame's shift is minus the lag of the
    maximum; the quality is the NCC at the integer maximum (1 = identical up to gain
    and offset).

    References
    ----------
    D. Padfield, "Masked object registration in the Fourier domain", IEEE Trans. Image
    Process. 21(5), 2706-2718 (2012), doi:10.1109/TIP.2011.2181402.
    """

    def __init__(self, reference: np.ndarray, mask: np.ndarray | None = None, *,
                 reference_mask: np.ndarray | None = None, max_shift: float | None = None,
                 roi: tuple[int, int, int, int] | None = None, overlap_ratio: float = 0.3,
                 workers: int | None = None) -> None:
        reference = check_image(reference, "reference")
        self.shape: tuple[int, int] = reference.shape
        mask = check_mask(mask, self.shape)
        mask = all_valid(self.shape) if mask is None else mask
        reference_mask = mask if reference_mask is None else check_mask(reference_mask, self.shape,
                                                                         "reference_mask")
        if max_shift is not None and not max_shift > 0:
            raise ValueError(f"max_shift must be > 0 pixels or None, got {max_shift}")
        if not 0 < overlap_ratio <= 1:
            raise ValueError(f"overlap_ratio must be in (0, 1], got {overlap_ratio}")
        self.roi = check_roi(roi, self.shape)
        window = np.s_[self.roi[0]:self.roi[1], self.roi[2]:self.roi[3]]
        self.mask = np.ascontiguousarray(mask[window])
        ref, ref_mask = reference[window], reference_mask[window]
        if not ref_mask.any():
            raise ValueError("the reference has no valid pixel (reference mask all False within the ROI)")
        rows, cols = ref.shape
        self.workers = workers
        if max_shift is None:
            self._ly, self._lx = self._overlap_reach(ref_mask, overlap_ratio)
        else:
            self._ly, self._lx = min(math.ceil(max_shift) + 1, rows - 1), min(math.ceil(max_shift) + 1, cols - 1)
        self._radius2 = math.inf if max_shift is None else float(max_shift) ** 2
        self._fft_shape = (sfft.next_fast_len(rows + self._ly, real=True),
                           sfft.next_fast_len(cols + self._lx, real=True))
        self._prepare(ref, ref_mask, overlap_ratio)

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
        _centre(ref, ref_mask, centred)
        spec = _forward(np.stack([centred[0], centred[1], ref_mask, self.mask]), self._fft_shape, self.workers)
        self._conj_f = np.conj(spec[0]).astype(np.complex64)
        self._conj_m = np.conj(spec[2]).astype(np.complex64)
        terms, offset = _inverse_rows(np.conj(spec[:3]) * spec[3], self._fft_shape, self._ly, self.workers)
        s_f, s_ff, count = _lag_window(terms, offset, self._ly, self._lx)
        count = np.rint(count)
        overlap = count >= max(overlap_ratio * count.max(), 2.0)
        inv_n = np.divide(1.0, count, out=np.zeros_like(count), where=overlap)
        v_f = s_ff - s_f * s_f * inv_n
        usable = overlap & (v_f > _VARIANCE_RTOL * np.max(v_f, where=overlap, initial=0.0))
        self._mean_f = (s_f * inv_n).astype(np.float32)
        self._inv_n = inv_n.astype(np.float32)
        self._weight = np.divide(1.0, np.sqrt(v_f, where=usable, out=np.ones_like(v_f)),
                                 out=np.zeros_like(v_f), where=usable).astype(np.float32)

    def __call__(self, image: np.ndarray) -> tuple[float, float, float]:
        """(shift_y, shift_x, quality) of ``image``; all NaN when no lag is usable (e.g. a flat image)."""
        image = check_image(image)
        check_shape(image, self.shape, "image", of="reference")
        r0, r1, c0, c1 = self.roi
        centred = np.empty((2, r1 - r0, c1 - c0), dtype=np.float32)
        n_valid, energy = _centre(image[r0:r1, c0:c1], self.mask, centred)
        if n_valid == 0 or energy <= 0:
            return math.nan, math.nan, math.nan
        spec = _forward(centred, self._fft_shape, self.workers)
        products = np.empty((3, *spec.shape[1:]), dtype=np.complex64)
        np.multiply(self._conj_f, spec[0], out=products[0])
        np.multiply(self._conj_m, spec[0], out=products[1])
        np.multiply(self._conj_m, spec[1], out=products[2])
        terms, offset = _inverse_rows(products, self._fft_shape, self._ly, self.workers)
        best, iy, ix, patch = _ncc_peak(terms, offset, self._mean_f, self._inv_n, self._weight,
                                        self._ly, self._lx, self._radius2, _VARIANCE_RTOL * energy)
        if not np.isfinite(best):
            return math.nan, math.nan, math.nan
        dy, dx = _peak_offset(patch)
        return -(iy - self._ly + dy), -(ix - self._lx + dx), min(float(best), 1.0)


def register(image: np.ndarray, reference: np.ndarray, mask: np.ndarray | None = None,
             **params) -> tuple[float, float, float]:
    """Shift aligning ``image`` with ``reference``, by masked normalised cross-correlation.

    Parameters
    ----------
    image, reference : (rows, cols) arrays of any real dtype (not modified).
    mask : bool array, True = valid, or None (all valid): the pixels to use in both
        images (pass ``reference_mask=`` when the reference's differ).
    **params : keyword arguments of :class:`Registration` (``reference_mask``,
        ``max_shift``, ``roi``, ``overlap_ratio``, ``workers``).

    Returns
    -------
    (shift_y, shift_x, quality) : the shift, in pixels, that :func:`shift_image` applies
        to ``image`` to align it with ``reference`` (if ``image = np.roll(reference, 3,
        axis=0)`` it is (-3, 0)), and the NCC peak height in [-1, 1].  All NaN when no lag
        has usable overlap and contrast.

    Raises
    ------
    ValueError, TypeError
        As :class:`Registration`, and when ``image`` and ``reference`` differ in shape.

    Notes
    -----
    Method and formulas: :class:`Registration` (Padfield 2012); build one to register
    many frames against the same reference.  scikit-image's ``phase_cross_correlation(
    reference, moving)`` returns the same shift, its arguments in the other order.
    """
    return Registration(reference, mask, **params)(image)
