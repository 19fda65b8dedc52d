"""The ``spots`` operator: the spot kernels of :mod:`livediff.operators.spots` on every frame.

See the package docstring for what the rows of a frame are in each mode, and for ``d``
and ``inv_d2``.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np

from ...model import Frame, SeriesStart
from ..base import BaseOperator, param
from ..checks import check_shape
from ..geometry import RESOLUTION_COLUMNS, GeometryParams, resolution_columns
from . import components, integer_kernel_args, strong_pixels
from .label import select, spot_columns
from .link import SpotLinker
from .threshold import MAX_VALUE

#: the spot table's columns as rows of the operator (bbox split into six)
ROW_COLUMNS = {"x": "f8", "y": "f8", "z": "f8", "var_x": "f8", "var_y": "f8", "var_z": "f8",
               "intensity": "f8", "intensity_var": "f8", "x0": "i8", "x1": "i8", "y0": "i8", "y1": "i8",
               "z0": "i8", "z1": "i8", "npix": "i8"}

_PARTS = "_parts"  # a frame's components, from process() to collect() in 3-D mode

#: the key of a frame's results holding its own 2-D spots (the rows in 2-D mode)
FRAME_SPOTS = "frame_spots"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SpotsParams(GeometryParams):
    """Parameters of the ``spots`` operator (DIALS' names and defaults; the geometry keys
    of :class:`~livediff.operators.geometry.GeometryParams` give the spots ``d``)."""

    mode: Literal["2d", "3d"] = "2d"
    algorithm: Literal["dispersion", "dispersion_extended"] = "dispersion"
    gain: float | None = param(None, gt=0, doc="detector gain; unset = DIALS' formulas without gain")
    gain_map: str | None = param(None, file=True, doc="per-pixel gain array file (instead of gain)")
    kernel_size: tuple[int, int] = param((3, 3), ge=1, doc="window half-sizes (rows, cols)")
    sigma_background: float = param(6.0, ge=0)
    sigma_strong: float = param(3.0, ge=0)
    min_local: int = param(2, ge=0, doc="fewest valid pixels a window needs")
    global_threshold: float = 0.0
    min_spot_size: int = param(3, ge=1, doc="pixels")
    max_spot_size: int = param(1000, ge=1, doc="pixels")
    max_separation: float = param(2.0, gt=0, doc="peak to centroid, px")
    max_strong_fraction: float = param(0.25, gt=0, le=1, doc="beyond it the frame is rejected")
    threads: int = param(1, ge=1, le=64, doc="threads per frame (row blocks); 1 when pipeline workers fill the cores")
    max_pending: int = param(16, ge=1, doc="3d: frames that may wait for a missing predecessor")

    def __post_init__(self) -> None:
        if self.min_spot_size > self.max_spot_size:
            raise ValueError(f"min_spot_size {self.min_spot_size} > max_spot_size {self.max_spot_size}")
        if self.gain is not None and self.gain_map is not None:
            raise ValueError("give gain or gain_map, not both")


class Spots(BaseOperator):
    """Spots per frame (rows on the ``spots`` topic and in ``/entry/livediff/spots``).

    Columns of the frames table: ``n_spots`` (this frame's 2-D spots after the filters),
    ``n_strong``, ``strong_fraction`` (of the valid pixels) and ``spots_rejected`` (1 when
    that fraction exceeds ``max_strong_fraction``: no spots then).  Rows: see the module
    docstring for which spots a frame carries in each mode.
    """

    kind = "spots"
    Params = SpotsParams

    def start(self, series: SeriesStart) -> None:
        super().start(series)
        p = self.params
        gain = p.gain if p.gain_map is None else np.ascontiguousarray(p.gain_map, dtype=np.float64)
        if isinstance(gain, np.ndarray):
            check_shape(gain, series.shape, "operators.spots.gain_map:", of="frame")
        self._threshold = {
            "gain": gain, "kernel_size": p.kernel_size, "sigma_background": p.sigma_background,
            "sigma_strong": p.sigma_strong, "min_local": p.min_local, "global_threshold": p.global_threshold,
            "extended": p.algorithm == "dispersion_extended", "threads": p.threads,
            "max_value": MAX_VALUE if series.saturation is None else min(MAX_VALUE, series.saturation),
        }
        self._filters = {"min_size": p.min_spot_size, "max_size": p.max_spot_size,
                         "max_separation": p.max_separation}
        self.columns = {"n_spots": "i8", "n_strong": "i8", "strong_fraction": "f8", "spots_rejected": "u1"}
        self.rows = dict(ROW_COLUMNS)
        self._geometry = p.geometry(series.geometry)
        missing = self._geometry.missing()
        self._note = None
        if missing:
            self._note = (f"series {series.series}: {self.name}: no d on the spot rows: the geometry lacks "
                          f"{', '.join(missing)} (give it in the series header or [operators.{self.name}])")
        else:
            self.rows.update(RESOLUTION_COLUMNS)
        last = None if series.n_frames is None else series.n_frames - 1
        self._linker = SpotLinker(last=last, max_pending=p.max_pending)

    def output_series(self, series: SeriesStart) -> SeriesStart:
        """The series with the configured geometry keys in its geometry."""
        return replace(series, geometry=self._geometry) if self.params.overrides_geometry else series

    def process(self, frame: Frame) -> Frame:
        _, runs, n_valid = strong_pixels(frame.data, frame.mask, **self._threshold)
        return self.add_strong(frame, runs, n_valid)

    @property
    def single_block(self) -> bool:
        """Whether the spot test runs in one pass over the rows (``spots.integer_kernel_args``
        then tells, frame by frame, whether that pass is the integer kernel's)."""
        return self.params.algorithm == "dispersion" and self.params.threads == 1

    def strong_kernel_args(self, frame: Frame, mask: np.ndarray) -> tuple[Any, ...] | None:
        """``spots.integer_kernel_args`` for this frame's pixels with ``mask`` (filled later, by
        the kernel's row hook): None when this operator's spot test is not that kernel's."""
        return integer_kernel_args(frame.data, mask, **self._threshold)

    def add_strong(self, frame: Frame, runs: np.ndarray, n_valid: int) -> Frame:
        """The second half of :meth:`process`: the frame's results from its strong-pixel runs
        (``spots.strong_pixels``) and its number of valid pixels."""
        spots = components(frame.data, runs, n_valid, z=frame.index,
                           max_strong_fraction=self.params.max_strong_fraction)
        keep = select(spots.stats, **self._filters)
        result: dict[str, Any] = {"n_spots": int(keep.sum()), "n_strong": spots.n_strong,
                                  "strong_fraction": spots.strong_fraction, "spots_rejected": int(spots.rejected)}
        result[FRAME_SPOTS] = self._rows(spots.stats[keep])
        if self.params.mode == "2d":
            result["rows"] = result[FRAME_SPOTS]
        else:
            result["rows"] = self._rows(spots.stats[:0])
            result[_PARTS] = None if spots.rejected else (spots.runs, spots.labels, spots.stats)
        frame.results[self.name] = result
        return frame

    def collect(self, frame: Frame) -> Frame:
        """3-D mode: link this frame's components; its rows become the spots now complete.
        Once per series (one instance collects), say why the rows lack ``d``."""
        if self._note is not None:
            log.info(self._note)
            self._note = None
        result = frame.results.get(self.name)
        if self.params.mode == "3d" and result is not None:
            done = self._linker.push(frame.index, result.pop(_PARTS))
            result["rows"] = self._rows(done[select(done, **self._filters)])
        return frame

    def finish(self) -> dict[str, Any]:
        """3-D mode: the spots still open when the series ends, under ``"rows"``."""
        if self.params.mode != "3d":
            return {}
        done = self._linker.flush()
        return {"rows": self._rows(done[select(done, **self._filters)])}

    def _rows(self, stats: np.ndarray) -> dict[str, np.ndarray]:
        """The declared row columns of these spots (with ``d`` and ``inv_d2`` when declared)."""
        rows = _rows(stats)
        if "d" in self.rows:
            rows.update(resolution_columns(rows["x"], rows["y"], self._geometry))
        return rows


def _rows(stats: np.ndarray) -> dict[str, np.ndarray]:
    """Spot statistics -> the operator's row columns (bbox split into x0 ... z1)."""
    columns = spot_columns(stats)
    bbox = columns.pop("bbox")
    columns.update({name: bbox[:, i].copy() for i, name in enumerate(("x0", "x1", "y0", "y1", "z0", "z1"))})
    return {name: columns[name] for name in ROW_COLUMNS}
