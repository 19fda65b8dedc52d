"""Spots from strong pixels: runs, connected components and their properties.

Strong pixels are gathered as runs (row, first col, end col) in scan order; components
join runs of consecutive rows that share a column (4-connectivity) with a union-find.
Each component's properties are its *statistics*, one row of a float64 array indexed
by the column constants below: they merge exactly (sums, minima, maxima) or stably
(Chan et al.'s pairwise update for the weighted means and squared deviations), so that a
spot spread over several frames (``spots3d``) is the merge of its parts.

Weights are the pixel values (counts).  Coordinates put the centre of pixel (r, c) at
(y, x) = (r, c) and of frame z at z (DESIGN.md; DIALS adds 0.5).
"""
from __future__ import annotations

import numba
import numpy as np

#: columns of a statistics row: total weight W, sum of squared weights, pixel count,
#: weighted means and sums of squared deviations (x, y, z), bounding box (upper bounds
#: exclusive), peak value and position
(W, SW2, NPIX, MX, MY, MZ, M2X, M2Y, M2Z, X0, X1, Y0, Y1, Z0, Z1, PEAK, PX, PY, PZ) = range(19)
NSTAT = 19


def strong_runs(strong: np.ndarray) -> np.ndarray:
    """Runs of True in a bool image, in scan order.

    Parameters
    ----------
    strong : (rows, cols) bool.

    Returns
    -------
    (n, 3) int32 array of (row, first col, end col); end exclusive.
    """
    return _runs(np.flatnonzero(strong), strong.shape[1])


@numba.njit(nogil=True, cache=True)
def _runs(flat: np.ndarray, cols: int) -> np.ndarray:
    """Runs from sorted flat indices: consecutive indices on one row make one run."""
    runs = np.empty((flat.size, 3), np.int32)
    n = 0
    for k in range(flat.size):
        r, c = divmod(flat[k], cols)
        n = add_pixel(runs, n, r, c)
    return runs[:n]


@numba.njit(nogil=True, cache=True)
def add_pixel(runs: np.ndarray, n: int, r: int, c: int) -> int:
    """Add pixel (r, c), later in scan order than any before, to the runs ``runs[:n]``.

    ``runs`` must have room for one more run.  Returns the new number of runs (the pixel
    extends the last run when it follows it on the same row).
    """
    if n and runs[n - 1, 0] == r and runs[n - 1, 2] == c:
        runs[n - 1, 2] = c + 1
        return n
    runs[n, 0], runs[n, 1], runs[n, 2] = r, c, c + 1
    return n + 1


@numba.njit(nogil=True, cache=True)
def find_root(parent: np.ndarray, i: int) -> int:
    """Root of i's set in a union-find forest (``parent[root] == root``), halving paths."""
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = parent[i]
    return i


@numba.njit(nogil=True, cache=True)
def join(parent: np.ndarray, i: int, j: int) -> None:
    """Join the sets of i and j in a union-find forest; the smaller root index stays the root."""
    a, b = find_root(parent, i), find_root(parent, j)
    if a < b:
        parent[b] = a
    elif b < a:
        parent[a] = b


@numba.njit(nogil=True, cache=True)
def _compact(parent: np.ndarray) -> tuple[np.ndarray, int]:
    """Labels 0..k-1 numbered by each set's first member."""
    labels = np.empty(parent.size, np.int64)
    k = 0
    for i in range(parent.size):
        root = find_root(parent, i)
        if root == i:
            labels[i] = k
            k += 1
        else:
            labels[i] = labels[root]
    return labels, k


@numba.njit(nogil=True, cache=True)
def overlaps(a: np.ndarray, b: np.ndarray, row_offset: int) -> np.ndarray:
    """Pairs (i, j) of runs a[i], b[j] on the same row (after adding ``row_offset`` to a's
    rows) that share a column.

    Parameters
    ----------
    a, b : (n, 3) int32 runs in scan order.
    row_offset : 1 pairs each run of ``a`` with the runs of ``b`` on the next row
        (4-connectivity within a frame); 0 pairs runs on the same row (runs of
        consecutive frames, for 6-connectivity).

    Returns
    -------
    (p, 2) int64 array of index pairs, ordered by i then j.
    """
    pairs = np.empty((max(16, a.shape[0] + b.shape[0]), 2), np.int64)
    n = 0
    i = 0
    j = 0
    while i < a.shape[0] and j < b.shape[0]:
        ra, rb = a[i, 0] + row_offset, b[j, 0]
        if ra < rb or (ra == rb and a[i, 2] <= b[j, 1]):
            i += 1
        elif rb < ra or b[j, 2] <= a[i, 1]:
            j += 1
        else:
            if n == pairs.shape[0]:
                pairs = np.concatenate((pairs, np.empty_like(pairs)))
            pairs[n, 0], pairs[n, 1] = i, j
            n += 1
            if a[i, 2] < b[j, 2]:
                i += 1
            else:
                j += 1
    return pairs[:n]


