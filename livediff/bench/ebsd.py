"""EBSD pattern processing per pattern: ours against kikuchipy on the same simulated patterns.

60 x 60 and 240 x 240 uint8 patterns of :class:`simulators.ebsd.EbsdSimulator` on a scan
(30 x 30 and 8 x 8 positions; 10 x 10 and 4 x 4 with ``--quick``).  kikuchipy runs its
``EBSD`` signal methods on the patterns in memory, as a notebook user would:
``remove_static_background`` and ``remove_dynamic_background`` (subtract, its defaults),
``average_neighbour_patterns`` (3 x 3 circular) and ``get_image_quality``.  Ours is what the
operators call per pattern: :func:`remove_background` / :func:`dynamic_background`
(``window="kikuchipy"``) with the same min-max stretch to uint8 (:func:`rescale`), the
incremental :class:`Neighbourhood` fed in scan order, :func:`image_quality`.  Outputs are
checked first (within one grey level on 2 % of the pixels: kikuchipy's float32 fastmath
stretch; IQ to 1e-4).  Rows with two threads split the scan between two threads (ours) and
give kikuchipy's Dask scheduler two threads.  Every row, ours and kikuchipy's alike, runs
with BLAS (numpy's and scipy's OpenBLAS) limited to one thread, as livediff's executors run
it (:mod:`livediff.executors.blas`): the thread count of a row is all the threads it uses,
none hidden in BLAS.
"""
from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..model import Scan
from ..operators.dynamic_background import dynamic_background, remove_background
from ..operators.ebsd import Neighbourhood, image_quality, quality_weights, rescale, window
from . import core

_SCANS = {60: ((30, 30), (10, 10)), 240: ((8, 8), (4, 4))}


@functools.lru_cache(maxsize=4)
def _patterns(side: int, quick: bool) -> np.ndarray:
    from simulators.ebsd import EbsdSimulator

    scan = _SCANS[side][quick]
    patterns = EbsdSimulator(scan=scan, shape=(side, side), grains=4, seed=0).patterns()
    patterns.setflags(write=False)
    return patterns


def _split(fn: Callable[[np.ndarray], np.ndarray], patterns: np.ndarray, threads: int,
           overlap: int = 0) -> np.ndarray:
    """``fn`` over the scan rows, on ``threads`` threads (each a block of rows, with ``overlap`` rows of its
    neighbours' that are processed and dropped)."""
    if threads == 1:
        return fn(patterns)
    blocks = np.array_split(np.arange(patterns.shape[0]), threads)

    def block(rows: np.ndarray) -> np.ndarray:
        lo, hi = max(rows[0] - overlap, 0), min(rows[-1] + 1 + overlap, patterns.shape[0])
        return fn(patterns[lo:hi])[rows[0] - lo:rows[0] - lo + rows.size]
    with ThreadPoolExecutor(threads) as pool:
        return np.concatenate(list(pool.map(block, blocks)))


def _each(kernel: Callable[[np.ndarray], np.ndarray]) -> Callable[[np.ndarray], np.ndarray]:
    def run(patterns: np.ndarray) -> np.ndarray:
        flat = patterns.reshape(-1, *patterns.shape[2:])
        return np.stack([kernel(p) for p in flat]).reshape(*patterns.shape[:2], *np.shape(kernel(flat[0])))
    return run


