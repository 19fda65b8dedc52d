"""Flat-field family: dark, gain / flat field, static and dynamic background, pixel mask.

Kernels (pure, float32 out, integer inputs never overflow: arithmetic runs in float64):
:func:`correct` (dark, flat, mask and saturation in one fused pass), :func:`subtract_dark`,
:func:`divide_flat`, :func:`static_background`, :func:`dynamic_background`, and
:func:`~livediff.operators.binning.bin_frame` (re-exported).  Operators: ``flatfield``
(:class:`FlatField`), ``static_background``, ``dynamic_background``; see also
``hot_pixels`` (:mod:`~livediff.operators.masking`), ``bin`` and ``preview``
(:mod:`~livediff.operators.binning`).  Invalid pixels are set to ``fill_value`` and
flagged in the mask that moves with the data; they are never divided by.
"""
from __future__ import annotations

import functools
import logging
import math
import threading
import weakref
from dataclasses import dataclass
from typing import Literal

import numba
import numpy as np
import scipy.fft

from ..model import Frame, SeriesStart
from .base import Stateless, param
from .binning import bin_frame
from .masking import (check_image, check_mask, check_output, check_reference, check_shape, float32_series,
                      mask_from_file, pass_mask, saturation_level)

__all__ = ["correct", "subtract_dark", "divide_flat", "static_background", "dynamic_background", "bin_frame",
           "FlatField", "StaticBackground", "DynamicBackground"]

log = logging.getLogger(__name__)


@numba.njit(nogil=True, cache=True, error_model="numpy")
def _correct(image, dark, flat, mask, saturation, fill, out, valid):
    rows, cols = image.shape
    for r in range(rows):
        x = image[r]
        o = out[r]
        for c in range(cols):
            v = np.float64(x[c])
            ok = v < saturation
            if dark is not None:
                v -= dark[r, c]
            if flat is not None:
                f = np.float64(flat[r, c])
                ok &= (f != 0.0) & (np.abs(f) < np.inf)
                v /= f
            if mask is not None:
                ok &= mask[r, c]
            y = np.float32(v)
            ok &= np.abs(y) < np.inf
            o[c] = y if ok else fill
            if valid is not None:
                valid[r, c] = ok


def correct(image: np.ndarray, *, dark: np.ndarray | None = None, flat: np.ndarray | None = None,
            mask: np.ndarray | None = None, out: np.ndarray | None = None, saturation: float | None = None,
            fill_value: float = 0.0, mask_out: np.ndarray | None = None) -> np.ndarray:
    """Dark subtraction, flat-field division and pixel masking in one pass.

    Parameters
    ----------
    image : (rows, cols) raw frame, any integer or float dtype.
    dark : dark / pedestal frame of the same shape, subtracted; None = none.
    flat : gain / flat-field frame of the same shape, divided by; None = none.
    mask : bool, True = valid; None = all valid.
    out : float32 array to write the result into (may be ``image`` itself if float32).
    saturation : raw values at and above it are invalid; None = the top of an integer
        dtype (2**bits - 1: overflow and gap markers), +inf for floats.
    fill_value : value written at invalid pixels.
    mask_out : bool array receiving the validity of each output pixel.

    Returns
    -------
    ``out``: float32 :math:`(x - d) / f` rounded once from float64 where valid, else ``fill_value``.

    Raises
    ------
    ValueError
        A shape differs from the image's.
    TypeError
        Non-numeric inputs, a mask that is not bool, ``out`` not float32.

    Notes
    -----
    A pixel is valid when ``mask`` says so, :math:`x < s` (saturation; NaN fails it), the
    flat is finite and nonzero, and the result is finite in float32.
    """
    check_image(image)
    shape = image.shape
    dark = check_reference("dark", dark, shape)
    flat = check_reference("flat", flat, shape)
    mask = check_mask(mask, shape)
    out = check_output("out", out, shape, np.float32)
    if mask_out is not None:
        check_output("mask_out", mask_out, shape, np.bool_)
    _correct(image, dark, flat, mask, saturation_level(image.dtype, saturation), np.float32(fill_value), out,
             mask_out)
    return out