@numba.njit(nogil=True, cache=True)
def label_runs(runs: np.ndarray) -> tuple[np.ndarray, int]:
    """Connected components (4-connectivity) of runs in scan order.

    Returns
    -------
    labels : (n,) int64, the component of each run, numbered 0..k-1 in scan order of
        each component's first pixel.
    k : number of components.
    """
    parent = np.arange(runs.shape[0])
    for p in overlaps(runs, runs, 1):
        join(parent, p[0], p[1])
    return _compact(parent)


@numba.njit(nogil=True, cache=True)
def component_stats(image: np.ndarray, runs: np.ndarray, labels: np.ndarray, k: int, z: int) -> np.ndarray:
    """Statistics rows (see the column constants) of the k components of one frame.

    Parameters
    ----------
    image : (rows, cols) the pixel values (the weights).
    runs, labels, k : from :func:`strong_runs` and :func:`label_runs`.
    z : the frame's index (its z coordinate).

    Returns
    -------
    (k, NSTAT) float64.

    Notes
    -----
    Two passes: sums, box and peak, then the squared deviations from the weighted means,
    so that M2 = sum w (p - mean)^2 carries no cancellation.
    """
    s = np.zeros((k, NSTAT))
    for j in range(k):
        s[j, X0] = s[j, Y0] = np.inf
        s[j, X1] = s[j, Y1] = s[j, PEAK] = -np.inf
        s[j, MZ] = s[j, PZ] = s[j, Z0] = z
        s[j, Z1] = z + 1
    for i in range(runs.shape[0]):
        r, c0, c1 = runs[i, 0], runs[i, 1], runs[i, 2]
        row = s[labels[i]]
        row[NPIX] += c1 - c0
        row[Y0] = min(row[Y0], r)
        row[Y1] = max(row[Y1], r + 1)
        row[X0] = min(row[X0], c0)
        row[X1] = max(row[X1], c1)
        for c in range(c0, c1):
            w = float(image[r, c])
            row[W] += w
            row[SW2] += w * w
            row[MX] += w * c
            row[MY] += w * r
            if w > row[PEAK]:
                row[PEAK], row[PX], row[PY] = w, c, r
    for j in range(k):  # non-positive weights (only with a negative global threshold): no centroid
        s[j, MX] = s[j, MX] / s[j, W] if s[j, W] > 0 else np.nan
        s[j, MY] = s[j, MY] / s[j, W] if s[j, W] > 0 else np.nan
    for i in range(runs.shape[0]):
        r, c0, c1 = runs[i, 0], runs[i, 1], runs[i, 2]
        row = s[labels[i]]
        dy = r - row[MY]
        for c in range(c0, c1):
            w = float(image[r, c])
            dx = c - row[MX]
            row[M2X] += w * dx * dx
            row[M2Y] += w * dy * dy
    return s


@numba.njit(nogil=True, cache=True)
def merge_stats(into: np.ndarray, other: np.ndarray) -> None:
    """Fold statistics row ``other`` into row ``into`` (in place).

    Notes
    -----
    Weighted means and squared deviations by the pairwise update of Chan, Golub and
    LeVeque (1979): with d = mean_b - mean_a, mean = mean_a + d W_b / W and
    M2 = M2_a + M2_b + d^2 W_a W_b / W.
    """
    wa, wb = into[W], other[W]
    w = wa + wb
    for m, m2 in ((MX, M2X), (MY, M2Y), (MZ, M2Z)):
        d = other[m] - into[m]
        into[m] += d * wb / w if w > 0 else np.nan
        into[m2] += other[m2] + (d * d * wa * wb / w if w > 0 else np.nan)
    into[W] = w
    into[SW2] += other[SW2]
    into[NPIX] += other[NPIX]
    for lo in (X0, Y0, Z0):
        into[lo] = min(into[lo], other[lo])
    for hi in (X1, Y1, Z1):
        into[hi] = max(into[hi], other[hi])
    if other[PEAK] > into[PEAK]:
        into[PEAK], into[PX], into[PY], into[PZ] = other[PEAK], other[PX], other[PY], other[PZ]


