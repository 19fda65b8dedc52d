"""DECTRIS' conventions -> livediff's, shared by the Stream v1 and v2 decoders.

The conversions from DECTRIS' conventions to livediff's (DESIGN.md) are here: the
corner-origin beam centre -> pixel-centre origin, and ``pixel_mask`` nonzero = bad ->
True = valid.  The readers of untrusted fields both decoders use are in
:mod:`livediff.sources.fields`.
"""
from __future__ import annotations

import numpy as np

from ..model import Frame, SeriesEnd, SeriesStart

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
