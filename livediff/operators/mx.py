"""Per-image analysis for crystallography: resolution, ice rings, estimated d_min, hits.

Kernels, usable without the service::

    d = resolution(rows, cols, geometry)                       # Å at pixel positions
    rings = ice_rings(d_min=1.5)                               # 1/d² of hexagonal ice's rings, Å⁻²
    figures = per_image_analysis(d, intensity, variance)       # DIALS' per-image figures of one frame

The ``mx`` operator runs after ``spots`` and analyses each frame's own spots (those the
``spots`` operator puts under ``"frame_spots"``; in 3-D mode the frame's 2-D spots).

It follows DIALS' per-image analysis (``dials/algorithms/spot_finding/per_image_analysis.py``,
``stats_for_reflection_table``, as the find-spots server runs it: ice ring width 0.004 Å⁻²).
Where livediff differs, and why:

- ``estimated_d_min`` is NaN, not DIALS' -1, when it is not estimated (10 spots off the
  ice rings or fewer, no two resolution bins, parallel fits, no spot below the line): no
  sentinel in tables and maps, where -1 would read as the best resolution.
- DIALS drops spots with ``variance <= 0`` from ln(I/σ) but not from d*², so the two
  arrays it then pairs are misaligned when such a spot exists; here such spots (and
  those with ``intensity <= 0``, whose ln(I/σ) is undefined) leave both.
- ``d_min_distl_method_1/2`` and the noisiness figures are not computed.
- ``hit`` (``n_spots_no_ice >= min_spots``) and the running ``hit_rate`` are not DIALS
  figures; CrystFEL's ``indexamajig --min-peaks`` is the same idea.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import numba
import numpy as np
from numpy.typing import ArrayLike

from ..model import Frame, Geometry, SeriesStart
from .base import BaseOperator, param
from .geometry import GeometryParams

__all__ = ["ICE_CELL", "ICE_RING_WIDTH", "Mx", "MxParams", "estimate_d_min", "ice_mask", "ice_rings",
           "per_image_analysis", "resolution"]

log = logging.getLogger(__name__)

#: hexagonal ice Ih, (a, c) in Å, γ = 120°, space group 194 (P6_3/mmc): DIALS'
#: ``ice_rings_selection`` (``dials/algorithms/spot_finding/per_image_analysis.py``), which
#: hands them to ``PowderRingFilter`` (``dials/algorithms/integration/filtering.py``)
ICE_CELL = (4.498, 7.338)

#: full width of an ice ring in 1/d², Å⁻²: ``ice_rings_selection``'s default and the
#: find-spots server's ``ice_rings.width``
ICE_RING_WIDTH = 0.004
#: DIALS' Wilson outlier probability: normalised amplitudes beyond √(-ln p) are outliers
WILSON_P = 1e-2

#: the per-frame figures and their dtypes, with geometry / without
COLUMNS = {"n_spots_total": "i8", "n_spots_no_ice": "i8", "n_spots_4A": "i8", "total_intensity": "f8",
           "estimated_d_min": "f8", "hit": "u1", "hit_rate": "f8"}
MAPS = ("n_spots_total", "n_spots_no_ice", "estimated_d_min", "hit")
NO_GEOMETRY = ("n_spots_total",)

#: where a frame's results hold its own spots (``livediff.operators.spots.FRAME_SPOTS``)
FRAME_SPOTS = "frame_spots"


def resolution(rows: ArrayLike, cols: ArrayLike, geometry: Geometry) -> np.ndarray:
    """Resolution d = λ / (2 sin θ) in Å at pixel positions; ``inf`` at the beam centre.

    Parameters
    ----------
    rows, cols : positions in pixels, pixel-centre origin (broadcast together).
    geometry : beam centre (px), pixel size (y, x) and distance (m), wavelength (Å).

    Returns
    -------
    float64 array of d in Å.

    Notes
    -----
    The detector is flat and normal to the beam: 2θ = atan(r / L), r the metric distance
    from the beam centre with the (y, x) pixel sizes.  This is
    :meth:`livediff.model.Geometry.d`; a tilted detector would enter there, in the one
    place positions become angles.
    """
    return geometry.d(rows, cols)


def ice_rings(d_min: float, *, cell: tuple[float, float] = ICE_CELL, half_width: float = ICE_RING_WIDTH / 2
              ) -> np.ndarray:
    """1/d² (Å⁻²) of every ring of hexagonal ice down to ``d_min``, sorted, without repeats.

    Parameters
    ----------
    d_min : the highest resolution (Å) the rings must cover.
    cell : (a, c) of the hexagonal cell, Å.
    half_width : rings up to this far beyond 1/d_min² are included (as DIALS' filter
        does), since a spot at d_min can still be on them.

    Returns
    -------
    float64 array: the distinct 1/d² = 4 (h² + hk + k²) / (3 a²) + l² / c² of the
    reflections of P6_3/mmc that are not systematically absent (hhl with l odd, i.e. any
    hkl equivalent to one with two equal indices of (h, k, -h-k), and 00l with l odd).

    Notes
    -----
    DIALS' ``PowderRingFilter`` builds the same list with cctbx's ``index_generator``
    for space group 194 and the cell a = b = 4.498, c = 7.338 Å, γ = 120°.  The first
    rings are at d = 3.895, 3.669, 3.441, 2.671, 2.249, 2.071, 1.948, 1.917, 1.883, 1.835 Å.
    """
    if not d_min > 0:
        raise ValueError(f"d_min must be > 0 Å, got {d_min!r}")
    a, c = cell
    limit = 1.0 / d_min ** 2 + half_width
    hk_max = int(math.ceil(a * math.sqrt(1.5 * limit)))
    l_max = int(math.ceil(c * math.sqrt(limit)))
    h, k, l = np.meshgrid(np.arange(-hk_max, hk_max + 1), np.arange(-hk_max, hk_max + 1), np.arange(l_max + 1),
                          indexing="ij")
    two_equal = (h == k) | (h == -2 * k) | (k == -2 * h)  # two of h, k, i = -h-k are equal
    allowed = ~(two_equal & (l % 2 == 1)) & ((h != 0) | (k != 0) | (l != 0))
    inv_d2 = 4.0 * (h * h + h * k + k * k) / (3.0 * a * a) + l * l / (c * c)
    inv_d2 = inv_d2[allowed & (inv_d2 <= limit)]
    return np.unique(np.round(inv_d2, 12))


def ice_mask(inv_d2: ArrayLike, rings: np.ndarray, *, width: float = ICE_RING_WIDTH) -> np.ndarray:
    """True where 1/d² lies on an ice ring: |1/d² - 1/d_ring²| < width / 2.

    Parameters
    ----------
    inv_d2 : 1/d² of the spots, Å⁻².
    rings : sorted ring positions, 1/d² (:func:`ice_rings`).
    width : full ring width in 1/d², Å⁻².
    """
    x = np.asarray(inv_d2, dtype=np.float64)
    if rings.size == 0:
        return np.zeros(x.shape, dtype=bool)
    i = np.clip(np.searchsorted(rings, x), 1, rings.size - 1)
    nearest = np.minimum(np.abs(x - rings[i - 1]), np.abs(x - rings[i]))
    return nearest < width / 2


def per_image_analysis(d: ArrayLike, intensity: ArrayLike, variance: ArrayLike, *, width: float = ICE_RING_WIDTH,
                       rings: np.ndarray | None = None) -> dict[str, Any]:
    """DIALS' per-image figures of one frame's spots.

    Parameters
    ----------
    d : the spots' resolution, Å (:func:`resolution` at their centroids); spots whose d
        is not finite (at the beam centre) are left out, as DIALS drops |rlp| = 0.
    intensity, variance : the spots' summed intensity and its variance.
    width : ice ring width in 1/d², Å⁻².
    rings : the ice rings' 1/d², covering at least the smallest d (default: computed).

    Returns
    -------
    dict: ``n_spots_total``, ``n_spots_no_ice`` (off the ice rings), ``n_spots_4A``
    (d > 4 Å, ice included), ``total_intensity`` (of the spots off the ice rings) and
    ``estimated_d_min`` (:func:`estimate_d_min`, only with more than 10 spots off the
    ice rings; NaN otherwise).
    """
    d = np.asarray(d, dtype=np.float64)
    keep = np.isfinite(d) & (d > 0)
    d, intensity, variance = d[keep], np.asarray(intensity, np.float64)[keep], np.asarray(variance, np.float64)[keep]
    inv_d2 = 1.0 / (d * d)
    if rings is None:
        rings = ice_rings(d.min()) if d.size else np.zeros(0)
    ice = ice_mask(inv_d2, rings, width=width)
    n_no_ice = int(d.size - ice.sum())
    return {"n_spots_total": int(d.size), "n_spots_no_ice": n_no_ice, "n_spots_4A": int((d > 4.0).sum()),
            "total_intensity": float(intensity[~ice].sum()),
            "estimated_d_min": estimate_d_min(inv_d2, intensity, variance, ice) if n_no_ice > 10 else math.nan}


def estimate_d_min(inv_d2: ArrayLike, intensity: ArrayLike, variance: ArrayLike, ice: ArrayLike | None = None
                   ) -> float:
    """DIALS' ``estimated_d_min``: where ln(I/σ) against d*² leaves the band of the strong spots.

    Parameters
    ----------
    inv_d2 : d*² = 1/d² of the spots, Å⁻².
    intensity, variance : the spots' intensity and its variance (spots with a variance or
        intensity <= 0 are left out).
    ice : True for spots on ice rings (default none).

    Returns
    -------
    d_min in Å, or NaN when there is no estimate.

    Notes
    -----
    ``estimate_resolution_limit`` of DIALS' per-image analysis: with x = d*² and
    y = ln(I/σ), the spots are split in n // 20 equal-population resolution bins (5 to
    20); in each bin, Wilson outliers (√(I / ⟨I⟩_no ice) >= √(-ln 0.01), iterated on the
    rest) and ice spots are set aside, and the points at the 10th and 90th percentile of
    y are taken.  A line is fitted (least squares) through the 90th-percentile y values,
    each paired with the d*² of its bin's 10th-percentile point, as DIALS codes it; the
    estimate is the largest d*² among the spots below that line that are neither ice nor
    outliers.  NaN when fewer than two bins hold spots, the fits of the upper and lower
    points are parallel, or no spot is below the line.
    """
    x, i_obs, var = (np.asarray(a, dtype=np.float64) for a in (inv_d2, intensity, variance))
    ice = np.zeros(x.shape, bool) if ice is None else np.asarray(ice, dtype=bool)
    keep = (var > 0) & (i_obs > 0)
    x, i_obs, var, ice = x[keep], i_obs[keep], var[keep], ice[keep]
    if x.size == 0:
        return math.nan
    y = np.log(i_obs / np.sqrt(var))
    upper, lower, outliers = _bin_points(x, y, i_obs, ice, math.sqrt(-math.log(WILSON_P)))
    fits = [_line(points) for points in (upper, lower)]
    if any(f is None for f in fits) or fits[0][0] == fits[1][0]:
        return math.nan
    m, c = fits[0]
    below = (y < m * x + c) & ~outliers & ~ice
    return float(1.0 / math.sqrt(x[below].max())) if below.any() else math.nan


@numba.njit(nogil=True, cache=True)
def _bin_points(x: np.ndarray, y: np.ndarray, i_obs: np.ndarray, ice: np.ndarray,
                cutoff: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The resolution bins' upper and lower (d*², ln I/σ) points, as DIALS pairs them, and the
    Wilson outliers (:func:`estimate_d_min`): ``(upper, lower, outliers)``, a row per bin that
    holds spots off the ice.

    DIALS' ``binner_equal_population(d_star_sq, 20, max_slots=20, min_slots=5)`` gives the
    bins; in each, ``wilson_outliers`` flags the spots with √(I / ⟨I⟩) >= ``cutoff``, ⟨I⟩ taken
    over the inliers off the ice, again on the rest until none is flagged.  The means add up
    as NumPy's do (:func:`_numpy_sum`), so the points are those of a NumPy transcription, bit
    for bit (tested); compiled, since the bins' small arrays cost NumPy microseconds per call.
    """
    n = x.size
    d = 1.0 / np.sqrt(x)
    n_slots = min(max(n // 20, 5), 20)
    per_bin = n / n_slots
    d_sorted = 1.0 / np.sqrt(np.sort(x))
    outliers = np.zeros(n, np.bool_)
    upper = np.empty((n_slots, 2))
    lower = np.empty((n_slots, 2))
    found = 0
    d_hi = d_sorted[0]
    for slot in range(n_slots):
        d_lo = d_sorted[max(int(math.floor((slot + 1) * per_bin + 0.5)) - 1, 0)]
        members = np.flatnonzero((d < d_hi) & (d >= d_lo))
        d_hi = d_lo
        if ice[members].all():
            continue
        flagged = np.zeros(members.size, np.bool_)
        while True:  # wilson_outliers
            rest = members[~flagged & ~ice[members]]
            mean = _numpy_sum(i_obs[rest]) / rest.size if rest.size else np.nan
            new = ~flagged & (np.sqrt(i_obs[members]) / math.sqrt(mean) >= cutoff)
            if not new.any():
                break
            flagged |= new
        outliers[members] = flagged
        sel = members[~flagged & ~ice[members]]
        order = np.argsort(y[sel], kind="mergesort")
        lo, hi = sel[order[int(0.1 * sel.size)]], sel[order[int(0.9 * sel.size)]]
        upper[found] = x[lo], y[hi]
        lower[found] = x[hi], y[lo]
        found += 1
    return upper[:found], lower[:found], outliers


@numba.njit(nogil=True, cache=True)
def _numpy_sum(a: np.ndarray) -> float:
    """``a.sum()`` as NumPy adds a contiguous float64 array: pairwise (in order below 8 values,
    8 partial sums up to 128, halves at a multiple of 8 beyond), so the rounding is NumPy's."""
    n = a.size
    if n < 8:
        total = 0.0
        for i in range(n):
            total += a[i]
        return total
    if n <= 128:
        r = a[:8].copy()
        i = 8
        while i < n - n % 8:
            for j in range(8):
                r[j] += a[i + j]
            i += 8
        total = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]))
        for k in range(i, n):
            total += a[k]
        return total
    half = n // 2
    half -= half % 8
    return _numpy_sum(a[:half]) + _numpy_sum(a[half:])


