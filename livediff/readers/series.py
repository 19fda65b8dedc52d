"""Recorded series, read lazily, frame by frame: what a detector sent, ready to be sent again.

Two layouts are read (:func:`open_series` tells them apart by ``/entry/livediff``):

livediff series files (:mod:`livediff.sinks.series_file`, ``[output] save_raw = true``)
    ``/entry/data/data`` holds the frames as received, one chunk per frame, frame i at
    index i; a frame that was never recorded is an unwritten chunk and is skipped (see
    :attr:`RecordedSeries.indices`).  ``/entry/livediff`` gives the series number and the
    number of frames the header announced.
NXmx / DECTRIS EIGER master files
    ``/entry/data/data_000001``, ``data_000002``, ... (external links to the data files,
    each ``(n, rows, cols)``), concatenated in name order as DIALS' dxtbx reads them; older
    EIGER firmware put them directly under ``/entry``; a single ``/entry/data/data``
    (e.g. a virtual dataset) is read too.  Such files have no series number: 1 unless
    given.

Both carry NXmx detector metadata [1]_, converted here (and nowhere else) to livediff's
conventions:

- ``pixel_mask`` (and ``pixel_mask_N``, OR-ed, as NXmx specifies; older EIGER files:
  ``detectorSpecific/pixel_mask``): 32-bit flags, 0 = good.  Any bit set makes the pixel
  invalid, as livediff's DECTRIS stream decoders and DIALS read it (NXmx would let a pixel
  flagged only in bits 16-31, e.g. bit 31 "virtual pixel", count); here True = valid.
- ``beam_center_x`` / ``beam_center_y``: where the direct beam hits the detector, from the
  corner of the first pixel, in the dataset's ``units`` (pixels when absent; a length is
  divided by the pixel size).  livediff's beam centre is (row, col) =
  (beam_center_y - 0.5, beam_center_x - 0.5).
- ``x_pixel_size`` / ``y_pixel_size``, ``distance`` (NXmx) or ``detector_distance``
  (DECTRIS): lengths, metres when ``units`` is absent.
- ``count_time``: seconds when ``units`` is absent.
- ``saturation_value`` (NXmx) or ``detectorSpecific/countrate_correction_count_cutoff``
  (DECTRIS): the saturation count.
- ``/entry/instrument/beam/incident_wavelength`` (or ``/entry/sample/beam/...``): ångström
  when ``units`` is absent.
- the instrument (:class:`~livediff.model.Instrument`): ``sensor_material``,
  ``sensor_thickness`` (m), ``frame_time`` (s), ``description``, ``serial_number``, the
  pixel mask flags as stored, and the rotation: the axis ``/entry/sample/depends_on``
  names when its angles vary (start = the first, increment = the median step), or DECTRIS'
  older ``/entry/sample/goniometer/omega`` with ``omega_range_average``.  A livediff file
  gives its instrument exactly (``/entry/livediff@instrument``).
- ``/entry/livediff/written`` (livediff files that have it): frames flagged 0 there are not
  recorded, whatever their chunks hold.

Nothing but the header metadata and the chunk index is read at open; each
:meth:`RecordedSeries.frame` reads one chunk.  When frames are stored one per chunk with
bitshuffle-LZ4 (HDF5 filter 32008 with LZ4) or LZ4 (filter 32004) alone,
:meth:`RecordedSeries.chunk` hands out the stored chunk as is, and :meth:`~RecordedSeries.frame`
decodes it with livediff's bounds-checked codecs rather than the HDF5 filter plugins.

References
----------
.. [1] NeXus NXmx application definition and NXdetector / NXbeam base classes,
   https://manual.nexusformat.org/classes/applications/NXmx.html; as read by DIALS'
   ``nxmx`` package (``nxmx/__init__.py``: beam centre in pixels and count time in
   seconds when no units are given) and ``dxtbx`` (``FormatNXmxEigerFilewriter.py``:
   ``data_NNNNNN`` concatenated in name order; ``FormatHDF5EigerNearlyNexus.py``:
   DECTRIS' ``countrate_correction_count_cutoff`` as the saturation value).
"""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..errors import DecodeError
from ..model import FRAME_DTYPES, Geometry, Instrument, Scan, SeriesStart
from ..sources import codecs
from . import nxmeta