def subtract_dark(image: np.ndarray, dark: np.ndarray) -> np.ndarray:
    """``image - dark`` as a new float32 array, computed in float64 (no masking).

    Raises ValueError if the shapes differ.  Use :func:`correct` to mask as well.
    """
    check_image(image)
    dark = check_reference("dark", dark, image.shape)
    return np.subtract(image, dark, dtype=np.float64).astype(np.float32)


def divide_flat(image: np.ndarray, flat: np.ndarray, mask: np.ndarray | None = None,
                ) -> tuple[np.ndarray, np.ndarray]:
    """Gain / flat-field division; pixels with a zero or non-finite flat are masked, never divided by.

    Parameters
    ----------
    image : (rows, cols), any real dtype (e.g. already dark-subtracted float32).
    flat : same shape, any real dtype.
    mask : bool, True = valid; None = all valid.

    Returns
    -------
    (corrected, mask) : float32 :math:`x / f` (0 where invalid) and the new bool mask:
    ``mask`` and a finite, nonzero flat and a finite input and result.
    """
    check_image(image)
    valid = np.empty(image.shape, dtype=np.bool_)
    return correct(image, flat=flat, mask=mask, saturation=math.inf, mask_out=valid), valid


def static_background(image: np.ndarray, background: np.ndarray, mask: np.ndarray | None = None, *,
                      mode: str = "divide") -> tuple[np.ndarray, np.ndarray]:
    """Static-background correction as in EBSD practice: raw / background, or raw - background.

    Parameters
    ----------
    image, background : (rows, cols), any real dtypes.
    mask : bool, True = valid; None = all valid.
    mode : ``"divide"`` (background zero or non-finite -> masked) or ``"subtract"``.

    Returns
    -------
    (corrected, mask) : float32 result (0 where invalid) and the new bool mask.
    """
    check_image(image)
    valid = np.empty(image.shape, dtype=np.bool_)
    if mode == "divide":
        out = correct(image, flat=background, mask=mask, saturation=math.inf, mask_out=valid)
    elif mode == "subtract":
        out = correct(image, dark=background, mask=mask, saturation=math.inf, mask_out=valid)
    else:
        raise ValueError(f"mode must be 'divide' or 'subtract', got {mode!r}")
    return out, valid


