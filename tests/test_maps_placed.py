"""Map values an operator reports for other positions than the frame's own (``placed``), and at series end."""
from __future__ import annotations

import numpy as np
import pytest
from harness import run_series

from livediff.model import Frame, Scan, SeriesStart
from livediff.operators.base import BaseOperator
from livediff.outputs import PLACED, Layout
from livediff.pipeline import OperatorSpec


class _Lagging(BaseOperator):
    """Reports each frame's sum at its position one frame later (in the in-order step), the last at finish;
    its own-position map ``own`` is the frame's sum as usual."""

    kind = "lagging"

    def start(self, series):
        super().start(series)
        self.maps = {"own": "f8", "late": "f8"}
        self._pending = None

    def process(self, frame):
        frame.results[self.name] = {"own": float(frame.data.sum())}
        return frame

    def collect(self, frame):
        position = self.series.scan.position(frame.index)
        if self._pending is not None:  # then a repeat (first value wins) and a name not declared
            frame.results[self.name][PLACED] = [self._pending, (self._pending[0], {"late": -1.0, "undeclared": 5.0})]
        self._pending = None if position is None else (position, {"late": frame.results[self.name]["own"]})
        return frame

    def finish(self):
        return {PLACED: [self._pending]} if self._pending is not None else {}


@pytest.mark.parametrize("workers", [1, 2])
def test_placed_values_land_at_their_positions_and_the_last_at_series_end(workers):
    scan = Scan((3, 4), order="serpentine", flyback=1)
    start = SeriesStart(1, (5, 6), "uint16", scan=scan)
    rng = np.random.default_rng(0)
    data = {i: rng.integers(0, 100, (5, 6)).astype(np.uint16) for i in range(scan.n_frames)}
    missing = {2, 6}
    frames = [Frame(1, i, data[i]) for i in range(scan.n_frames) if i not in missing]
    sink = run_series([OperatorSpec("lagging", _Lagging, None)], start, frames, workers)
    maps = sink.final.maps["lagging"]
    expected = np.full(scan.shape, np.nan)
    for i, d in data.items():
        if i not in missing and scan.position(i) is not None:
            expected[scan.position(i)] = d.sum()
    np.testing.assert_array_equal(maps["own"], expected)
    np.testing.assert_array_equal(maps["late"], expected)  # the last one placed at series end
    assert sink.summary["map_holes"] == 2  # holes count frames that never arrived, not placed values
    assert "undeclared" not in maps


def test_placed_values_need_a_scan():
    layout = Layout()
    layout.maps = {"op": {"v": "f8"}}
    assert layout.placed_of({"op": {PLACED: [((0, 0), {"v": 1.0})]}}) == {}
    layout.scan = Scan((2, 2))
    assert layout.placed_of({"op": {PLACED: [([1, 0], {"v": 1.0, "w": 2.0})]}, "other": {}}) == \
        {"op": [((1, 0), {"v": 1.0})]}
