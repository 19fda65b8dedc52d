"""Geometry the config supplies, and the per-spot resolution columns it makes possible.

:class:`GeometryParams` holds the optional geometry keys an operator accepts
(``beam_center``, ``distance``, ``wavelength``, ``pixel_size``); each one given replaces
the series header's value (:meth:`livediff.model.Geometry.with_overrides`: config
overrides header).  ``spots`` and ``mx`` both take them.  :func:`resolution_columns`
turns spot centroids into ``d`` and ``inv_d2`` with :meth:`livediff.model.Geometry.d`,
the one place the d maths lives.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from ..model import Geometry
from ..params import param

__all__ = ["RESOLUTION_COLUMNS", "GeometryParams", "resolution_columns"]

#: the columns :func:`resolution_columns` adds to spot rows
RESOLUTION_COLUMNS = {"d": "f8", "inv_d2": "f8"}


@dataclass(frozen=True)
class GeometryParams:
    """Optional geometry keys: each one given overrides the series header's value."""

    beam_center: tuple[float, float] | None = param(None, doc="(row, col) px, pixel-centre origin")
    distance: float | None = param(None, gt=0, doc="sample-detector distance, m")
    wavelength: float | None = param(None, gt=0, doc="wavelength, Å")
    pixel_size: float | tuple[float, float] | None = param(None, gt=0, doc="m, one number or (y, x)")

    @property
    def overrides_geometry(self) -> bool:
        """Whether any geometry key is given."""
        return any(v is not None for v in (self.beam_center, self.distance, self.wavelength, self.pixel_size))

    def geometry(self, header: Geometry) -> Geometry:
        """The series header's geometry with the keys given here replacing its fields."""
        return header.with_overrides(beam_center=self.beam_center, pixel_size=self.pixel_size,
                                     distance=self.distance, wavelength=self.wavelength)


def resolution_columns(x: ArrayLike, y: ArrayLike, geometry: Geometry) -> dict[str, np.ndarray]:
    """``d`` (Å) and ``inv_d2`` = 1/d² (Å⁻²) at spot centroids ``(y, x)`` (pixel-centre origin).

    Parameters
    ----------
    x, y : centroid columns and rows, px.
    geometry : a complete geometry (all four fields).

    Returns
    -------
    dict of float64 arrays: ``d`` (inf at the beam centre) and ``inv_d2`` (0 there).

    Raises
    ------
    ValueError
        If the geometry lacks a field (:meth:`livediff.model.Geometry.d` names it).
    """
    d = geometry.d(y, x)
    return {"d": d, "inv_d2": 1.0 / (d * d)}
