"""Scan maps: every frame's declared values placed at its scan position, as the frames arrive.

The run loop keeps one :class:`MapAssembler` per series with a scan.  Values come from the
frames' typed outputs, so the maps do not depend on which worker processed which frame:
every map pixel is written once, by the frame that belongs there.  A position that no
frame filled stays NaN and counts as a hole; a second frame for a filled position counts
as a repeat and does not overwrite it.
"""
from __future__ import annotations

import logging

import numpy as np

from ..outputs import FrameOutput, Layout

log = logging.getLogger(__name__)


class MapAssembler:
    """The (rows, cols) float64 maps a series' operators declared (``layout.maps``)."""

    def __init__(self, layout: Layout) -> None:
        shape = layout.scan.shape
        self.maps = {label: {name: np.full(shape, np.nan) for name in names} for label, names in layout.maps.items()}
        self.filled = np.zeros(shape, dtype=bool)
        self.repeats = 0
        self._derived = layout.derived

    def place(self, out: FrameOutput) -> None:
        """Write ``out``'s map values at its position (first frame there wins)."""
        if out.position is None:
            return
        if self.filled[out.position]:
            self.repeats += 1
            if self.repeats == 1:
                log.warning("series %d: frame %d falls on scan position %s, already filled; repeats are "
                            "counted and not placed", out.series, out.index, out.position)
            return
        self.filled[out.position] = True
        for label, values in out.maps.items():
            maps = self.maps[label]
            for name, value in values.items():
                maps[name][out.position] = value

    @property
    def holes(self) -> int:
        """Positions no frame has filled (yet)."""
        return int(self.filled.size - np.count_nonzero(self.filled))

    def snapshot(self) -> dict[str, dict[str, np.ndarray]]:
        """Copies of every map, with each operator's derived maps added."""
        out = {}
        for label, maps in self.maps.items():
            copies = {name: m.copy() for name, m in maps.items()}
            copies.update(self._derived[label](copies))
            out[label] = copies
        return out
