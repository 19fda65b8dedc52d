"""Synthetic powder (polycrystalline) electron-diffraction frames with known ground truth.

A frame is a Poisson sample of an expected image: concentric Debye-Scherrer rings
(Gaussian radial profiles) at the radii the geometry gives for a list of d-spacings, a
smooth background falling off from the centre, an optional bright central (undiffracted)
beam, an optional beam-stop shadow (a disk on the centre and an arm to the right edge)
and an optional module gap (flagged with the top value of the dtype and masked in the
header, as EIGER detectors do).

The ring centre is off the frame centre and not on a pixel centre, so that a centre
finder or an azimuthal average that assumes either is caught.  Ring radii follow from
the geometry: 2θ = 2 asin(λ / 2d) (Bragg), r = L tan(2θ) / p, with the relativistic
electron wavelength λ of the accelerating voltage (:func:`de_broglie_wavelength`, the
simulator's own, so that its truth checks the operators' rather than repeats them).
Every frame is a pure function of (seed, frame index).  Coordinates use the pixel-centre
origin (DESIGN.md).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import constants

from livediff.model import Geometry, SeriesStart

#: d-spacings (Å) of gold, fcc a = 4.078 Å: (111), (200), (220), (311), (222)
GOLD_D_SPACINGS = (2.3544, 2.0390, 1.4418, 1.2296, 1.1772)


def de_broglie_wavelength(voltage_kv: float) -> float:
    """Wavelength in Å of electrons accelerated through ``voltage_kv`` kV (> 0), relativistic.

    The kinetic energy T = eV and the rest energy E0 = m0 c² give the momentum
    pc = sqrt(T (T + 2 E0)), and λ = h / p = hc / pc; this is
    λ = h / sqrt(2 m0 e V (1 + e V / (2 m0 c²))).  CODATA constants from scipy.constants.
    """
    if not voltage_kv > 0:
        raise ValueError(f"voltage_kv must be > 0, got {voltage_kv}")
    kinetic = voltage_kv * 1e3 * constants.e
    rest = constants.m_e * constants.c ** 2
    return constants.h * constants.c / math.sqrt(kinetic * (kinetic + 2.0 * rest)) / constants.angstrom


@dataclass
class PowderSimulator:
    """A series of synthetic powder-ring frames and their ground truth.

    Parameters
    ----------
    shape : (rows, cols) of a frame.
    dtype : "uint16", "uint32" or "float32".
    n_frames : frames in the series.
    seed : the Poisson noise of frame i derives from (seed, i).
    center : (row, col) of the ring centre in pixels; None = an off-centre, off-pixel
        default (0.46 rows + 0.37, 0.54 cols - 0.21).
    d_spacings : lattice spacings in Å, one ring each.
    ring_counts : peak counts of each ring (a single value is used for every ring).
    ring_width : Gaussian sigma of a ring's radial profile, px.
    background : mean background counts per pixel at the centre.
    central_beam : peak counts of the undiffracted beam (Gaussian, sigma
        ``central_beam_width`` px) on the centre; 0 = none.  Counts clip at the top of
        an integer dtype, as a saturated detector does.
    beamstop : shadow the centre with a beam stop (disk and arm); the shadow is masked
        in the header when ``mask_beamstop``.
    gap : include a masked module gap (a horizontal band) flagged with the top value.
    voltage_kv : accelerating voltage of the electrons.
    pixel_size : detector pixel size in metres (square pixels).
    distance : sample-detector distance in metres; None = chosen so that the first
        ring lies at 0.15 min(shape) px.
    header_center : announce the true centre as the beam centre in the header.
    series : series number announced in the header.
    """

    shape: tuple[int, int] = (256, 320)
    dtype: str = "uint16"
    n_frames: int = 10
    seed: int = 0
    center: tuple[float, float] | None = None
    d_spacings: tuple[float, ...] = GOLD_D_SPACINGS
    ring_counts: float | tuple[float, ...] = (400.0, 250.0, 150.0, 120.0, 60.0)
    ring_width: float = 1.5
    background: float = 30.0
    central_beam: float = 0.0
    central_beam_width: float = 3.0
    beamstop: bool = True
    mask_beamstop: bool = True
    gap: bool = True
    voltage_kv: float = 200.0
    pixel_size: float = 50e-6
    distance: float | None = None
    header_center: bool = True
    series: int = 1
    _derived: dict[str, Any] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.dtype not in ("uint16", "uint32", "float32"):
            raise ValueError(f"dtype must be 'uint16', 'uint32' or 'float32', got {self.dtype!r}")
        if min(self.shape) < 16:
            raise ValueError(f"shape must be at least 16 x 16, got {self.shape}")
        counts = np.broadcast_to(np.asarray(self.ring_counts, dtype=float), (len(self.d_spacings),))
        rows, cols = self.shape
        center = self.center if self.center is not None else (0.46 * rows + 0.37, 0.54 * cols - 0.21)
        wavelength = de_broglie_wavelength(self.voltage_kv)
        two_theta = 2.0 * np.arcsin(wavelength / (2.0 * np.asarray(self.d_spacings, dtype=float)))
        distance = self.distance
        if distance is None:
            distance = 0.15 * min(self.shape) * self.pixel_size / np.tan(two_theta.min())
        radii = distance * np.tan(two_theta) / self.pixel_size
        rr, cc = np.ogrid[:rows, :cols]
        shadow = np.zeros(self.shape, dtype=bool)
        stop_radius = max(3.0, 0.05 * min(self.shape))
        if self.beamstop:
            shadow = (rr - center[0]) ** 2 + (cc - center[1]) ** 2 <= stop_radius ** 2
            shadow |= (np.abs(rr - center[0]) <= stop_radius / 3) & (cc >= center[1])
        gap = np.zeros(self.shape, dtype=bool)
        if self.gap:
            gap[int(0.7 * rows): int(0.7 * rows) + 3, :] = True
        mask = ~gap & ~(shadow if self.mask_beamstop else np.zeros_like(shadow))
        self._derived = {"center": (float(center[0]), float(center[1])), "radii": radii, "counts": counts,
                         "wavelength": wavelength, "distance": float(distance), "shadow": shadow, "gap": gap,
                         "mask": mask, "beamstop_radius": stop_radius}

    # ------------------------------------------------------------------ header
    @property
    def top(self) -> float:
        """Largest value of the pixel type: the gap marker (inf for float32)."""
        return float(np.iinfo(self.dtype).max) if self.dtype != "float32" else np.inf

    @property
    def center_truth(self) -> tuple[float, float]:
        """(row, col) of the ring centre, pixel-centre origin."""
        return self._derived["center"]

    @property
    def ring_radii(self) -> np.ndarray:
        """Radius of each ring in pixels, in the order of ``d_spacings``."""
        return self._derived["radii"].copy()

    @property
    def detector_mask(self) -> np.ndarray:
        """The header's mask: True = valid (not the gap, nor the beam stop when masked)."""
        return self._derived["mask"].copy()

    @property
    def beamstop_mask(self) -> np.ndarray:
        """True where the beam stop shadows the detector."""
        return self._derived["shadow"].copy()

    @property
    def geometry(self) -> Geometry:
        """Pixel size, distance, wavelength (Å) and, if ``header_center``, the true centre."""
        d = self._derived
        return Geometry(beam_center=d["center"] if self.header_center else None,
                        pixel_size=(self.pixel_size, self.pixel_size), distance=d["distance"],
                        wavelength=d["wavelength"])

    def series_start(self) -> SeriesStart:
        """The header a detector would send before the frames."""
        return SeriesStart(
            series=self.series, shape=tuple(self.shape), dtype=self.dtype, n_frames=self.n_frames,
            mask=self.detector_mask, geometry=self.geometry, count_time=0.01,
            meta={"simulator": "powder", "seed": self.seed, "voltage_kv": self.voltage_kv},
        )

    # ------------------------------------------------------------------ frames
    def radial_profile(self, radius: np.ndarray) -> np.ndarray:
        """Noise-free expected counts at distance ``radius`` (px) from the centre, no beam stop."""
        d = self._derived
        r = np.asarray(radius, dtype=float)
        image = self.background * (0.3 + 0.7 / (1.0 + (r / (0.5 * max(self.shape))) ** 2))
        for radius_k, counts_k in zip(d["radii"], d["counts"]):
            image = image + counts_k * np.exp(-0.5 * ((r - radius_k) / self.ring_width) ** 2)
        if self.central_beam:
            image = image + self.central_beam * np.exp(-0.5 * (r / self.central_beam_width) ** 2)
        return image

    def expected(self) -> np.ndarray:
        """Noise-free expected counts of every frame (float64), beam-stop shadow included."""
        rr, cc = np.ogrid[: self.shape[0], : self.shape[1]]
        cy, cx = self._derived["center"]
        image = self.radial_profile(np.sqrt((rr - cy) ** 2 + (cc - cx) ** 2))
        image[self._derived["shadow"]] *= 0.02
        return image

    def frame(self, index: int) -> np.ndarray:
        """Frame ``index`` as the detector would send it (Poisson counts, gap flagged)."""
        if not 0 <= index < self.n_frames:
            raise IndexError(f"frame {index} is outside the series of {self.n_frames}")
        counts = np.random.default_rng([self.seed, index]).poisson(self.expected()).astype(np.float64)
        counts[self._derived["gap"]] = self.top
        return np.minimum(counts, self.top).astype(self.dtype)

    def truth(self) -> dict[str, Any]:
        """Everything a test or a user needs to check results (JSON-able)."""
        d = self._derived
        return {
            "series": self.series, "shape": list(self.shape), "dtype": self.dtype, "n_frames": self.n_frames,
            "seed": self.seed, "center": list(d["center"]), "d_spacings": list(self.d_spacings),
            "ring_radii": d["radii"].tolist(), "wavelength": d["wavelength"], "distance": d["distance"],
            "pixel_size": self.pixel_size, "voltage_kv": self.voltage_kv,
            "beamstop_radius": d["beamstop_radius"] if self.beamstop else None,
        }

    def write_truth(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.truth()))
