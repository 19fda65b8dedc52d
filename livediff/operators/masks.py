"""Pixel-mask helpers the correcting operators share: user mask files, saturation levels,
the mask a correction passes on, and the one-pixel store step of every correcting kernel.

A mask is boolean with ``True`` = valid pixel (DESIGN.md).  The pixel mask of a frame is
the union of what makes a pixel invalid: the detector's mask from the series header,
a user mask file and saturated or overflow values (applied by ``flatfield``), and hot
pixels found live (``hot_pixels``, placed before ``flatfield`` so it sees raw counts).
Once masked, a pixel stays masked in every later operator: the mask moves with the data.
The mask argument checks are in :mod:`.checks`.
"""
from __future__ import annotations

import math
from dataclasses import replace
from typing import Literal

import numba
import numpy as np

from ..model import Frame, SeriesStart
from .checks import check_choice

__all__ = ["finite_mask", "float32_series", "mask_from_file", "pass_mask", "saturation_level", "store"]


def pass_mask(frame: Frame, series: SeriesStart, static: np.ndarray) -> np.ndarray:
    """``frame.mask & static``, skipping the AND when the frame carries the series mask (within ``static``)."""
    if frame.mask is None or frame.mask is series.mask:
        return static
    return frame.mask & static


def float32_series(series: SeriesStart, mask: np.ndarray | None) -> SeriesStart:
    """What a correcting operator's frames look like: float32, ``mask`` (None if all valid), no saturation."""
    mask = None if mask is None or mask.all() else mask
    return replace(series, dtype="float32", mask=mask, saturation=None)


@numba.njit(nogil=True, cache=True)
def store(out: np.ndarray, valid: np.ndarray | None, r: int, c: int, y: np.float32, ok: bool, fill: np.float32) -> None:
    """The last step of every correcting kernel: write one output pixel and its validity.

    Parameters
    ----------
    out : float32 output array, written at (r, c).
    valid : bool array receiving the pixel's validity at (r, c), or None (not recorded).
    r, c : the pixel.
    y : its corrected value.
    ok : whether the inputs make it valid (mask, saturation, nonzero divisor, ...).
    fill : the value of an invalid pixel.

    Notes
    -----
    The pixel is valid when ``ok`` and ``y`` is finite; ``out[r, c]`` is then ``y``, else
    ``fill``.  Callable from numba code (and from Python, one pixel at a time).
    """
    ok &= np.abs(y) < np.inf
    out[r, c] = y if ok else fill
    if valid is not None:
        valid[r, c] = ok


def finite_mask(image: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """The valid pixels holding finite values.

    Parameters
    ----------
    image : array of any real dtype.
    mask : bool array of its shape, True = valid; None = all valid.

    Returns
    -------
    New bool array ``mask & np.isfinite(image)``.
    """
    finite = np.isfinite(image)
    return finite if mask is None else finite & mask


def mask_from_file(array: np.ndarray, *, nonzero: Literal["invalid", "valid"] = "invalid") -> np.ndarray:
    """A mask read from a file, as livediff's bool mask (True = valid).

    Parameters
    ----------
    array : the file's 2-D array, any dtype.
    nonzero : what a nonzero value means in the file: ``"invalid"`` (DECTRIS
        ``pixel_mask``, pyFAI, NXmx) or ``"valid"`` (DIALS, CrystFEL).

    Returns
    -------
    New bool array, True = valid.  Non-finite values count as nonzero.
    """
    check_choice(nonzero, ("invalid", "valid"), "nonzero")
    set_ = array != 0
    return ~set_ if nonzero == "invalid" else set_


def saturation_level(dtype: np.dtype | str, saturation: float | None = None) -> float:
    """Value at and above which a pixel is invalid (saturated, overflowing or a gap marker).

    ``saturation`` when given; else the top of an integer dtype (``2**bits - 1``, which
    EIGER detectors send for gaps and overflows); else ``+inf`` (float frames: only
    non-finite values are invalid, since ``NaN < inf`` and ``inf < inf`` are false).
    """
    if saturation is not None:
        return float(saturation)
    dtype = np.dtype(dtype)
    return float(np.iinfo(dtype).max) if dtype.kind in "ui" else math.inf
