"""The ``mx`` operator's per-frame cost next to spotfinding, on one EIGER2 4M-sized frame with 1,000 spots.

Ours is the operator's ``process`` (d of every spot, ice rings, DIALS' estimated d_min,
hit) on the spots of a simulated frame (1,000 Bragg spots to 1.8 Å with a Wilson fall-off,
and ice rings); the "peer" is what runs before it on the same frame, spotfinding
(:func:`livediff.operators.spots.find_spots`), so the ratio says how many times cheaper
the analysis is than finding the spots it analyses.
"""
from __future__ import annotations

from functools import lru_cache

from ..model import Frame, SeriesStart
from ..operators.mx import Mx
from ..operators.spots import find_spots
from . import core
from .spots import FULL_SHAPE, QUICK_SHAPE


@lru_cache(maxsize=2)
def _frame(shape: tuple[int, int]) -> tuple[SeriesStart, object, object, dict]:
    """A simulated uint32 frame, its mask and header, and the spots found on it."""
    from simulators import DiffractionSimulator

    scale = shape[0] * shape[1] / (FULL_SHAPE[0] * FULL_SHAPE[1])
    sim = DiffractionSimulator(shape=shape, dtype="uint32", n_frames=1, seed=7, n_spots=int(1000 * scale),
                               background=2.0, distance=0.12, b_factor=10.0, d_min=1.8, ice=True,
                               ice_spots=max(1, int(12 * scale)), intensity=(1000.0, 20000.0))
    image, mask = sim.frame(0), sim.detector_mask & ~sim.beamstop_mask
    image.setflags(write=False)
    return sim.series_start(), image, mask, find_spots(image, mask)


def cases(quick: bool) -> list[core.Case]:
    shape = QUICK_SHAPE if quick else FULL_SHAPE
    series, image, mask, spots = _frame(shape)
    op = Mx()
    op.start(series)
    rows = {k: spots[k] for k in ("x", "y", "intensity", "intensity_var")}

    def ours() -> Frame:
        return op.process(Frame(series.series, 0, image, results={"spots": {"frame_spots": rows}}))

    return [core.Case(operator=f"mx per-image analysis ({spots['x'].size} spots)", shape=shape, dtype="uint32",
                      ours=ours, peer="spotfinding (find_spots) on the same frame",
                      peer_fn=lambda: find_spots(image, mask))]
