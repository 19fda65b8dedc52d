"""The NXmx description of a series file: what DIALS (``nxmx``, dxtbx), CrystFEL and viewers read.

A series file with raw frames (``[output] save_raw``) is an NXmx recording: ``/entry``
has ``definition = "NXmx"``, a source, a sample whose ``depends_on`` chain holds the
rotation axis with one angle per frame (a rotation series) or is ``"."`` (stills, grid
scans: no goniometer turns), and ``/entry/instrument`` the beam and the detector: its
``depends_on`` chain (a translation along the beam by the distance), one
NXdetector_module whose ``module_offset`` puts the corner of pixel (0, 0) at
(bx px, by py) from the beam in the NeXus (McStas) frame and whose fast and slow pixel
directions are -x and -y (so the beam falls bx, by pixels from that corner: NXmx's and
DIALS' pixel-edge origin, livediff's beam centre + 0.5), the sensor, the saturation
value, count and frame times, and ``pixel_mask`` with the detector's own bits (0 gap,
1 dead, 2 under-, 3 over-responding, 4 noisy, 8 user, 31 virtual; a source that sent only
a valid mask gives bit 0 to the pixels it masks).  Written as dials/nxmx's test files
and DECTRIS' filewriter lay them out (``/work/shared/nexus.md``).  Without raw frames
the entry keeps this description but no ``definition``: it holds no frames a program
could process as NXmx.

Each value is taken from the series header when the detector sent it, else from
``[output.instrument]`` (:class:`InstrumentSettings`), else a documented default (the
rotation axis vector), else it is left out; ``/entry/livediff/provenance`` (JSON) says
which for every value: ``"header"``, ``"config"``, ``"default"`` or ``"missing"``.

:func:`crystfel_geometry` is the single-panel CrystFEL ``.geom`` of a recording
(``crystfel_geometry(5)``: ``photon_energy``, ``clen``, ``res``, the data layout, the
panel corner at minus the beam centre, the mask).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import h5py
import numpy as np

from ..model import SeriesStart
from ..params import param

#: h c in eV Å (CODATA 2018): photon energy = HC_EV_ANGSTROM / λ
HC_EV_ANGSTROM = 12398.419843320026
#: where the detector's depends_on chain starts
DETECTOR_AXIS = "/entry/instrument/detector/transformations/translation"
_MODULE = "/entry/instrument/detector/module"


@dataclass(frozen=True)
class InstrumentSettings:
    """What the config says of the instrument where the series header is silent (``[output.instrument]``).

    A value the detector sends always wins: these fill the gaps (an EIGER sends its sensor,
    a simulator may not), and the file records which one each value came from.  The geometry
    keys are the file's own: operators take theirs from ``[operators.NAME]``.
    """

    beam_center: tuple[float, float] | None = param(None, doc="(row, col) px, pixel-centre origin")
    pixel_size: float | tuple[float, float] | None = param(None, gt=0, doc="m, one number or (y, x)")
    distance: float | None = param(None, gt=0, doc="sample-detector distance, m")
    wavelength: float | None = param(None, gt=0, doc="Å")
    sensor_material: str | None = param(None, doc="e.g. 'Si', 'CdTe', 'GaAs' (DIALS needs one)")
    sensor_thickness: float | None = param(None, gt=0, doc="m (DIALS needs one)")
    saturation_value: int | None = param(None, ge=0, doc="counts at and above which a pixel is saturated")
    count_time: float | None = param(None, gt=0, doc="exposure per frame, s")
    rotation: tuple[float, float] | None = param(None, doc="(start, increment) in degrees of a rotation series "
                                                           "whose header sends no goniometer")
    rotation_axis: str = param("omega", doc="name of the axis 'rotation' turns")
    rotation_vector: tuple[float, float, float] = param(
        (-1.0, 0.0, 0.0), doc="the rotation axis in the NeXus (McStas) frame: +z along the beam, +y up; "
                              "(-1, 0, 0) is the usual horizontal omega of DECTRIS and DLS files")
    probe: Literal["x-ray", "electron"] = param("x-ray", doc="NXsource probe; 'electron' makes DIALS use its "
                                                            "electron-diffraction reader")
    instrument_name: str = param("livediff", doc="/entry/instrument/name")


@dataclass
class Described:
    """The values the file records, each with where it came from (see the module docstring)."""

    values: dict[str, Any] = field(default_factory=dict)
    origin: dict[str, str] = field(default_factory=dict)

    def take(self, name: str, header: Any, config: Any, default: Any = None) -> None:
        for value, origin in ((header, "header"), (config, "config"), (default, "default")):
            if value is not None:
                self.values[name], self.origin[name] = value, origin
                return
        self.origin[name] = "missing"

    def get(self, name: str) -> Any:
        return self.values.get(name)

    @property
    def geometry_complete(self) -> bool:
        return all(self.get(n) is not None for n in ("beam_center", "pixel_size", "distance"))


def describe(start: SeriesStart, settings: InstrumentSettings) -> Described:
    """The instrument ``start`` and ``settings`` describe: header first, then config, then defaults."""
    g, ins, s = start.geometry, start.instrument, settings
    d = Described()
    config_pixel = s.pixel_size if s.pixel_size is None or np.ndim(s.pixel_size) else (s.pixel_size, s.pixel_size)
    d.take("beam_center", g.beam_center, s.beam_center)
    d.take("pixel_size", g.pixel_size, None if config_pixel is None else tuple(config_pixel))
    d.take("distance", g.distance, s.distance)
    d.take("wavelength", g.wavelength, s.wavelength)
    d.take("count_time", start.count_time, s.count_time)
    d.take("frame_time", ins.frame_time, None)
    d.take("saturation_value", start.saturation, s.saturation_value)
    d.take("sensor_material", ins.sensor_material, s.sensor_material)
    d.take("sensor_thickness", ins.sensor_thickness, s.sensor_thickness)
    d.take("description", ins.description, None)
    d.take("serial_number", ins.serial_number, None)
    d.take("detector_translation", ins.detector_translation, None)
    rotation = ins.rotation
    d.take("rotation", rotation, None if s.rotation is None or s.rotation[1] == 0 else (s.rotation_axis, *s.rotation))
    d.take("rotation_vector", None, None, s.rotation_vector)
    flags = ins.pixel_flags if ins.pixel_flags is not None and ins.pixel_flags.shape == tuple(start.shape) else None
    if flags is None and start.mask is not None:   # only validity was sent: bit 0 for the pixels masked
        flags = (~start.mask).astype(np.uint32)
    d.take("pixel_mask", flags, None)
    d.take("probe", None, None, s.probe)
    d.take("instrument_name", None, None, s.instrument_name)
    return d


class NXmxWriter:
    """Writes the NXmx groups of one series file at its start (SWMR: everything exists from then on)
    and sizes the per-frame angles at its end."""

    def __init__(self, entry: h5py.Group, start: SeriesStart, settings: InstrumentSettings, *, raw: bool) -> None:
        self.d = describe(start, settings)
        self.start = start
        if raw:
            entry["definition"] = "NXmx"
        source = _group(entry, "source", "NXsource")
        source["name"] = self.d.get("instrument_name")
        source["probe"] = self.d.get("probe")
        self.angles = self._sample(entry)
        inst = _group(entry, "instrument", "NXinstrument")
        inst["name"] = self.d.get("instrument_name")
        inst["time_zone"] = time.strftime("%z")
        if self.d.get("wavelength") is not None:
            beam = _group(inst, "beam", "NXbeam")
            _value(beam, "incident_wavelength", self.d.get("wavelength"), "angstrom")
        self._detector(_group(inst, "detector", "NXdetector"))

    @property
    def provenance(self) -> str:
        """Where each value came from, as JSON: ``{"distance": "header", "sensor_material": "config", ...}``."""
        return json.dumps(self.d.origin, sort_keys=True)

    def _sample(self, entry: h5py.Group) -> tuple[h5py.Dataset, h5py.Dataset] | None:
        sample = _group(entry, "sample", "NXsample")
        sample["name"] = str(self.start.meta.get("sample", "unknown"))
        rotation = self.d.get("rotation")
        if rotation is None:  # stills, grid scans: no goniometer turns (NXmx: depends_on ".")
            sample["depends_on"] = "."
            return None
        axis, first, step = rotation
        path = f"/entry/sample/transformations/{axis}"
        sample["depends_on"] = path
        group = _group(sample, "transformations", "NXtransformations")
        n = self.start.n_frames or 0
        angles = group.create_dataset(axis, data=first + step * np.arange(n), maxshape=(None,), chunks=(4096,))
        ends = group.create_dataset(f"{axis}_end", data=first + step * np.arange(1, n + 1), maxshape=(None,),
                                    chunks=(4096,))
        angles.attrs.update({"transformation_type": "rotation", "vector": self.d.get("rotation_vector"),
                             "units": "deg", "depends_on": "."})
        ends.attrs["units"] = "deg"
        _value(group, f"{axis}_increment_set", step, "deg")
        return angles, ends

    def size(self, n: int) -> None:
        """Give the rotation ``n`` angles: one per frame of ``/entry/data/data``."""
        if self.angles is None or self.angles[0].shape[0] == n:
            return
        _, first, step = self.d.get("rotation")
        for k, ds in enumerate(self.angles):
            ds.resize((n,))
            ds[...] = first + step * np.arange(k, n + k)

    def _detector(self, det: h5py.Group) -> None:
        d, start = self.d, self.start
        flags = d.get("pixel_mask")
        if flags is not None:
            det.create_dataset("pixel_mask", data=flags, dtype="u4", compression="gzip")
        for name, units in (("sensor_material", None), ("sensor_thickness", "m"), ("saturation_value", None),
                            ("count_time", "s"), ("frame_time", "s"), ("description", None),
                            ("serial_number", None)):
            if d.get(name) is not None:
                _value(det, name, d.get(name), units)
        if np.dtype(start.dtype).kind == "u":
            det["bit_depth_readout"] = 8 * np.dtype(start.dtype).itemsize
        if d.get("pixel_size") is not None:
            _value(det, "y_pixel_size", d.get("pixel_size")[0], "m")
            _value(det, "x_pixel_size", d.get("pixel_size")[1], "m")
        if d.get("beam_center") is not None:  # NXmx counts from the pixel corner; livediff from its centre
            _value(det, "beam_center_y", d.get("beam_center")[0] + 0.5, "pixel")
            _value(det, "beam_center_x", d.get("beam_center")[1] + 0.5, "pixel")
        if d.get("distance") is not None:
            _value(det, "distance", d.get("distance"), "m")
            det["distance_derived"] = False   # what the detector or the config said, not a refinement
        if d.get("detector_translation") is not None:
            vendor = _group(det, "detectorSpecific", "NXcollection")
            _value(vendor, "detector_translation", np.asarray(d.get("detector_translation")), "m")
        if d.geometry_complete:
            self._chain(det)

    def _chain(self, det: h5py.Group) -> None:
        """The detector's depends_on chain and its module (nexus.md: minimal single-module detector)."""
        (by, bx), (py, px) = (v + 0.5 for v in self.d.get("beam_center")), self.d.get("pixel_size")
        det["depends_on"] = DETECTOR_AXIS
        axes = _group(det, "transformations", "NXtransformations")
        _axis(axes, "translation", self.d.get("distance"), vector=(0, 0, 1), depends_on=".")
        module = _group(det, "module", "NXdetector_module")
        module["data_origin"] = np.array([0, 0], dtype=np.int64)
        module["data_size"] = np.array(self.start.shape, dtype=np.int64)
        _axis(module, "module_offset", 0.0, vector=(1, 0, 0), offset=(bx * px, by * py, 0.0),
              depends_on=DETECTOR_AXIS)
        _axis(module, "fast_pixel_direction", px, vector=(-1, 0, 0), offset=(0.0, 0.0, 0.0),
              depends_on=f"{_MODULE}/module_offset")
        _axis(module, "slow_pixel_direction", py, vector=(0, -1, 0), offset=(0.0, 0.0, 0.0),
              depends_on=f"{_MODULE}/module_offset")


