"""NXmx metadata of recorded files -> livediff's units and conventions (see :mod:`.series`).

Each reader takes an h5py group (or the file) and returns a value in livediff's units,
or None when the file does not hold it; units the file names are converted, absent units
are NXmx's defaults.
"""
from __future__ import annotations

import logging
import re
from typing import Any

import h5py
import numpy as np

log = logging.getLogger(__name__)

EXTRA_MASK = re.compile(r"pixel_mask_\d+")

LENGTH_M = {"m": 1.0, "metre": 1.0, "meter": 1.0, "metres": 1.0, "meters": 1.0, "cm": 1e-2, "mm": 1e-3,
             "millimetre": 1e-3, "millimeter": 1e-3, "um": 1e-6, "µm": 1e-6, "μm": 1e-6, "micron": 1e-6,
             "microns": 1e-6, "micrometre": 1e-6, "micrometer": 1e-6, "nm": 1e-9, "angstrom": 1e-10,
             "angstroms": 1e-10, "å": 1e-10, "a": 1e-10}
TIME_S = {"s": 1.0, "sec": 1.0, "second": 1.0, "seconds": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6,
           "μs": 1e-6, "ns": 1e-9}
PIXELS = ("pixel", "pixels", "px")


def number(ds: h5py.Dataset, where: str) -> float:
    values = np.ravel(ds[()])
    if values.size == 0 or values.dtype.kind not in "iuf":
        raise ValueError(f"{where}: {ds.name} must be a number, got {values.dtype} {values.shape}")
    if values.size > 1:
        log.debug("%s: %s has %d values, the first is used", where, ds.name, values.size)
    return float(values[0])


def units_of(ds: h5py.Dataset, default: str | None) -> str | None:
    units = ds.attrs.get("units", default)
    if isinstance(units, bytes):
        units = units.decode()
    return None if units is None else str(units).strip()


def quantity(group: h5py.Group | None, names: tuple[str, ...], table: dict[str, float] | None,
              default: str | None, where: str) -> float | None:
    """The first of ``names`` present in ``group``, in units of ``default`` (the units assumed when the dataset
    names none); ``table`` maps unit names to a common scale, None for unitless values."""
    for name in names:
        ds = group.get(name) if group is not None else None
        if not isinstance(ds, h5py.Dataset):
            continue
        value = number(ds, where)
        if table is None:
            return value
        units = units_of(ds, default)
        if units.lower() not in table:
            raise ValueError(f"{where}: {ds.name} has units {units!r}, expected one of {', '.join(table)}")
        return value * (table[units.lower()] / table[default])
    return None


def beam_center(det: h5py.Group | None, pixel_size: tuple[float, float] | None,
                 where: str) -> tuple[float, float] | None:
    """(row, col) with the pixel-centre origin, from NXmx's corner-origin beam_center_y/x."""
    present = [det.get(n) if det is not None else None for n in ("beam_center_y", "beam_center_x")]
    if not all(isinstance(ds, h5py.Dataset) for ds in present):
        if any(isinstance(ds, h5py.Dataset) for ds in present):
            log.warning("%s: only one of beam_center_x / beam_center_y: no beam centre", where)
        return None
    centre = []
    for axis, ds in enumerate(present):
        value, units = number(ds, where), units_of(ds, "pixel")
        if units.lower() in LENGTH_M:
            if pixel_size is None:
                raise ValueError(f"{where}: {ds.name} is a length ({units}) but the pixel size is not recorded")
            value = value * LENGTH_M[units.lower()] / pixel_size[axis]
        elif units.lower() not in PIXELS:
            raise ValueError(f"{where}: {ds.name} has units {units!r}, expected pixels or a length")
        centre.append(value - 0.5)
    return centre[0], centre[1]


def rotation(f: h5py.File) -> tuple[tuple[str, float, float], ...]:
    """The rotation axis of the sample as ((name, start, increment),), or () for stills."""
    target = f.get("entry/sample/depends_on")
    ds = None
    if isinstance(target, h5py.Dataset):
        path = target[()]
        path = path.decode() if isinstance(path, bytes) else str(path)
        found = f.get(path) if path not in ("", ".") else None
        if isinstance(found, h5py.Dataset) and text(found.attrs.get("transformation_type")) == "rotation":
            ds = found
    step = None
    if ds is None and isinstance(f.get("entry/sample/goniometer/omega"), h5py.Dataset):   # older EIGER files
        ds = f["entry/sample/goniometer/omega"]
        average = f.get("entry/sample/goniometer/omega_range_average")
        step = float(np.ravel(average[()])[0]) if isinstance(average, h5py.Dataset) else None
    if ds is None or ds.dtype.kind not in "iuf":
        return ()
    angles = np.ravel(ds[()]).astype(np.float64)
    if step is None:
        step = float(np.median(np.diff(angles))) if len(angles) > 1 else 0.0
    if not len(angles) or step == 0 or not np.isfinite(step):
        return ()
    if text(ds.attrs.get("units", "deg")).lower() in ("rad", "radian", "radians"):
        angles, step = np.degrees(angles), float(np.degrees(step))
    return ((ds.name.rsplit("/", 1)[-1], float(angles[0]), step),)


def text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def flags(det: h5py.Group | None, shape: tuple[int, int], where: str) -> np.ndarray | None:
    """The OR of the NXmx pixel masks (uint32 flags, 0 = good); None when there is none."""
    if det is None:
        return None
    names = sorted(n for n in det if n == "pixel_mask" or EXTRA_MASK.fullmatch(n))
    if not names and "detectorSpecific/pixel_mask" in det:
        names = ["detectorSpecific/pixel_mask"]
    flags = None
    for name in names:
        ds = det[name]
        if ds.shape != shape or ds.dtype.kind not in "iub":
            raise ValueError(f"{where}: {ds.name} is {ds.dtype} {ds.shape}, expected integer flags of the frame "
                             f"shape {shape}")
        values = ds[()].astype(np.uint32)
        flags = values if flags is None else flags | values
    return flags
