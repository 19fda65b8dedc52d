"""The per-frame figures of the open series, bounded: the last ``size`` frames of every column."""
from __future__ import annotations

from collections import deque
from typing import Any

import numpy as np

from .render import finite_list

#: frames the rolling hit rate looks back over
HIT_WINDOW = 100


class History:
    """A ring of the last ``size`` frames' column values, plus derived hit rates.

    ``seq`` counts the rows ever appended in the series, so a reader that has rows up to
    ``seq0`` can ask for the newer ones only (:meth:`since`).  A column named ``n_spots``
    (or ``LABEL.n_spots``) gets a derived ``hit_rate`` (``LABEL.hit_rate``): the fraction of
    the last :data:`HIT_WINDOW` frames with at least ``hit_min_spots`` spots.
    """

    def __init__(self, size: int, hit_min_spots: int) -> None:
        self.size = size
        self.hit_min_spots = hit_min_spots
        self.reset([])

    def reset(self, columns: list[str]) -> None:
        """Start a series with these numeric columns (more may be added by :meth:`add_columns`)."""
        self.seq = 0
        self.frames = np.full(self.size, -1, np.int64)
        self.values: dict[str, np.ndarray] = {}
        self.hits: dict[str, _Hits] = {}  # n_spots column -> its hit counts
        self.add_columns(columns)

    def add_columns(self, columns: list[str]) -> None:
        for name in columns:
            if name in self.values:
                continue
            self.values[name] = np.full(self.size, np.nan)
            base = name.rpartition(".")
            if base[2] == "n_spots":
                rate = f"{base[0]}.hit_rate" if base[0] else "hit_rate"
                if rate not in self.values:
                    self.hits[name] = _Hits(rate)
                    self.values[rate] = np.full(self.size, np.nan)

    def append(self, frame: int, row: dict[str, Any]) -> None:
        """Add one frame's row (columns it lacks, or non-numeric values, are NaN)."""
        i = self.seq % self.size
        self.frames[i] = frame
        for name, column in self.values.items():
            value = row.get(name)
            column[i] = value if isinstance(value, (int, float, np.integer, np.floating)) else np.nan
        for name, hits in self.hits.items():
            n = row.get(name)
            if isinstance(n, (int, float, np.integer, np.floating)):
                self.values[hits.column][i] = hits.add(n >= self.hit_min_spots)
        self.seq += 1

    def since(self, start: int, end: int | None = None) -> dict[str, Any]:
        """Rows ``start`` to ``end`` (default: now; both clamped to what the ring holds), JSON-ready."""
        end = self.seq if end is None else min(end, self.seq)
        first = min(max(start, self.seq - self.size, 0), end)
        idx = np.arange(first, end) % self.size
        return {"start": first, "end": end, "frames": self.frames[idx].tolist(),
                "columns": {name: finite_list(v[idx]) for name, v in self.values.items()}}

    def hit_rates(self) -> dict[str, float | None]:
        """Hit rate over the whole series, per ``n_spots`` column."""
        return {h.column: (h.total / h.frames if h.frames else None) for h in self.hits.values()}


class _Hits:
    """Hits of one ``n_spots`` column: over the series and over the last :data:`HIT_WINDOW` frames."""

    def __init__(self, column: str) -> None:
        self.column = column
        self.total = 0
        self.frames = 0
        self._window: deque[bool] = deque()
        self._in_window = 0

    def add(self, hit: bool) -> float:
        """Count one frame; return the rolling hit rate."""
        self.total += hit
        self.frames += 1
        self._window.append(hit)
        self._in_window += hit
        if len(self._window) > HIT_WINDOW:
            self._in_window -= self._window.popleft()
        return self._in_window / len(self._window)
