"""Frame-loss accounting for one stream: which series is open, which frames came.

The tracker sees every decoded event in arrival order and decides what the pipeline
gets: frames of the open series, starts, and ends (real, synthesised on a timeout, or
synthesised when a new series starts before the old one ended).  It counts per series
what was received, rejected, duplicated and never seen; frames dropped downstream are
the pipeline's to count.
"""
from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass

from ..model import Frame, SeriesEnd, SeriesStart
from ..throttle import Throttle

log = logging.getLogger(__name__)

Event = SeriesStart | Frame | SeriesEnd


@dataclass
class SeriesCounts:
    """Source-side accounting of one series."""

    received: int = 0      # frames passed on to the pipeline
    bad: int = 0           # messages that failed to decode while the series was open
    duplicates: int = 0    # frame numbers seen twice (the second is discarded)
    stray: int = 0         # frames of another series, or with no series open

    def as_dict(self, *, expected: int, unique: int) -> dict[str, int]:
        return {
            "expected": expected, "received": self.received, "bad": self.bad,
            "duplicates": self.duplicates, "stray": self.stray, "lost": max(expected - unique, 0),
        }


class SeenFrames:
    """Which frame numbers arrived: everything below ``low`` plus a set above it.

    Memory follows how far out of order frames arrive, not how large their numbers are,
    so a stray frame number like 2**40 costs one set entry, not terabytes.
    """

    def __init__(self) -> None:
        self.low = 0
        self.above: set[int] = set()
        self.count = 0
        self.highest = -1

    def add(self, index: int) -> bool:
        """Record ``index``; False if it had arrived before."""
        if index < self.low or index in self.above:
            return False
        self.above.add(index)
        self.count += 1
        self.highest = max(self.highest, index)
        while self.low in self.above:
            self.above.remove(self.low)
            self.low += 1
        return True


class SeriesTracker:
    """Turns decoded events into the event sequence the pipeline sees, counting losses."""

    def __init__(self) -> None:
        self.open: SeriesStart | None = None
        self.counts = SeriesCounts()
        self._seen = SeenFrames()
        self.orphans = 0  # frames that arrived with no series open
        #: every event's fate since the tracker was made: starts, ends (that closed a series),
        #: ends_ignored, received, duplicates, stray, orphans (frames), bad_in_series (bad messages
        #: counted against an open series), bad_outside (with none open), closed (series ended, any reason)
        self.totals: Counter[str] = Counter()
        self._log = Throttle()  # a stream may send thousands of stray frames or starts: warnings throttled by kind

    def feed(self, event: Event) -> list[Event]:
        """Account for ``event``; return the events to pass on (possibly none)."""
        if isinstance(event, SeriesStart):
            out: list[Event] = []
            if self.open is not None:
                self._log.log(log, "interrupted", "series %d started while series %d was open: ending %d as "
                              "interrupted", event.series, self.open.series, self.open.series)
                out.append(self.close("interrupted"))
            self.open = event
            self.counts = SeriesCounts()
            self._seen = SeenFrames()
            self.totals["starts"] += 1
            out.append(event)
            return out
        if isinstance(event, SeriesEnd):
            if self.open is None or event.series != self.open.series:
                self._log.log(log, "end ignored", "end of series %d ignored: %s", event.series,
                              "no series is open" if self.open is None else f"series {self.open.series} is open")
                self.totals["ends_ignored"] += 1
                return []
            self.totals["ends"] += 1
            return [self.close("end")]
        return self._frame(event)

    def _frame(self, frame: Frame) -> list[Event]:
        n_frames = None if self.open is None else self.open.n_frames
        if self.open is None or frame.series != self.open.series or (n_frames is not None
                                                                       and frame.index >= n_frames):
            if self.open is None:
                self.orphans += 1
                self.totals["orphans"] += 1
                why = "no series is open"
            else:
                self.counts.stray += 1
                self.totals["stray"] += 1
                why = (f"series {self.open.series} is open" if frame.series != self.open.series
                       else f"the series announced {n_frames} frames")
            self._log.log(log, "orphan" if self.open is None else "stray", "frame %d of series %d discarded: %s",
                          frame.index, frame.series, why)
            return []
        if not self._seen.add(frame.index):
            self.counts.duplicates += 1
            self.totals["duplicates"] += 1
            self._log.log(log, "twice", "frame %d of series %d received twice: second copy discarded", frame.index,
                          frame.series)
            return []
        self.counts.received += 1
        self.totals["received"] += 1
        return [frame]

    def bad_message(self) -> None:
        """Count a message that failed to decode against the open series, if any."""
        if self.open is None:
            self.totals["bad_outside"] += 1
            return
        self.counts.bad += 1
        self.totals["bad_in_series"] += 1

    def close(self, reason: str) -> SeriesEnd:
        """End the open series (``reason`` as in :class:`SeriesEnd`) with its accounting."""
        if self.open is None:
            raise RuntimeError("no series is open")
        start = self.open
        # without an announced count, frames after the last one seen cannot be known lost
        expected = start.n_frames if start.n_frames is not None else self._seen.highest + 1
        end = SeriesEnd(start.series, reason, self.counts.as_dict(expected=expected, unique=self._seen.count))
        lost = end.counts["lost"]
        if lost or reason != "end":
            self._log.log(log, reason, "series %d ended (%s): %d of %d frames never arrived", start.series, reason,
                          lost, expected)
        self.open = None
        self.totals["closed"] += 1
        return end
