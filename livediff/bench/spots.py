"""Spotfinding against the seed study's three approaches and against DIALS' own C++ threshold.

Peers of :func:`livediff.operators.spots.find_spots` (threshold, labelling and spot
properties, on one thread and on two), on one EIGER2 4M-sized frame, written here as the
seed study wrote them (each returns the strong-pixel mask):

(a) local sums by ``scipy.ndimage.convolve`` with a box of ones, numpy variance test;
(b) summed-area tables by numpy ``cumsum``, numpy variance test;
(c) summed-area tables in a numba loop, numba variance test.

Peer of the threshold alone (:func:`livediff.operators.spots.dispersion_mask`, one thread)
on EIGER2 4M, Pilatus 6M and EIGER 16M frames: DIALS' ``DispersionThreshold`` as plain C++
(:mod:`livediff.bench.dials_cpp`), compiled at bench time; skipped when no C++ compiler
is found.  Each case first checks that the peer's strong mask equals ours.
"""
from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

import numba
import numpy as np
from scipy import ndimage

from ..operators.spots import MAX_VALUE, dispersion_mask, find_spots
from . import core, dials_cpp

#: EIGER2 X 4M: 2162 rows x 2068 columns
FULL_SHAPE = (2162, 2068)
QUICK_SHAPE = (541, 517)
#: frames of the threshold cases: (shape, dtype); Pilatus 6M and EIGER 16M in both of their usual dtypes
THRESHOLD_FRAMES = ((FULL_SHAPE, "uint32"), ((2527, 2463), "int32"), ((2527, 2463), "uint16"),
                    ((4362, 4148), "int32"), ((4362, 4148), "uint16"))
QUICK_THRESHOLD_FRAMES = ((QUICK_SHAPE, "uint32"), (QUICK_SHAPE, "int32"), (QUICK_SHAPE, "uint16"))
KH, KW = 3, 3
SIGMA_B, SIGMA_S, MIN_LOCAL = 6.0, 3.0, 2


@lru_cache(maxsize=8)
def _frame(shape: tuple[int, int], dtype: str = "uint32") -> tuple[np.ndarray, np.ndarray]:
    """A simulated frame with Bragg spots, gaps, dead and hot pixels, and its mask (uint16:
    the uint32 frame clipped at 65535)."""
    from simulators import DiffractionSimulator

    if dtype != "uint32":
        image, mask = _frame(shape)
        image = np.minimum(image, np.iinfo(dtype).max).astype(dtype)
        image.setflags(write=False)
        return image, mask
    n_spots = int(400 * shape[0] * shape[1] / (FULL_SHAPE[0] * FULL_SHAPE[1]))
    sim = DiffractionSimulator(shape=shape, dtype="uint32", n_frames=1, seed=7, n_spots=n_spots,
                               background=2.0, n_dead=200, n_hot=50)
    image, mask = sim.frame(0), sim.detector_mask
    image.setflags(write=False)
    mask.setflags(write=False)
    return image, mask