log = logging.getLogger(__name__)

#: HDF5 filter id -> the livediff encoding its chunks have (bitshuffle needs LZ4: cd_values[4] == 2)
_FILTER_ENCODINGS = {32008: "bslz4", 32004: "lz4"}
_BSHUF_LZ4 = 2
_DATA_FILE = re.compile(r"data_\d{6}")
def open_series(path: str | Path, *, series: int | None = None) -> RecordedSeries:
    """Open a recorded series (livediff series file or NXmx / EIGER master file).

    Parameters
    ----------
    path : the HDF5 file; for EIGER data, the master file.
    series : series number to announce; default the recorded one (1 for NXmx files).

    Returns
    -------
    RecordedSeries
        Open; close it (or use it as a context manager) when done.

    Raises
    ------
    OSError
        The file (or a data file a master file links to) is missing or not HDF5.
    ValueError
        No frames in the file, frames that are not (n, rows, cols) of one pixel type
        livediff takes, or metadata in units it cannot convert.
    """
    return RecordedSeries(path, series=series)


class RecordedSeries:
    """A recorded series: its header at once, its frames one chunk at a time.

    The interface :func:`livediff.sources.sender.stream_series` sends from.

    Attributes
    ----------
    path : the file opened.
    layout : ``"livediff"`` or ``"nxmx"``.
    series : series number announced.
    n_frames : frames the series had (announced by the recorded header, or stored).
    indices : frame numbers recorded, ascending (int64 array); frames not recorded are
        never sent.
    shape, dtype : (rows, cols) and pixel type name of every frame.
    chunk_encoding : ``"bslz4"`` or ``"lz4"`` when :meth:`chunk` returns stored chunks,
        else None.
    """

    def __init__(self, path: str | Path, *, series: int | None = None) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise OSError(f"{self.path}: no such file")
        try:
            self._file = h5py.File(self.path, "r", swmr=True)  # swmr: a file still written, or left by a killed writer
        except OSError as exc:
            raise OSError(f"{self.path}: cannot open as HDF5 ({_first_line(exc)})") from None
        try:
            self._open(series)
        except BaseException:
            self._file.close()
            raise

    def _open(self, series: int | None) -> None:
        own = self._file.get("entry/livediff")
        own = own if isinstance(own, h5py.Group) else None
        self.layout = "nxmx" if own is None else "livediff"
        self._parts = (_nxmx_frames if own is None else _livediff_frames)(self._file, self.path)
        first = self._parts[0]
        self.shape = tuple(int(n) for n in first.shape[1:])
        self.dtype = first.dtype.newbyteorder("=").name
        for ds in self._parts:
            if ds.ndim != 3 or tuple(ds.shape[1:]) != self.shape or ds.dtype.newbyteorder("=").name != self.dtype:
                raise ValueError(f"{self.path}: {ds.name} holds {ds.dtype.name} {ds.shape}, expected "
                                 f"(frames, {self.shape[0]}, {self.shape[1]}) of {self.dtype} like {first.name}")
        if self.dtype not in FRAME_DTYPES:
            raise ValueError(f"{self.path}: frames are {self.dtype}, livediff takes {', '.join(FRAME_DTYPES)}")
        self._starts = np.cumsum([0, *(len(ds) for ds in self._parts)])
        encodings = {_chunk_encoding(ds) for ds in self._parts}
        self.chunk_encoding = encodings.pop() if len(encodings) == 1 else None
        self._nbytes = int(np.prod(self.shape)) * np.dtype(self.dtype).itemsize
        self.indices = np.concatenate([_stored(ds) + start for ds, start in zip(self._parts, self._starts)])
        written = own.get("written") if own is not None else None
        if isinstance(written, h5py.Dataset):   # frames the writer flagged as not recorded are skipped
            flags = written[()]
            inside = self.indices < len(flags)
            keep = np.zeros(len(self.indices), dtype=bool)
            keep[inside] = flags[self.indices[inside]] == 1
            self.indices = self.indices[keep]
        attrs = {} if own is None else own.attrs
        recorded_n = int(attrs.get("n_frames", -1))
        self.n_frames = recorded_n if recorded_n >= 0 else int(self._starts[-1])
        self.series = int(attrs.get("series", 1)) if series is None else series
        self._start = self._header(attrs)
        log.info("%s: %s series %d, %s %s, %d of %d frames recorded%s", self.path, self.layout, self.series,
                 self.dtype, self.shape, len(self.indices), self.n_frames,
                 f", stored {self.chunk_encoding}" if self.chunk_encoding else "")

    def series_start(self) -> SeriesStart:
        """The series header: shape, pixel type, mask, geometry, count time, saturation."""
        return self._start

    def frame(self, i: int) -> np.ndarray:
        """Frame ``i`` as recorded, (rows, cols) of :attr:`dtype`; reads one chunk.

        Raises
        ------
        ValueError
            Frame ``i`` is not recorded, or its stored chunk does not decode.
        """
        ds, local = self._locate(i)
        blob = self._chunk(ds, local, i)
        if blob is None:
            return np.asarray(ds[local], dtype=self.dtype)
        try:
            return codecs.decode(blob, self.chunk_encoding, self.shape, self.dtype)
        except DecodeError as exc:
            raise ValueError(f"{self.path}: frame {i}: stored {self.chunk_encoding} chunk is corrupt: {exc}") from None

    def chunk(self, i: int) -> bytes | None:
        """Frame ``i`` as stored, encoded as :attr:`chunk_encoding`, or None when it is not
        stored that way (then use :meth:`frame`).

        Raises
        ------
        ValueError
            Frame ``i`` is not recorded, or its chunk header disagrees with the frame size.
        """
        ds, local = self._locate(i)
        return self._chunk(ds, local, i)

    def close(self) -> None:
        """Close the file (and the data files it links to)."""
        self._file.close()

    def __enter__(self) -> RecordedSeries:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _locate(self, i: int) -> tuple[h5py.Dataset, int]:
        k = int(np.searchsorted(self.indices, i))
        if k == len(self.indices) or self.indices[k] != i:
            held = f"frames {self.indices[0]}..{self.indices[-1]}" if len(self.indices) else "no frames"
            raise ValueError(f"{self.path}: frame {i} is not recorded ({len(self.indices)} recorded: {held})")
        part = int(np.searchsorted(self._starts, i, side="right")) - 1
        return self._parts[part], i - int(self._starts[part])

    def _chunk(self, ds: h5py.Dataset, local: int, i: int) -> bytes | None:
        if self.chunk_encoding is None:
            return None
        skipped, blob = ds.id.read_direct_chunk((local, 0, 0))
        if skipped:  # the filter was skipped for this chunk: stored as plain pixels
            return None
        total = int.from_bytes(blob[:8], "big") if len(blob) >= 12 else -1
        if total != self._nbytes:
            raise ValueError(f"{self.path}: frame {i}: stored {self.chunk_encoding} chunk announces {total} bytes, "
                             f"expected {self._nbytes} for {self.dtype} {self.shape}")
        return blob

    def _header(self, attrs: Any) -> SeriesStart:
        det = self._file.get("entry/instrument/detector")
        det = det if isinstance(det, h5py.Group) else None
        where = str(self.path)
        pixel_size = None
        size_y, size_x = (nxmeta.quantity(det, (n,), nxmeta.LENGTH_M, "m", where) for n in ("y_pixel_size", "x_pixel_size"))
        if size_y is not None and size_x is not None:
            pixel_size = (size_y, size_x)
        beam = next((g for g in (self._file.get("entry/instrument/beam"), self._file.get("entry/sample/beam"))
                     if isinstance(g, h5py.Group) and "incident_wavelength" in g), None)
        wavelength = nxmeta.quantity(beam, ("incident_wavelength",), nxmeta.LENGTH_M, "angstrom", where)
        saturation = nxmeta.quantity(det, ("saturation_value", "detectorSpecific/countrate_correction_count_cutoff"),
                               None, None, where)
        scan = attrs.get("scan")
        flags = nxmeta.flags(det, self.shape, where)
        return SeriesStart(
            series=self.series, shape=self.shape, dtype=self.dtype, n_frames=self.n_frames,
            mask=None if flags is None else flags == 0,
            geometry=Geometry(
                beam_center=nxmeta.beam_center(det, pixel_size, where), pixel_size=pixel_size,
                distance=nxmeta.quantity(det, ("distance", "detector_distance"), nxmeta.LENGTH_M, "m", where),
                wavelength=wavelength),
            scan=Scan(tuple(int(n) for n in scan)) if scan is not None else None,
            count_time=nxmeta.quantity(det, ("count_time",), nxmeta.TIME_S, "s", where),
            saturation=None if saturation is None else int(saturation),
            instrument=(Instrument.from_dict(json.loads(attrs["instrument"]), flags) if "instrument" in attrs
                        else self._instrument(det, flags, where)),
            meta=json.loads(attrs["meta"]) if "meta" in attrs else {},
        )

    def _instrument(self, det: h5py.Group | None, flags: np.ndarray | None, where: str) -> Instrument:
        texts = {}
        for name in ("sensor_material", "description", "serial_number"):
            ds = det.get(name) if det is not None else None
            if isinstance(ds, h5py.Dataset) and ds.dtype.kind in "SOU":
                value = np.ravel(ds[()])[0] if ds.shape else ds[()]
                texts[name] = value.decode() if isinstance(value, bytes) else str(value)
        return Instrument(sensor_thickness=nxmeta.quantity(det, ("sensor_thickness",), nxmeta.LENGTH_M, "m", where),
                          frame_time=nxmeta.quantity(det, ("frame_time",), nxmeta.TIME_S, "s", where),
                          goniometer=nxmeta.rotation(self._file), pixel_flags=flags, **texts)


