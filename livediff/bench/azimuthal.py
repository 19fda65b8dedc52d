"""Azimuthal average and powder centre against scikit-ued and pyFAI, on one simulated powder frame.

Ours is the per-frame cost of the operator: :meth:`RadialMap.average` with the map built
once (as ``start`` does); pyFAI likewise reuses its CSR matrix after the first call,
while scikit-ued recomputes every radius at each call, as its API requires.  The
one-shot row calls :func:`azimuthal_average` with the centre and mask each time, as a
notebook loop would (it reuses the map of its last call for the same centre and mask).
"""
from __future__ import annotations

import numpy as np

from simulators.powder import PowderSimulator

from ..operators.azimuthal import RadialMap, azimuthal_average, powder_center
from .core import Case, skipped_peer

#: tolerances of the checks: pyFAI bins pixels by float32 positions, so a few pixels per
#: bin (at most _PYFAI_MAX_MOVED) sit across an edge from ours: most bins agree to
#: rounding (median relative difference < _PYFAI_RTOL_MEDIAN), all to _PYFAI_RTOL
_PYFAI_MAX_MOVED = 4
_PYFAI_RTOL_MEDIAN, _PYFAI_RTOL = 1e-6, 5e-3
_CENTER_TOL_PX = 0.05      # ours against the simulator's truth
_SKUED_CENTER_TOL_PX = 1.0  # scikit-ued's autocenter against ours (it works to 1/2 px)


def cases(quick: bool) -> list[Case]:
    shape = (512, 512) if quick else (2048, 2048)
    sim = PowderSimulator(shape=shape, dtype="uint16", seed=1)
    frame, mask = sim.frame(0), sim.detector_mask
    frame.setflags(write=False)
    return [
        *(_skued_average(sim, frame, mask, one_shot=one_shot) for one_shot in (False, True)),
        *(_pyfai_average(sim, f, mask) for f in (frame, frame.astype(np.float32))),
        _skued_center(sim, frame, mask),
    ]


def _skued_average(sim: PowderSimulator, frame: np.ndarray, mask: np.ndarray, *, one_shot: bool) -> Case:
    # scikit-ued bins by rint(r): our bins of width 1 starting at -0.5 are the same
    radial_range = (-0.5, max(frame.shape) * 1.5)
    rmap = RadialMap(frame.shape, sim.center_truth, mask, radial_range=radial_range)

    def ours() -> np.ndarray:
        if one_shot:
            return azimuthal_average(frame, sim.center_truth, mask, radial_range=radial_range)[1]
        return rmap.average(frame)

    case = Case("azimuthal average, one-shot" if one_shot else "azimuthal average", frame.shape,
                str(frame.dtype), ours, "skued.azimuthal_average")
    try:
        import skued
    except ImportError:
        case.skipped = skipped_peer("skued")
        return case
    xy = sim.center_truth[::-1]  # scikit-ued's centre is (x, y) = (col, row)
    case.peer_fn = lambda: skued.azimuthal_average(frame, xy, mask=mask, trim=False)

    def check() -> None:
        radius, theirs = case.peer_fn()  # trim=False still drops the last bin
        got = ours()[: radius.size]
        ok = np.isfinite(got)
        np.testing.assert_array_equal(radius, rmap.radius[: radius.size])
        np.testing.assert_allclose(got[ok], theirs[ok], rtol=1e-12)

    case.check = check
    return case


def _pyfai_average(sim: PowderSimulator, frame: np.ndarray, mask: np.ndarray) -> Case:
    rmap = RadialMap(frame.shape, sim.center_truth, mask)
    case = Case("azimuthal average", frame.shape, str(frame.dtype), lambda: rmap.average(frame),
                "pyFAI.integrate1d csr")
    try:
        from pyFAI.integrator.azimuthal import AzimuthalIntegrator
    except ImportError:
        case.skipped = skipped_peer("pyFAI")
        return case
    p = sim.pixel_size
    row, col = sim.center_truth
    # pyFAI's PONI is measured from the detector corner: pixel i's centre is at (i + 0.5) p
    ai = AzimuthalIntegrator(dist=sim.geometry.distance, poni1=(row + 0.5) * p, poni2=(col + 0.5) * p,
                             pixel1=p, pixel2=p)
    options = {"unit": "r_mm", "radial_range": (rmap.edges[0] * p * 1e3, rmap.edges[-1] * p * 1e3),
               "mask": ~mask, "method": ("no", "csr", "cython"), "correctSolidAngle": False,
               "polarization_factor": None}
    case.peer_fn = lambda: ai.integrate1d(frame, rmap.n_bins, **options)

    def check() -> None:
        _, counts = rmap.sums(frame)
        ours, theirs = rmap.average(frame), case.peer_fn()
        np.testing.assert_allclose(theirs.radial / (p * 1e3), rmap.radius, atol=1e-4)
        assert np.abs(theirs.count - counts).max() <= _PYFAI_MAX_MOVED, "bins differ by more than boundary pixels"
        both = (counts > 0) & (theirs.count > 0)
        np.testing.assert_allclose(theirs.intensity[both], ours[both], rtol=_PYFAI_RTOL)
        median = np.median(np.abs(theirs.intensity[both] / ours[both] - 1))
        assert median < _PYFAI_RTOL_MEDIAN, f"median relative difference {median:.2g} >= {_PYFAI_RTOL_MEDIAN}"

    case.check = check
    return case


def _skued_center(sim: PowderSimulator, frame: np.ndarray, mask: np.ndarray) -> Case:
    case = Case("powder centre", frame.shape, str(frame.dtype), lambda: powder_center(frame, mask),
                "skued.autocenter")
    try:
        import skued
    except ImportError:
        case.skipped = skipped_peer("skued")
        return case
    case.peer_fn = lambda: skued.autocenter(frame, mask)

    def check() -> None:
        ours, theirs = np.array(case.ours()), np.asarray(case.peer_fn(), dtype=float)
        assert np.hypot(*(ours - sim.center_truth)) < _CENTER_TOL_PX, f"ours {ours} vs truth {sim.center_truth}"
        assert np.hypot(*(ours - theirs)) < _SKUED_CENTER_TOL_PX, f"ours {ours} vs skued {theirs}"

    case.check = check
    return case
