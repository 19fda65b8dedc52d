"""Log throttling for events that may repeat without end (bad messages, dropped frames).

A stream can send the same mistake thousands of times a second; the log must still say
what happened, once, and how often.  Nothing here imports the rest of livediff.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Hashable


class Throttle:
    """Decide which of many repeated events gets a log line.

    The first event of each ``kind`` is logged; later ones of that kind at most once every
    ``period`` seconds; and never more than ``burst`` lines in ``period`` seconds whatever
    their kinds.  Counting stays exact elsewhere: this only decides about log lines.

    Parameters
    ----------
    period : seconds between two lines about one kind (and the length of a burst window).
    burst : lines allowed per window over all kinds.
    clock : monotonic time in seconds (tests pass a fake one).
    max_kinds : kinds remembered; beyond that they are forgotten (and logged again once).
    """

    def __init__(self, period: float = 10.0, *, burst: int = 20, clock: Callable[[], float] = time.monotonic,
                 max_kinds: int = 1000) -> None:
        if period <= 0 or burst < 1:
            raise ValueError(f"period must be > 0 and burst >= 1, got {period} and {burst}")
        self.period = period
        self.burst = burst
        self._clock = clock
        self._max_kinds = max_kinds
        self._window = -float("inf")
        self._lines = 0
        self._kinds: dict[Hashable, tuple[float, int]] = {}  # kind -> (time of its last line, events not logged)

    def __call__(self, kind: Hashable = None) -> int | None:
        """Account for one event of ``kind``: None = do not log it; else log it, with this
        number of events of its kind that were not logged since its last line."""
        now = self._clock()
        if now - self._window >= self.period:
            self._window, self._lines = now, 0
        last, skipped = self._kinds.get(kind, (-float("inf"), 0))
        if self._lines >= self.burst or now - last < self.period:
            self._kinds[kind] = (last, skipped + 1)
            return None
        if kind not in self._kinds and len(self._kinds) >= self._max_kinds:
            self._kinds.clear()
        self._lines += 1
        self._kinds[kind] = (now, 0)
        return skipped


    def log(self, logger: logging.Logger, kind: Hashable, msg: str, *args: object, level: int = logging.WARNING,
            **kwargs: object) -> None:
        """``logger.log(level, msg, *args)`` if this event of ``kind`` gets a line, saying how many did not."""
        skipped = self(kind)
        if skipped is not None:
            logger.log(level, msg + "%s", *args, f" ({skipped} more like it not logged)" if skipped else "", **kwargs)