def _livediff_frames(f: h5py.File, path: Path) -> list[h5py.Dataset]:
    ds = f.get("entry/data/data")
    if not isinstance(ds, h5py.Dataset):
        raise ValueError(f"{path}: no recorded frames: /entry/data/data is missing "
                         f"(the series was processed without [output] save_raw = true)")
    return [ds]


def _nxmx_frames(f: h5py.File, path: Path) -> list[h5py.Dataset]:
    for name in ("entry/data", "entry"):
        group = f.get(name)
        links = sorted(n for n in group if _DATA_FILE.fullmatch(n)) if isinstance(group, h5py.Group) else []
        if links:
            return [_linked(group, n, path) for n in links]
    ds = f.get("entry/data/data")
    if isinstance(ds, h5py.Dataset) and ds.ndim == 3:
        return [ds]
    raise ValueError(f"{path}: no frames: expected /entry/data/data_000001, ... (NXmx / EIGER master file) "
                     f"or a 3-D /entry/data/data")


def _linked(group: h5py.Group, name: str, path: Path) -> h5py.Dataset:
    """``group[name]``, an external link in EIGER master files, with an error naming its target."""
    try:
        ds = group[name]
    except (KeyError, OSError):
        link = group.get(name, getlink=True)
        target = f"{link.filename}:{link.path}" if isinstance(link, h5py.ExternalLink) else "?"
        raise OSError(f"{path}: {group.name}/{name} links to {target}, which cannot be opened "
                      f"(data file missing or unreadable?)") from None
    if not isinstance(ds, h5py.Dataset) or ds.ndim != 3:
        raise ValueError(f"{path}: {group.name}/{name} must be a (frames, rows, cols) dataset, "
                         f"got {getattr(ds, 'shape', type(ds).__name__)}")
    return ds


def _chunk_encoding(ds: h5py.Dataset) -> str | None:
    """The encoding of ``ds``'s chunks when each holds one frame compressed by one filter we decode."""
    if ds.chunks != (1, *ds.shape[1:]) or ds.dtype.byteorder == ">":
        return None
    plist = ds.id.get_create_plist()
    if plist.get_nfilters() != 1:
        return None
    code, _flags, values, _name = plist.get_filter(0)
    if code == 32008 and (len(values) < 5 or values[4] != _BSHUF_LZ4):
        return None
    return _FILTER_ENCODINGS.get(code)


def _stored(ds: h5py.Dataset) -> np.ndarray:
    """Indices along axis 0 of ``ds`` that hold data: written chunks, or all when not chunked per frame."""
    if ds.chunks is None or ds.chunks[0] != 1:
        return np.arange(len(ds), dtype=np.int64)
    found: list[int] = []
    ds.id.chunk_iter(lambda info: found.append(info.chunk_offset[0]))
    rows = np.unique(np.array(found, dtype=np.int64))
    return rows[rows < len(ds)]


def _first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
