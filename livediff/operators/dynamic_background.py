"""Dynamic background: remove each frame's own Gaussian low-pass (EBSD Kikuchi bands, slow gradients).

:func:`dynamic_background` (also re-exported by :mod:`~livediff.operators.corrections`,
where DESIGN.md lists it) estimates the background by masked normalised convolution
with ``scipy.ndimage.gaussian_filter``'s kernel and divides or subtracts it; the operator
``dynamic_background`` (:class:`DynamicBackground`) applies it to every frame.  The
low-pass runs separably in direct form, by FFT, or as two matrix products over the band of
the Gaussian's matrix, whichever is cheapest with one BLAS thread (livediff's executors
run BLAS on one thread per worker: :mod:`livediff.executors.blas`).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Literal

import numba
import numpy as np
import scipy.fft

from ..model import Frame, SeriesStart
from .base import BaseOperator, param
from .checks import check_choice, check_image, check_mask, check_output
from .masks import finite_mask, float32_series, store

__all__ = ["DynamicBackground", "DynamicBackgroundParams", "dynamic_background", "remove_background"]


@functools.lru_cache(maxsize=32)
def _taps(sigma: float, truncate: float, window: str) -> np.ndarray:
    """The normalised 1-D Gaussian, centred on tap ``len // 2`` of a correlation.

    ``"scipy"``: scipy.ndimage's, radius ``int(truncate * sigma + 0.5)``.  ``"kikuchipy"``:
    kikuchipy's dynamic-background window, ``int(truncate * sigma)`` taps of
    ``exp(-n² / 2σ²)`` with n from the window's middle (an even count sits half a pixel off
    the centre tap, as kikuchipy's correlation does).
    """
    if window == "scipy":
        radius = int(truncate * sigma + 0.5)
        n = np.arange(-radius, radius + 1, dtype=np.float64)
    else:
        taps = int(truncate * sigma)
        if taps < 1:
            raise ValueError(f"kikuchipy's window has int(truncate * sigma) taps: {truncate} x {sigma} gives none")
        n = np.arange(taps, dtype=np.float64) - (taps - 1) / 2
    w = np.exp(-0.5 / (sigma * sigma) * n ** 2)
    w /= w.sum()
    w.setflags(write=False)
    return w


@numba.njit(nogil=True, cache=True, inline="always")
def _fold(j, n, reflect):
    """Index j of a signal of length n extended by scipy's 'reflect' (d c b a | a b c d) or 'nearest'."""
    if reflect:
        j = j % (2 * n)
        return 2 * n - 1 - j if j >= n else j
    return min(max(j, 0), n - 1)


@numba.njit(nogil=True, cache=True, inline="always")
def _pairs(o, rows_a, rows_b, w, k, cols):  # pragma: no cover - compiled
    """o[c] += Σ_j w[k - j] (a_j[c] + b_j[c]) over the (up to) four tap pairs k, k - 1, ... handed in: four pairs
    per load and store of ``o`` (the loop is bound by loads; one pair per pass would store ``o`` four times)."""
    a0, a1, a2, a3 = rows_a
    b0, b1, b2, b3 = rows_b
    w0, w1, w2, w3 = w[k], w[k - 1], w[k - 2], w[k - 3]
    for c in range(cols):
        o[c] += (w0 * (a0[c] + b0[c]) + w1 * (a1[c] + b1[c])) + (w2 * (a2[c] + b2[c]) + w3 * (a3[c] + b3[c]))


