"""Spots across frames (rotation data): 6-connected linking, one frame at a time.

A pixel of frame z touches the same pixel of frames z - 1 and z + 1 (6-connectivity), so
a 3-D spot is a chain of per-frame components whose pixels overlap from one frame to the
next.  :class:`SpotLinker` takes each frame's components (runs, labels and statistics
from ``spots_label``) in frame order and keeps the spots still *open*, those with pixels
on the last frame linked.  A spot is complete, and returned exactly once, as soon as the
next frame has been linked without touching it.  Frames that arrive early wait until
their predecessor comes; a predecessor that never comes (dropped, failed) is given up
once more than ``max_pending`` frames wait, and spots do not link across the gap.
"""
from __future__ import annotations

import logging

import numba
import numpy as np

from .label import NSTAT, find_root, join, merge_stats, overlaps

log = logging.getLogger(__name__)

#: a frame's components: runs (n, 3) int32, their labels (n,) int64, statistics (k, NSTAT)
Parts = tuple[np.ndarray, np.ndarray, np.ndarray]

_NO_RUNS = np.zeros((0, 3), np.int32)
_NO_STATS = np.zeros((0, NSTAT))


@numba.njit(nogil=True, cache=True)
def _link(prev_runs, prev_spot, open_stats, runs, labels, stats):
    """Link one frame's components to the spots open on the previous frame.

    Returns the statistics of the spots that ended on the previous frame, those of the
    spots now open (each with a part on this frame) and, per run of this frame, the
    index of its open spot.
    """
    n_open, k = open_stats.shape[0], stats.shape[0]
    parent = np.arange(n_open + k)
    for p in overlaps(prev_runs, runs, 0):
        join(parent, prev_spot[p[0]], n_open + labels[p[1]])
    merged = np.empty((n_open + k, NSTAT))
    grows = np.zeros(n_open + k, np.bool_)
    for i in range(n_open + k):  # roots are each set's smallest index, so they come first
        root = find_root(parent, i)
        part = open_stats[i] if i < n_open else stats[i - n_open]
        if root == i:
            merged[i] = part
        else:
            merge_stats(merged[root], part)
        grows[root] |= i >= n_open
    index = np.full(n_open + k, -1, np.int64)
    n_done = 0
    n_now = 0
    for i in range(n_open + k):
        if find_root(parent, i) == i:
            if grows[i]:
                index[i] = n_now
                n_now += 1
            else:
                n_done += 1
    done = np.empty((n_done, NSTAT))
    now = np.empty((n_now, NSTAT))
    j = 0
    for i in range(n_open + k):
        if find_root(parent, i) == i:
            if grows[i]:
                now[index[i]] = merged[i]
            else:
                done[j] = merged[i]
                j += 1
    run_spot = np.empty(runs.shape[0], np.int64)
    for i in range(runs.shape[0]):
        run_spot[i] = index[find_root(parent, n_open + labels[i])]
    return done, now, run_spot


class SpotLinker:
    """Links per-frame components into 3-D spots, returning each spot once it is complete.

    Parameters
    ----------
    first : index of the series' first frame.
    last : index of its last frame, if known: once it is linked, every open spot is complete.
    max_pending : frames that may wait for a missing predecessor before it is given up.

    Attributes
    ----------
    late : frames ignored because they came after their turn had passed (or twice).
    """

    def __init__(self, *, first: int = 0, last: int | None = None, max_pending: int = 16) -> None:
        if max_pending < 1:
            raise ValueError(f"max_pending must be >= 1, got {max_pending}")
        self.last = last
        self.max_pending = max_pending
        self.late = 0
        self._next = first
        self._pending: dict[int, Parts | None] = {}
        self._runs, self._spot, self._open = _NO_RUNS, np.zeros(0, np.int64), _NO_STATS

    @property
    def n_open(self) -> int:
        """Spots with pixels on the last linked frame."""
        return self._open.shape[0]

    def push(self, z: int, parts: Parts | None) -> np.ndarray:
        """Take frame ``z``'s components (None: a frame without any, e.g. a rejected one).

        Returns
        -------
        (n, NSTAT) statistics of the spots this frame (or the frames it released) completed.
        """
        if z < self._next or z in self._pending:
            self.late += 1
            log.warning("spots: frame %d came after its turn (next expected %d): its spots are not linked",
                        z, self._next)
            return _NO_STATS.copy()
        self._pending[z] = parts
        done = []
        while self._pending:
            if self._next in self._pending:
                done.append(self._step(self._pending.pop(self._next)))
                self._next += 1
            elif len(self._pending) > self.max_pending:
                resume = min(self._pending)
                log.warning("spots: frames %d..%d never came; spots are not linked across them",
                            self._next, resume - 1)
                done.append(self._step(None))
                self._next = resume
            else:
                break
        if self.last is not None and self._next > self.last:
            done.append(self._close())
        return np.concatenate(done) if done else _NO_STATS.copy()

    def flush(self) -> np.ndarray:
        """The series ended: link what waits (gaps as empty frames), then complete every spot."""
        done = []
        for z in sorted(self._pending):
            if z != self._next:
                done.append(self._step(None))
            done.append(self._step(self._pending.pop(z)))
            self._next = z + 1
        done.append(self._close())
        return np.concatenate(done)

    def _step(self, parts: Parts | None) -> np.ndarray:
        runs, labels, stats = parts if parts is not None else (_NO_RUNS, np.zeros(0, np.int64), _NO_STATS)
        done, self._open, self._spot = _link(self._runs, self._spot, self._open, runs, labels, stats)
        self._runs = runs
        return done

    def _close(self) -> np.ndarray:
        done = self._open
        self._runs, self._spot, self._open = _NO_RUNS, np.zeros(0, np.int64), _NO_STATS
        return done