def crystfel_geometry(described: Described, shape: tuple[int, int], *, data: str = "/entry/data/data",
                      mask: str = "/entry/instrument/detector/pixel_mask") -> str | None:
    """The single-panel CrystFEL geometry of a recording, or None when the geometry is incomplete.

    ``p0/fs = x``, ``p0/ss = y`` with the panel corner at minus the beam centre measured from
    the corner of pixel (0, 0) (CrystFEL, like NXmx, counts from the corner); ``res`` is pixels
    per metre (square pixels: the x size); the mask is the detector's ``pixel_mask``, any bit
    set meaning bad (``mask_bad = 0xffffffff``).
    """
    d = described
    if not d.geometry_complete or d.get("wavelength") is None:
        return None
    (by, bx), (_, px) = (v + 0.5 for v in d.get("beam_center")), d.get("pixel_size")
    energy = (f"wavelength = {d.get('wavelength'):.8g} A" if d.get("probe") == "electron"
              else f"photon_energy = {HC_EV_ANGSTROM / d.get('wavelength'):.8g} eV")
    lines = ["; CrystFEL geometry of a livediff recording (one panel, pixel-corner origin)",
             energy, f"clen = {d.get('distance'):.8g} m", f"res = {1.0 / px:.8g}", "adu_per_photon = 1",
             f"data = {data}", "dim0 = %", "dim1 = ss", "dim2 = fs"]
    if d.get("pixel_mask") is not None:
        lines += [f"mask = {mask}", "mask_good = 0x0", "mask_bad = 0xffffffff"]
    lines += ["", "p0/min_fs = 0", f"p0/max_fs = {shape[1] - 1}", "p0/min_ss = 0", f"p0/max_ss = {shape[0] - 1}",
              "p0/fs = x", "p0/ss = y", f"p0/corner_x = {-bx:.8g}", f"p0/corner_y = {-by:.8g}", ""]
    return "\n".join(lines)


def _group(parent: h5py.Group, name: str, nx_class: str) -> h5py.Group:
    group = parent.require_group(name)
    group.attrs["NX_class"] = nx_class
    return group


def _value(group: h5py.Group, name: str, value: Any, units: str | None) -> h5py.Dataset:
    group[name] = value
    if units:
        group[name].attrs["units"] = units
    return group[name]


def _axis(group: h5py.Group, name: str, value: float, *, vector: tuple[float, float, float], depends_on: str,
          offset: tuple[float, float, float] | None = None) -> None:
    ds = _value(group, name, value, "m")
    ds.attrs.update({"transformation_type": "translation", "vector": np.asarray(vector, dtype=np.float64),
                     "depends_on": depends_on})
    if offset is not None:
        ds.attrs.update({"offset": np.asarray(offset, dtype=np.float64), "offset_units": "m"})
