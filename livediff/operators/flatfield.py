"""The ``flatfield`` operator and its kernels: dark, gain / flat field and pixel mask in one pass.

Kernels (pure, float32 out, integer inputs never overflow: arithmetic runs in float64):
:func:`correct` (dark, flat, mask and saturation in one fused pass), :func:`subtract_dark`,
:func:`divide_flat`.  Invalid pixels are set to ``fill_value`` and flagged in the mask that
moves with the data; they are never divided by.  The rest of the flat-field family
(static and dynamic background, binning, hot pixels) has a module each, named as the
config names the operator; :mod:`livediff.operators.corrections` gathers their kernels.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal

import numba
import numpy as np

from ..model import Frame, SeriesStart
from .base import BaseOperator, param
from .checks import all_valid, check_image, check_mask, check_output, check_reference, check_shape
from .masks import float32_series, mask_from_file, pass_mask, saturation_level, store

__all__ = ["FlatField", "FlatFieldParams", "correct", "divide_flat", "subtract_dark", "valid_below"]


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


@numba.njit(nogil=True, cache=True, inline="always")
def below_row(x: np.ndarray, m: np.ndarray, limit: int, o: np.ndarray) -> int:
    """``o = m & (x < limit)`` on a row of integers (``limit`` from :func:`below_limit`); returns ``o.sum()``."""
    n = 0
    for c in range(x.size):
        valid = m[c] & (np.int64(x[c]) < limit)
        o[c] = valid
        n += valid
    return n


@numba.njit(nogil=True, cache=True)
def _below(image, mask, limit, out):
    for r in range(image.shape[0]):
        below_row(image[r], mask[r], limit, out[r])


def below_limit(saturation: float) -> int:
    """The integer ``limit`` of :func:`below_row`: an integer is below ``saturation`` when it is below it."""
    # v < s <=> v < ceil(s) for integers; any 32-bit value is below 2**40 and above -2**40
    return (min(max(math.ceil(saturation), -2**40), 2**40) if math.isfinite(saturation)
            else 2**40 if saturation > 0 else -2**40)  # +inf: every value; -inf and NaN: none


def valid_below(image: np.ndarray, mask: np.ndarray | None, saturation: float) -> np.ndarray:
    """The pixels of an integer ``image`` that ``mask`` lets through and that hold less than ``saturation``.

    What :func:`correct` records as valid when there is nothing to correct, in one pass and
    without the float32 frame.

    Returns
    -------
    New bool array, True = valid.

    Raises
    ------
    TypeError
        ``image`` is not of an integer dtype of at most 32 bits, or ``mask`` is not bool.
    ValueError
        Shapes differ.
    """
    image = check_image(image)
    if image.dtype.kind not in "ui" or image.dtype.itemsize > 4:
        raise TypeError(f"image must be of an integer dtype of at most 32 bits, got {image.dtype}")
    mask = check_mask(mask, image.shape)
    out = np.empty(image.shape, dtype=np.bool_)
    _below(image, all_valid(image.shape) if mask is None else mask, below_limit(saturation), out)
    return out


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
    flat is finite and nonzero, and the result is finite in float32.  The kernel is
    compiled for the dtypes given (e.g. uint16 frame, uint16 or int32 dark, float32
    flat) and converts each value in registers: an integer dark costs no more than a
    float32 one, and no call allocates more than ``out``.
    """
    image = check_image(image)
    shape = image.shape
    dark, flat = _as_given(dark, shape, "dark"), _as_given(flat, shape, "flat")
    mask = check_mask(mask, shape)
    out = check_output(out, shape, np.float32, "out")
    if mask_out is not None:
        check_output(mask_out, shape, np.bool_, "mask_out")
    _correct(image, dark, flat, mask, saturation_level(image.dtype, saturation), np.float32(fill_value), out,
             mask_out)
    return out


def _as_given(array: np.ndarray | None, shape: tuple[int, ...], name: str) -> np.ndarray | None:
    """A dark or flat checked for shape and real dtype, not converted: :func:`_correct` is compiled for
    each combination of dtypes and reads integers as they are, so no call pays for a float copy."""
    if array is None:
        return None
    array = check_image(array, name, ndim=len(shape))
    check_shape(array, shape, name)
    return array


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


@dataclass(frozen=True)
class FlatFieldParams:
    """Parameters of :class:`FlatField`; file parameters arrive as arrays."""

    dark: str | None = param(None, file=True, doc="dark / pedestal frame, subtracted")
    dark_frames: int = param(0, ge=0, doc="or: the first N frames of each series are darks (their mean)")
    flat: str | None = param(None, file=True, doc="gain / flat field, divided by; zero or non-finite -> masked")
    mask: str | None = param(None, file=True, doc="user mask file")
    mask_nonzero: Literal["invalid", "valid"] = "invalid"
    saturation: float | None = param(None, ge=0, doc="mask raw values >= this (default: header, else 2**bits-1)")
    fill_value: float = param(0.0, doc="value of invalid pixels")
    output: Literal["auto", "float32"] = param("auto", doc="'auto': integer frames with no dark and no flat "
                                                           "keep their counts (only the mask changes); "
                                                           "else float32")

    def __post_init__(self) -> None:
        if self.dark is not None and self.dark_frames:
            raise ValueError(f"give a dark file or dark_frames, not both (dark_frames = {self.dark_frames})")


