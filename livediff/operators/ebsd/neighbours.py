"""Scan neighbourhoods: neighbour pattern averaging and neighbour dot products, whole-scan and as lines arrive.

A pattern's neighbourhood is a window of scan positions around it (:func:`window`).  Two
figures use it: the **averaged pattern** (kikuchipy's ``average_neighbour_patterns``: the
weighted sum of the patterns in the window divided by the weight of those that exist; the
scan is zero-extended at its border, and a missing pattern (a hole) counts like a position
outside the scan) and the **average neighbour dot product** (kikuchipy's
``get_average_neighbour_dot_product_map``: the mean dot product of the zero-mean, unit-norm
pattern with those of its existing neighbours).

Both are computed by one kernel over a block of scan lines, either the whole scan at once
(:func:`average_neighbour_patterns`, :func:`neighbour_dot_products`) or a ring of the last
``2 radius + 2`` lines that a live scan fills as it arrives (:class:`Neighbourhood`): a
position is evaluated once the last of its neighbours has arrived, that is one scan line
(and ``radius`` patterns) after it; :meth:`Neighbourhood.flush` evaluates the rest at series
end.  The same kernel on the same float32 patterns in the same window order: the
incremental results equal the whole-scan ones bit for bit.
"""
from __future__ import annotations

from typing import Any

import numba
import numpy as np
from scipy import ndimage

from ...model import Scan

__all__ = ["Neighbourhood", "average_neighbour_patterns", "neighbour_dot_products", "window"]


def window(radius: int = 1, *, shape: str = "circular", std: float | None = None) -> np.ndarray:
    """Weights of the scan positions around a pattern, (2 radius + 1, 2 radius + 1) float64.

    Parameters
    ----------
    radius : half width in scan steps (1: 3 x 3).
    shape : ``"circular"`` (positions within ``radius`` of the centre, kikuchipy's default:
        3 x 3 without its corners) or ``"rectangular"`` (the whole square).
    std : Gaussian weights ``exp(-d² / 2 std²)`` (d in scan steps) over that footprint
        (kikuchipy's ``"gaussian"`` window is the rectangular one); None = equal weights.
    """
    if not (isinstance(radius, int) and radius >= 1):
        raise ValueError(f"radius must be an integer >= 1, got {radius!r}")
    if shape not in ("circular", "rectangular"):
        raise ValueError(f"shape must be 'circular' or 'rectangular', got {shape!r}")
    if std is not None and not std > 0:
        raise ValueError(f"std must be > 0, got {std}")
    d2 = (np.arange(-radius, radius + 1)[:, None] ** 2 + np.arange(-radius, radius + 1)[None, :] ** 2).astype(float)
    weights = np.ones(d2.shape) if std is None else np.exp(-d2 / (2.0 * std * std))
    if shape == "circular":
        weights[d2 > radius * radius] = 0.0
    return weights