class _LiveDark:
    """The dark of one configuration accumulated live, shared by its instances (the workers' chains).

    The frames with index < n of a series are darks; their sum (float64: exact for
    integer frames) does not depend on which worker added which, so every worker
    corrects with the same dark.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._open = False
        self._series: int | None = None

    def open(self, series: int, n: int, shape: tuple[int, int]) -> None:
        """Start a series (the first instance to start it resets the sum)."""
        with self._cond:
            if self._open and series == self._series:
                return
            self._open, self._series, self.n = True, series, n
            self.total, self.count = np.zeros(shape), 0
            self._mean: np.ndarray | None = None
            self._gave_up = False

    def close(self) -> None:
        """End the series (the next ``open`` resets, whatever its number)."""
        with self._cond:
            self._open = False

    def add(self, data: np.ndarray) -> None:
        with self._cond:
            self.total += data
            self.count += 1
            self._mean = None
            self._cond.notify_all()

    def mean(self, wait_s: float) -> np.ndarray:
        """The dark as float32, once all n darks are in (or ``wait_s`` passed: lost frames)."""
        with self._cond:
            if self._mean is None:
                if not self._cond.wait_for(lambda: self.count >= self.n or self._gave_up, timeout=wait_s):
                    self._gave_up = True
                    log.warning("flatfield: dark from %d of %d dark frames (the others did not arrive within "
                                "%.1f s)", self.count, self.n, wait_s)
                if self.count == 0:
                    raise ValueError(f"flatfield: no dark frame (index < {self.n}) arrived before the first "
                                     f"frame to correct")
                self._mean = (self.total / self.count).astype(np.float32)
            return self._mean

    def snapshot(self) -> dict[str, np.ndarray]:
        with self._cond:
            return {"dark": (self.total / self.count).astype(np.float32)} if self.count else {}


_BOARDS: dict[int, _LiveDark] = {}
_BOARDS_LOCK = threading.Lock()


def _live_dark(params: FlatFieldParams) -> _LiveDark:
    """The live dark of the instances built from this very ``params`` object."""
    with _BOARDS_LOCK:
        board = _BOARDS.get(id(params))
        if board is None:
            board = _BOARDS[id(params)] = _LiveDark()
            weakref.finalize(params, _BOARDS.pop, id(params), None)
        return board


@dataclass(frozen=True)
class FlatFieldParams:
    """Parameters of :class:`FlatField`; file parameters arrive as arrays."""

    dark: str | None = param(None, file=True, doc="dark / pedestal frame, subtracted")
    dark_frames: int = param(0, ge=0, doc="or: the first N frames of each series are darks (their mean)")
    dark_wait_s: float = param(5.0, gt=0, doc="seconds a frame waits for missing dark frames (lost upstream)")
    flat: str | None = param(None, file=True, doc="gain / flat field, divided by; zero or non-finite -> masked")
    mask: str | None = param(None, file=True, doc="user mask file")
    mask_nonzero: Literal["invalid", "valid"] = "invalid"
    saturation: float | None = param(None, ge=0, doc="mask raw values >= this (default: header, else 2**bits-1)")
    fill_value: float = param(0.0, doc="value of invalid pixels")

    def __post_init__(self) -> None:
        if self.dark is not None and self.dark_frames:
            raise ValueError(f"give a dark file or dark_frames, not both (dark_frames = {self.dark_frames})")


class FlatField(Stateless):
    """Dark, flat field and pixel mask in one pass (:func:`correct`); float32 frames out.

    The frame's mask becomes the header (or upstream) mask AND the user mask file AND a
    finite nonzero flat AND raw value < saturation (``saturation``, else the header's,
    else 2**bits - 1) AND a finite result.

    ``dark_frames = N``: the frames with index < N of each series are darks; their mean is
    the dark for the rest.  They leave uncorrected (float32) with an all-invalid mask, so
    no later operator uses them, and ``is_dark`` = 1 in their row; the ``dark`` reduction
    holds the mean.  The worker threads' instances (built from one ``Params`` object)
    share the dark, and a frame after the darks waits for those still being processed
    elsewhere: the result does not depend on the number of workers.  If darks are lost
    upstream, it waits ``dark_wait_s`` once, then goes on with those that arrived.
    """

    name = "flatfield"
    Params = FlatFieldParams

    def start(self, series: SeriesStart) -> None:
        super().start(series)
        p = self.params
        shape = tuple(series.shape)
        for name in ("dark", "flat", "mask"):
            if getattr(p, name) is not None:
                check_shape(f"flatfield: {name}", getattr(p, name), shape, of="frame")
        valid = np.ones(shape, dtype=np.bool_) if series.mask is None else series.mask.copy()
        if p.mask is not None:
            valid &= mask_from_file(p.mask, nonzero=p.mask_nonzero)
        self._flat = None if p.flat is None else np.ascontiguousarray(p.flat, dtype=np.float32)
        if self._flat is not None:
            valid &= np.isfinite(self._flat) & (self._flat != 0)
        valid.setflags(write=False)
        self._valid = valid
        self._dark = None if p.dark is None else np.ascontiguousarray(p.dark, dtype=np.float32)
        self._saturation = saturation_level(series.dtype, series.saturation if p.saturation is None else p.saturation)
        self._live = _live_dark(p) if p.dark_frames else None
        if self._live is not None:
            self._live.open(series.series, p.dark_frames, shape)
            self.columns = {"is_dark": "u1"}
            self.reductions = {"dark": (shape, "f4")}
            self._none_valid = np.zeros(shape, dtype=np.bool_)
            self._none_valid.setflags(write=False)

    def output_series(self, series: SeriesStart) -> SeriesStart:
        return float32_series(series, self._valid)

    def process(self, frame: Frame) -> Frame:
        dark = self._dark
        if self._live is not None:
            is_dark = frame.index < self.params.dark_frames
            frame.results[self.name] = {"is_dark": int(is_dark)}
            if is_dark:
                self._live.add(frame.data)
                frame.data, frame.mask = frame.data.astype(np.float32), self._none_valid
                return frame
            dark = self._live.mean(self.params.dark_wait_s)
        valid = np.empty(frame.data.shape, dtype=np.bool_)
        frame.data = correct(frame.data, dark=dark, flat=self._flat, mask=pass_mask(frame, self.series, self._valid),
                             saturation=self._saturation, fill_value=self.params.fill_value, mask_out=valid)
        frame.mask = valid
        return frame

    def snapshot(self) -> dict[str, np.ndarray]:
        return {} if self._live is None else self._live.snapshot()

    def finish(self) -> dict[str, np.ndarray]:
        out = self.snapshot()
        if self._live is not None:
            self._live.close()
        return out


@dataclass(frozen=True)
class StaticBackgroundParams:
    """Parameters of :class:`StaticBackground`."""

    background: str | None = param(None, file=True, doc="static background frame (EBSD: the mean pattern)")
    mode: Literal["divide", "subtract"] = "divide"
    fill_value: float = param(0.0, doc="value of invalid pixels")

    def __post_init__(self) -> None:
        if self.background is None:
            raise ValueError("background: a static background file is required")


class StaticBackground(Stateless):
    """Divides (or subtracts) a static background frame: :func:`static_background`.

    Pixels with a zero or non-finite background are masked in divide mode; frames leave
    as float32.  Saturation is ``flatfield``'s business: place this one after it.
    """

    name = "static_background"
    Params = StaticBackgroundParams

    def start(self, series: SeriesStart) -> None:
        super().start(series)
        background = self.params.background
        check_shape("static_background: background", background, tuple(series.shape), of="frame")
        self._background = np.ascontiguousarray(background, dtype=np.float32)
        valid = np.isfinite(self._background)
        if self.params.mode == "divide":
            valid &= self._background != 0
        if series.mask is not None:
            valid &= series.mask
        valid.setflags(write=False)
        self._valid = valid

    def output_series(self, series: SeriesStart) -> SeriesStart:
        return float32_series(series, self._valid)

    def process(self, frame: Frame) -> Frame:
        valid = np.empty(frame.data.shape, dtype=np.bool_)
        slot = "flat" if self.params.mode == "divide" else "dark"
        frame.data = correct(frame.data, mask=pass_mask(frame, self.series, self._valid), saturation=math.inf,
                             fill_value=self.params.fill_value, mask_out=valid, **{slot: self._background})
        frame.mask = valid
        return frame


@functools.lru_cache(maxsize=32)
def _half_gaussian(sigma: float, truncate: float) -> np.ndarray:
    """w[0..r] of scipy.ndimage's normalised 1-D Gaussian, radius r = int(truncate * sigma + 0.5)."""
    radius = int(truncate * sigma + 0.5)
    x = np.arange(-radius, radius + 1)
    w = np.exp(-0.5 / (sigma * sigma) * x.astype(np.float64) ** 2)
    w = w[radius:] / w.sum()
    w.setflags(write=False)
    return w