@numba.njit(nogil=True, cache=True, fastmath={"contract"})
def _separable(src, w, reflect, out, row):  # pragma: no cover - compiled
    """out = the correlation of ``src`` with a symmetric ``w`` along both axes (centre tap ``len(w) // 2``).

    Vertical pass first, into ``out``: each output row is the weighted sum of whole input rows, taps k and
    len - 1 - k added in pairs, four pairs per sweep of the row (contiguous rows: it vectorises).  Then the
    horizontal pass in place, row by row: ``row`` (len cols + len(w) - 1) holds the boundary-extended row,
    summed with the same pairing.  Arithmetic in the precision of ``w``: no transposes, no float64
    temporaries for float32.
    """
    rows, cols = src.shape
    m = w.size
    h = m // 2
    centre = w[h]
    if m % 2 == 0:  # no centre tap (kept in w's type)
        centre -= centre
    pairs = m // 2
    for i in range(rows):
        o, s = out[i], src[i]
        for c in range(cols):
            o[c] = centre * s[c]
        k = pairs - 1
        while k >= 3:
            _pairs(o, (src[_fold(i + k - h, rows, reflect)], src[_fold(i + k - 1 - h, rows, reflect)],
                       src[_fold(i + k - 2 - h, rows, reflect)], src[_fold(i + k - 3 - h, rows, reflect)]),
                   (src[_fold(i + m - 1 - k - h, rows, reflect)], src[_fold(i + m - k - h, rows, reflect)],
                    src[_fold(i + m + 1 - k - h, rows, reflect)], src[_fold(i + m + 2 - k - h, rows, reflect)]),
                   w, k, cols)
            k -= 4
        while k >= 0:
            a, b = src[_fold(i + k - h, rows, reflect)], src[_fold(i + m - 1 - k - h, rows, reflect)]
            wk = w[k]
            for c in range(cols):
                o[c] += wk * (a[c] + b[c])
            k -= 1
    for i in range(rows):
        o = out[i]
        for j in range(cols + m - 1):
            row[j] = o[_fold(j - h, cols, reflect)]
        for c in range(cols):
            o[c] = centre * row[c + h]
        k = pairs - 1
        while k >= 3:
            _pairs(o, (row[k:], row[k - 1:], row[k - 2:], row[k - 3:]),
                   (row[m - 1 - k:], row[m - k:], row[m + 1 - k:], row[m + 2 - k:]), w, k, cols)
            k -= 4
        while k >= 0:
            wk = w[k]
            a, b = row[k:k + cols], row[m - 1 - k:m - 1 - k + cols]
            for c in range(cols):
                o[c] += wk * (a[c] + b[c])
            k -= 1


def _lowpass_direct(src: np.ndarray, w: np.ndarray, reflect: bool) -> np.ndarray:
    """The separable correlation with ``w`` along both axes, in ``src``'s precision (C-contiguous result)."""
    src = np.ascontiguousarray(src)
    out = np.empty_like(src)
    _separable(src, w.astype(src.dtype, copy=False), reflect, out, np.empty(src.shape[1] + w.size - 1, src.dtype))
    return out


@functools.lru_cache(maxsize=16)
def _spectrum(n: int, sigma: float, truncate: float, window: str, half: bool) -> np.ndarray:
    """DFT of the correlation with :func:`_taps` placed circularly on n samples (full, or rfft's half), in
    the precision of the window's low-pass (:func:`_precision`)."""
    w = _taps(sigma, truncate, window)
    h = w.size // 2
    g = np.zeros(n)
    g[(h - np.arange(w.size)) % n] = w  # correlation = convolution with the reversed taps
    spec = (scipy.fft.rfft(g) if half else scipy.fft.fft(g)).astype(np.result_type(_precision(window), 1j))
    spec.setflags(write=False)
    return spec


def _folded(j: np.ndarray, n: int, reflect: bool) -> np.ndarray:
    """:func:`_fold` on an array of indices."""
    if reflect:
        j = j % (2 * n)
        return np.where(j >= n, 2 * n - 1 - j, j)
    return np.clip(j, 0, n - 1)


