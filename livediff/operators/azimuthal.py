"""Azimuthal (angular) average of powder patterns around a centre.

:class:`RadialMap` assigns every pixel to a (sector, radial bin) once per series and
centre; each frame then costs one pass over its pixels (:func:`_bin_sums`, a masked
bincount).  :func:`azimuthal_average` is the one-call form (it reuses the map of its last
call); the operator ``azimuthal`` (per-frame profiles and their running mean) wraps them.
:func:`powder_center` (the centre of rings, of a direct beam or of a single-crystal pattern:
scikit-ued's ``autocenter``) and its operator live in :mod:`.powder_center` and are
re-exported here.

Bins: bin ``k`` holds the pixels with ``r_min + k w <= r < r_min + (k + 1) w``, where
``r = sqrt((row - row_c)**2 + (col - col_c)**2)`` in float64 and ``w`` is the bin width in
px; its radius is the bin centre ``r_min + (k + 1/2) w``.  Azimuth ``phi`` is measured
from the +col axis towards +row (clockwise on a displayed image), in degrees in [0, 360).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numba
import numpy as np

from ..model import Frame, Geometry, SeriesStart, electron_wavelength
from .base import BaseOperator, param
from .checks import check_frame_shape, check_image, check_mask, check_shape
from .memo import LastBuilt
from .powder_center import PowderCenter, PowderCenterParams, powder_center

__all__ = ["Azimuthal", "PowderCenter", "PowderCenterParams", "RadialMap", "azimuthal_average",
           "electron_wavelength", "powder_center"]


@numba.njit(nogil=True, cache=True)
def _bin_sums(data, labels, mask, sums, counts):  # pragma: no cover - compiled
    """Add each labelled (label >= 0) valid pixel to ``sums[label]`` and 1 to ``counts[label]``."""
    rows, cols = data.shape
    for r in range(rows):
        for c in range(cols):
            label = labels[r, c]
            if label >= 0 and (mask is None or mask[r, c]):
                sums[label] += data[r, c]
                counts[label] += 1


class RadialMap:
    """The pixel -> (sector, radial bin) assignment for one frame shape, centre and mask.

    Build it once per series (and per centre); :meth:`sums` and :meth:`average` then cost
    one pass over a frame's pixels.

    Parameters
    ----------
    shape : (rows, cols) of the frames.
    center : (row, col) of the centre in pixels, pixel-centre origin.
    mask : bool array of ``shape``, True = valid, used for frames without a mask of their
        own (:meth:`sums`); None = all valid.
    bin_width : radial bin width in px, > 0.
    radial_range : (r_min, r_max) in px, r_max exclusive; None = from 0 to past the
        farthest pixel.  A negative r_min shifts the bin edges (-0.5 centres the bins on
        whole radii, as scikit-ued does).  The last bin ends at r_max when r_max - r_min
        is not a multiple of ``bin_width`` (its radius is still the nominal bin centre).
    sectors : number of equal azimuthal sectors splitting ``azimuth_range``.
    azimuth_range : (phi_min, phi_max) in degrees, 0 < phi_max - phi_min <= 360, angles
        taken modulo 360; None = the full circle.

    Attributes
    ----------
    radius : (n_bins,) float64, bin centres in px.
    edges : (n_bins + 1,) float64, bin edges in px.
    labels : (rows, cols) int32, read-only: sector * n_bins + bin, or -1 for a pixel
        outside the radial or azimuthal range.
    out_shape : (n_bins,) when ``sectors == 1``, else (sectors, n_bins).

    Raises
    ------
    ValueError
        For a centre, range, width, sector count or mask that does not fit the frame.
    TypeError
        For a mask that is not bool.
    """

    def __init__(self, shape: tuple[int, int], center: tuple[float, float], mask: np.ndarray | None = None, *,
                 bin_width: float = 1.0, radial_range: tuple[float, float] | None = None, sectors: int = 1,
                 azimuth_range: tuple[float, float] | None = None) -> None:
        shape = check_frame_shape(shape)
        if len(center) != 2 or not all(math.isfinite(float(v)) for v in center):
            raise ValueError(f"center must be two finite numbers (row, col), got {tuple(center)}")
        if not bin_width > 0:
            raise ValueError(f"bin_width must be > 0 px, got {bin_width}")
        if int(sectors) != sectors or sectors < 1:
            raise ValueError(f"sectors must be an integer >= 1, got {sectors}")
        mask = check_mask(mask, shape)
        rr, cc = np.ogrid[: shape[0], : shape[1]]
        dr, dc = rr - float(center[0]), cc - float(center[1])
        r = np.sqrt(dr ** 2 + dc ** 2)
        r_min, r_max = (0.0, None) if radial_range is None else (float(radial_range[0]), float(radial_range[1]))
        if r_max is None:
            n_bins = int((r.max() - r_min) // bin_width) + 1
            r_max = r_min + n_bins * bin_width
        elif not r_min < r_max:
            raise ValueError(f"radial_range must be (r_min, r_max) with r_min < r_max, got {radial_range}")
        else:
            n_bins = math.ceil((r_max - r_min) / bin_width)
        index = np.floor((r - r_min) / bin_width)
        inside = (r >= r_min) & (r < r_max)
        sectors = int(sectors)
        if azimuth_range is not None or sectors > 1:
            lo, hi = (0.0, 360.0) if azimuth_range is None else (float(azimuth_range[0]), float(azimuth_range[1]))
            if not 0 < hi - lo <= 360:
                raise ValueError(f"azimuth_range must be (phi_min, phi_max) with 0 < phi_max - phi_min <= 360 "
                                 f"degrees, got {azimuth_range}")
            phi = np.mod(np.degrees(np.arctan2(dr, dc)) - lo, 360.0)  # may round up to 360.0
            if hi - lo < 360:
                inside &= phi < hi - lo
            index = index + n_bins * np.minimum(np.floor(phi * (sectors / (hi - lo))), sectors - 1)
        labels = np.where(inside, index, -1).astype(np.int32)
        labels.setflags(write=False)
        self.shape, self.center, self.mask = shape, (float(center[0]), float(center[1])), mask
        self.bin_width, self.sectors, self.n_bins = float(bin_width), sectors, n_bins
        self.edges = r_min + bin_width * np.arange(n_bins + 1, dtype=np.float64)
        self.radius = r_min + bin_width * (np.arange(n_bins, dtype=np.float64) + 0.5)
        self.out_shape = (n_bins,) if sectors == 1 else (sectors, n_bins)
        self.labels = labels

    def sums(self, image: np.ndarray, mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Sum and number of the valid pixels in each bin of ``image``, in one pass.

        Parameters
        ----------
        image : (rows, cols) real array of the map's shape; not written.
        mask : bool array, True = valid; None = the map's mask.

        Returns
        -------
        sums : float64 array of ``out_shape``.
        counts : int64 array of ``out_shape``.

        Raises
        ------
        ValueError
            If ``image`` or ``mask`` does not have the map's shape.
        TypeError
            If ``image`` is not of a real (integer or float) dtype or ``mask`` is not bool.

        Notes
        -----
        Pixels are added in C order into float64 accumulators, so the sums equal
        ``np.bincount(labels[valid], weights=image[valid])`` exactly.  A NaN or inf in a
        valid pixel propagates to its bin; under the mask it is never read.
        """
        image = check_image(image)
        check_shape(image, self.shape, "image", of="map")
        mask = self.mask if mask is None else check_mask(mask, self.shape)
        sums = np.zeros(self.sectors * self.n_bins, dtype=np.float64)
        counts = np.zeros(self.sectors * self.n_bins, dtype=np.int64)
        _bin_sums(image, self.labels, mask, sums, counts)
        return sums.reshape(self.out_shape), counts.reshape(self.out_shape)

    def average(self, image: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        """Mean of the valid pixels in each bin (float64, ``out_shape``); NaN for a bin with none.

        See :meth:`sums` for the parameters.
        """
        return _mean(*self.sums(image, mask))


def _mean(sums: np.ndarray, counts: np.ndarray) -> np.ndarray:
    return np.divide(sums, counts, out=np.full(sums.shape, np.nan), where=counts > 0)


def azimuthal_average(image: np.ndarray, center: tuple[float, float], mask: np.ndarray | None = None, *,
                      bin_width: float = 1.0, radial_range: tuple[float, float] | None = None,
                      sectors: int = 1, azimuth_range: tuple[float, float] | None = None,
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Angular average of ``image`` around ``center``, over valid pixels.

    Parameters
    ----------
    image : (rows, cols) real array; not written.
    center : (row, col) in pixels, pixel-centre origin (scikit-ued's ``center`` is (x, y)).
    mask : bool array of the same shape, True = valid; None = all valid.
    bin_width, radial_range, sectors, azimuth_range : see :class:`RadialMap`.

    Returns
    -------
    radius : (n_bins,) float64, bin centres in px.
    mean : float64, (n_bins,) or (sectors, n_bins): mean of the valid pixels of each bin,
        NaN where a bin has none.

    Raises
    ------
    ValueError
        If ``image`` is not 2-D or ``mask`` does not match it, or for invalid options.
    TypeError
        If ``image`` is not real-valued or ``mask`` is not bool.

    Notes
    -----
    Builds a :class:`RadialMap` and calls :meth:`RadialMap.average`.  The map is the
    public API for averaging many frames around one centre; this one-shot form keeps the
    last map it built and reuses it while the frame shape, centre, options and mask (by
    value) are those of the previous call, so a loop over frames costs about what the
    map's :meth:`~RadialMap.average` does, plus one comparison of the mask.
    scikit-ued's bins are centred on whole radii (``radial_range=(-0.5, r_max)`` here);
    unlike it, masked NaNs are never read and empty bins are NaN rather than 0.
    """
    image = check_image(image)
    options = (image.shape, _key(center), float(bin_width), _key(radial_range), sectors, _key(azimuth_range))
    rmap = _LAST.get((mask,), options, lambda: RadialMap(image.shape, center, mask, bin_width=bin_width,
                                                         radial_range=radial_range, sectors=sectors,
                                                         azimuth_range=azimuth_range))
    return rmap.radius.copy(), rmap.average(image)


_LAST: LastBuilt[RadialMap] = LastBuilt()


def _key(values: Any) -> tuple | None:
    """A sequence of numbers as a tuple that compares by value (None stays None)."""
    return None if values is None else tuple(np.ravel(values).tolist())


@dataclass(frozen=True)
class AzimuthalParams:
    """Parameters of the ``azimuthal`` operator; geometry values override the series header."""

    center: tuple[float, float] | None = param(None, doc="(row, col) px; None = the header's beam centre")
    bin_width: float = param(1.0, gt=0, doc="radial bin width, px")
    radial_range: tuple[float, float] | None = param(None, doc="(r_min, r_max) px, r_max exclusive")
    sectors: int = param(1, ge=1, doc="equal azimuthal sectors (profile becomes sectors x bins)")
    azimuth_range: tuple[float, float] | None = param(None, doc="(phi_min, phi_max) degrees from +col to +row")
    voltage_kv: float | None = param(None, doc="electron accelerating voltage, kV (sets the wavelength)")
    wavelength: float | None = param(None, doc="wavelength, Å")
    distance: float | None = param(None, doc="sample-detector distance, m")
    pixel_size: float | None = param(None, doc="pixel size, m (square pixels)")

    def __post_init__(self) -> None:
        if self.voltage_kv is not None and self.wavelength is not None:
            raise ValueError(f"give voltage_kv or wavelength, not both (got {self.voltage_kv} kV "
                             f"and {self.wavelength} Å)")
        for key in ("voltage_kv", "wavelength", "distance", "pixel_size"):
            value = getattr(self, key)
            if value is not None and not value > 0:
                raise ValueError(f"{key} must be > 0, got {value}")


class Azimuthal(BaseOperator):
    """Angular average of every frame around a fixed centre, and the running mean profile.

    Geometry follows :meth:`livediff.model.Geometry.with_overrides`: each of ``center``,
    ``pixel_size``, ``distance`` and ``wavelength`` (or ``voltage_kv``) set in the config
    replaces the series header's value.  The pixel -> bin map is built in ``start``; each
    frame then costs one pass.

    Outputs: ``arrays`` ``profile`` (float32, ``(bins,)`` or ``(sectors, bins)``; NaN where a
    bin has no valid pixel) per frame; ``reductions`` ``mean`` (float64: sum over frames of
    the bin sums / sum of the bin counts, i.e. the profile of the summed frames), ``count``
    (valid pixel-frames per bin), ``radius`` (bin centres, px) and, when pixel size,
    distance and wavelength are known, ``q`` (1/Å, :meth:`Geometry.q_at_radius` of the bin
    centres).  The state (bin sums and counts) merges by addition.
    """

    kind = "azimuthal"
    Params = AzimuthalParams

    def start(self, series: SeriesStart) -> None:
        super().start(series)
        p = self.params
        wavelength = electron_wavelength(p.voltage_kv) if p.voltage_kv is not None else p.wavelength
        geometry = series.geometry.with_overrides(beam_center=p.center, pixel_size=p.pixel_size,
                                                  distance=p.distance, wavelength=wavelength)
        if geometry.beam_center is None:
            raise ValueError("azimuthal: no centre: set operators.azimuthal.center = [row, col] or send the "
                             "beam centre in the series header (powder_center finds it in a recorded series)")
        self.map = RadialMap(series.shape, geometry.beam_center, series.mask, bin_width=p.bin_width,
                             radial_range=p.radial_range, sectors=p.sectors, azimuth_range=p.azimuth_range)
        self.axes = {"radius": self.map.radius.copy()}
        if not geometry.missing(*Geometry.SCALE_FIELDS):
            try:
                self.axes["q"] = geometry.q_at_radius(self.map.radius)
            except ValueError as err:  # pixels of the header not square
                raise ValueError(f"azimuthal: {err}; set operators.azimuthal.pixel_size") from err
        shape = self.map.out_shape
        self.arrays = {"profile": (shape, "f4")}
        self.reductions = {"mean": (shape, "f8"), "count": (shape, "i8"),
                           **{k: (v.shape, "f8") for k, v in self.axes.items()}}
        self._sum = np.zeros(shape, dtype=np.float64)
        self._count = np.zeros(shape, dtype=np.int64)

    def process(self, frame: Frame) -> Frame:
        sums, counts = self.map.sums(frame.data, frame.mask)
        self._sum += sums
        self._count += counts
        frame.results[self.name] = {"profile": _mean(sums, counts).astype(np.float32)}
        return frame

    def state(self) -> dict[str, Any]:
        return {"sum": self._sum.copy(), "count": self._count.copy()}

    def merge(self, other: dict[str, Any]) -> None:
        self._sum += other["sum"]
        self._count += other["count"]

    def snapshot(self) -> dict[str, Any]:
        return {"mean": _mean(self._sum, self._count), "count": self._count.copy(),
                **{k: v.copy() for k, v in self.axes.items()}}