def _test(image: np.ndarray, use: np.ndarray, m: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The numpy variance test of peers (a) and (b) (DIALS' dispersion without gain)."""
    v = image.astype(np.float64)
    with np.errstate(invalid="ignore"):
        a = m * y - x * x - x * (m - 1)
        c = x * SIGMA_B * np.sqrt(2 * (m - 1))
        d = SIGMA_S * np.sqrt(x * m)
        return use & (m >= MIN_LOCAL) & (x >= 0) & (v > 0) & (a > c) & (m * v - x > d)


def _usable(image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    use = mask & (image < MAX_VALUE)
    v = np.where(use, image, 0).astype(np.float64)
    return use, v


def peer_convolve(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(a) local count, sum and sum of squares by ``scipy.ndimage.convolve`` (zero outside)."""
    use, v = _usable(image, mask)
    box = np.ones((2 * KH + 1, 2 * KW + 1))
    m, x, y = (ndimage.convolve(a, box, mode="constant", cval=0.0) for a in (use.astype(np.float64), v, v * v))
    return _test(image, use, m, x, y)


def peer_numpy_sat(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(b) summed-area tables by ``np.cumsum``; windows clipped by edge-padding the tables."""
    use, v = _usable(image, mask)
    rows, cols = image.shape
    sums = []
    for a in (use.astype(np.float64), v, v * v):
        sat = np.zeros((rows + 1, cols + 1))
        np.cumsum(np.cumsum(a, axis=0), axis=1, out=sat[1:, 1:])
        p = np.pad(sat, ((KH, KH), (KW, KW)), mode="edge")
        h, w = 2 * KH + 1, 2 * KW + 1
        sums.append(p[h:h + rows, w:w + cols] - p[:rows, w:w + cols] - p[h:h + rows, :cols] + p[:rows, :cols])
    return _test(image, use, *sums)


@numba.njit(nogil=True, cache=True)
def _numba_sat(image, mask, kh, kw, sigma_b, sigma_s, min_local, limit):
    rows, cols = image.shape
    n = np.zeros((rows + 1, cols + 1))
    sx = np.zeros((rows + 1, cols + 1))
    sy = np.zeros((rows + 1, cols + 1))
    for r in range(rows):
        rn = rx = ry = 0.0
        for c in range(cols):
            if mask[r, c] and image[r, c] < limit:
                v = float(image[r, c])
                rn += 1.0
                rx += v
                ry += v * v
            n[r + 1, c + 1] = n[r, c + 1] + rn
            sx[r + 1, c + 1] = sx[r, c + 1] + rx
            sy[r + 1, c + 1] = sy[r, c + 1] + ry
    out = np.zeros((rows, cols), np.bool_)
    for r in range(rows):
        r0, r1 = max(r - kh, 0), min(r + kh + 1, rows)
        for c in range(cols):
            c0, c1 = max(c - kw, 0), min(c + kw + 1, cols)
            m = n[r1, c1] - n[r0, c1] - n[r1, c0] + n[r0, c0]
            x = sx[r1, c1] - sx[r0, c1] - sx[r1, c0] + sx[r0, c0]
            y = sy[r1, c1] - sy[r0, c1] - sy[r1, c0] + sy[r0, c0]
            v = float(image[r, c])
            if mask[r, c] and image[r, c] < limit and m >= min_local and x >= 0 and v > 0:
                a = m * y - x * x - x * (m - 1)
                b = m * v - x
                out[r, c] = a > x * sigma_b * np.sqrt(2 * (m - 1)) and b > sigma_s * np.sqrt(x * m)
    return out


def peer_numba_sat(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(c) summed-area tables and the variance test in numba loops (float64 tables)."""
    return _numba_sat(image, mask, KH, KW, SIGMA_B, SIGMA_S, MIN_LOCAL, MAX_VALUE)


PEERS: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "scipy.ndimage.convolve": peer_convolve,
    "numpy cumsum SAT": peer_numpy_sat,
    "numba SAT": peer_numba_sat,
}


def cases(quick: bool) -> list[core.Case]:
    """Ours (threshold + labelling + properties) against each peer, 1 and 2 threads against (c);
    then the threshold alone against DIALS' C++ on each frame of THRESHOLD_FRAMES."""
    shape = QUICK_SHAPE if quick else FULL_SHAPE
    image, mask = _frame(shape)
    pairs = [*((peer, 1) for peer in PEERS), ("numba SAT", 2)]
    return [*(core.Case(operator="spots dispersion", shape=shape, dtype="uint32",
                        ours=lambda threads=threads: find_spots(image, mask, threads=threads),
                        peer=peer, peer_fn=lambda fn=PEERS[peer]: fn(image, mask),
                        check=lambda fn=PEERS[peer]: _check(fn, image, mask), threads=threads)
              for peer, threads in pairs),
            *threshold_cases(QUICK_THRESHOLD_FRAMES if quick else THRESHOLD_FRAMES)]


def threshold_cases(frames: tuple[tuple[tuple[int, int], str], ...]) -> list[core.Case]:
    """``dispersion_mask`` (defaults, one thread) against DIALS' dispersion threshold in C++."""
    library, why = dials_cpp.load()
    peer = f"DIALS dispersion, C++ {' '.join(dials_cpp.FLAGS[:1])}"
    out = []
    for shape, dtype in frames:
        image, mask = _frame(shape, dtype)
        run = None if library is None else dials_cpp.dispersion(library, shape, dtype)
        out.append(core.Case(operator="spots threshold (dispersion_mask)", shape=shape, dtype=dtype,
                             ours=lambda image=image, mask=mask: dispersion_mask(image, mask), peer=peer,
                             peer_fn=None if run is None else lambda run=run, image=image, mask=mask: run(image, mask),
                             check=None if run is None else lambda run=run, image=image, mask=mask: _check(
                                 run, image, mask),
                             skipped=why))
    return out


def _check(peer: Callable[[np.ndarray, np.ndarray], np.ndarray], image: np.ndarray, mask: np.ndarray) -> None:
    ours = dispersion_mask(image, mask)
    theirs = peer(image, mask)
    differ = int(np.count_nonzero(ours != theirs))
    if differ or not ours.any():
        raise AssertionError(f"{differ} of {ours.size} pixels differ ({int(ours.sum())} strong in ours)")
