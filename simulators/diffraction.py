"""Synthetic diffraction frames with known ground truth.

A frame is a Poisson sample of an expected image: a smooth background falling off
from the beam centre, Gaussian Bragg spots of known position and integrated intensity
(integrated over each pixel's area, so centroids are exact), a beam-stop shadow (a disk
on the beam centre and an arm to the right edge), detector gaps (flagged with the top
value of the dtype and masked in the header, as EIGER detectors do), dead pixels
(masked) and hot pixels (not masked: finding them is the pipeline's job).

``pattern="stills"`` draws new spots every frame (serial crystallography, grid scans);
``pattern="fixed"`` keeps one set of spots for the whole series (ultrafast diffraction),
so that only the drift moves them.  The drift is a random walk of the whole pattern;
the beam stop and the detector do not move.

For crystallography: a Wilson fall-off multiplies each Bragg spot's intensity by
exp(-B / (2 d²)) (``b_factor`` B in Å²), ``d_min`` is the crystal's diffraction limit (no
Bragg spot at a smaller d), ``hit_fraction`` of the frames hold a crystal (the others only
background, and ice), and ``ice`` adds spotty rings of hexagonal ice (small ice crystals:
``ice_spots`` spots on each ring of :data:`ICE_RINGS_D` the detector reaches).  d comes from
the flat detector normal to the beam: 2θ = atan(r / L), d = λ / (2 sin θ).  A ``scan``
puts the series on a grid (a crystal search).

Every frame is a pure function of (seed, frame index), so a test can regenerate any
frame without the stream.  Coordinates use the pixel-centre origin (DESIGN.md).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy.special import erf

from livediff.model import Geometry, Instrument, Scan, SeriesStart

_SPOT_HALF = 4  # render each spot over +-4 sigma (sigma <= 1 px) around its centre

#: d-spacings (Å) of the rings of hexagonal ice Ih (a = b = 4.498, c = 7.338 Å, γ = 120°,
#: P6_3/mmc, the cell DIALS' per-image analysis uses), down to 1.47 Å: the reflections
#: 100, 002, 101, 102, 110, 103, 200, 112, 201, 004, 202, 104, 203, 210, from
#: 1/d² = 4 (h² + hk + k²) / (3 a²) + l² / c²
ICE_RINGS_D = (3.8954, 3.6690, 3.4406, 2.6708, 2.2490, 2.0715, 1.9477, 1.9174, 1.8825, 1.8345, 1.7203, 1.6597,
               1.5237, 1.4723)


@dataclass
class DiffractionSimulator:
    """A series of synthetic diffraction frames and their ground truth.

    Parameters
    ----------
    shape : (rows, cols) of a frame.
    dtype : "uint16" or "uint32".
    n_frames : frames in the series.
    seed : everything random derives from it.
    n_spots : Bragg spots per frame.
    background : mean background counts per pixel at the beam centre.
    drift : random-walk step of the pattern per frame, px (0 = no drift).
    pattern : "stills" (new spots each frame) or "fixed" (same spots, drifting).
    spot_sigma : Gaussian width of a spot, px.
    intensity : (low, high) integrated counts of a spot, drawn log-uniformly.
    gaps, n_dead, n_hot : detector defects to include.
    beamstop : include the beam-stop shadow.
    series : series number announced in the header.
    pixel_size, distance, wavelength : the geometry in the header ((y, x) m, m, Å).
    b_factor : Wilson B of the Bragg spots, Å² (0 = no fall-off).
    d_min : no Bragg spot at a smaller d, Å (None = anywhere on the detector).
    hit_fraction : fraction of the frames with Bragg spots (drawn per frame).
    ice : add spotty ice rings; ``ice_spots`` spots per ring per frame.
    scan : the grid the frames are taken on, or None.
    """

    shape: tuple[int, int] = (256, 320)
    dtype: str = "uint16"
    n_frames: int = 100
    seed: int = 0
    n_spots: int = 40
    background: float = 5.0
    drift: float = 0.0
    pattern: str = "stills"
    spot_sigma: float = 1.0
    intensity: tuple[float, float] = (300.0, 5000.0)
    gaps: bool = True
    n_dead: int = 20
    n_hot: int = 5
    beamstop: bool = True
    series: int = 1
    pixel_size: tuple[float, float] = (75e-6, 75e-6)
    distance: float = 0.2
    wavelength: float = 1.0
    b_factor: float = 0.0
    d_min: float | None = None
    hit_fraction: float = 1.0
    ice: bool = False
    ice_spots: int = 12
    scan: Scan | None = None
    _derived: dict[str, Any] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.dtype not in ("uint16", "uint32"):
            raise ValueError(f"dtype must be 'uint16' or 'uint32', got {self.dtype!r}")
        if self.pattern not in ("stills", "fixed"):
            raise ValueError(f"pattern must be 'stills' or 'fixed', got {self.pattern!r}")
        if min(self.shape) < 8:
            raise ValueError(f"shape must be at least 8 x 8, got {self.shape}")
        rows, cols = self.shape
        rng = np.random.default_rng([self.seed, 1 << 30])
        center = (rows * 0.47, cols * 0.53)
        mask = np.ones(self.shape, dtype=bool)
        if self.gaps and rows >= 64 and cols >= 64:
            mask[rows // 2 - 1: rows // 2 + 1, :] = False   # a horizontal module gap
            mask[:, cols // 3: cols // 3 + 2] = False       # and a vertical one
        dead = _random_pixels(rng, self.shape, self.n_dead)
        hot = _random_pixels(rng, self.shape, self.n_hot)
        gap = ~mask
        mask[tuple(dead.T)] = False
        mask[tuple(hot.T)] = True  # the detector does not know these yet
        rr, cc = np.indices(self.shape)
        shadow = np.zeros(self.shape, dtype=bool)
        radius = max(2.0, 0.06 * min(self.shape))
        if self.beamstop:
            shadow = (rr - center[0]) ** 2 + (cc - center[1]) ** 2 <= radius ** 2
            shadow |= (np.abs(rr - center[0]) <= radius / 3) & (cc >= center[1])
        steps = rng.normal(0.0, self.drift, (self.n_frames, 2)) if self.drift else np.zeros((self.n_frames, 2))
        steps[0] = 0.0
        self._derived = {
            "center": center, "mask": mask, "gap": gap, "dead": dead, "hot": hot,
            "hot_values": rng.integers(2000, 8000, len(hot)), "shadow": shadow,
            "beamstop_radius": radius, "drift_path": np.cumsum(steps, axis=0), "spot_ok": mask & ~shadow,
        }
        self._derived["fixed_spots"] = self._draw_spots(np.random.default_rng([self.seed, 1 << 29]))

    # ------------------------------------------------------------------ header
    @property
    def top(self) -> int:
        """Largest value of the pixel type: the gap marker, never a real count."""
        return int(np.iinfo(self.dtype).max)

    @property
    def detector_mask(self) -> np.ndarray:
        """What the detector's header announces: True = valid (gaps and dead pixels are not)."""
        return self._derived["mask"].copy()

    @property
    def beamstop_mask(self) -> np.ndarray:
        """True where the beam stop shadows the detector (a user would mask it)."""
        return self._derived["shadow"].copy()

    def series_start(self) -> SeriesStart:
        """The header a detector would send before the frames."""
        return SeriesStart(
            series=self.series, shape=tuple(self.shape), dtype=self.dtype, n_frames=self.n_frames,
            mask=self.detector_mask,
            geometry=Geometry(beam_center=self._derived["center"], pixel_size=tuple(self.pixel_size),
                              distance=self.distance, wavelength=self.wavelength),
            scan=self.scan, count_time=0.01,
            instrument=Instrument(sensor_material="Si", sensor_thickness=450e-6, pixel_flags=self.pixel_flags),
            meta={"simulator": "diffraction", "seed": self.seed},
        )

    @property
    def pixel_flags(self) -> np.ndarray:
        """The detector's pixel mask with DECTRIS' bits: 1 (gap) in the module gaps, 2 (dead) on dead pixels."""
        flags = np.zeros(self.shape, dtype=np.uint32)
        flags[self._derived["gap"]] |= 1
        dead = self._derived["dead"]
        flags[tuple(dead.T)] |= 2
        flags[tuple(self._derived["hot"].T)] = 0   # the detector does not know these yet
        return flags

    # ------------------------------------------------------------------ frames
    def drift_at(self, index: int) -> tuple[float, float]:
        """(row, col) displacement of the pattern in frame ``index`` from frame 0."""
        d = self._derived["drift_path"][index]
        return float(d[0]), float(d[1])

    def is_hit(self, index: int) -> bool:
        """Whether frame ``index`` holds a crystal (Bragg spots)."""
        if self.hit_fraction >= 1.0:
            return True
        return bool(np.random.default_rng([self.seed, index, 3]).random() < self.hit_fraction)

    def d_at(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """d (Å) at pixel positions, from this simulator's own geometry (no drift)."""
        (r0, c0), (py, px) = self._derived["center"], self.pixel_size
        two_theta = np.arctan(np.hypot((np.asarray(rows) - r0) * py, (np.asarray(cols) - c0) * px) / self.distance)
        with np.errstate(divide="ignore"):
            return self.wavelength / (2.0 * np.sin(two_theta / 2.0))

    def spots(self, index: int) -> dict[str, np.ndarray]:
        """Ground-truth spots of frame ``index``: row, col (pixel centres), intensity, sigma, d, and ice (True
        for an ice crystal's spot)."""
        if self.pattern == "fixed":
            base = self._derived["fixed_spots"]
        else:
            base = self._draw_spots(np.random.default_rng([self.seed, index, 1]))
        if not self.is_hit(index):
            base = {k: v[base["ice"]] for k, v in base.items()}
        dy, dx = self.drift_at(index)
        return {"row": base["row"] + dy, "col": base["col"] + dx, "intensity": base["intensity"].copy(),
                "sigma": np.full(base["row"].size, self.spot_sigma), "d": base["d"].copy(),
                "ice": base["ice"].copy()}

    def expected(self, index: int) -> np.ndarray:
        """Noise-free expected counts of frame ``index`` (float64, before defects)."""
        d = self._derived
        dy, dx = self.drift_at(index)
        rr, cc = np.ogrid[: self.shape[0], : self.shape[1]]
        r2 = (rr - d["center"][0] - dy) ** 2 + (cc - d["center"][1] - dx) ** 2
        image = self.background * (0.3 + 0.7 / (1.0 + r2 / (0.5 * max(self.shape)) ** 2))
        _render_spots(image, self.spots(index))
        image[d["shadow"]] *= 0.02
        return image

    def frame(self, index: int) -> np.ndarray:
        """Frame ``index`` as the detector would send it."""
        if not 0 <= index < self.n_frames:
            raise IndexError(f"frame {index} is outside the series of {self.n_frames}")
        d = self._derived
        rng = np.random.default_rng([self.seed, index, 2])
        counts = rng.poisson(self.expected(index))
        counts[tuple(d["dead"].T)] = 0
        counts[tuple(d["hot"].T)] = d["hot_values"]
        counts[d["gap"]] = self.top
        return np.minimum(counts, self.top).astype(self.dtype)

    def truth(self) -> dict[str, Any]:
        """Everything a test or a user needs to check results (JSON-able)."""
        d = self._derived
        spots = [self.spots(i) for i in range(self.n_frames)]
        return {
            "series": self.series, "shape": list(self.shape), "dtype": self.dtype, "n_frames": self.n_frames,
            "seed": self.seed, "pattern": self.pattern, "beam_center": list(d["center"]),
            "beamstop_radius": d["beamstop_radius"], "drift": d["drift_path"].tolist(),
            "dead_pixels": d["dead"].tolist(), "hot_pixels": d["hot"].tolist(),
            "spots": {
                "frame": np.concatenate([np.full(s["row"].size, i) for i, s in enumerate(spots)]).tolist(),
                **{k: np.concatenate([s[k] for s in spots]).tolist() for k in ("row", "col", "intensity", "d", "ice")},
            },
            "b_factor": self.b_factor, "d_min": self.d_min,
            "hits": [self.is_hit(i) for i in range(self.n_frames)],
        }

    def write_truth(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.truth()))

    def _draw_spots(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Spot centres away from the border, the beam stop and masked pixels, >= 8 px apart; Bragg spots
        within ``d_min``, then the ice crystals' spots on their rings."""
        rows, cols = self.shape
        margin = _SPOT_HALF + 1
        chosen: list[tuple[float, float]] = []
        for _ in range(50 * self.n_spots):
            if len(chosen) == self.n_spots:
                break
            r, c = rng.uniform(margin, rows - 1 - margin), rng.uniform(margin, cols - 1 - margin)
            if self._free(r, c, chosen) and (self.d_min is None or self.d_at(r, c) >= self.d_min):
                chosen.append((r, c))
        n_bragg = len(chosen)
        if self.ice:
            (r0, c0), (py, px) = self._derived["center"], self.pixel_size
            for d in ICE_RINGS_D:
                radius = self.distance * np.tan(2.0 * np.arcsin(self.wavelength / (2.0 * d)))  # metres
                for phi in rng.uniform(0.0, 2.0 * np.pi, self.ice_spots):
                    r, c = r0 + radius * np.sin(phi) / py, c0 + radius * np.cos(phi) / px
                    if self._free(r, c, chosen):
                        chosen.append((r, c))
        pos = np.array(chosen, dtype=float).reshape(-1, 2)
        lo, hi = np.log(self.intensity[0]), np.log(self.intensity[1])
        intensity = np.exp(rng.uniform(lo, hi, len(pos)))
        d = self.d_at(pos[:, 0], pos[:, 1])
        ice = np.arange(len(pos)) >= n_bragg
        intensity[~ice] *= np.exp(-self.b_factor / (2.0 * d[~ice] ** 2))
        return {"row": pos[:, 0], "col": pos[:, 1], "intensity": intensity, "d": d, "ice": ice}

    def _free(self, r: float, c: float, chosen: list[tuple[float, float]]) -> bool:
        """Whether a spot may sit at (r, c): inside the margin, on a valid unshadowed pixel, 8 px from the others."""
        rows, cols = self.shape
        margin = _SPOT_HALF + 1
        if not (margin <= r <= rows - 1 - margin and margin <= c <= cols - 1 - margin):
            return False
        if not self._derived["spot_ok"][int(round(r)), int(round(c))]:
            return False
        return all((r - r0) ** 2 + (c - c0) ** 2 >= 64 for r0, c0 in chosen)


def _random_pixels(rng: np.random.Generator, shape: tuple[int, int], n: int) -> np.ndarray:
    flat = rng.choice(shape[0] * shape[1], size=n, replace=False)
    return np.stack(np.unravel_index(flat, shape), axis=1)


def _render_spots(image: np.ndarray, spots: dict[str, np.ndarray]) -> None:
    """Add Gaussian spots, integrated over each pixel's area, to ``image`` in place."""
    offsets = np.arange(-_SPOT_HALF, _SPOT_HALF + 1)
    for r, c, total, sigma in zip(spots["row"], spots["col"], spots["intensity"], spots["sigma"]):
        r0, c0 = int(round(r)), int(round(c))
        rows, cols = r0 + offsets, c0 + offsets
        wr = _pixel_weights(rows, r, sigma)
        wc = _pixel_weights(cols, c, sigma)
        ok_r = (rows >= 0) & (rows < image.shape[0])
        ok_c = (cols >= 0) & (cols < image.shape[1])
        image[np.ix_(rows[ok_r], cols[ok_c])] += total * np.outer(wr[ok_r], wc[ok_c])


def _pixel_weights(pixels: np.ndarray, centre: float, sigma: float) -> np.ndarray:
    """Fraction of a unit Gaussian's mass falling on each pixel (pixel k spans k +- 0.5)."""
    s = sigma * np.sqrt(2.0)
    return 0.5 * (erf((pixels + 0.5 - centre) / s) - erf((pixels - 0.5 - centre) / s))