@numba.njit(nogil=True, cache=True, inline="always")
def _fold(j, n, reflect):
    """Index j of a signal of length n extended by scipy's 'reflect' (d c b a | a b c d) or 'nearest'."""
    if reflect:
        j = j % (2 * n)
        return 2 * n - 1 - j if j >= n else j
    return min(max(j, 0), n - 1)


@numba.njit(nogil=True, cache=True)
def _add_pair(acc, w, a, b):
    for c in range(acc.size):
        acc[c] += w * (a[c] + b[c])


@numba.njit(nogil=True, cache=True)
def _lowpass_direct(src, w, reflect, out):
    rows, cols = src.shape
    r = w.size - 1
    pad = np.empty(cols + 2 * r)
    mid = pad[r:r + cols]
    for i in range(rows):  # columns first, into the padded row buffer, then along the row
        s = src[i]
        for c in range(cols):
            mid[c] = w[0] * s[c]
        for k in range(1, r + 1):
            _add_pair(mid, w[k], src[_fold(i - k, rows, reflect)], src[_fold(i + k, rows, reflect)])
        for j in range(1, r + 1):
            pad[r - j] = mid[_fold(-j, cols, reflect)]
            pad[r + cols - 1 + j] = mid[_fold(cols - 1 + j, cols, reflect)]
        o = out[i]
        for c in range(cols):
            o[c] = w[0] * mid[c]
        for k in range(1, r + 1):
            _add_pair(o, w[k], pad[r - k:r - k + cols], pad[r + k:r + k + cols])