def select(stats: np.ndarray, *, min_size: int, max_size: int, max_separation: float) -> np.ndarray:
    """Which spots pass DIALS' filters.

    Parameters
    ----------
    stats : (n, NSTAT) statistics rows.
    min_size, max_size : bounds on the number of pixels (inclusive).
    max_separation : largest distance (px, in x, y and z) from the peak pixel to the centroid.

    Returns
    -------
    (n,) bool.
    """
    npix = stats[:, NPIX]
    separation = np.sqrt((stats[:, PX] - stats[:, MX]) ** 2 + (stats[:, PY] - stats[:, MY]) ** 2
                         + (stats[:, PZ] - stats[:, MZ]) ** 2)
    return (npix >= min_size) & (npix <= max_size) & (separation <= max_separation)


def spot_columns(stats: np.ndarray) -> dict[str, np.ndarray]:
    """The columns of the ``spots`` message from statistics rows.

    Returns
    -------
    dict with float64 ``x``, ``y``, ``z`` (weighted centroid, pixel-centre origin),
    ``var_x``, ``var_y``, ``var_z``, ``intensity``, ``intensity_var``; int64 ``bbox``
    (n x 6: x0, x1, y0, y1, z0, z1, upper bounds exclusive) and ``npix``.

    Notes
    -----
    The centroid variance is DIALS' ``xyzobs.px.variance``: the weighted unbiased variance
    M2 W / (W^2 - sum w^2) divided by W, plus 1/12 (a uniform pixel); exactly 1/12 when
    W^2 <= sum w^2 (a single pixel).  The intensity is the sum of the spot's values and its
    variance the intensity (Poisson).
    """
    w, sw2 = stats[:, W], stats[:, SW2]
    denom = w * w - sw2
    safe = np.where(denom > 0, denom, 1.0)
    var = {k: np.where(denom > 0, stats[:, m2] / safe, 0.0) + 1.0 / 12.0
           for k, m2 in (("var_x", M2X), ("var_y", M2Y), ("var_z", M2Z))}
    return {
        "x": stats[:, MX].copy(), "y": stats[:, MY].copy(), "z": stats[:, MZ].copy(), **var,
        "intensity": w.copy(), "intensity_var": w.copy(),
        "bbox": stats[:, [X0, X1, Y0, Y1, Z0, Z1]].astype(np.int64),
        "npix": stats[:, NPIX].astype(np.int64),
    }


@numba.njit(nogil=True, cache=True)
def shoeboxes(image: np.ndarray, runs: np.ndarray, labels: np.ndarray, stats: np.ndarray,
              keep: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pixel data and strong-pixel masks within each kept spot's bounding box.

    Returns
    -------
    data : float32, the boxes (rows y0..y1, cols x0..x1, C order) one after the other.
    mask : bool of the same length, True on the spot's own pixels.
    offsets : (n_kept + 1,) int64; box i is ``data[offsets[i]:offsets[i + 1]]``.
    """
    index = np.full(stats.shape[0], -1, np.int64)
    offsets = np.zeros(keep.sum() + 1, np.int64)
    n = 0
    for j in range(stats.shape[0]):
        if keep[j]:
            index[j] = n
            size = (stats[j, Y1] - stats[j, Y0]) * (stats[j, X1] - stats[j, X0])
            offsets[n + 1] = offsets[n] + np.int64(size)
            n += 1
    data = np.zeros(offsets[n], np.float32)
    mask = np.zeros(offsets[n], np.bool_)
    for j in range(stats.shape[0]):
        if keep[j]:
            y0, y1, x0, x1 = int(stats[j, Y0]), int(stats[j, Y1]), int(stats[j, X0]), int(stats[j, X1])
            data[offsets[index[j]]:offsets[index[j] + 1]] = image[y0:y1, x0:x1].astype(np.float32).ravel()
    for i in range(runs.shape[0]):
        j = labels[i]
        if keep[j]:
            r, width = runs[i, 0], int(stats[j, X1] - stats[j, X0])
            start = offsets[index[j]] + (r - int(stats[j, Y0])) * width - int(stats[j, X0])
            mask[start + runs[i, 1]:start + runs[i, 2]] = True
    return data, mask, offsets
