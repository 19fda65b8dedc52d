"""Frame-loss accounting of the series tracker."""
from __future__ import annotations

import numpy as np

from livediff.model import Frame, SeriesEnd, SeriesStart
from livediff.sources.tracker import SeriesTracker


def _f(series: int, i: int) -> Frame:
    return Frame(series, i, np.zeros((2, 2)))


def test_gaps_duplicates_and_strays_are_counted():
    t = SeriesTracker()
    assert t.feed(_f(1, 0)) == [] and t.orphans == 1
    t.feed(SeriesStart(1, (2, 2), "uint16", n_frames=6))
    passed = [e.index for i in (0, 1, 1, 4, 5) for e in t.feed(_f(1, i))]
    assert t.feed(_f(2, 2)) == []
    t.bad_message()
    (end,) = t.feed(SeriesEnd(1))
    assert passed == [0, 1, 4, 5]
    assert end.counts == {"expected": 6, "received": 4, "bad": 1, "duplicates": 1, "stray": 1, "lost": 2}
    assert end.reason == "end" and t.open is None


def test_new_start_interrupts_open_series():
    t = SeriesTracker()
    t.feed(SeriesStart(1, (2, 2), "uint16", n_frames=3))
    t.feed(_f(1, 0))
    events = t.feed(SeriesStart(2, (2, 2), "uint16"))
    assert isinstance(events[0], SeriesEnd) and events[0].reason == "interrupted"
    assert events[0].counts["lost"] == 2 and isinstance(events[1], SeriesStart)


def test_unknown_length_counts_holes_below_last_frame_and_grows():
    t = SeriesTracker()
    t.feed(SeriesStart(1, (2, 2), "uint16", n_frames=None))
    for i in (0, 2, 5000):
        t.feed(_f(1, i))
    end = t.close("timeout")
    assert end.counts["expected"] == 5001 and end.counts["lost"] == 4998 and end.reason == "timeout"


def test_end_of_other_series_is_ignored():
    t = SeriesTracker()
    t.feed(SeriesStart(1, (2, 2), "uint16"))
    assert t.feed(SeriesEnd(9)) == [] and t.open is not None


def test_huge_or_out_of_range_frame_numbers_cost_nothing():
    t = SeriesTracker()
    t.feed(SeriesStart(1, (2, 2), "uint16", n_frames=None))
    for i in (0, 1, 2**40, 3):
        t.feed(_f(1, i))
    assert len(t._seen.above) == 2  # 2**40 and 3 wait above the contiguous prefix 0, 1
    end = t.close("end")
    assert end.counts["received"] == 4 and end.counts["lost"] == 2**40 + 1 - 4
    t.feed(SeriesStart(2, (2, 2), "uint16", n_frames=5))
    assert t.feed(_f(2, 5)) == [] and t.feed(_f(2, 4)) != []
    assert t.close("end").counts == {"expected": 5, "received": 1, "bad": 0, "duplicates": 0, "stray": 1,
                                     "lost": 4}
