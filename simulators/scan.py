"""A 4D-STEM scan of a phantom sample, with the ground truth of every map.

At each probe position of a (rows, cols) scan the camera records a diffraction pattern:
a bright-field disk (the unscattered beam, attenuated as exp(-mu t) by the local
thickness t) and a diffuse annulus of scattered electrons (growing with t and with the
local scattering strength Z of the region the probe sits in).  A beam tilt that varies
smoothly across the scan moves the whole pattern, so a centre-of-mass map recovers it.

The sample: thickness rising linearly from left to right, two disks of a heavier phase
(Z = 3 instead of 1) and a hole (t = 0).  Patterns are Poisson samples of the expected
image, a pure function of (seed, frame index).  Fly-back frames (the beam parked at the
line's end) hold the pattern of the last position of the line.  Coordinates use the
pixel-centre origin; the truth is independent of livediff's operator code.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from livediff.model import Geometry, Scan, SeriesStart


@dataclass
class ScanFrames:
    """What every scan simulator shares: the scan, each frame's position (a fly-back frame: the line's last)."""

    scan: tuple[int, int] = (12, 16)
    shape: tuple[int, int] = (64, 72)
    order: str = "raster"
    flyback: int = 0

    step: ClassVar[float] = 1.5
    unit: ClassVar[str] = "nm"

    @property
    def grid(self) -> Scan:
        return Scan(tuple(self.scan), order=self.order, flyback=self.flyback, step=self.step, unit=self.unit)

    @property
    def n_frames(self) -> int:
        return self.grid.n_frames

    def position(self, index: int) -> tuple[int, int]:
        """The position frame ``index`` was taken at (a fly-back frame: the line's last position)."""
        rows, cols = self.scan
        line, k = divmod(index, cols + self.flyback)
        k = min(k, cols - 1)
        return line, (cols - 1 - k if self.order == "serpentine" and line % 2 else k)


@dataclass
class ScanSimulator(ScanFrames):
    """A 4D-STEM series and its ground truth.

    Parameters
    ----------
    scan : (rows, cols) probe positions.
    shape : (rows, cols) of a pattern.
    order, flyback : as :class:`livediff.model.Scan`.
    dtype : "uint16" or "uint32".
    disk_radius : bright-field disk radius, px.
    dose : expected counts of the unattenuated bright-field disk, summed.
    tilt : largest beam-tilt shift of the pattern across the scan, px.
    seed, series : as the other simulators.
    """

    dtype: str = "uint16"
    disk_radius: float = 9.0
    dose: float = 2.0e5
    tilt: float = 2.0
    seed: int = 0
    series: int = 1

    @property
    def center(self) -> tuple[float, float]:
        """The untilted pattern centre, (row, col) px."""
        return ((self.shape[0] - 1) / 2, (self.shape[1] - 1) / 2)

    def series_start(self) -> SeriesStart:
        return SeriesStart(series=self.series, shape=tuple(self.shape), dtype=self.dtype, n_frames=self.n_frames,
                           geometry=Geometry(beam_center=self.center), scan=self.grid)

    def thickness(self) -> np.ndarray:
        """Sample thickness in units of the mean free path, (rows, cols)."""
        rows, cols = self.scan
        y, x = np.mgrid[:rows, :cols]
        t = 0.2 + 1.3 * x / max(cols - 1, 1)
        t[(y - rows / 2) ** 2 + (x - cols / 4) ** 2 < (min(rows, cols) / 8) ** 2] = 0.0  # a hole
        return t

    def strength(self) -> np.ndarray:
        """Scattering strength Z of the phase at each position, (rows, cols)."""
        rows, cols = self.scan
        y, x = np.mgrid[:rows, :cols]
        z = np.ones(self.scan)
        for cy, cx in ((rows / 3, 0.6 * cols), (0.7 * rows, 0.8 * cols)):
            z[(y - cy) ** 2 + (x - cx) ** 2 < (min(rows, cols) / 6) ** 2] = 3.0
        return z

    def tilt_field(self) -> tuple[np.ndarray, np.ndarray]:
        """The pattern shift (d_row, d_col) in px at each position: what a COM map should show."""
        rows, cols = self.scan
        y, x = np.mgrid[:rows, :cols]
        return (self.tilt * np.sin(np.pi * y / max(rows - 1, 1)) * 0.5,
                self.tilt * (x / max(cols - 1, 1) - 0.5))

    def expected(self, index: int) -> np.ndarray:
        """The expected pattern of frame ``index`` (float64)."""
        pos = self.position(index)
        t, z = self.thickness()[pos], self.strength()[pos]
        dy, dx = (f[pos] for f in self.tilt_field())
        cy, cx = self.center[0] + dy, self.center[1] + dx
        y, x = np.mgrid[:self.shape[0], :self.shape[1]]
        r = np.hypot(y - cy, x - cx)
        disk = np.clip(self.disk_radius + 0.5 - r, 0.0, 1.0)  # anti-aliased edge
        disk *= self.dose * np.exp(-t) / disk.sum()
        ring = np.exp(-((r - 3.0 * self.disk_radius) / (0.5 * self.disk_radius)) ** 2)
        ring *= 0.3 * self.dose * z * t / ring.sum()
        return disk + ring + 0.5

    def frame(self, index: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, index])
        return rng.poisson(self.expected(index)).astype(self.dtype)