def _line(points: np.ndarray) -> tuple[float, float] | None:
    """Least-squares (slope, intercept) through ``points``; None without two distinct x."""
    if len(points) < 2:
        return None
    x, y = np.array(points).T
    if np.ptp(x) == 0:
        return None
    slope, intercept = np.polyfit(x, y, 1)
    return float(slope), float(intercept)


@dataclass(frozen=True)
class MxParams(GeometryParams):
    """Parameters of the ``mx`` operator (the geometry keys override the series header's)."""

    spots: str = param("spots", doc="label of the spots operator whose spots are analysed")
    min_spots: int = param(10, ge=0, doc="a frame is a hit with at least this many spots off the ice rings")
    ice_width: float = param(ICE_RING_WIDTH, gt=0, doc="ice ring width in 1/d², Å⁻² (DIALS' find-spots server)")


class Mx(BaseOperator):
    """Per-image analysis of each frame's spots (see the module docstring).

    Columns: ``n_spots_total``, and, when the geometry is complete, ``n_spots_no_ice``,
    ``n_spots_4A``, ``total_intensity``, ``estimated_d_min`` (Å, NaN when not estimated),
    ``hit`` (0/1) and ``hit_rate`` (hits over frames processed so far, in arrival order).
    Without a complete geometry only ``n_spots_total`` exists, and one log line per series
    (at its first frame) names what is missing.  With a scan, the same figures (but ``n_spots_4A``,
    ``total_intensity`` and ``hit_rate``) are also maps.
    """

    kind = "mx"
    Params = MxParams

    def start(self, series: SeriesStart) -> None:
        super().start(series)
        self._geometry = self.params.geometry(series.geometry)
        missing = self._geometry.missing()
        self._note = None
        if missing:
            self._note = (f"series {series.series}: {self.name}: the geometry lacks {', '.join(missing)}: only "
                          f"n_spots_total per frame; resolution, ice, d_min and hits need it (give it in the series "
                          f"header or [operators.{self.name}])")
            names = NO_GEOMETRY
            self._rings = None
        else:
            names = tuple(COLUMNS)
            rows, cols = series.shape
            corners = resolution([-0.5, -0.5, rows - 0.5, rows - 0.5], [-0.5, cols - 0.5, -0.5, cols - 0.5],
                                 self._geometry)
            self._rings = ice_rings(float(corners.min()), half_width=self.params.ice_width / 2)
        self.columns = {name: COLUMNS[name] for name in names}
        self.maps = {name: "f8" for name in MAPS if name in names} if series.scan is not None else {}
        self._hits = self._frames = 0

    def process(self, frame: Frame) -> Frame:
        found = frame.results.get(self.params.spots)
        if found is None or FRAME_SPOTS not in found:
            raise ValueError(f"{self.name}: no spots of operator {self.params.spots!r} on frame {frame.index}: "
                             f"put [operators.{self.params.spots}] (kind spots) before [operators.{self.name}], "
                             f"or name its label in {self.name}.spots")
        spots = found[FRAME_SPOTS]
        if self._rings is None:
            frame.results[self.name] = {"n_spots_total": int(spots["x"].size)}
            return frame
        d = resolution(spots["y"], spots["x"], self._geometry)
        figures = per_image_analysis(d, spots["intensity"], spots["intensity_var"], width=self.params.ice_width,
                                     rings=self._rings)
        figures["hit"] = int(figures["n_spots_no_ice"] >= self.params.min_spots)
        frame.results[self.name] = figures
        return frame

    def collect(self, frame: Frame) -> Frame:
        """In arrival order: the running hit rate of the series (and, once, why figures are missing)."""
        if self._note is not None:  # one instance collects: one line per series
            log.warning(self._note)
            self._note = None
        result = frame.results.get(self.name)
        if result is not None and "hit" in result:
            self._frames += 1
            self._hits += result["hit"]
            result["hit_rate"] = self._hits / self._frames
        return frame
