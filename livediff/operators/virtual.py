"""Virtual detectors and centre of mass: what a 4D-STEM user watches fill in, position by position.

Kernels: :func:`apply_masks` (the sum of a frame under each of several masks, in one pass
over each mask's pixels) with its cached form :class:`MaskSet`, and :func:`center_of_mass`.
Operators: ``virtual`` (named detectors: bright-field disk, annular dark field, rectangle,
a mask or weights from a file, plus the total) and ``com`` (centre of mass, its shift from a
reference centre and, from the maps, divergence and curl: the DPC quantities).  Both
declare their per-frame values as scan maps (``livediff.operators.base``), so with a
scan in the series header they fill (rows, cols) images.

Masks are given relative to the pattern centre: the operator's ``center``, else the
series header's beam centre, else the middle of the frame (pixel-centre origin).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import numba
import numpy as np

from ..model import Frame, SeriesStart
from .base import BaseOperator, param
from .checks import all_valid, check_image, check_mask, check_shape

__all__ = ["Com", "ComParams", "Detector", "MaskSet", "Virtual", "VirtualParams", "apply_masks",
           "center_of_mass", "detector_mask"]


@numba.njit(nogil=True, cache=True)
def _apply(image, bounds, seg_row, seg_c0, seg_c1, seg_w, weights, out):  # pragma: no cover - compiled
    """out[i] = sum of image over mask i's row segments (weighted where seg_w >= 0).

    Each segment is sliced first and walked from 0, so the loop indices are provably
    non-negative and LLVM vectorises it (indexing from ``c0`` keeps a wraparound check).
    """
    for i in range(out.size):
        acc = 0.0
        for s in range(bounds[i], bounds[i + 1]):
            seg = image[seg_row[s], seg_c0[s]:seg_c1[s]]
            w0 = seg_w[s]
            if w0 < 0:
                part = 0
                for k in range(seg.shape[0]):
                    part += seg[k]
                acc += part
            else:
                w = weights[w0:w0 + seg.shape[0]]
                for k in range(seg.shape[0]):
                    acc += seg[k] * w[k]
        out[i] = acc


@numba.njit(nogil=True, cache=True, fastmath={"reassoc", "nsz"})
def _com(image, mask):  # pragma: no cover - compiled
    """(sum, sum of row x value, sum of col x value) over the valid pixels; rows reassociated
    (fastmath) so each row's sums vectorise, float64 throughout."""
    rows, cols = image.shape
    total = sum_r = sum_c = 0.0
    for r in range(rows):
        img, valid = image[r], mask[r]
        row_sum = col_sum = 0.0
        for c in range(cols):
            v = np.float64(img[c]) * valid[c]
            row_sum += v
            col_sum += v * c
        total += row_sum
        sum_r += row_sum * r
        sum_c += col_sum
    return total, sum_r, sum_c


class MaskSet:
    """Several masks compiled once into row segments, applied to many frames.

    Parameters
    ----------
    masks : (n, rows, cols) bool (inside = True) or real weights (0 = outside).
    valid : bool (rows, cols), True = valid pixel; invalid pixels count in no mask.

    Notes
    -----
    Each mask is stored as the runs of consecutive nonzero pixels of its rows; a boolean
    mask sums its runs (integer frames exactly, in 64 bits), a weighted one multiplies by
    its weights.  One call reads each mask's pixels once, with no Python loop over masks.
    """

    def __init__(self, masks: np.ndarray, valid: np.ndarray | None = None) -> None:
        masks = np.asarray(masks)
        if masks.ndim != 3:
            raise ValueError(f"masks must be (n, rows, cols), got shape {masks.shape}")
        self.shape = masks.shape[1:]
        valid = check_mask(valid, self.shape, "valid")
        bounds, rows, c0s, c1s, woffs, weights = [0], [], [], [], [], []
        n_weights = 0
        for m in masks:
            inside = (m != 0) if valid is None else (m != 0) & valid
            weighted = m.dtype != np.bool_ and not np.all(m[inside] == 1)
            edges = np.diff(np.pad(inside, ((0, 0), (1, 1))).astype(np.int8), axis=1)
            for r, c0, c1 in _runs(edges):
                rows.append(r)
                c0s.append(c0)
                c1s.append(c1)
                if weighted:
                    woffs.append(n_weights)
                    weights.append(np.asarray(m[r, c0:c1], dtype=np.float64))
                    n_weights += c1 - c0
                else:
                    woffs.append(-1)
            bounds.append(len(rows))
        self._segments = (np.array(bounds, np.int64), np.array(rows, np.int64), np.array(c0s, np.int64),
                          np.array(c1s, np.int64), np.array(woffs, np.int64),
                          np.concatenate(weights) if weights else np.zeros(0))
        self.n = len(masks)

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """The sum of ``image`` under each mask, float64 (n,)."""
        image = check_image(image)
        check_shape(image, self.shape, "image", of="masks")
        out = np.empty(self.n)
        _apply(image, *self._segments, out)
        return out


