"""Running statistics: :class:`~livediff.operators.stats.RunningStats` against npstreams.

Streams of 20 frames, 1024 x 1024 and 2162 x 2068 (EIGER2 4M), of Poisson counts on a
smooth background (5 to 200 counts); ``--quick`` uses 8 frames of 512 x 512.  Ours folds
the stream into a :class:`RunningStats` reset at its start (as the operator's at a new
series) and derives the result at the end, as the service does between throttled
snapshots, or after every frame (``every frame``) as npstreams' generators always do
(``npstreams.sem`` is built on them too).

The checks compare on float32 frames of small integer counts, where npstreams' mean of
squares is exact enough.  Elsewhere it is not (tests/test_stats.py shows both): on
uint16 frames ``np.square`` wraps modulo 2**16 and ``isem`` returns NaN or garbage, and
on float32 frames at an offset of 1e4 the float32 squares cancel all digits of a unit
variance.  So on uint16 npstreams is timed on float64 copies, the way it has to be
called to be right.
"""
from __future__ import annotations

import functools
from collections.abc import Callable, Iterable

import numpy as np

from ..operators.stats import RunningStats
from . import core

_FULL = (((1024, 1024), 20), ((2162, 2068), 20))
_QUICK = (((512, 512), 8),)


@functools.lru_cache(maxsize=1)
def _frames(shape: tuple[int, int], n: int, dtype: str) -> tuple[np.ndarray, ...]:
    """``n`` read-only frames of Poisson counts on a smooth background (one set cached at a time)."""
    rng = np.random.default_rng(0)
    rows, cols = np.ogrid[: shape[0], : shape[1]]
    r = np.hypot(rows - 0.45 * shape[0], cols - 0.55 * shape[1]) / max(shape)
    lam = 5.0 + 195.0 * np.exp(-8.0 * r)
    frames = tuple(rng.poisson(lam).astype(dtype) for _ in range(n))
    for f in frames:
        f.setflags(write=False)
    return frames


def _last(stream: Iterable[np.ndarray]) -> np.ndarray:
    """The final item of a peer's stream (its first SEM divides by n - 1 = 0: warnings silenced)."""
    with np.errstate(all="ignore"):
        for item in stream:
            pass
    return item


def _ours(frames: Callable[[], tuple[np.ndarray, ...]], result: str, weight: str | None = None,
          every_frame: bool = False) -> Callable[[], np.ndarray]:
    """One stream through a :class:`RunningStats` that, like the operator's, is reset (not
    reallocated) at the start of each stream; ``result`` derived at the end or after every frame."""
    rs = RunningStats(ddof=1)

    def run() -> np.ndarray:
        rs.reset()
        for f in frames():
            rs.update(f, weight=weight)
            if every_frame:
                getattr(rs, result)
        return getattr(rs, result)
    return run


def _checker(ours: Callable[[], np.ndarray], peer: Callable[[], np.ndarray], rtol: float) -> Callable[[], None]:
    def check() -> None:
        np.testing.assert_allclose(ours(), peer(), rtol=rtol, atol=0)
    return check


def cases(quick: bool) -> list[core.Case]:
    """npstreams ``isem``/``iaverage`` side by side with ours, per frame size."""
    try:
        import npstreams
    except ImportError:
        npstreams = None
    out = []
    for shape, n in _QUICK if quick else _FULL:
        f32 = functools.partial(_frames, shape, n, "float32")
        u16 = functools.partial(_frames, shape, n, "uint16")
        specs = [
            ("running SEM", "float32", _ours(f32, "sem"), "npstreams.isem",
             lambda f=f32: _last(npstreams.isem(f(), ddof=1)), 1e-6),
            ("running SEM, every frame", "float32", _ours(f32, "sem", every_frame=True), "npstreams.isem",
             lambda f=f32: _last(npstreams.isem(f(), ddof=1)), 1e-6),
            ("running mean", "float32", _ours(f32, "mean"), "npstreams.iaverage",
             lambda f=f32: _last(npstreams.iaverage(f())), 1e-12),
            ("intensity-weighted mean", "float32", _ours(f32, "mean", "intensity"),
             "npstreams.iaverage", lambda f=f32: _last(npstreams.iaverage(
                 f(), weights=(x.sum(dtype=np.float64) for x in f()))), 1e-12),
            ("running SEM", "uint16", _ours(u16, "sem"), "npstreams.isem (float64 copies)",
             lambda f=u16: _last(npstreams.isem((x.astype(np.float64) for x in f()), ddof=1)), 1e-9),
        ]
        for operator, dtype, ours, peer, peer_fn, rtol in specs:
            if npstreams is None:
                out.append(core.Case(operator, shape, dtype, ours, peer, frames=n,
                                     skipped=core.skipped_peer("npstreams")))
            else:
                out.append(core.Case(operator, shape, dtype, ours, peer, peer_fn=peer_fn,
                                     check=_checker(ours, peer_fn, rtol), frames=n))
    return out