@functools.lru_cache(maxsize=16)
def _matrix(n: int, sigma: float, truncate: float, window: str, reflect: bool) -> np.ndarray:
    """The (n, n) matrix of the correlation with :func:`_taps` along one axis, boundary folded in (transposed)."""
    w = _taps(sigma, truncate, window)
    h = w.size // 2
    i, k = np.divmod(np.arange(n * w.size), w.size)
    a = np.zeros((n, n))
    np.add.at(a, (i, _folded(i + k - h, n, reflect)), w[k])  # taps folding onto one pixel add up
    a = np.ascontiguousarray(a.T, dtype=_precision(window))
    a.setflags(write=False)
    return a


#: a product's output columns cost as if each of its blocks were this many columns wider (measured: one BLAS
#: thread, float32 and float64, sides 64-512; narrow products run below BLAS's peak)
_BLOCK_COST = 24

#: frames up to this many pixels a side may be low-passed as matrix products (a matrix is side² numbers)
_MATRIX_SIDE = 1024

#: multiply-adds of a matrix product (blocks counted :data:`_BLOCK_COST` wider) that cost as much as one tap of
#: the direct form, by precision (measured, one BLAS thread, sides 32-512, sigma 2 to side / 8: 12-16 for float32,
#: 12-22 for float64; on the low side, so that auto errs towards the direct form)
_MACS_PER_TAP = {np.float32: 14, np.float64: 16}