def _taps(weights: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(d_row, d_col, weight) of the nonzero window entries, row-major."""
    weights = np.asarray(weights, dtype=np.float64)
    if weights.ndim != 2 or weights.shape[0] % 2 == 0 or weights.shape[1] % 2 == 0:
        raise ValueError(f"a window must be 2-D with odd sides, got shape {weights.shape}")
    rows, cols = np.nonzero(weights)
    return (rows - weights.shape[0] // 2).astype(np.int64), (cols - weights.shape[1] // 2).astype(np.int64), \
        weights[rows, cols]


@numba.njit(nogil=True, cache=True)
def _add(acc, w, pattern):  # pragma: no cover - compiled
    for r in range(acc.shape[0]):
        a, p = acc[r], pattern[r]
        for c in range(acc.shape[1]):
            a[c] += w * p[c]


@numba.njit(nogil=True, cache=True)
def _dot(a, b):  # pragma: no cover - compiled
    total = 0.0
    for r in range(a.shape[0]):
        x, y = a[r], b[r]
        part = 0.0
        for c in range(a.shape[1]):
            part += np.float64(x[c]) * y[c]
        total += part
    return total


@numba.njit(nogil=True, cache=True)
def _weighted_sum(block, present, block_row, y, x, n_rows, dy, dx, w, out):  # pragma: no cover - compiled
    """out = sum of w * pattern over the existing window positions around (y, x); returns their weight.

    ``block[s, col]`` holds the pattern of scan row ``block_row[s]`` (each row in slot
    ``row % len(block)``); a position exists when it is inside the scan and ``present``.
    """
    out[:] = 0.0
    weight = 0.0
    n_slots, n_cols = present.shape
    for k in range(w.size):
        ny, nx = y + dy[k], x + dx[k]
        if ny < 0 or ny >= n_rows or nx < 0 or nx >= n_cols:
            continue
        s = ny % n_slots
        if block_row[s] != ny or not present[s, nx]:
            continue
        _add(out, w[k], block[s, nx])
        weight += w[k]
    return weight


@numba.njit(nogil=True, cache=True)
def _mean_dot(block, present, block_row, y, x, n_rows, dy, dx):  # pragma: no cover - compiled
    """Mean dot product of the pattern at (y, x) with the existing window positions' (NaN: none)."""
    n_slots, n_cols = present.shape
    centre = block[y % n_slots, x]
    total, n = 0.0, 0
    for k in range(dy.size):
        ny, nx = y + dy[k], x + dx[k]
        if (ny == y and nx == x) or ny < 0 or ny >= n_rows or nx < 0 or nx >= n_cols:
            continue
        s = ny % n_slots
        if block_row[s] != ny or not present[s, nx]:
            continue
        total += _dot(centre, block[s, nx])
        n += 1
    return total / n if n else np.nan


def _check_stack(patterns: np.ndarray, present: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    patterns = np.asarray(patterns)
    if patterns.ndim != 4:
        raise ValueError(f"patterns must be (scan rows, scan cols, rows, cols), got shape {patterns.shape}")
    present = np.ones(patterns.shape[:2], dtype=bool) if present is None else np.asarray(present, dtype=bool)
    if present.shape != patterns.shape[:2]:
        raise ValueError(f"present shape {present.shape} != the scan shape {patterns.shape[:2]}")
    return np.ascontiguousarray(patterns, dtype=np.float32), present


def average_neighbour_patterns(patterns: np.ndarray, weights: np.ndarray | None = None,
                               present: np.ndarray | None = None) -> np.ndarray:
    """Every pattern of a scan averaged with its neighbours (kikuchipy's ``average_neighbour_patterns``, float).

    Parameters
    ----------
    patterns : (scan rows, scan cols, rows, cols), any real dtype (used as float32).
    weights : the window (:func:`window`; default 3 x 3 circular).
    present : (scan rows, scan cols) bool, False where no pattern arrived (a hole); None = all.

    Returns
    -------
    (scan rows, scan cols, rows, cols) float32: Σ w p / Σ w over the window positions inside
    the scan with a pattern; NaN at holes.

    Notes
    -----
    kikuchipy correlates the zero-extended scan with the window and divides by the window
    sum inside the scan (truncated to an integer: equal up to the min-max stretch it applies
    next).  Holes, which kikuchipy does not know, are left out of both sums.
    """
    patterns, present = _check_stack(patterns, present)
    dy, dx, w = _taps(window() if weights is None else weights)
    rows = patterns.shape[0]
    out = np.full(patterns.shape, np.nan, dtype=np.float32)
    acc = np.empty(patterns.shape[2:])
    block_row = np.arange(rows, dtype=np.int64)
    for y, x in zip(*np.nonzero(present)):
        weight = _weighted_sum(patterns, present, block_row, y, x, rows, dy, dx, w, acc)
        out[y, x] = acc / weight
    return out


def neighbour_dot_products(patterns: np.ndarray, weights: np.ndarray | None = None,
                           present: np.ndarray | None = None) -> np.ndarray:
    """Average neighbour dot product map (kikuchipy's ``get_average_neighbour_dot_product_map``).

    Parameters
    ----------
    patterns : (scan rows, scan cols, rows, cols) unit patterns (:func:`~.kernels.unit_pattern`).
    weights : the window; its nonzero entries are the neighbours (default 3 x 3 circular).
    present : as :func:`average_neighbour_patterns`.

    Returns
    -------
    (scan rows, scan cols) float64: the mean dot product with the existing neighbours; NaN at
    holes and where no neighbour exists.
    """
    patterns, present = _check_stack(patterns, present)
    dy, dx, _ = _taps(window() if weights is None else weights)
    rows = patterns.shape[0]
    out = np.full(patterns.shape[:2], np.nan)
    block_row = np.arange(rows, dtype=np.int64)
    for y, x in zip(*np.nonzero(present)):
        out[y, x] = _mean_dot(patterns, present, block_row, y, x, rows, dy, dx)
    return out


class Neighbourhood:
    """The last scan lines of a live scan, evaluating each position once its neighbours have arrived.

    Parameters
    ----------
    scan : the series' scan (order and fly-back give each position's place in the stream).
    shape : (rows, cols) of a pattern.
    weights : the window (:func:`window`).
    figure : ``"average"`` (the averaged pattern, float32) or ``"dot"`` (the mean neighbour
        dot product of unit patterns, a float).

    Notes
    -----
    Patterns are expected in scan order (the order of :meth:`Scan.position`); a missing one
    is a hole.  Position p is evaluated when a pattern at or after the last of its
    neighbours in scan order has arrived (one line and ``radius`` patterns later), before
    the ring slot of an old line is reused: ``2 radius + 2`` lines of float32 patterns are
    kept.  A pattern arriving after a position that needed it was evaluated is counted in
    :attr:`late` (used where it still can be).
    """

    def __init__(self, scan: Scan, shape: tuple[int, int], weights: np.ndarray, *, figure: str = "average") -> None:
        if figure not in ("average", "dot"):
            raise ValueError(f"figure must be 'average' or 'dot', got {figure!r}")
        self.figure = figure
        self._dy, self._dx, self._w = _taps(weights)
        footprint = np.asarray(weights) != 0
        radius = max(weights.shape) // 2
        rows, cols = self._rows, _ = scan.shape
        self.slots = min(rows, 2 * radius + 2)
        self._block = np.zeros((self.slots, cols, *shape), dtype=np.float32)
        self._present = np.zeros((self.slots, cols), dtype=bool)
        self._block_row = np.full(self.slots, -1, dtype=np.int64)
        self._acc = np.empty(shape)
        index = np.full(scan.shape, -1, dtype=np.int64)  # each position's place in the stream
        for i in range(scan.n_frames):
            p = scan.position(i)
            if p is not None:
                index[p] = i
        self._index = index
        ready = ndimage.maximum_filter(index, footprint=footprint, mode="constant", cval=-1)
        self._needed_until = ndimage.minimum_filter(ready, footprint=footprint[::-1, ::-1], mode="constant",
                                                    cval=scan.n_frames)  # outside the scan: needs nothing
        order = np.lexsort((index.ravel(), ready.ravel()))
        self._order = [divmod(int(k), cols) for k in order]
        self._ready = ready.ravel()[order]
        self._next = 0
        self._seen = -1
        self.late = 0

    @property
    def nbytes(self) -> int:
        """Bytes of the patterns kept."""
        return self._block.nbytes

    def add(self, position: tuple[int, int], pattern: np.ndarray) -> list[tuple[tuple[int, int], Any]]:
        """Take the pattern at ``position``; return ``[(position, figure), ...]`` of the positions now complete."""
        y, x = position
        i = int(self._index[y, x])
        if self._needed_until[y, x] <= self._seen:
            self.late += 1
        done = self._evaluate_until(i - 1)  # what does not need this pattern, before its slot is reused
        s = y % self.slots
        if self._block_row[s] < y:
            self._block_row[s] = y
            self._present[s] = False
        if self._block_row[s] == y:
            self._block[s, x] = pattern
            self._present[s, x] = True
        self._seen = max(self._seen, i)
        return done + self._evaluate_until(self._seen)

    def flush(self) -> list[tuple[tuple[int, int], Any]]:
        """Evaluate every position left (series end: the neighbours still missing are holes)."""
        return self._evaluate_until(np.iinfo(np.int64).max)

    def _evaluate_until(self, limit: int) -> list[tuple[tuple[int, int], Any]]:
        out = []
        while self._next < len(self._order) and self._ready[self._next] <= limit:
            y, x = self._order[self._next]
            self._next += 1
            s = y % self.slots
            if self._block_row[s] == y and self._present[s, x]:
                out.append(((y, x), self._figure(y, x)))
        return out

    def _figure(self, y: int, x: int) -> Any:
        if self.figure == "dot":
            return _mean_dot(self._block, self._present, self._block_row, y, x, self._rows, self._dy, self._dx)
        weight = _weighted_sum(self._block, self._present, self._block_row, y, x, self._rows, self._dy, self._dx,
                               self._w, self._acc)
        return (self._acc / weight).astype(np.float32)

