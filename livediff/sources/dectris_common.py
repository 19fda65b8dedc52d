"""Field readers and conversions shared by the DECTRIS stream decoders (v1 and v2).

Every reader takes untrusted, already-parsed message fields and either returns a checked
Python value or raises :class:`~livediff.errors.DecodeError` naming where it was read,
the key and the value.  The conversions from DECTRIS' conventions to livediff's
(DESIGN.md) are here: the corner-origin beam centre -> pixel-centre origin, and
``pixel_mask`` nonzero = bad -> True = valid.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..errors import DecodeError
from ..model import Frame, SeriesEnd, SeriesStart

#: Largest frame count (and frame number + 1) a header or image may announce.
MAX_FRAMES = 1 << 31
#: Largest image side, in pixels.
MAX_SIDE = 1 << 20
#: What a decoder returns for a message: series starts, frames and series ends.
Event = SeriesStart | Frame | SeriesEnd


def integer(d: Mapping[str, Any], key: str, where: str, *, required: bool = True) -> int | None:
    """``d[key]`` as an integer in 0..2**63 - 1; None when absent and not ``required``.

    Raises
    ------
    DecodeError
        Present but not such an integer, or absent and ``required``.
    """
    value = d.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 1 << 63:
        raise DecodeError(f"{where}: {key!r} must be an integer >= 0, got {show(value)}")
    return value


def number(d: Mapping[str, Any], key: str, where: str) -> float | None:
    """``d[key]`` as a finite float, or None when absent.

    Raises
    ------
    DecodeError
        Present but not a finite real number.
    """
    value = d.get(key)
    if value is None:
        return None
    if (not isinstance(value, (int, float)) or isinstance(value, bool) or abs(value) >= 1 << 63
            or not math.isfinite(value)):
        raise DecodeError(f"{where}: {key!r} must be a finite number, got {show(value)}")
    return float(value)


def frame_index(d: Mapping[str, Any], key: str, where: str) -> int:
    """``d[key]`` as a frame number, 0 <= n < :data:`MAX_FRAMES`.

    Raises
    ------
    DecodeError
        Not an integer in that range.
    """
    value = integer(d, key, where)
    if value >= MAX_FRAMES:
        raise DecodeError(f"{where}: {key!r} must be < {MAX_FRAMES}, got {value}")
    return value


def scalars(d: Mapping[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    """The values of ``keys`` in ``d`` that are msgpack-able scalars (for ``SeriesStart.meta``)."""
    return {k: d[k] for k in keys if isinstance(d.get(k), (str, bool, float))
            or (isinstance(d.get(k), int) and -(1 << 63) <= d[k] < 1 << 63)}


def side(d: Mapping[str, Any], key: str, where: str) -> int:
    """``d[key]`` as an image side in pixels, 1 <= n < :data:`MAX_SIDE` (raises DecodeError)."""
    value = integer(d, key, where)
    if not 0 < value < MAX_SIDE:
        raise DecodeError(f"{where}: {key!r} must be in 1..{MAX_SIDE - 1}, got {value}")
    return value


def beam_center(x: float | None, y: float | None) -> tuple[float, float] | None:
    """(row, col) with livediff's pixel-centre origin from DECTRIS' corner-origin (x, y) in pixels."""
    if x is None or y is None:
        return None
    return (y - 0.5, x - 0.5)


def valid_mask(pixel_mask: np.ndarray) -> np.ndarray:
    """DECTRIS/NXmx ``pixel_mask`` (nonzero = bad, bits give the reason) -> bool, True = valid."""
    return np.asarray(pixel_mask) == 0


def check_fits(series: SeriesStart | None, shape: tuple[int, int], dtype: np.dtype, where: str) -> None:
    """Check an image of ``shape`` and ``dtype`` against the header of its open ``series`` (None = no check).

    Raises
    ------
    DecodeError
        The image's shape or pixel type differs from the series header's.
    """
    if series is not None and (shape, dtype.name) != (series.shape, series.dtype):
        raise DecodeError(f"{where}: {dtype.name} {shape} disagrees with the series header "
                          f"({series.dtype} {series.shape})")


def show(value: Any) -> str:
    """``repr(value)``, cut to 60 characters, for error messages about untrusted input."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