@functools.lru_cache(maxsize=16)
def _band(n: int, sigma: float, truncate: float, window: str, reflect: bool) -> tuple[tuple[int, int, int, int], ...]:
    """The product with :func:`_matrix` in blocks of output columns, each over the input rows its band reaches.

    Blocks ``(c0, c1, lo, hi)``: output columns c0:c1 take input lo:hi only (the rest of those columns of the
    matrix is zero).  The number of blocks minimises the multiply-adds, each block counted :data:`_BLOCK_COST`
    columns wider: one block (the dense product) when the band fills the matrix.
    """
    taps = _taps(sigma, truncate, window).size
    h = taps // 2
    best, plan = math.inf, ()
    for k in range(1, max(1, n // 32) + 1):
        edges = np.linspace(0, n, k + 1).round().astype(int)
        blocks = []
        for c0, c1 in zip(edges[:-1].tolist(), edges[1:].tolist()):
            used = _folded(np.arange(c0 - h, c1 - 1 - h + taps), n, reflect)  # the inputs outputs c0:c1 read
            blocks.append((c0, c1, int(used.min()), int(used.max()) + 1))
        cost = sum((hi - lo) * (c1 - c0 + _BLOCK_COST) for c0, c1, lo, hi in blocks)
        if cost < best:
            best, plan = cost, tuple(blocks)
    return plan


def _band_cost(n: int, *args) -> int:
    """Multiply-adds of :func:`_banded` per row of the other axis, blocks counted as :func:`_band` does."""
    return sum((hi - lo) * (c1 - c0 + _BLOCK_COST) for c0, c1, lo, hi in _band(n, *args))


def _lowpass_matrix(src: np.ndarray, sigma: float, truncate: float, reflect: bool, window: str) -> np.ndarray:
    """A_rows @ src @ A_cols^T, each product over the band of the matrix only (:func:`_band`)."""
    rows, cols = src.shape
    args = (sigma, truncate, window, reflect)
    a, tmp = _matrix(rows, *args), np.empty(src.shape, src.dtype)
    for r0, r1, lo, hi in _band(rows, *args):
        np.matmul(a[lo:hi, r0:r1].T, src[lo:hi], out=tmp[r0:r1])
    a, out = _matrix(cols, *args), np.empty(src.shape, src.dtype)
    for c0, c1, lo, hi in _band(cols, *args):
        np.matmul(tmp[:, lo:hi], a[lo:hi, c0:c1], out=out[:, c0:c1])
    return out


def _precision(window: str) -> type:
    """float64, or float32 for kikuchipy's window (kikuchipy's own precision: its backgrounds agree to 1e-6)."""
    return np.float32 if window == "kikuchipy" else np.float64


@functools.lru_cache(maxsize=64)
def _method(rows: int, cols: int, sigma: float, truncate: float, reflect: bool, window: str) -> str:
    """The cheapest low-pass for a frame, in units of one direct tap (measured, one BLAS thread: livediff's
    workers limit BLAS to one, :mod:`livediff.executors.blas`).  A direct tap costs about half an FFT's
    n log2 n unit and :data:`_MACS_PER_TAP` multiply-adds of a matrix product."""
    r = _taps(sigma, truncate, window).size // 2
    lr = scipy.fft.next_fast_len(rows + 2 * r, real=True)
    lc = scipy.fft.next_fast_len(cols + 2 * r, real=True)
    costs = {"direct": rows * cols * (r + 1), "fft": 2 * lr * lc * math.log2(lr * lc)}
    if max(rows, cols) <= _MATRIX_SIDE:
        args = (sigma, truncate, window, reflect)
        costs["matrix"] = ((cols * _band_cost(rows, *args) + rows * _band_cost(cols, *args))
                           / _MACS_PER_TAP[_precision(window)])
    return min(costs, key=costs.get)


def _lowpass(src: np.ndarray, sigma: float, truncate: float, reflect: bool, method: str,
             window: str = "scipy") -> np.ndarray:
    """Separable Gaussian low-pass of a frame with :func:`_taps`' window (scipy's: gaussian_filter), in
    :func:`_precision`."""
    src = np.asarray(src, dtype=_precision(window))
    rows, cols = src.shape
    if method == "auto":
        method = _method(rows, cols, sigma, truncate, reflect, window)
    if method == "matrix":
        return _lowpass_matrix(src, sigma, truncate, reflect, window)
    w = _taps(sigma, truncate, window)
    if method == "direct":
        return _lowpass_direct(src, w, reflect)
    r = w.size // 2
    lr = scipy.fft.next_fast_len(rows + 2 * r, real=True)
    lc = scipy.fft.next_fast_len(cols + 2 * r, real=True)
    padded = np.pad(src, r, mode="symmetric" if reflect else "edge")
    spec = scipy.fft.rfft2(padded, s=(lr, lc), workers=1)
    spec *= _spectrum(lr, sigma, truncate, window, False)[:, None]
    spec *= _spectrum(lc, sigma, truncate, window, True)[None, :]
    return scipy.fft.irfft2(spec, s=(lr, lc), workers=1)[r:r + rows, r:r + cols]


_MODES = {"divide": 0, "subtract": 1, "relative": 2}


@numba.njit(nogil=True, cache=True, error_model="numpy")
def _remove(image, num, den, mask, mode, min_weight, fill, out, valid):
    rows, cols = image.shape
    for r in range(rows):
        x = image[r]
        for c in range(cols):
            v = np.float64(x[c])
            weight = 1.0 if den is None else den[r, c]
            b = num[r, c] / weight
            ok = (weight >= min_weight) & (np.abs(v) < np.inf) & (np.abs(b) < np.inf)
            if mask is not None:
                ok &= mask[r, c]
            if mode == 1:
                y = np.float32(v - b)
            else:
                ok &= b > 0.0
                y = np.float32(v / b if mode == 0 else (v - b) / b)
            store(out, valid, r, c, y, ok, fill)


def dynamic_background(image: np.ndarray, sigma: float, mask: np.ndarray | None = None, *,
                       mode: str = "divide", truncate: float = 4.0, boundary: str | None = None,
                       min_weight: float = 0.01, fill_value: float = 0.0, method: str = "auto",
                       mask_out: np.ndarray | None = None, window: str = "scipy") -> np.ndarray:
    """Remove a frame's own Gaussian low-pass (e.g. to extract Kikuchi bands).

    Parameters
    ----------
    image : (rows, cols), any real dtype.
    sigma : Gaussian standard deviation, px (> 0).
    mask : bool, True = valid; None = all valid.  Invalid and non-finite pixels are left
        out of the background (normalised convolution) and of the result.
    mode : ``"divide"`` :math:`x / B`, ``"subtract"`` :math:`x - B` or ``"relative"``
        :math:`(x - B) / B`.
    truncate : kernel radius in sigmas, ``int(truncate * sigma + 0.5)`` px (scipy's); with
        ``window="kikuchipy"`` the kernel's full width, ``int(truncate * sigma)`` taps.
    boundary : ``"reflect"`` (scipy's, d c b a | a b c d) or ``"nearest"`` (edge repeated);
        default ``"reflect"``, ``"nearest"`` with ``window="kikuchipy"``.
    min_weight : least fraction of the kernel's weight on valid pixels for a background.
    fill_value : value of invalid output pixels.
    method : ``"direct"`` (separable, cost ~ radius), ``"fft"`` (cost ~ log of the padded
        size), ``"matrix"`` (two BLAS matrix products with the boundary folded in, over the
        Gaussian's band only, cost ~ radius + block width at BLAS speed: large radii) or
        ``"auto"`` (the cheapest with one BLAS thread); the same result to rounding in the
        working precision.
    mask_out : bool array receiving the validity of each output pixel.
    window : ``"scipy"`` (``scipy.ndimage.gaussian_filter``'s kernel) or ``"kikuchipy"``
        (kikuchipy's default "frequency" dynamic background: ``int(truncate * sigma)`` taps,
        ±2σ for truncate 4, edge padding).

    Returns
    -------
    New float32 array.

    Notes
    -----
    :math:`B = G * (m x) / G * m` with :math:`G` the Gaussian of ``scipy.ndimage.gaussian_filter``
    (sigma, ``mode="reflect"``, ``truncate=4.0``) and :math:`m` the mask (Knutsson & Westin,
    "Normalized and differential convolution", CVPR 1993).  A pixel is valid when it is, when
    :math:`G * m \\geq` ``min_weight`` and, for division, :math:`B > 0`.  kikuchipy's default
    ("frequency") window spans ±2σ with edge padding, ``int(4σ)`` taps: ``window="kikuchipy"``
    is it exactly (two ``scipy.ndimage.correlate1d(mode="nearest")`` passes with those taps).
    """
    image = check_image(image)
    mask = check_mask(mask, image.shape)
    if not sigma > 0 or not truncate > 0:
        raise ValueError(f"sigma and truncate must be > 0, got sigma={sigma}, truncate={truncate}")
    check_choice(mode, tuple(_MODES), "mode")
    check_choice(window, ("scipy", "kikuchipy"), "window")
    boundary = boundary or ("nearest" if window == "kikuchipy" else "reflect")
    check_choice(boundary, ("reflect", "nearest"), "boundary")
    check_choice(method, ("auto", "direct", "fft", "matrix"), "method")
    if not 0 <= min_weight <= 1:
        raise ValueError(f"min_weight must be in [0, 1], got {min_weight}")
    if mask_out is not None:
        check_output(mask_out, image.shape, np.bool_, "mask_out")
    use = _usable(image, mask)
    args = (float(sigma), float(truncate), boundary == "reflect", method, window)
    return _remove_background(image, mask, use, _weights(use, args), args, mode, min_weight, fill_value, mask_out)


def _usable(image: np.ndarray, mask: np.ndarray | None) -> np.ndarray | None:
    """The pixels the background is estimated from: ``mask`` and finite (None = all); ``mask`` itself if it can."""
    if image.dtype.kind == "f" and not np.isfinite(image).all():
        return finite_mask(image, mask)
    return mask


def _weights(use: np.ndarray | None, args: tuple) -> np.ndarray | None:
    """G * m, the normaliser of the convolution (None when every pixel is used: it is 1)."""
    return None if use is None else _lowpass(use, *args)


def _remove_background(image: np.ndarray, mask: np.ndarray | None, use: np.ndarray | None,
                       weights: np.ndarray | None, args: tuple, mode: str, min_weight: float, fill_value: float,
                       mask_out: np.ndarray | None) -> np.ndarray:
    num = _lowpass(image if use is None else np.where(use, image, 0), *args)
    out = np.empty(image.shape, dtype=np.float32)
    _remove(image, num, weights, mask, _MODES[mode], float(min_weight), np.float32(fill_value), out, mask_out)
    return out


def remove_background(image: np.ndarray, background: np.ndarray, mask: np.ndarray | None = None, *,
                      mode: str = "divide", fill_value: float = 0.0,
                      mask_out: np.ndarray | None = None) -> np.ndarray:
    """Remove a given background (a static one, e.g. EBSD's mean pattern) as :func:`dynamic_background` does.

    Parameters
    ----------
    image, background : (rows, cols), any real dtypes.
    mask, mode, fill_value, mask_out : as :func:`dynamic_background`; a pixel whose
        background is not finite (or, dividing, not > 0) is invalid.

    Returns
    -------
    New float32 array.
    """
    image = check_image(image)
    mask = check_mask(mask, image.shape)
    check_choice(mode, tuple(_MODES), "mode")
    if mask_out is not None:
        check_output(mask_out, image.shape, np.bool_, "mask_out")
    background = check_image(background, "background")
    if background.shape != image.shape:
        raise ValueError(f"background shape {background.shape} != image shape {image.shape}")
    out = np.empty(image.shape, dtype=np.float32)
    _remove(image, background, None, mask, _MODES[mode], 0.0, np.float32(fill_value), out, mask_out)
    return out


@dataclass(frozen=True)
class DynamicBackgroundParams:
    """Parameters of :class:`DynamicBackground`."""

    sigma: float | None = param(None, gt=0, doc="Gaussian sigma, px; default: frame width / 8 (kikuchipy's)")
    mode: Literal["divide", "subtract", "relative"] = "divide"
    truncate: float = param(4.0, gt=0, doc="kernel radius in sigmas (scipy's truncate); kikuchipy window: "
                                           "its full width in sigmas")
    boundary: Literal["reflect", "nearest"] | None = param(None, doc="default reflect; nearest for the "
                                                                     "kikuchipy window")
    window: Literal["scipy", "kikuchipy"] = param("scipy", doc="scipy's gaussian_filter kernel or kikuchipy's "
                                                               "dynamic-background window")
    min_weight: float = param(0.01, ge=0, le=1, doc="least valid fraction of the kernel weight")
    fill_value: float = param(0.0, doc="value of invalid pixels")


class DynamicBackground(BaseOperator):
    """Removes each frame's own Gaussian low-pass (:func:`dynamic_background`); float32 out."""

    kind = "dynamic_background"
    Params = DynamicBackgroundParams

    def start(self, series: SeriesStart) -> None:
        super().start(series)
        p = self.params
        sigma = p.sigma if p.sigma is not None else series.shape[1] / 8
        boundary = p.boundary or ("nearest" if p.window == "kikuchipy" else "reflect")
        self._args = (float(sigma), p.truncate, boundary == "reflect", "auto", p.window)
        self._series_weights = _weights(series.mask, self._args)  # the same for every frame with that mask

    def output_series(self, series: SeriesStart) -> SeriesStart:
        return float32_series(series, series.mask)

    def process(self, frame: Frame) -> Frame:
        p = self.params
        use = _usable(frame.data, frame.mask)
        weights = self._series_weights if use is self.series.mask else _weights(use, self._args)
        valid = np.empty(frame.data.shape, dtype=np.bool_)
        frame.data = _remove_background(frame.data, frame.mask, use, weights, self._args, p.mode, p.min_weight,
                                        p.fill_value, valid)
        frame.mask = valid
        return frame
