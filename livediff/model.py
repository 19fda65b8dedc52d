"""The data model every layer shares: a series header, its frames and its end.

Sources decode wire messages into these objects, the pipeline passes them through
the operators and the sinks write what they carry.  Nothing here imports the rest
of livediff.

Conventions (see DESIGN.md): arrays are (row, col) in C order; a mask is boolean
with ``True`` = valid pixel; coordinates put the centre of pixel (r, c) at (r, c).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: Pixel types a detector frame may arrive in.
FRAME_DTYPES = ("uint8", "uint16", "uint32", "int32", "float32")


@dataclass(frozen=True)
class Geometry:
    """Detector geometry, as far as the series header knows it.

    Attributes
    ----------
    beam_center : (row, col) in pixels, pixel-centre origin, or None.
    pixel_size : (y, x) in metres, or None.
    distance : sample-to-detector distance in metres, or None.
    wavelength : incident wavelength in ångström, or None.
    """

    beam_center: tuple[float, float] | None = None
    pixel_size: tuple[float, float] | None = None
    distance: float | None = None
    wavelength: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "beam_center": list(self.beam_center) if self.beam_center else None,
            "pixel_size": list(self.pixel_size) if self.pixel_size else None,
            "distance": self.distance,
            "wavelength": self.wavelength,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> Geometry:
        d = d or {}
        bc, ps = d.get("beam_center"), d.get("pixel_size")
        return cls(
            beam_center=tuple(float(v) for v in bc) if bc else None,
            pixel_size=tuple(float(v) for v in ps) if ps else None,
            distance=None if d.get("distance") is None else float(d["distance"]),
            wavelength=None if d.get("wavelength") is None else float(d["wavelength"]),
        )


@dataclass(frozen=True)
class Scan:
    """Scan grid of a scanning experiment (4D-STEM, EBSD): frames fill it row by row."""

    shape: tuple[int, int]

    def position(self, index: int) -> tuple[int, int]:
        """(scan row, scan col) of frame ``index``."""
        return divmod(index, self.shape[1])


@dataclass(frozen=True)
class SeriesStart:
    """Header of a series: what every frame of it will look like.

    Attributes
    ----------
    series : series number given by the detector (or the simulator).
    shape : (rows, cols) of every frame.
    dtype : numpy dtype name of the pixels as received.
    n_frames : number of frames announced, or None when unknown.
    mask : bool array of ``shape``, True = valid pixel, or None (all valid).
    geometry : detector geometry, where known.
    scan : scan grid for scanning experiments, or None.
    count_time : exposure per frame in seconds, or None.
    saturation : count at and above which a pixel is saturated, or None.
    meta : anything else the source reported (msgpack-able).
    """

    series: int
    shape: tuple[int, int]
    dtype: str
    n_frames: int | None = None
    mask: np.ndarray | None = None
    geometry: Geometry = field(default_factory=Geometry)
    scan: Scan | None = None
    count_time: float | None = None
    saturation: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.shape) != 2 or min(self.shape) < 1:
            raise ValueError(f"frame shape must be (rows, cols) with both >= 1, got {self.shape}")
        if self.dtype not in FRAME_DTYPES:
            raise ValueError(f"pixel dtype must be one of {', '.join(FRAME_DTYPES)}, got {self.dtype!r}")
        if self.mask is not None:
            if self.mask.shape != tuple(self.shape) or self.mask.dtype != np.bool_:
                raise ValueError(
                    f"mask must be bool of shape {tuple(self.shape)}, got {self.mask.dtype} {self.mask.shape}"
                )
            self.mask.setflags(write=False)


@dataclass
class Frame:
    """One detector frame on its way through the pipeline.

    Attributes
    ----------
    series, index : series number and 0-based frame number within the series.
    data : the pixels, (rows, cols).  Transforming operators replace it.
    mask : bool array, True = valid, or None (all valid).  Moves with the data.
    timestamp : acquisition time (s since the epoch) as the source reported it.
    received : time the frame was decoded (``time.time()``), for latency.
    results : per-operator results, ``results[operator_name] = {...}``.
    raw : the pixel payload exactly as received when it was compressed (e.g. a
        bitshuffle-LZ4 blob), so a writer can store it without recompressing; None for
        uncompressed payloads.
    encoding : how ``raw`` is encoded: ``"bslz4"`` (bitshuffle-LZ4, HDF5 filter layout),
        ``"lz4"``, or ``"raw"``.
    """

    series: int
    index: int
    data: np.ndarray
    mask: np.ndarray | None = None
    timestamp: float = 0.0
    received: float = field(default_factory=time.time)
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    raw: bytes | memoryview | None = None
    encoding: str = "raw"


@dataclass(frozen=True)
class SeriesEnd:
    """End of a series.

    ``reason`` is ``"end"`` for an end message, ``"timeout"`` when none came in time,
    ``"interrupted"`` when the series was replaced by another, ``"shutdown"`` when the
    service stopped first.  ``counts`` is the source's frame accounting for the series
    (received, bad, dropped, duplicates, lost, expected), filled in by the receiver.
    """

    series: int
    reason: str = "end"
    counts: dict[str, int] = field(default_factory=dict)