def _static(background: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    return _each(lambda p: rescale(remove_background(p, background, mode="subtract")))


def _dynamic(p: np.ndarray) -> np.ndarray:
    return rescale(dynamic_background(p, p.shape[1] / 8, mode="subtract", window="kikuchipy"))


def _average(patterns: np.ndarray) -> np.ndarray:
    """The incremental averaging the operator runs, fed in scan order."""
    scan = Scan(patterns.shape[:2])
    hood = Neighbourhood(scan, patterns.shape[2:], window())
    out = np.empty(patterns.shape, dtype=np.uint8)
    for i in range(scan.n_frames):
        for q, averaged in hood.add(scan.position(i), patterns[scan.position(i)]):
            out[q] = rescale(averaged)
    for q, averaged in hood.flush():
        out[q] = rescale(averaged)
    return out


def _quality(patterns: np.ndarray) -> np.ndarray:
    weights = quality_weights(patterns.shape[2:])
    return _each(lambda p: np.float64(image_quality(p, weights=weights)))(patterns)


@functools.lru_cache(maxsize=1)
def _blas():
    import scipy.linalg  # noqa: F401  (its OpenBLAS loaded, so the controller sees it too)
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


def _one_blas_thread(fn: Callable[[], np.ndarray]) -> Callable[[], np.ndarray]:
    """``fn`` with BLAS limited to one thread (per calling thread) while it runs: the service's setting."""
    def run() -> np.ndarray:
        with _blas().limit(limits=1, user_api="blas"):
            return fn()
    return run


def _kikuchipy(method: str, patterns: np.ndarray, threads: int, **kwargs) -> Callable[[], np.ndarray]:
    import dask
    import hyperspy.api as hs
    import kikuchipy as kp

    hs.preferences.General.show_progressbar = False
    signal = kp.signals.EBSD(np.array(patterns))

    def run() -> np.ndarray:
        with warnings.catch_warnings(), dask.config.set(scheduler="threads", num_workers=threads):
            warnings.simplefilter("ignore")
            if method == "get_image_quality":
                return np.asarray(signal.get_image_quality(**kwargs))
            return getattr(signal, method)(inplace=False, **kwargs).data
    return run


def _grey_levels(ours: Callable[[], np.ndarray], peer: Callable[[], np.ndarray]) -> Callable[[], None]:
    def check() -> None:
        diff = np.abs(ours().astype(np.int64) - peer().astype(np.int64))
        assert diff.max() <= 1 and np.mean(diff > 0) < 0.02, \
            f"{np.mean(diff > 0):.2%} of pixels differ, by up to {diff.max()} grey levels"
    return check


def _close(ours: Callable[[], np.ndarray], peer: Callable[[], np.ndarray]) -> Callable[[], None]:
    def check() -> None:
        np.testing.assert_allclose(ours(), peer(), rtol=1e-4)
    return check


def cases(quick: bool) -> list[core.Case]:
    """Static and dynamic background, neighbour averaging, image quality; 60 and 240 px; 1 and 2 threads."""
    try:
        import kikuchipy  # noqa: F401
        skipped = None
    except ImportError:
        skipped = core.skipped_peer("kikuchipy")
    out = []
    for side in (60, 240):
        patterns = _patterns(side, quick)
        n = patterns.shape[0] * patterns.shape[1]
        background = patterns.mean(axis=(0, 1)).astype(np.uint8)
        steps = (("remove_static_background", _static(background), {"static_bg": background}, _grey_levels, 0),
                 ("remove_dynamic_background", _each(_dynamic), {}, _grey_levels, 0),
                 ("average_neighbour_patterns", _average, {}, _grey_levels, 1),
                 ("get_image_quality", _quality, {}, _close, 0))
        for name, kernel, kwargs, agree, overlap in steps:
            for threads in (1, 2):
                ours = _one_blas_thread(functools.partial(_split, kernel, patterns, threads, overlap))
                label = f"EBSD {name.replace('get_', '').replace('_', ' ')}"
                if skipped:
                    out.append(core.Case(label, (side, side), "uint8", ours, "kikuchipy", skipped=skipped,
                                         threads=threads, frames=n))
                    continue
                peer = _one_blas_thread(_kikuchipy(name, patterns, threads, **kwargs))
                out.append(core.Case(label, (side, side), "uint8", ours, f"kikuchipy EBSD.{name}", peer,
                                     agree(ours, peer), threads=threads, frames=n))
    return out