def _runs(edges: np.ndarray) -> list[tuple[int, int, int]]:
    """(row, start, stop) of each run of True, from the row-wise diff of a zero-padded mask."""
    r_on, c_on = np.nonzero(edges == 1)
    r_off, c_off = np.nonzero(edges == -1)
    return list(zip(r_on.tolist(), c_on.tolist(), c_off.tolist()))


def apply_masks(image: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """The sum of ``image`` under each mask (a virtual detector's signal).

    Parameters
    ----------
    image : (rows, cols), any real dtype.
    masks : (n, rows, cols) bool (True = inside) or real weights.

    Returns
    -------
    float64 array (n,): ``sum(image * mask)`` for each mask.  For many frames, build a
    :class:`MaskSet` once and call it per frame.
    """
    return MaskSet(masks)(image)


def center_of_mass(image: np.ndarray, mask: np.ndarray | None = None) -> tuple[float, float]:
    """Intensity-weighted centre of the valid pixels, (row, col) with pixel (r, c) centred at (r, c).

    Returns (NaN, NaN) when the valid pixels sum to zero.
    """
    image = check_image(image)
    mask = check_mask(mask, image.shape)
    total, sum_r, sum_c = _com(image, all_valid(image.shape) if mask is None else mask)
    if total == 0:
        return math.nan, math.nan
    return sum_r / total, sum_c / total


@dataclass(frozen=True)
class Detector:
    """One virtual detector, relative to the pattern centre (``center`` overrides it for this one)."""

    shape: Literal["disk", "annulus", "rectangle", "file"] = "disk"
    radius: float | None = param(None, gt=0, doc="disk radius, px")
    inner: float | None = param(None, ge=0, doc="annulus inner radius, px (inclusive)")
    outer: float | None = param(None, gt=0, doc="annulus outer radius, px (exclusive)")
    rows: tuple[int, int] | None = param(None, ge=0, doc="rectangle rows [start, stop)")
    cols: tuple[int, int] | None = param(None, ge=0, doc="rectangle cols [start, stop)")
    file: str | None = param(None, file=True, doc="a mask (nonzero = inside) or weights, the frame's shape")
    center: tuple[float, float] | None = param(None, doc="(row, col) px, for this detector only")

    def __post_init__(self) -> None:
        need = {"disk": ("radius",), "annulus": ("inner", "outer"), "rectangle": ("rows", "cols"),
                "file": ("file",)}[self.shape]
        missing = [k for k in need if getattr(self, k) is None]
        if missing:
            raise ValueError(f"a {self.shape} detector needs {', '.join(missing)}")
        if self.shape == "annulus" and not self.inner < self.outer:
            raise ValueError(f"annulus: inner radius must be < outer, got {self.inner} and {self.outer}")


def detector_mask(detector: Detector, shape: tuple[int, int], center: tuple[float, float]) -> np.ndarray:
    """The (rows, cols) mask of ``detector`` around ``center`` (its own centre if it has one)."""
    cy, cx = detector.center if detector.center is not None else center
    if detector.shape == "file":
        check_shape(np.asarray(detector.file), shape, "detector file", of="frame")
        return np.asarray(detector.file)
    if detector.shape == "rectangle":
        mask = np.zeros(shape, dtype=bool)
        mask[slice(*detector.rows), slice(*detector.cols)] = True
        return mask
    y, x = np.ogrid[:shape[0], :shape[1]]
    r2 = (y - cy) ** 2 + (x - cx) ** 2
    if detector.shape == "disk":
        return r2 <= detector.radius ** 2
    return (r2 >= detector.inner ** 2) & (r2 < detector.outer ** 2)


def _pattern_center(center: tuple[float, float] | None, series: SeriesStart) -> tuple[float, float]:
    if center is not None:
        return center
    if series.geometry.beam_center is not None:
        return series.geometry.beam_center
    return ((series.shape[0] - 1) / 2, (series.shape[1] - 1) / 2)


@dataclass(frozen=True)
class VirtualParams:
    """Parameters of the ``virtual`` operator."""

    detectors: dict[str, Detector] = field(default_factory=dict)
    center: tuple[float, float] | None = param(None, doc="pattern centre (row, col) px; default the header's "
                                                          "beam centre, else the middle of the frame")


class Virtual(BaseOperator):
    """Virtual detectors: per frame, the sum under each named detector and the total.

    With no detectors configured: ``bf``, a disk of radius min(rows, cols) / 8 around the
    centre, and ``adf``, the annulus from min(rows, cols) / 4 to / 2.  Columns and maps:
    one per detector (its label) and ``total`` (every valid pixel); float64.
    """

    kind = "virtual"
    Params = VirtualParams

    def start(self, series: SeriesStart) -> None:
        super().start(series)
        side = min(series.shape)
        detectors = self.params.detectors or {"bf": Detector("disk", radius=side / 8),
                                              "adf": Detector("annulus", inner=side / 4, outer=side / 2)}
        if "total" in detectors:
            raise ValueError("virtual: 'total' is the name of the whole-frame sum; name the detector otherwise")
        center = _pattern_center(self.params.center, series)
        self._names = [*detectors, "total"]
        self._masks = np.stack([*(detector_mask(d, series.shape, center) for d in detectors.values()),
                                np.ones(series.shape, dtype=bool)])
        self.columns = dict.fromkeys(self._names, "f8")
        self.maps = dict.fromkeys(self._names, "f8")
        self._set: MaskSet | None = None
        self._for: np.ndarray | None = None

    def process(self, frame: Frame) -> Frame:
        valid = self.valid(frame)
        if self._set is None or not (valid is self._for or np.array_equal(valid, self._for)):
            self._set, self._for = MaskSet(self._masks, valid), valid
        frame.results[self.name] = dict(zip(self._names, self._set(frame.data).tolist()))
        return frame


@dataclass(frozen=True)
class ComParams:
    """Parameters of the ``com`` operator."""

    center: tuple[float, float] | None = param(None, doc="reference centre (row, col) px; default the header's "
                                                          "beam centre, else the middle of the frame")
    radius: float | None = param(None, gt=0, doc="count only pixels within this radius of the reference "
                                                 "centre (the bright-field disk); unset = all")


class Com(BaseOperator):
    """Centre of mass of each frame and its shift from the reference centre (differential phase contrast).

    Columns: ``com_y``, ``com_x`` (pixel-centre origin), ``com_dy``, ``com_dx`` (the shift
    from the reference centre, px) and ``com_magnitude``.  Maps: the shift components and
    magnitude, and derived from them ``divergence`` and ``curl`` of the shift field per
    scan step (central differences, ``numpy.gradient``; NaN next to holes):
    div = d(dx)/d(col) + d(dy)/d(row), curl = d(dy)/d(col) - d(dx)/d(row).
    """

    kind = "com"
    Params = ComParams

    def start(self, series: SeriesStart) -> None:
        super().start(series)
        self._center = _pattern_center(self.params.center, series)
        self._region = None
        if self.params.radius is not None:
            self._region = detector_mask(Detector("disk", radius=self.params.radius), series.shape, self._center)
        self.columns = dict.fromkeys(("com_y", "com_x", "com_dy", "com_dx", "com_magnitude"), "f8")
        self.maps = dict.fromkeys(("com_dy", "com_dx", "com_magnitude", "divergence", "curl"), "f8")

    def process(self, frame: Frame) -> Frame:
        valid = self.valid(frame)
        if self._region is not None:
            valid = valid & self._region
        row, col = center_of_mass(frame.data, valid)
        dy, dx = row - self._center[0], col - self._center[1]
        frame.results[self.name] = {"com_y": row, "com_x": col, "com_dy": dy, "com_dx": dx,
                                    "com_magnitude": math.hypot(dy, dx)}
        return frame

    def derive_maps(self, maps: dict[str, np.ndarray]) -> dict[str, Any]:
        dy, dx = maps["com_dy"], maps["com_dx"]
        if min(dy.shape) < 2:  # no neighbours along an axis: no derivative
            return {}
        ddy_dr, ddy_dc = np.gradient(dy)
        ddx_dr, ddx_dc = np.gradient(dx)
        return {"divergence": ddx_dc + ddy_dr, "curl": ddy_dc - ddx_dr}