class FlatField(BaseOperator):
    """Dark, flat field and pixel mask in one pass (:func:`correct`); float32 frames out.

    With ``output = "auto"`` (the default), integer frames with neither a dark nor a flat
    pass on as they are, only their mask changed (:func:`valid_below`): no float32 frame is
    written, and the integer kernels downstream (spot finding) keep their fast path.  Their
    invalid pixels then keep their raw values, not ``fill_value``; ``output = "float32"``
    corrects (converts and fills) them anyway.

    The frame's mask becomes the header (or upstream) mask AND the user mask file AND a
    finite nonzero flat AND raw value < saturation (``saturation``, else the header's,
    else 2**bits - 1; never above 2**bits - 1, DECTRIS' gap marker) AND a finite result.

    ``dark_frames = N``: the frames with index < N of each series are darks; their mean is
    the dark for the rest.  They leave uncorrected (float32) with an all-invalid mask, so
    no later operator uses them, and ``is_dark`` = 1 in their row; the ``dark`` reduction
    holds the mean.  The dark is series-wide state (``livediff.operators.base``): a frame
    after the darks is corrected with the mean of every dark that arrived before it, summed
    in arrival order (float64), whatever the number of workers.  A frame to correct with no
    dark before it fails (counted, logged).
    """

    kind = "flatfield"
    Params = FlatFieldParams

    def __init__(self, params: FlatFieldParams | None = None, *, name: str | None = None) -> None:
        super().__init__(params, name=name)
        self.series_state = self.params.dark_frames > 0

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
        given = series.saturation if p.saturation is None else p.saturation
        # the top of an integer dtype is a gap / defect marker whatever the saturation (as in ``summary``)
        self._saturation = min(saturation_level(series.dtype, given), saturation_level(series.dtype))
        # nothing to correct in integer counts: only the mask changes, the frame passes on as it is
        self._mask_only = (p.output == "auto" and self._dark is None and self._flat is None and not self.series_state
                           and np.dtype(series.dtype).kind in "ui" and np.dtype(series.dtype).itemsize <= 4)
        if self.series_state:
            self._darks_through = 0  # dispatching side: frames up to and including the last dark so far
            self._total: np.ndarray | None = None  # folding side: sum and count of the darks
            self._count = 0
            self.columns = {"is_dark": "u1"}
            self.reductions = {"dark": (shape, "f4")}
            self._none_valid = np.zeros(shape, dtype=np.bool_)
            self._none_valid.setflags(write=False)

    @property
    def passes_counts(self) -> bool:
        """Whether the series' frames pass on as they came, only their mask changed (:func:`valid_below`)."""
        return self._mask_only

    def count_mask(self, frame: Frame) -> tuple[np.ndarray, int] | None:
        """(mask, limit) such that ``below_row`` of each row of the frame's pixels gives the mask
        :meth:`process` would give it, or None when :meth:`process` corrects this frame."""
        if not self._mask_only or frame.data.dtype.kind not in "ui" or frame.data.dtype.itemsize > 4:
            return None
        return pass_mask(frame, self.series, self._valid), below_limit(self._saturation)

    def output_series(self, series: SeriesStart) -> SeriesStart:
        if self._mask_only:
            return replace(float32_series(series, self._valid), dtype=series.dtype)
        return float32_series(series, self._valid)

    def process(self, frame: Frame) -> Frame:
        dark = self._dark
        if self.series_state:
            is_dark = frame.index < self.params.dark_frames
            frame.results[self.name] = {"is_dark": int(is_dark)}
            if is_dark:
                frame.shared[self.name] = frame.data
                frame.data, frame.mask = frame.data.astype(np.float32), self._none_valid
                return frame
            if dark is None:
                raise ValueError(f"flatfield: no dark frame (index < {self.params.dark_frames}) arrived before "
                                 f"frame {frame.index}")
        if self._mask_only:
            frame.mask = valid_below(frame.data, pass_mask(frame, self.series, self._valid), self._saturation)
            return frame
        valid = np.empty(frame.data.shape, dtype=np.bool_)
        frame.data = correct(frame.data, dark=dark, flat=self._flat, mask=pass_mask(frame, self.series, self._valid),
                             saturation=self._saturation, fill_value=self.params.fill_value, mask_out=valid)
        frame.mask = valid
        return frame

    # ------------------------------------------------------------------ live dark (series-wide state)
    def epoch(self, seq: int, index: int) -> int:
        if index < self.params.dark_frames:
            self._darks_through = seq + 1
            return 0
        return self._darks_through

    def fold(self, seq: int, contribution: np.ndarray | None) -> bool:
        if contribution is None:
            return False
        if self._total is None:
            self._total = np.zeros(contribution.shape)
        self._total += contribution
        self._count += 1
        return True

    def shared(self) -> np.ndarray | None:
        return None if self._total is None else (self._total / self._count).astype(np.float32)

    def use(self, state: np.ndarray | None) -> None:
        self._dark = state

    def snapshot(self) -> dict[str, np.ndarray]:
        dark = self.shared() if self.series_state else None
        return {} if dark is None else {"dark": dark}
