"""Scan maps: every frame's declared values placed at its scan position, as the frames arrive.

The run loop keeps one :class:`MapAssembler` per series with a scan.  Values come from the
frames' typed outputs, so the maps do not depend on which worker processed which frame:
every map pixel is written once, by the frame that belongs there.  A position that no
frame filled stays NaN and counts as a hole; a second frame for a filled position counts
as a repeat and does not overwrite it.  Values an operator reports for other positions than
the frame's own (``placed``: those that need a position's neighbours, reported once they
have arrived, the last at series end) are placed the same way, first value wins; they do
not fill a hole, which counts the frames that never arrived.
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
        self._placed = {label: np.zeros(shape, dtype=bool) for label in layout.maps}
        self.repeats = 0
        self._derived = layout.derived

    def place(self, out: FrameOutput) -> None:
        """Write ``out``'s map values at its position (first frame there wins), and those it reports for others."""
        for label, entries in out.placed.items():
            self.place_at(label, entries)
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

    def place_at(self, label: str, entries: list[tuple[tuple[int, int], dict[str, float]]]) -> None:
        """Write operator ``label``'s values at explicit positions: ``[((row, col), {name: value}), ...]``."""
        maps, placed = self.maps[label], self._placed[label]
        for position, values in entries:
            if placed[position]:
                self.repeats += 1
                continue
            placed[position] = True
            for name, value in values.items():
                maps[name][position] = value

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
