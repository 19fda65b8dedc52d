"""Readers of untrusted header fields, and the size limits, shared by every protocol's decoder.

Each protocol has one schema, written in its decoder module with these readers (native
in :mod:`.native`, DECTRIS Stream v1 in :mod:`.dectris_v1`, Stream v2 in
:mod:`.dectris_v2`).  Every reader takes already-parsed message fields (msgpack, JSON or
CBOR) and either returns a checked Python value or raises
:class:`~livediff.errors.DecodeError` naming where it was read, the key and the value
(cut to 60 characters).  So a header that passes its schema holds only values the model,
the operators and the writer can take: integers that fit int64, finite floats, 2-vectors
of two numbers, sizes within :class:`Limits`.
"""
from __future__ import annotations

import math
import reprlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import DecodeError
from ..model import SeriesStart

#: Largest frame count, and frame number + 1, a header or image may announce (at 2 kHz, 12 days).
MAX_FRAMES = 1 << 31
#: Largest image side, in pixels.
MAX_SIDE = 1 << 20
#: Default :attr:`Limits.max_pixels` (``source.max_frame_pixels``): 64 Mpixel, 3.5 x an EIGER2 16M.
MAX_FRAME_PIXELS = 1 << 26
#: Default ``source.max_frame_mb``, MiB of decoded pixels per frame: a 16M detector's uint32 frames fit 3 times.
MAX_FRAME_MB = 256
_INT64 = 1 << 63
_MIB = 1 << 20


@dataclass(frozen=True)
class Limits:
    """The largest frame a decoder accepts, checked from the header before anything is allocated.

    Attributes
    ----------
    max_pixels : rows x cols of one frame (``source.max_frame_pixels``).
    max_bytes : rows x cols x itemsize of one decoded frame (``source.max_frame_mb`` MiB).
    """

    max_pixels: int = MAX_FRAME_PIXELS
    max_bytes: int = MAX_FRAME_MB * _MIB

    def check(self, shape: tuple[int, int], dtype: Any, where: str) -> None:
        """Refuse a frame of ``shape`` and ``dtype`` (None: pixels only) beyond the limits.

        Raises
        ------
        DecodeError
            Saying the size, the limit and the setting that raises it.
        """
        pixels = int(shape[0]) * int(shape[1])
        if pixels > self.max_pixels:
            raise DecodeError(f"{where}: frames of {shape[0]} x {shape[1]} = {pixels} pixels, more than "
                              f"source.max_frame_pixels = {self.max_pixels}")
        if dtype is not None and pixels * np.dtype(dtype).itemsize > self.max_bytes:
            raise DecodeError(f"{where}: {np.dtype(dtype).name} frames of {shape[0]} x {shape[1]} decode to "
                              f"{pixels * np.dtype(dtype).itemsize / _MIB:.0f} MiB, more than "
                              f"source.max_frame_mb = {self.max_bytes / _MIB:g}")


