"""The data model every layer shares: a series header, its frames and its end.

Sources decode wire messages into these objects, the pipeline passes them through
the operators and the sinks write what they carry.  Nothing here imports the rest
of livediff.  :class:`Geometry` holds the geometry maths every operator shares (radius,
2θ, q, d, and the "config overrides header" rule).

Conventions (see DESIGN.md): arrays are (row, col) in C order; a mask is boolean
with ``True`` = valid pixel; coordinates put the centre of pixel (r, c) at (r, c).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from collections.abc import Callable
from typing import Any, ClassVar, Protocol

import numpy as np
from numpy.typing import ArrayLike
from scipy import constants

#: Pixel types a detector frame may arrive in.
FRAME_DTYPES = ("uint8", "uint16", "uint32", "int32", "float32")


def electron_wavelength(voltage_kv: float) -> float:
    """Relativistic wavelength of electrons accelerated through ``voltage_kv`` kilovolts, in Å.

    Parameters
    ----------
    voltage_kv : accelerating voltage in kV, > 0.

    Returns
    -------
    float : the wavelength in ångström (0.02508 Å at 200 kV).

    Raises
    ------
    ValueError
        If the voltage is not a positive number.

    Notes
    -----
    λ = h / sqrt(2 m0 e V (1 + e V / (2 m0 c²))), with CODATA constants (scipy.constants).
    """
    if not voltage_kv > 0:
        raise ValueError(f"accelerating voltage must be > 0 kV, got {voltage_kv}")
    ev = constants.e * voltage_kv * 1e3
    m0 = constants.m_e
    return constants.h / math.sqrt(2.0 * m0 * ev * (1.0 + ev / (2.0 * m0 * constants.c ** 2))) * 1e10


@dataclass(frozen=True)
class Geometry:
    """Detector geometry, as far as the series header knows it, and its maths.

    Attributes
    ----------
    beam_center : (row, col) in pixels, pixel-centre origin, or None.
    pixel_size : (y, x) in metres, or None.
    distance : sample-to-detector distance in metres, or None.
    wavelength : incident wavelength in ångström, or None.

    Notes
    -----
    Units: positions in pixels with the centre of pixel (r, c) at (r, c); metric lengths
    in metres; wavelength and d in Å; q = 2π/d = 4π sin(θ)/λ in 1/Å; the scattering angle
    2θ is returned in degrees (:meth:`two_theta`) and used in radians internally.

    The detector is flat and normal to the beam, which meets it at ``beam_center``:
    2θ = atan(r / L) with r the metric distance from the beam centre and L ``distance``.
    Detector tilt is not modelled; it would enter in :meth:`_two_theta_rad` (positions ->
    2θ), the one place positions become angles.  The radius forms (``*_at_radius``) hold
    only for an untilted detector with square pixels.

    Each method names the fields it needs; a ValueError lists those that are None.
    """

    beam_center: tuple[float, float] | None = None
    pixel_size: tuple[float, float] | None = None
    distance: float | None = None
    wavelength: float | None = None

    #: The fields that turn a radius in pixels into 2θ, q and d.
    SCALE_FIELDS: ClassVar[tuple[str, ...]] = ("pixel_size", "distance", "wavelength")

    # ------------------------------------------------------------------ completeness
    def missing(self, *fields: str) -> tuple[str, ...]:
        """The names among ``fields`` (default: all four) whose value is None, in that order.

        Raises
        ------
        ValueError
            For a name that is not a geometry field.
        """
        names = fields or ("beam_center", *self.SCALE_FIELDS)
        unknown = [n for n in names if n not in ("beam_center", *self.SCALE_FIELDS)]
        if unknown:
            raise ValueError(f"not geometry fields: {', '.join(unknown)} (expected beam_center, "
                             f"{', '.join(self.SCALE_FIELDS)})")
        return tuple(n for n in names if getattr(self, n) is None)

    def _require(self, what: str, *fields: str) -> None:
        absent = self.missing(*fields)
        if absent:
            raise ValueError(f"geometry: {what} needs {', '.join(fields)}; missing: {', '.join(absent)} "
                             f"(give them in the config or the series header)")

    def with_overrides(self, *, beam_center: tuple[float, float] | None = None,
                       pixel_size: float | tuple[float, float] | None = None,
                       distance: float | None = None, wavelength: float | None = None) -> Geometry:
        """This geometry with each non-None argument replacing its field: config overrides header.

        Parameters
        ----------
        beam_center : (row, col) px, pixel-centre origin.
        pixel_size : (y, x) m, or one number for square pixels.
        distance : sample-detector distance, m.
        wavelength : wavelength, Å.

        Returns
        -------
        Geometry : a new geometry; ``self`` is unchanged.

        Raises
        ------
        ValueError
            If ``beam_center`` or ``pixel_size`` (as a pair) does not have two values.
        """
        if pixel_size is not None and np.ndim(pixel_size) == 0:
            pixel_size = (pixel_size, pixel_size)
        given = {"beam_center": beam_center, "pixel_size": pixel_size}
        for key, value in given.items():
            if value is not None and len(value) != 2:
                raise ValueError(f"{key} must be two numbers (row/y, col/x), got {tuple(value)}")
        given = {k: tuple(float(v) for v in value) for k, value in given.items() if value is not None}
        given |= {k: float(v) for k, v in (("distance", distance), ("wavelength", wavelength)) if v is not None}
        return replace(self, **given)

    def square_pixel_size(self) -> float:
        """The pixel size in metres when pixels are square (y and x within 1e-6 relative).

        Raises
        ------
        ValueError
            If ``pixel_size`` is None or its y and x differ.
        """
        self._require("a square pixel size", "pixel_size")
        y, x = self.pixel_size
        if not math.isclose(y, x, rel_tol=1e-6):
            raise ValueError(f"geometry: pixels are not square, (y, x) = {self.pixel_size} m; a radius in pixels "
                             f"needs square pixels (use positions (rows, cols), or override pixel_size)")
        return float(y)

    # ------------------------------------------------------------------ positions (rows, cols)
    def radius(self, rows: ArrayLike, cols: ArrayLike) -> np.ndarray:
        """Distance from the beam centre in pixels of positions ``(rows, cols)``.

        Parameters
        ----------
        rows, cols : positions in pixels, pixel-centre origin; broadcast together (e.g.
            ``np.ogrid[:n_rows, :n_cols]`` for a whole frame, or spot centroids).

        Returns
        -------
        float64 array : sqrt((row - row_c)² + (col - col_c)²); 0 at the beam centre.
        Needs ``beam_center``.
        """
        self._require("radius", "beam_center")
        r0, c0 = self.beam_center
        return np.hypot(np.asarray(rows, dtype=np.float64) - r0, np.asarray(cols, dtype=np.float64) - c0)

    def radius_m(self, rows: ArrayLike, cols: ArrayLike) -> np.ndarray:
        """Distance from the beam centre in metres on the detector, with (y, x) pixel sizes.

        See :meth:`radius` for the parameters.  Returns sqrt(((row - row_c) p_y)² +
        ((col - col_c) p_x)²), float64.  Needs ``beam_center``, ``pixel_size``.
        """
        self._require("radius_m", "beam_center", "pixel_size")
        return self._radius_m(rows, cols)

    def _radius_m(self, rows: ArrayLike, cols: ArrayLike) -> np.ndarray:
        (r0, c0), (py, px) = self.beam_center, self.pixel_size
        return np.hypot((np.asarray(rows, dtype=np.float64) - r0) * py, (np.asarray(cols, dtype=np.float64) - c0) * px)

    def _two_theta_rad(self, rows: ArrayLike, cols: ArrayLike) -> np.ndarray:
        """2θ in radians at positions: flat detector normal to the beam (tilt would go here)."""
        return np.arctan(self._radius_m(rows, cols) / self.distance)

    def two_theta(self, rows: ArrayLike, cols: ArrayLike) -> np.ndarray:
        """Scattering angle 2θ in degrees at positions ``(rows, cols)``: atan(r / L).

        See :meth:`radius` for the parameters.  Needs ``beam_center``, ``pixel_size``,
        ``distance``.
        """
        self._require("two_theta", "beam_center", "pixel_size", "distance")
        return np.degrees(self._two_theta_rad(rows, cols))

    def q(self, rows: ArrayLike, cols: ArrayLike) -> np.ndarray:
        """Scattering vector q = 4π sin(θ) / λ in 1/Å at positions ``(rows, cols)``.

        See :meth:`radius` for the parameters.  Needs all four fields.
        """
        self._require("q", "beam_center", *self.SCALE_FIELDS)
        return self._q(self._two_theta_rad(rows, cols))

    def d(self, rows: ArrayLike, cols: ArrayLike) -> np.ndarray:
        """Resolution d = λ / (2 sin θ) in Å at positions ``(rows, cols)``; inf at the beam centre.

        See :meth:`radius` for the parameters.  Needs all four fields.  q d = 2π.
        """
        self._require("d", "beam_center", *self.SCALE_FIELDS)
        return self._d(self._two_theta_rad(rows, cols))

    # ------------------------------------------------------------------ radii (square pixels)
    def _two_theta_at_radius_rad(self, radius_px: ArrayLike) -> np.ndarray:
        return np.arctan(np.asarray(radius_px, dtype=np.float64) * self.square_pixel_size() / self.distance)

    def two_theta_at_radius(self, radius_px: ArrayLike) -> np.ndarray:
        """Scattering angle 2θ in degrees at ``radius_px`` pixels from the beam centre.

        Parameters
        ----------
        radius_px : distances from the beam centre in pixels (e.g. bin-centre radii).

        Raises
        ------
        ValueError
            If ``pixel_size`` or ``distance`` is None, or the pixels are not square.
        """
        self._require("two_theta_at_radius", "pixel_size", "distance")
        return np.degrees(self._two_theta_at_radius_rad(radius_px))

    def q_at_radius(self, radius_px: ArrayLike) -> np.ndarray:
        """q = 4π sin(θ) / λ in 1/Å at ``radius_px`` pixels from the beam centre.

        See :meth:`two_theta_at_radius`; needs ``pixel_size`` (square), ``distance`` and
        ``wavelength``.
        """
        self._require("q_at_radius", *self.SCALE_FIELDS)
        return self._q(self._two_theta_at_radius_rad(radius_px))

    def d_at_radius(self, radius_px: ArrayLike) -> np.ndarray:
        """d = λ / (2 sin θ) in Å at ``radius_px`` pixels from the beam centre; inf at radius 0.

        See :meth:`q_at_radius`.
        """
        self._require("d_at_radius", *self.SCALE_FIELDS)
        return self._d(self._two_theta_at_radius_rad(radius_px))

    def _q(self, two_theta_rad: np.ndarray) -> np.ndarray:
        return 4.0 * np.pi * np.sin(two_theta_rad / 2.0) / self.wavelength

    def _d(self, two_theta_rad: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore"):
            return self.wavelength / (2.0 * np.sin(two_theta_rad / 2.0))

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        return {
            "beam_center": list(self.beam_center) if self.beam_center else None,
            "pixel_size": list(self.pixel_size) if self.pixel_size else None,
            "distance": self.distance,
            "wavelength": self.wavelength,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> Geometry:
        """The inverse of :meth:`to_dict`, for values already checked: the model does not validate
        what arrives from a network (the sources do, e.g. :mod:`livediff.sources.native`)."""
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
    """Scan grid of a scanning experiment (4D-STEM, EBSD): where each frame was taken.

    Attributes
    ----------
    shape : (rows, cols) of probe positions.
    order : ``"raster"`` (every line left to right) or ``"serpentine"`` (odd lines right to
        left, as a scan that does not fly back).
    flyback : frames the detector records at the end of every line while the beam flies
        back; they belong to no position.
    step : distance between neighbouring positions, in ``unit``, or None.
    unit : unit of ``step`` (e.g. ``"nm"``), or None.

    Frame ``i`` is the ``i``-th frame of the scan; line ``i // (cols + flyback)`` holds it.
    """

    shape: tuple[int, int]
    order: str = "raster"
    flyback: int = 0
    step: float | None = None
    unit: str | None = None

    def __post_init__(self) -> None:
        if len(self.shape) != 2 or min(self.shape) < 1:
            raise ValueError(f"scan shape must be (rows, cols) with both >= 1, got {self.shape}")
        if self.order not in ("raster", "serpentine"):
            raise ValueError(f"scan order must be 'raster' or 'serpentine', got {self.order!r}")
        if self.flyback < 0:
            raise ValueError(f"scan flyback must be >= 0 frames, got {self.flyback}")

    @property
    def n_frames(self) -> int:
        """Frames the scan takes, fly-back frames included."""
        return self.shape[0] * (self.shape[1] + self.flyback)

    def position(self, index: int) -> tuple[int, int] | None:
        """(scan row, scan col) of frame ``index``; None for a fly-back frame or one beyond the scan."""
        rows, cols = self.shape
        line, k = divmod(index, cols + self.flyback)
        if index < 0 or line >= rows or k >= cols:
            return None
        return line, (cols - 1 - k if self.order == "serpentine" and line % 2 else k)

    def to_dict(self) -> dict[str, Any]:
        return {"shape": list(self.shape), "order": self.order, "flyback": self.flyback, "step": self.step,
                "unit": self.unit}


@dataclass(frozen=True)
class Instrument:
    """What a detector says about itself and the goniometer, beyond the geometry.

    Attributes
    ----------
    sensor_material : e.g. ``"Si"``, ``"CdTe"``, or None.
    sensor_thickness : metres, or None.
    frame_time : seconds from one frame's start to the next, or None.
    description : the detector's name and model, or None.
    serial_number : or None.
    goniometer : ``(axis, start, increment)`` per goniometer axis the header gave, degrees
        and degrees per frame (DECTRIS ``goniometer`` / ``omega_start``, ``omega_increment``).
    detector_translation : (x, y, z) in metres as DECTRIS Stream v2 sends it, or None.
    pixel_flags : the detector's ``pixel_mask`` as received, uint32 (row, col), 0 = good,
        nonzero bits saying why not (NXmx: 0 gap, 1 dead, 2 under-, 3 over-responding,
        4 noisy, 8 user, 31 virtual), or None.  :attr:`SeriesStart.mask` is ``flags == 0``
        (and what else the source masks); the flags describe the detector's frames only,
        so operators that reshape frames leave them as they are.
    """

    sensor_material: str | None = None
    sensor_thickness: float | None = None
    frame_time: float | None = None
    description: str | None = None
    serial_number: str | None = None
    goniometer: tuple[tuple[str, float, float], ...] = ()
    detector_translation: tuple[float, float, float] | None = None
    pixel_flags: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.pixel_flags is not None:
            if self.pixel_flags.ndim != 2 or self.pixel_flags.dtype != np.uint32:
                raise ValueError(f"pixel_flags must be 2-D uint32, got {self.pixel_flags.dtype} "
                                 f"{self.pixel_flags.shape}")
            self.pixel_flags.setflags(write=False)

    @property
    def rotation(self) -> tuple[str, float, float] | None:
        """``(axis, start, increment)`` of the goniometer axis that turns during the series (the
        first with a nonzero increment), or None for stills and scans."""
        return next((axis for axis in self.goniometer if axis[2] != 0), None)

    def to_dict(self) -> dict[str, Any]:
        """Every field but :attr:`pixel_flags`, as plain values (msgpack / JSON)."""
        return {"sensor_material": self.sensor_material, "sensor_thickness": self.sensor_thickness,
                "frame_time": self.frame_time, "description": self.description,
                "serial_number": self.serial_number, "goniometer": [list(a) for a in self.goniometer],
                "detector_translation": None if self.detector_translation is None
                else list(self.detector_translation)}

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None, pixel_flags: np.ndarray | None = None) -> Instrument:
        """The inverse of :meth:`to_dict`, for values already checked (as :meth:`Geometry.from_dict`)."""
        d = d or {}
        translation = d.get("detector_translation")
        return cls(sensor_material=d.get("sensor_material"), sensor_thickness=d.get("sensor_thickness"),
                   frame_time=d.get("frame_time"), description=d.get("description"),
                   serial_number=d.get("serial_number"),
                   goniometer=tuple((str(n), float(s), float(i)) for n, s, i in d.get("goniometer") or ()),
                   detector_translation=None if translation is None else tuple(float(v) for v in translation),
                   pixel_flags=pixel_flags)


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
    instrument : what the detector says about itself and the goniometer (sensor,
        goniometer angles, its pixel mask flags as received).
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
    instrument: Instrument = field(default_factory=Instrument)
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


@dataclass(frozen=True)
class Encoded:
    """A frame's pixels still compressed, as they arrived: what a source hands on instead of pixels.

    Sources check the framing (sizes, block lengths) of a compressed payload and leave the
    decompression to the worker that processes the frame (:meth:`Frame.decode`).

    Attributes
    ----------
    encoding : ``"bslz4"`` (bitshuffle-LZ4) or ``"lz4"``, both in the HDF5 filter chunk
        layout (``livediff.sources.codecs``).
    buffer : the payload as received (bytes-like, a view of the message where possible).
    shape : (rows, cols) it decodes to.
    dtype : the pixel type it decodes to, one of :data:`FRAME_DTYPES`.
    """

    encoding: str
    buffer: bytes | memoryview | np.ndarray
    shape: tuple[int, int]
    dtype: str

    @property
    def nbytes(self) -> int:
        """Bytes of the decoded pixels (rows x cols x itemsize)."""
        return self.shape[0] * self.shape[1] * np.dtype(self.dtype).itemsize


#: decode(payload) -> pixels: the codec executors and sinks are handed (``livediff.sources.codecs.decode_payload``);
#: it raises ``livediff.errors.DecodeError`` on a corrupt payload
Codec = Callable[[Encoded], np.ndarray]


class Decoding(Protocol):
    """A compressed frame's pixels, decoded as a chain's one pass over the frame reads its rows.

    The pass calls ``advance`` (a C-callable function: numba code can call it with no
    Python in between) before it reads each row, so each block of the payload is decoded
    into the frame while that part of the frame is in cache, then reads the decoded row;
    :meth:`finish` decodes whatever the pass left and reports a corrupt payload.  Made by a
    :class:`RowDecoder` (``livediff.sources.codecs.BitshuffleRows``).

    Attributes
    ----------
    pixels : (rows, cols), native byte order: the buffer ``advance`` fills, row after row.
    advance : ``advance(state, src, dst, scratch, upto) -> code`` on ``args``' arrays' data:
        decode until the first ``upto`` bytes of ``dst`` (the pixels' bytes) hold pixels;
        0 on success, otherwise an error that :meth:`finish` reports.
    args : (state, src, dst, scratch), the arrays ``advance`` takes the data of.
    """

    pixels: np.ndarray
    advance: Any
    args: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]

    def finish(self) -> np.ndarray:
        """Decode what is left and check it: the pixels.  Raises ``livediff.errors.DecodeError``
        when the payload is corrupt (its well-framed blocks do not decode)."""


class RowDecoder(Protocol):
    """Decodes compressed frames row by row for a chain whose first pass reads them so
    (``livediff.sources.codecs.BitshuffleRows``); executors are handed one."""

    def __call__(self, payload: Encoded) -> Decoding | None:
        """A :class:`Decoding` of ``payload``, or None when it is decoded whole (its encoding
        is not one decoded row by row)."""

    def sample(self, pixels: np.ndarray) -> Encoded:
        """``pixels`` encoded as this decoder decodes row by row: to compile the kernels a
        chain runs on such frames before a series starts."""


@dataclass
class Frame:
    """One detector frame on its way through the pipeline.

    A frame that arrived compressed is decoded late: the source checks the payload's
    framing and passes it on as ``payload`` with ``data`` None; the executor decodes it
    (:meth:`decode`) on the worker that processes the frame, so operators always see
    ``data``, and a corrupt payload fails that frame alone.  An uncompressed frame arrives
    with ``data`` (a view of the message) and no ``payload``.

    Attributes
    ----------
    series, index : series number and 0-based frame number within the series.
    data : the pixels, (rows, cols), or None while ``payload`` is not decoded yet.
        Transforming operators replace it.
    mask : bool array, True = valid, or None (all valid).  Moves with the data.
    timestamp : acquisition time (s since the epoch) as the source reported it.
    received : time the frame was received (``time.time()``), for latency.
    results : per-operator results, ``results[operator_name] = {...}``.
    payload : the pixels exactly as received when they came compressed (:class:`Encoded`),
        kept after decoding so a writer can store them without recompressing; None for
        uncompressed frames.
    decoding : the payload being decoded row by row by the chain's first pass (:class:`Decoding`),
        set by the executor instead of decoding the frame first; None otherwise.
    position : (row, col) of the frame in the series' scan when the source sent it
        explicitly; None = ``scan.position(index)``.
    seq : the frame's place in the series in arrival order (0 for the first frame to
        reach the chain), set by the executor; -1 before.
    shared : what the frame contributes to operators' series-wide state, by operator
        label (see ``livediff.operators.base``); emptied once folded.
    epoch : the configuration epoch the frame was processed under (0: the configuration the
        service started with; each live change adds one), set by the run loop.
    """

    series: int
    index: int
    data: np.ndarray | None
    mask: np.ndarray | None = None
    timestamp: float = 0.0
    received: float = field(default_factory=time.time)
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    payload: Encoded | None = None
    position: tuple[int, int] | None = None
    seq: int = -1
    shared: dict[str, Any] = field(default_factory=dict)
    epoch: int = 0
    decoding: Decoding | None = None

    def decode(self, codec: Codec | None) -> np.ndarray:
        """The pixels, decoding them into ``data`` first if not done yet: the rest of a row-by-row
        :attr:`decoding`, or ``payload`` with ``codec``.

        Raises
        ------
        ValueError
            Neither pixels nor a payload, or a payload and no codec to decode it with.
        livediff.errors.DecodeError
            From ``codec``: the payload is corrupt.
        """
        if self.data is None and self.decoding is not None:
            self.data = self.decoding.finish()
            self.decoding = None
        if self.data is None:
            if self.payload is None:
                raise ValueError(f"frame {self.index} of series {self.series} has neither pixels nor a payload")
            if codec is None:
                raise ValueError(f"frame {self.index} of series {self.series} arrived {self.payload.encoding}-"
                                 "compressed and no codec was given to decode it")
            self.data = codec(self.payload)
        return self.data


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