@functools.lru_cache(maxsize=16)
def _spectrum(n: int, sigma: float, truncate: float, half: bool) -> np.ndarray:
    """Real DFT of the Gaussian placed circularly on n samples (full, or rfft's half)."""
    w = _half_gaussian(sigma, truncate)
    h = np.zeros(n)
    h[: w.size] = w
    h[n - w.size + 1:] += w[:0:-1]
    spec = (scipy.fft.rfft(h) if half else scipy.fft.fft(h)).real
    spec.setflags(write=False)
    return spec


def _lowpass(src: np.ndarray, sigma: float, truncate: float, reflect: bool, method: str) -> np.ndarray:
    """Gaussian low-pass of a float64 frame, scipy.ndimage.gaussian_filter semantics."""
    w = _half_gaussian(sigma, truncate)
    r = w.size - 1
    rows, cols = src.shape
    lr = scipy.fft.next_fast_len(rows + 2 * r, real=True)
    lc = scipy.fft.next_fast_len(cols + 2 * r, real=True)
    if method == "auto":  # measured: a direct tap costs about half an FFT's n log2 n unit
        method = "direct" if rows * cols * (r + 1) <= 2 * lr * lc * math.log2(lr * lc) else "fft"
    if method == "direct":
        out = np.empty_like(src)
        _lowpass_direct(src, w, reflect, out)
        return out
    padded = np.pad(src, r, mode="symmetric" if reflect else "edge")
    spec = scipy.fft.rfft2(padded, s=(lr, lc), workers=1)
    spec *= _spectrum(lr, sigma, truncate, False)[:, None]
    spec *= _spectrum(lc, sigma, truncate, True)[None, :]
    return scipy.fft.irfft2(spec, s=(lr, lc), workers=1)[r:r + rows, r:r + cols]


_MODES = {"divide": 0, "subtract": 1, "relative": 2}


@numba.njit(nogil=True, cache=True, error_model="numpy")
def _remove(image, num, den, mask, mode, min_weight, fill, out, valid):
    rows, cols = image.shape
    for r in range(rows):
        x = image[r]
        o = out[r]
        for c in range(cols):
            v = np.float64(x[c])
            weight = 1.0 if den is None else den[r, c]
            b = num[r, c] / weight
            ok = (weight >= min_weight) & (np.abs(v) < np.inf)
            if mask is not None:
                ok &= mask[r, c]
            if mode == 1:
                y = np.float32(v - b)
            else:
                ok &= b > 0.0
                y = np.float32(v / b if mode == 0 else (v - b) / b)
            ok &= np.abs(y) < np.inf
            o[c] = y if ok else fill
            if valid is not None:
                valid[r, c] = ok


