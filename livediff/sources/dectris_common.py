"""DECTRIS' conventions -> livediff's, shared by the Stream v1 and v2 decoders.

The conversions from DECTRIS' conventions to livediff's (DESIGN.md) are here: the
corner-origin beam centre -> pixel-centre origin, and ``pixel_mask`` nonzero = bad ->
True = valid (the flags themselves are kept, as received, in
:attr:`livediff.model.Instrument.pixel_flags`).  The readers of untrusted fields both
decoders use are in :mod:`livediff.sources.fields`.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ..errors import DecodeError
from ..model import Frame, SeriesEnd, SeriesStart
from .fields import number, show

#: What a decoder returns for a message: series starts, frames and series ends.
Event = SeriesStart | Frame | SeriesEnd


def beam_center(x: float | None, y: float | None) -> tuple[float, float] | None:
    """(row, col) with livediff's pixel-centre origin from DECTRIS' corner-origin (x, y) in pixels."""
    if x is None or y is None:
        return None
    return (y - 0.5, x - 0.5)


def valid_mask(pixel_mask: np.ndarray) -> np.ndarray:
    """DECTRIS/NXmx ``pixel_mask`` (nonzero = bad, bits give the reason) -> bool, True = valid."""
    return np.asarray(pixel_mask) == 0


#: goniometer axes a DECTRIS detector is told about (SIMPLON ``<axis>_start`` / ``<axis>_increment``,
#: Stream v2 ``goniometer``), in the order they are kept
GONIOMETER_AXES = ("omega", "phi", "chi", "kappa", "two_theta")


def pixel_flags(pixel_mask: np.ndarray) -> np.ndarray:
    """The detector's ``pixel_mask`` as uint32 flags, bits unchanged (read-only copy)."""
    flags = np.array(pixel_mask, dtype=np.uint32)
    flags.setflags(write=False)
    return flags


def goniometer_v1(config: Mapping[str, Any], where: str) -> tuple[tuple[str, float, float], ...]:
    """``(axis, start, increment)`` of each axis with ``<axis>_start`` in a Stream v1 configuration
    (degrees; an absent increment is 0).

    Raises
    ------
    DecodeError
        A start or increment that is not a finite number.
    """
    return tuple((axis, number(config, f"{axis}_start", where), number(config, f"{axis}_increment", where) or 0.0)
                 for axis in GONIOMETER_AXES if config.get(f"{axis}_start") is not None)


def goniometer_v2(msg: Mapping[str, Any], where: str) -> tuple[tuple[str, float, float], ...]:
    """``(axis, start, increment)`` of each axis of a Stream v2 ``goniometer`` map
    (``{axis: {"start": deg, "increment": deg}}``), known axes first, others by name.

    Raises
    ------
    DecodeError
        ``goniometer`` not such a map, or an axis without a finite start.
    """
    value = msg.get("goniometer")
    if value is None:
        return ()
    if not isinstance(value, Mapping) or len(value) > 32 or not all(isinstance(k, str) and len(k) <= 64
                                                                   for k in value):
        raise DecodeError(f"{where}: 'goniometer' must be a map of axis name -> {{start, increment}}, "
                          f"got {show(value)}")
    names = [a for a in GONIOMETER_AXES if a in value] + sorted(a for a in value if a not in GONIOMETER_AXES)
    axes = []
    for name in names:
        axis = value[name]
        if not isinstance(axis, Mapping) or axis.get("start") is None:
            raise DecodeError(f"{where}: goniometer axis {name!r} must be a map with 'start' and 'increment' "
                              f"(degrees), got {show(axis)}")
        at = f"{where}: goniometer {name}"
        axes.append((name, number(axis, "start", at), number(axis, "increment", at) or 0.0))
    return tuple(axes)
