"""The ``flatfield`` operator and its kernels: dark, gain / flat field and pixel mask in one pass.

Kernels (pure, float32 out, integer inputs never overflow: arithmetic runs in float64):
:func:`correct` (dark, flat, mask and saturation in one fused pass), :func:`subtract_dark`,
:func:`divide_flat`.  Invalid pixels are set to ``fill_value`` and flagged in the mask that
moves with the data; they are never divided by.  The rest of the flat-field family
(static and dynamic background, binning, hot pixels) has a module each, named as the
config names the operator; :mod:`livediff.operators.corrections` gathers their kernels.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Literal

import numba
import numpy as np

from ..model import Frame, SeriesStart
from .base import SeriesBoard, Stateless, param, shared_by_params
from .checks import check_image, check_mask, check_output, check_reference, check_shape
from .masks import float32_series, mask_from_file, pass_mask, saturation_level, store

__all__ = ["FlatField", "FlatFieldParams", "correct", "divide_flat", "subtract_dark"]

log = logging.getLogger(__name__)


@numba.njit(nogil=True, cache=True, error_model="numpy")
def _correct(image, dark, flat, mask, saturation, fill, out, valid):
    rows, cols = image.shape
    for r in range(rows):
        x = image[r]
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
            store(out, valid, r, c, np.float32(v), ok, fill)


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
    image = check_image(image)
    shape = image.shape
    dark = check_reference(dark, shape, "dark")
    flat = check_reference(flat, shape, "flat")
    mask = check_mask(mask, shape)
    out = check_output(out, shape, np.float32, "out")
    if mask_out is not None:
        check_output(mask_out, shape, np.bool_, "mask_out")
    _correct(image, dark, flat, mask, saturation_level(image.dtype, saturation), np.float32(fill_value), out,
             mask_out)
    return out


def subtract_dark(image: np.ndarray, dark: np.ndarray) -> np.ndarray:
    """``image - dark`` as a new float32 array, computed in float64 (no masking).

    Raises ValueError if the shapes differ.  Use :func:`correct` to mask as well.
    """
    image = check_image(image)
    dark = check_reference(dark, image.shape, "dark")
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
    image = check_image(image)
    valid = np.empty(image.shape, dtype=np.bool_)
    return correct(image, flat=flat, mask=mask, saturation=math.inf, mask_out=valid), valid


class _LiveDark(SeriesBoard):
    """The dark of one configuration accumulated live, shared by its instances (the workers' chains).

    The frames with index < n of a series are darks; their sum (float64: exact for
    integer frames) does not depend on which worker added which, so every worker
    corrects with the same dark.  ``open(series, n, shape)`` starts a series.
    """

    def reset(self, n: int, shape: tuple[int, int]) -> None:
        self.n = n
        self.total, self.count = np.zeros(shape), 0
        self._mean: np.ndarray | None = None
        self._gave_up = False

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
                check_shape(getattr(p, name), shape, f"flatfield: {name}", of="frame")
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
        self._live = shared_by_params(p, _LiveDark) if p.dark_frames else None
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