def is_int(value: Any) -> bool:
    """True for an integer that is not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


def integer(d: Mapping[str, Any], key: str, where: str, *, required: bool = True) -> int | None:
    """``d[key]`` as an integer in 0..2**63 - 1; None when absent (or nil) and not ``required``.

    Raises
    ------
    DecodeError
        Present but not such an integer, or absent and ``required``.
    """
    value = d.get(key)
    if value is None and not required:
        return None
    if not is_int(value) or not 0 <= value < _INT64:
        raise DecodeError(f"{where}: {key!r} must be an integer >= 0, got {show(value)}")
    return value


def _finite(value: Any) -> bool:
    # abs() first: float() of an integer beyond 2**1024 raises instead of giving inf
    return isinstance(value, (int, float)) and not isinstance(value, bool) and abs(value) < _INT64 \
        and math.isfinite(value)


def number(d: Mapping[str, Any], key: str, where: str, *, minimum: float | None = None) -> float | None:
    """``d[key]`` as a finite float, ``>= minimum`` if given; None when absent (or nil).

    Raises
    ------
    DecodeError
        Present but not a finite real number (or below ``minimum``).
    """
    value = d.get(key)
    if value is None:
        return None
    if not _finite(value) or (minimum is not None and value < minimum):
        bound = "" if minimum is None else f" >= {minimum:g}"
        raise DecodeError(f"{where}: {key!r} must be a finite number{bound}, got {show(value)}")
    return float(value)


def positive(d: Mapping[str, Any], key: str, where: str, *, zero_unset: bool = False) -> float | None:
    """``d[key]`` as a finite float > 0, or None when absent (or nil, or 0 with ``zero_unset``).

    Raises
    ------
    DecodeError
        Present but not a positive finite number.
    """
    value = d.get(key)
    if value is None or (zero_unset and _finite(value) and value == 0):
        return None
    if not _finite(value) or value <= 0:
        raise DecodeError(f"{where}: {key!r} must be a positive finite number, got {show(value)}")
    return float(value)


def pair(d: Mapping[str, Any], key: str, where: str, *, positive: bool = False) -> tuple[float, float] | None:
    """``d[key]`` as two finite floats (both > 0 if ``positive``), or None when absent (or nil).

    Raises
    ------
    DecodeError
        Not a list of exactly two such numbers.
    """
    value = d.get(key)
    if value is None:
        return None
    if (not isinstance(value, (list, tuple)) or len(value) != 2 or not all(_finite(v) for v in value)
            or (positive and not all(v > 0 for v in value))):
        kind = "positive finite" if positive else "finite"
        raise DecodeError(f"{where}: {key!r} must be 2 {kind} numbers, got {show(value)}")
    return (float(value[0]), float(value[1]))


def text(d: Mapping[str, Any], key: str, where: str, *, max_length: int = 256) -> str | None:
    """``d[key]`` as a string of at most ``max_length`` characters, or None when absent (or nil).

    Raises
    ------
    DecodeError
        Present but not such a string.
    """
    value = d.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > max_length:
        raise DecodeError(f"{where}: {key!r} must be a string of at most {max_length} characters, "
                          f"got {show(value)}")
    return value


def vector(d: Mapping[str, Any], key: str, where: str, n: int = 3) -> tuple[float, ...] | None:
    """``d[key]`` as ``n`` finite floats, or None when absent (or nil).

    Raises
    ------
    DecodeError
        Not a list of exactly ``n`` finite numbers.
    """
    value = d.get(key)
    if value is None:
        return None
    if not isinstance(value, (list, tuple)) or len(value) != n or not all(_finite(v) for v in value):
        raise DecodeError(f"{where}: {key!r} must be {n} finite numbers, got {show(value)}")
    return tuple(float(v) for v in value)


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


def frame_count(d: Mapping[str, Any], key: str, where: str) -> int | None:
    """``d[key]`` as a number of frames, 0 <= n <= :data:`MAX_FRAMES`, or None when absent (or nil)."""
    value = integer(d, key, where, required=False)
    if value is not None and value > MAX_FRAMES:
        raise DecodeError(f"{where}: {key!r} must be <= {MAX_FRAMES}, got {value}")
    return value


def side(d: Mapping[str, Any], key: str, where: str) -> int:
    """``d[key]`` as an image side in pixels, 1 <= n < :data:`MAX_SIDE` (raises DecodeError)."""
    value = integer(d, key, where)
    if not 0 < value < MAX_SIDE:
        raise DecodeError(f"{where}: {key!r} must be in 1..{MAX_SIDE - 1}, got {value}")
    return value


def sides(value: Any) -> tuple[int, int] | None:
    """``value`` as two image sides (1 <= n < :data:`MAX_SIDE`) in the order given, else None."""
    if (isinstance(value, (list, tuple)) and len(value) == 2
            and all(is_int(n) and 0 < n < MAX_SIDE for n in value)):
        return (value[0], value[1])
    return None


def scalars(d: Mapping[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    """The values of ``keys`` in ``d`` that are msgpack-able finite scalars (for ``SeriesStart.meta``)."""
    return {k: d[k] for k in keys if isinstance(d.get(k), (str, bool)) or _finite(d.get(k))}


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
    """A short ``repr(value)`` (at most 60 characters, and cheap for a huge value) for error messages."""
    text = reprlib.repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
