"""An EBSD scan of a polycrystal phantom: Kikuchi-like patterns with the truth of grains and boundaries.

The sample is a Voronoi tessellation of the scan into grains.  Each grain has an
orientation, here an in-plane rotation of one set of Kikuchi bands (bright bands with
smooth edges across the pattern, as the great circles of a gnomonic projection look near
the pattern centre).  A pattern is the detector's smooth background (a broad Gaussian, the
backscatter yield, plus an offset), modulated by the bands of the grain under the beam.
Near a grain boundary the interaction volume covers both grains: the pattern mixes the two
grains' bands with weights falling linearly from 1/2 at the boundary to 0 at ``spread``
scan steps from it, so the band contrast, and any quality figure of it, drops at the
boundaries (:meth:`EbsdSimulator.mixing` is that truth).  Patterns are Poisson samples,
clipped to the pixel type's range: a pure function of (seed, frame index).  Fly-back frames
hold the pattern of the line's last position.  The truth never uses livediff's operators.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from livediff.model import SeriesStart

from .scan import ScanFrames

#: the crystal's bands: (normal angle, degrees; distance from the pattern centre and half width, fractions of
#: the pattern width)
_BANDS = ((0.0, 0.00, 0.050), (60.0, 0.12, 0.040), (120.0, -0.10, 0.045), (30.0, 0.28, 0.030),
          (90.0, -0.24, 0.035), (150.0, 0.20, 0.030), (15.0, -0.33, 0.025))


@dataclass
class EbsdSimulator(ScanFrames):
    """An EBSD series and its ground truth.

    Parameters
    ----------
    scan : (rows, cols) beam positions.
    shape : (rows, cols) of a pattern.
    order, flyback : as :class:`livediff.model.Scan`.
    dtype : "uint8" or "uint16".
    grains : number of grains.
    counts : expected counts at the background's maximum.
    band_contrast : relative intensity of a band over the background.
    spread : half width of the mixed zone at a boundary, scan steps.
    seed, series : as the other simulators.
    """

    scan: tuple[int, int] = (16, 20)
    shape: tuple[int, int] = (60, 60)
    dtype: str = "uint8"
    grains: int = 6
    counts: float = 180.0
    band_contrast: float = 0.35
    spread: float = 1.0
    seed: int = 0
    series: int = 1

    step: ClassVar[float] = 0.5
    unit: ClassVar[str] = "um"

    def series_start(self) -> SeriesStart:
        return SeriesStart(series=self.series, shape=tuple(self.shape), dtype=self.dtype, n_frames=self.n_frames,
                           scan=self.grid)

    @functools.cached_property
    def _seeds(self) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng([self.seed, 1 << 20])
        centres = rng.uniform((0, 0), self.scan, (self.grains, 2))
        rotations = rng.uniform(0.0, 360.0, self.grains)
        return centres, rotations

    def _nearest_two(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(nearest grain, second nearest, distance to their boundary in scan steps) per position."""
        centres, _ = self._seeds
        y, x = np.mgrid[:self.scan[0], :self.scan[1]]
        d2 = (y[..., None] - centres[:, 0]) ** 2 + (x[..., None] - centres[:, 1]) ** 2
        order = np.argsort(d2, axis=-1)
        a, b = order[..., 0], order[..., 1]
        da, db = np.take_along_axis(d2, a[..., None], -1)[..., 0], np.take_along_axis(d2, b[..., None], -1)[..., 0]
        gap = np.linalg.norm(centres[a] - centres[b], axis=-1)
        return a, b, (db - da) / (2.0 * gap)  # distance to the perpendicular bisector

    def grain_map(self) -> np.ndarray:
        """The grain under the beam at each position, (rows, cols) int."""
        return self._nearest_two()[0]

    def mixing(self) -> np.ndarray:
        """The neighbouring grain's share of each pattern: 1/2 on a boundary, 0 beyond ``spread`` steps."""
        distance = self._nearest_two()[2]
        return 0.5 * np.clip(1.0 - distance / self.spread, 0.0, 1.0)

    def boundary(self) -> np.ndarray:
        """Positions whose pattern mixes two grains (the boundaries' truth), (rows, cols) bool."""
        return self.mixing() > 0

    def background(self) -> np.ndarray:
        """The expected pattern without bands: the static background, float64 (counts)."""
        rows, cols = self.shape
        y, x = np.mgrid[:rows, :cols]
        r2 = ((y - 0.45 * rows) / rows) ** 2 + ((x - 0.55 * cols) / cols) ** 2
        return self.counts * (0.25 + 0.75 * np.exp(-r2 / (2 * 0.35 ** 2)))

    @functools.cached_property
    def _bands(self) -> np.ndarray:
        """Each grain's sum of band profiles, (grains, rows, cols) float64 in [0, ~2]."""
        rows, cols = self.shape
        y, x = np.mgrid[:rows, :cols]
        u, v = (x - (cols - 1) / 2) / cols, (y - (rows - 1) / 2) / cols
        total = np.zeros((self.grains, *self.shape))
        for grain, rotation in enumerate(self._seeds[1]):
            for angle, offset, half in _BANDS:
                phi = np.radians(angle + rotation)
                t = u * np.cos(phi) + v * np.sin(phi) - offset
                total[grain] += 1.0 / (1.0 + np.exp((np.abs(t) - half) / 0.006))  # a bright band, smooth edges
        return total

    def expected(self, index: int) -> np.ndarray:
        """The expected pattern of frame ``index`` (float64 counts)."""
        pos = self.position(index)
        a, b, _ = self._nearest_two()
        f = self.mixing()[pos]
        bands = (1.0 - f) * self._bands[a[pos]] + f * self._bands[b[pos]]
        return self.background() * (1.0 + self.band_contrast * bands)

    def frame(self, index: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, index])
        top = np.iinfo(self.dtype).max
        return np.minimum(rng.poisson(self.expected(index)), top).astype(self.dtype)

    def patterns(self) -> np.ndarray:
        """Every position's pattern, (scan rows, scan cols, rows, cols), as the frames of the scan carry them."""
        out = np.empty((*self.scan, *self.shape), dtype=self.dtype)
        for i in range(self.n_frames):
            pos = self.grid.position(i)
            if pos is not None:
                out[pos] = self.frame(i)
        return out
