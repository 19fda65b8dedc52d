"""Synthetic rotation series: reflections that span several frames, with ground truth.

While the crystal turns, a reflection crosses the Ewald sphere over a few frames: its
intensity is spread over frames by a Gaussian rocking curve in z (frame units) and over
pixels by a Gaussian profile.  Both are integrated over each pixel's area and each
frame's slice of the rotation, so the expected counts-weighted centroid of a reflection
recorded in full is its ground-truth position (to about 1e-3 px or frame for widths of
0.45 and more).  Coordinates use the pixel-centre origin: frame z
covers the rotation interval [z - 0.5, z + 0.5], pixel (r, c) is centred on (r, c).

Every frame is a pure function of (seed, frame index): a Poisson sample of the expected
image, with a masked vertical module gap flagged with the dtype's top value.

The header says what an EIGER on a goniometer says: the geometry, the sensor, the
pixel mask flags (the gap is bit 0, "gap", as DECTRIS flags it) and the goniometer, omega
turning by ``omega_increment`` per frame from ``omega_start`` (frame z covers
[start + z inc, start + (z + 1) inc]).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.special import erf

from livediff.model import Geometry, Instrument, SeriesStart


@dataclass
class RotationSimulator:
    """A rotation series of synthetic frames and its reflections.

    Parameters
    ----------
    shape : (rows, cols) of a frame.
    dtype : "uint16" or "uint32".
    n_frames : frames in the series.
    seed : everything random derives from it.
    n_spots : reflections drawn at random (centres >= 8 px apart, z inside the series).
    background : mean background counts per pixel (flat).
    spot_sigma : Gaussian width of a reflection on the detector, px.
    z_sigma : width of the rocking curve, frames.
    intensity : (low, high) integrated counts of a drawn reflection, log-uniform.
    extra : reflections to add as (row, col, z, intensity), e.g. one a test needs.
    series : series number announced in the header.
    beam_center : (row, col) px, pixel-centre origin; None = off the frame's centre by a few pixels.
    pixel_size, distance, wavelength : the geometry in the header ((y, x) m, m, Å).
    omega_start, omega_increment : the rotation, degrees and degrees per frame.
    """

    shape: tuple[int, int] = (96, 128)
    dtype: str = "uint16"
    n_frames: int = 20
    seed: int = 0
    n_spots: int = 20
    background: float = 3.0
    spot_sigma: float = 1.0
    z_sigma: float = 0.6
    intensity: tuple[float, float] = (2000.0, 20000.0)
    extra: tuple[tuple[float, float, float, float], ...] = ()
    series: int = 1
    beam_center: tuple[float, float] | None = None
    pixel_size: tuple[float, float] = (75e-6, 75e-6)
    distance: float = 0.15
    wavelength: float = 0.9762
    omega_start: float = 10.0
    omega_increment: float = 0.1
    _spots: dict[str, np.ndarray] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.dtype not in ("uint16", "uint32"):
            raise ValueError(f"dtype must be 'uint16' or 'uint32', got {self.dtype!r}")
        if min(self.shape) < 24 or self.n_frames < 1:
            raise ValueError(f"need a shape of at least 24 x 24 and >= 1 frame, got {self.shape}, {self.n_frames}")
        rng = np.random.default_rng([self.seed, 7])
        rows, cols = self.shape
        chosen: list[tuple[float, float, float, float]] = list(self.extra)
        lo, hi = np.log(self.intensity[0]), np.log(self.intensity[1])
        for _ in range(50 * self.n_spots):
            if len(chosen) == len(self.extra) + self.n_spots:
                break
            r, c = rng.uniform(6, rows - 7), rng.uniform(6, cols - 7)
            if self.gap[0] - 4 <= c <= self.gap[1] + 3:
                continue
            if all((r - r0) ** 2 + (c - c0) ** 2 >= 64 for r0, c0, _, _ in chosen):
                z = rng.uniform(-0.5, self.n_frames - 0.5)
                chosen.append((r, c, z, float(np.exp(rng.uniform(lo, hi)))))
        table = np.array(chosen, dtype=float).reshape(-1, 4)
        self._spots = {"row": table[:, 0], "col": table[:, 1], "z": table[:, 2], "intensity": table[:, 3]}

    @property
    def gap(self) -> tuple[int, int]:
        """Columns [first, end) of the masked module gap."""
        start = self.shape[1] // 2 + 3
        return start, start + 2

    @property
    def detector_mask(self) -> np.ndarray:
        """True = valid; the gap is not."""
        mask = np.ones(self.shape, dtype=bool)
        mask[:, self.gap[0]:self.gap[1]] = False
        return mask

    @property
    def geometry(self) -> Geometry:
        """The geometry the header sends (ground truth)."""
        center = self.beam_center or (self.shape[0] * 0.5 - 3.25, self.shape[1] * 0.5 + 4.75)
        return Geometry(beam_center=tuple(center), pixel_size=tuple(self.pixel_size), distance=self.distance,
                        wavelength=self.wavelength)

    @property
    def pixel_flags(self) -> np.ndarray:
        """The detector's pixel mask: 1 (bit 0, gap) in the gap, 0 elsewhere."""
        return (~self.detector_mask).astype(np.uint32)

    def angles(self) -> np.ndarray:
        """Omega at the start of each frame, degrees."""
        return self.omega_start + self.omega_increment * np.arange(self.n_frames)

    def series_start(self) -> SeriesStart:
        return SeriesStart(series=self.series, shape=tuple(self.shape), dtype=self.dtype, n_frames=self.n_frames,
                           mask=self.detector_mask, geometry=self.geometry, count_time=0.01,
                           saturation=int(np.iinfo(self.dtype).max) - 1,
                           instrument=Instrument(sensor_material="Si", sensor_thickness=450e-6, frame_time=0.01,
                                                 description="simulated EIGER2", serial_number="SIM-ROT",
                                                 goniometer=(("omega", self.omega_start, self.omega_increment),),
                                                 pixel_flags=self.pixel_flags),
                           meta={"simulator": "rotation", "seed": self.seed})

    def spots(self) -> dict[str, np.ndarray]:
        """Ground truth: row, col, z (counts-weighted centroid) and total intensity of each reflection."""
        return {k: v.copy() for k, v in self._spots.items()}

    def fractions(self, index: int) -> np.ndarray:
        """Share of each reflection's intensity recorded on frame ``index``."""
        return _bin_weights(np.array([index]), self._spots["z"], self.z_sigma)[:, 0]

    def expected(self, index: int) -> np.ndarray:
        """Noise-free expected counts of frame ``index`` (float64)."""
        image = np.full(self.shape, float(self.background))
        offsets = np.arange(-5, 6)
        s = self._spots
        for r, c, total in zip(s["row"], s["col"], s["intensity"] * self.fractions(index)):
            rows, cols = int(round(r)) + offsets, int(round(c)) + offsets
            ok_r = (rows >= 0) & (rows < self.shape[0])
            ok_c = (cols >= 0) & (cols < self.shape[1])
            wr = _bin_weights(rows[ok_r], np.array([r]), self.spot_sigma)[0]
            wc = _bin_weights(cols[ok_c], np.array([c]), self.spot_sigma)[0]
            image[np.ix_(rows[ok_r], cols[ok_c])] += total * np.outer(wr, wc)
        return image

    def frame(self, index: int) -> np.ndarray:
        """Frame ``index`` as the detector would send it."""
        if not 0 <= index < self.n_frames:
            raise IndexError(f"frame {index} is outside the series of {self.n_frames}")
        counts = np.random.default_rng([self.seed, index, 8]).poisson(self.expected(index))
        counts[:, self.gap[0]:self.gap[1]] = np.iinfo(self.dtype).max
        return np.minimum(counts, np.iinfo(self.dtype).max).astype(self.dtype)


def _bin_weights(bins: np.ndarray, centres: np.ndarray, sigma: float) -> np.ndarray:
    """(len(centres), len(bins)): share of a unit Gaussian at each centre in bin k = [k - 0.5, k + 0.5]."""
    s = sigma * np.sqrt(2.0)
    d = bins[None, :] - centres[:, None]
    return 0.5 * (erf((d + 0.5) / s) - erf((d - 0.5) / s))