def dynamic_background(image: np.ndarray, sigma: float, mask: np.ndarray | None = None, *,
                       mode: str = "divide", truncate: float = 4.0, boundary: str = "reflect",
                       min_weight: float = 0.01, fill_value: float = 0.0, method: str = "auto",
                       mask_out: np.ndarray | None = None) -> np.ndarray:
    """Remove a frame's own Gaussian low-pass (e.g. to extract Kikuchi bands).

    Parameters
    ----------
    image : (rows, cols), any real dtype.
    sigma : Gaussian standard deviation, px (> 0).
    mask : bool, True = valid; None = all valid.  Invalid and non-finite pixels are left
        out of the background (normalised convolution) and of the result.
    mode : ``"divide"`` :math:`x / B`, ``"subtract"`` :math:`x - B` or ``"relative"``
        :math:`(x - B) / B`.
    truncate : kernel radius in sigmas, ``int(truncate * sigma + 0.5)`` px (scipy's).
    boundary : ``"reflect"`` (scipy's, d c b a | a b c d) or ``"nearest"`` (edge repeated).
    min_weight : least fraction of the kernel's weight on valid pixels for a background.
    fill_value : value of invalid output pixels.
    method : ``"direct"`` (separable, cost ~ radius), ``"fft"`` (cost ~ log of the padded
        size) or ``"auto"`` (the cheaper); the same result to float64 rounding.
    mask_out : bool array receiving the validity of each output pixel.

    Returns
    -------
    New float32 array.

    Notes
    -----
    :math:`B = G * (m x) / G * m` with :math:`G` the Gaussian of ``scipy.ndimage.gaussian_filter``
    (sigma, ``mode="reflect"``, ``truncate=4.0``) and :math:`m` the mask (Knutsson & Westin,
    "Normalized and differential convolution", CVPR 1993).  A pixel is valid when it is, when
    :math:`G * m \\geq` ``min_weight`` and, for division, :math:`B > 0`.  kikuchipy's default
    ("frequency") window spans ±2σ with edge padding: ``truncate=2.0, boundary="nearest"`` is
    close (its tap count is ``int(4σ)``, not ``2 int(2σ + 0.5) + 1``).
    """
    check_image(image)
    mask = check_mask(mask, image.shape)
    if not sigma > 0 or not truncate > 0:
        raise ValueError(f"sigma and truncate must be > 0, got sigma={sigma}, truncate={truncate}")
    for name, value, allowed in (("mode", mode, tuple(_MODES)), ("boundary", boundary, ("reflect", "nearest")),
                                 ("method", method, ("auto", "direct", "fft"))):
        if value not in allowed:
            raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}, got {value!r}")
    if not 0 <= min_weight <= 1:
        raise ValueError(f"min_weight must be in [0, 1], got {min_weight}")
    if mask_out is not None:
        check_output("mask_out", mask_out, image.shape, np.bool_)
    use = _usable(image, mask)
    args = (float(sigma), float(truncate), boundary == "reflect", method)
    return _remove_background(image, mask, use, _weights(use, args), args, mode, min_weight, fill_value, mask_out)


def _usable(image: np.ndarray, mask: np.ndarray | None) -> np.ndarray | None:
    """The pixels the background is estimated from: ``mask`` and finite (None = all); ``mask`` itself if it can."""
    if image.dtype.kind == "f" and not np.isfinite(image).all():
        return np.isfinite(image) if mask is None else mask & np.isfinite(image)
    return mask


def _weights(use: np.ndarray | None, args: tuple) -> np.ndarray | None:
    """G * m, the normaliser of the convolution (None when every pixel is used: it is 1)."""
    return None if use is None else _lowpass(use.astype(np.float64), *args)


def _remove_background(image: np.ndarray, mask: np.ndarray | None, use: np.ndarray | None,
                       weights: np.ndarray | None, args: tuple, mode: str, min_weight: float, fill_value: float,
                       mask_out: np.ndarray | None) -> np.ndarray:
    num = _lowpass(image.astype(np.float64) if use is None else np.where(use, image, np.float64(0.0)), *args)
    out = np.empty(image.shape, dtype=np.float32)
    _remove(image, num, weights, mask, _MODES[mode], float(min_weight), np.float32(fill_value), out, mask_out)
    return out


@dataclass(frozen=True)
class DynamicBackgroundParams:
    """Parameters of :class:`DynamicBackground`."""

    sigma: float | None = param(None, gt=0, doc="Gaussian sigma, px; default: frame width / 8 (kikuchipy's)")
    mode: Literal["divide", "subtract", "relative"] = "divide"
    truncate: float = param(4.0, gt=0, doc="kernel radius in sigmas (scipy's truncate)")
    boundary: Literal["reflect", "nearest"] = "reflect"
    min_weight: float = param(0.01, ge=0, le=1, doc="least valid fraction of the kernel weight")
    fill_value: float = param(0.0, doc="value of invalid pixels")


class DynamicBackground(Stateless):
    """Removes each frame's own Gaussian low-pass (:func:`dynamic_background`); float32 out."""

    name = "dynamic_background"
    Params = DynamicBackgroundParams

    def start(self, series: SeriesStart) -> None:
        super().start(series)
        p = self.params
        sigma = p.sigma if p.sigma is not None else series.shape[1] / 8
        self._args = (float(sigma), p.truncate, p.boundary == "reflect", "auto")
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
