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

from livediff.model import Geometry, SeriesStart

_SPOT_HALF = 4  # render each spot over +-4 sigma (sigma <= 1 px) around its centre


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
            "beamstop_radius": radius, "drift_path": np.cumsum(steps, axis=0),
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
            geometry=Geometry(beam_center=self._derived["center"], pixel_size=(75e-6, 75e-6),
                              distance=0.2, wavelength=1.0),
            count_time=0.01,
            meta={"simulator": "diffraction", "seed": self.seed},
        )

    # ------------------------------------------------------------------ frames
    def drift_at(self, index: int) -> tuple[float, float]:
        """(row, col) displacement of the pattern in frame ``index`` from frame 0."""
        d = self._derived["drift_path"][index]
        return float(d[0]), float(d[1])

    def spots(self, index: int) -> dict[str, np.ndarray]:
        """Ground-truth spots of frame ``index``: row, col (pixel centres), intensity, sigma."""
        if self.pattern == "fixed":
            base = self._derived["fixed_spots"]
        else:
            base = self._draw_spots(np.random.default_rng([self.seed, index, 1]))
        dy, dx = self.drift_at(index)
        return {"row": base["row"] + dy, "col": base["col"] + dx, "intensity": base["intensity"].copy(),
                "sigma": np.full(base["row"].size, self.spot_sigma)}

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
                **{k: np.concatenate([s[k] for s in spots]).tolist() for k in ("row", "col", "intensity")},
            },
        }

    def write_truth(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.truth()))

    def _draw_spots(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Spot centres away from the border, the beam stop and masked pixels, >= 8 px apart."""
        rows, cols = self.shape
        margin = _SPOT_HALF + 1
        keep = self._derived["mask"] & ~self._derived["shadow"]
        chosen: list[tuple[float, float]] = []
        for _ in range(50 * self.n_spots):
            if len(chosen) == self.n_spots:
                break
            r, c = rng.uniform(margin, rows - 1 - margin), rng.uniform(margin, cols - 1 - margin)
            if not keep[int(round(r)), int(round(c))]:
                continue
            if all((r - r0) ** 2 + (c - c0) ** 2 >= 64 for r0, c0 in chosen):
                chosen.append((r, c))
        pos = np.array(chosen, dtype=float).reshape(-1, 2)
        lo, hi = np.log(self.intensity[0]), np.log(self.intensity[1])
        return {"row": pos[:, 0], "col": pos[:, 1], "intensity": np.exp(rng.uniform(lo, hi, len(pos)))}


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
