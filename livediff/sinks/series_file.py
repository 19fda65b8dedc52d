"""One series' HDF5 file: its layout, created at series start, and the appends.

::

    /entry                             NXentry (start_time, end_time)
    /entry/instrument/detector         NXdetector: pixel_mask (NXmx: 0 = good), pixel sizes, distance, ...
    /entry/data                        NXdata
    /entry/data/data                   raw frames as received (optional; bitshuffle-LZ4, chunk per frame)
    /entry/livediff                    NXcollection
    /entry/livediff/config             the TOML text that produced the file
    /entry/livediff/frames             one row per processed frame (compound dataset)
    /entry/livediff/<op>               rows an operator emits (e.g. spots), with their frame number
    /entry/livediff/<op>/<name>        per-frame arrays of an operator (frame x shape), with .../frame
    /entry/livediff/reductions/<op>/<name>   snapshots and final results (overwritten)
    /entry/livediff/maps/<op>/<name>   scan maps (rows, cols), NaN where no frame arrived (overwritten)
    /entry/livediff/corrected          corrected frames (optional; float32, chunk per frame)
    /entry/livediff/summary            one row, written at series end: the counts, the end reason,
                                       complete (1 only when every announced frame was received,
                                       processed and written) and, when 0, what is incomplete

SWMR needs every dataset to exist before ``swmr_mode`` is switched on, so everything is
created here from the chain's :class:`~livediff.outputs.Layout`.  Used by the writer
thread only.

Write errors (a full disk, a file size limit, an I/O error) never escape: the first one
puts the file in error, and nothing more is written to it.  At the end the file is
flushed once more (the disk may have room again) and, if that works, closed with its
summary; if not, it is abandoned (:func:`~.h5errors.close_abandoned`: libhdf5 cannot
close a file whose writes fail without crashing the process later).
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import hdf5plugin
import numpy as np

from ..model import SeriesStart
from ..outputs import Layout
from .h5errors import close_abandoned, describe

SUMMARY_FIELDS = ("expected", "received", "processed", "failed", "dropped", "bad", "duplicates", "stray",
                  "lost", "not_saved")
SUMMARY_DTYPE = np.dtype([*((k, "i8") for k in SUMMARY_FIELDS), ("reason", "S16"), ("complete", "u1"),
                          ("incomplete", "S160")])
#: counts of frames that did not make it into the file; a complete series has all of them 0
SHORTFALLS = ("lost", "dropped", "failed", "not_saved")

#: files whose close failed: never closed again, as a second close crashes libhdf5
_UNCLOSABLE: list[SeriesFile] = []

#: HDF5 filter for frames: bitshuffle + LZ4, byte-compatible with DECTRIS bslz4 blobs
BSLZ4 = hdf5plugin.Bitshuffle(cname="lz4")


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def shortfalls(summary: dict[str, Any]) -> list[str]:
    """Why a series is not complete, e.g. ``["reason shutdown", "lost 3"]``; [] when it is.

    A series is complete when it ended normally (``reason`` "end") and every announced
    frame was received, processed and written: each count of :data:`SHORTFALLS` is 0
    and ``processed`` reaches ``expected``.  Bad messages, duplicates and stray frames take
    nothing away from a series: a frame of it that arrived unreadable is also ``lost``.
    """
    reason = summary.get("reason", "end")
    found = [] if reason == "end" else [f"reason {reason}"]
    found += [f"{k} {summary[k]}" for k in SHORTFALLS if summary.get(k, 0)]
    if not found and summary.get("processed", 0) < summary.get("expected", 0):
        found.append(f"processed {summary['processed']} of {summary['expected']}")
    return found


class SeriesFile:
    """An open series file; every dataset exists from the start (SWMR)."""

    def __init__(self, path: Path, start: SeriesStart, layout: Layout, config_text: str, *,
                 save_raw: bool, save_corrected: bool) -> None:
        self.path = path
        self.error: str | None = None  # the first write error, once there was one
        self.offered = 0               # frames handed to add_frame
        self.saved = 0                 # frame rows on disk: written and flushed
        self._unflushed = 0            # frame rows written since the last flush that worked
        self._broken = False           # nothing more may be written
        self.file = h5py.File(path, "w-", libver="latest")
        self.summary_written = False
        try:
            self._create(start, layout, config_text, save_raw=save_raw, save_corrected=save_corrected)
        except Exception:
            self._broken = True
            self._close()
            raise

    def _create(self, start: SeriesStart, layout: Layout, config_text: str, *, save_raw: bool,
                save_corrected: bool) -> None:
        entry = self.file.create_group("entry")
        entry.attrs["NX_class"] = "NXentry"
        entry["start_time"] = _now()
        self.end_time = entry.create_dataset("end_time", shape=(), dtype="S32")
        _write_detector(entry, start)
        data = entry.create_group("data")
        data.attrs["NX_class"] = "NXdata"
        self.raw = self.corrected = None
        if save_raw:
            data.attrs["signal"] = "data"
            self.raw = _frame_stack(data, "data", start.shape, start.dtype)
        ld = entry.create_group("livediff")
        ld.attrs.update({"NX_class": "NXcollection", "series": start.series, "shape": start.shape,
                         "dtype": start.dtype, "n_frames": -1 if start.n_frames is None else start.n_frames})
        if start.scan is not None:
            ld.attrs["scan"] = start.scan.shape
        ld.attrs["meta"] = json.dumps(start.meta, default=str)
        ld.create_dataset("config", data=config_text)
        if save_corrected and layout.output is not None:
            self.corrected = _frame_stack(ld, "corrected", layout.output.shape, "float32")
        self.frames = _Table(ld, "frames", layout.columns)
        self.rows = {op: _Table(ld, op, {"frame": "i8", **cols}) for op, cols in layout.rows.items()}
        self.arrays = {(op, name): _Stack(ld.require_group(op), name, shape, dtype)
                       for op, decl in layout.arrays.items() for name, (shape, dtype) in decl.items()}
        self.array_frames = {op: _Stack(ld[op], "frame", (), "i8") for op in layout.arrays}
        red = ld.create_group("reductions")
        self.reductions = {(op, name): red.require_group(op).create_dataset(
            name, shape=shape, dtype=dtype, fillvalue=np.nan if np.dtype(dtype).kind == "f" else 0)
            for op, decl in layout.reductions.items() for name, (shape, dtype) in decl.items()}
        self.maps = {}
        if layout.scan is not None and layout.maps:
            maps = ld.create_group("maps")
            maps.attrs["NX_class"] = "NXcollection"
            maps.attrs.update(scan_order=layout.scan.order, scan_flyback=layout.scan.flyback)
            self.maps = {(op, name): maps.require_group(op).create_dataset(
                name, shape=layout.scan.shape, dtype="f8", fillvalue=np.nan)
                for op, names in layout.maps.items() for name in names}
        self.summary = ld.create_dataset("summary", shape=(1,), dtype=SUMMARY_DTYPE)
        self.file.swmr_mode = True
        self.file.flush()
        self.last_flush = time.monotonic()

    @property
    def pending(self) -> int:
        return len(self.frames.pending)

    def add_frame(self, row: dict[str, Any], *, arrays: dict[str, dict[str, Any]] | None = None,
                  rows: dict[str, dict[str, np.ndarray]] | None = None, raw: Any = None,
                  corrected: np.ndarray | None = None) -> bool:
        """Buffer one processed frame's frames-table ``row`` (its ``"frame"`` is the frame number),
        per-frame ``arrays`` and ``rows`` ({operator: {name: value}}); write ``raw`` (pixels, or an
        ``(encoding, blob)`` bslz4 pair stored by a direct chunk write) and ``corrected`` at once.
        False when nothing was done: the file is in error (:attr:`error`)."""
        self.offered += 1
        return self._attempt("frame", self._add_frame, row, arrays or {}, rows or {}, raw, corrected)

    def _add_frame(self, row: dict[str, Any], arrays: dict[str, dict[str, Any]],
                   rows: dict[str, dict[str, np.ndarray]], raw: Any, corrected: np.ndarray | None) -> None:
        index = row["frame"]
        self.frames.pending.append(row)
        self._add_rows(index, rows)
        for op, values in arrays.items():
            for name, value in values.items():
                self.arrays[op, name].pending.append(value)
            self.array_frames[op].pending.append(index)
        if self.raw is not None and raw is not None:
            _write_frame(self.raw, index, raw)
        if self.corrected is not None and corrected is not None:
            _write_frame(self.corrected, index, corrected)

    def add_rows(self, index: int, rows: dict[str, dict[str, np.ndarray]]) -> bool:
        """Buffer operators' rows ({operator: {column: array}}) emitted with frame ``index``."""
        return self._attempt("rows", self._add_rows, index, rows)

    def _add_rows(self, index: int, rows: dict[str, dict[str, np.ndarray]]) -> None:
        for op, columns in rows.items():
            if op in self.rows:
                self.rows[op].add_columns(index, columns)

    def write_reductions(self, results: dict[str, dict[str, Any]],
                         maps: dict[str, dict[str, np.ndarray]] | None = None) -> bool:
        """Overwrite the reductions (and the scan maps) with these ({operator: {name: array}})."""
        return self._attempt("reductions", self._write_reductions, results, maps or {})

    def _write_reductions(self, results: dict[str, dict[str, Any]], maps: dict[str, dict[str, np.ndarray]]) -> None:
        for target, found in ((self.reductions, results), (self.maps, maps)):
            for op, values in found.items():
                for name, value in values.items():
                    if (op, name) in target:
                        target[op, name][...] = value

    def flush(self) -> bool:
        """Append everything buffered and flush the file; :attr:`saved` counts the frame rows
        on disk.  False when the file is (now) in error."""
        return self._attempt("flush", self._flush)

    def _flush(self) -> None:
        self._unflushed += self.frames.write()
        for table in self._growing():
            table.write()
        self._flushed()

    def _flushed(self) -> None:
        self.file.flush()
        self.saved += self._unflushed
        self._unflushed = 0
        self.last_flush = time.monotonic()

    def close(self, summary: dict[str, Any] | None, *, frames: int | None = None) -> int:
        """Flush, write ``summary`` (None: leave the file marked incomplete) and close; never raises.

        ``frames`` is how many frames the series had for the file (default: those handed
        to :meth:`add_frame`); those not in it are the summary's ``not_saved``, returned.
        A file in error is flushed once more: if the disk has room again, the tables are
        cut back to the rows written before the error and the summary is written;
        otherwise the file is abandoned (:func:`~.h5errors.close_abandoned`).
        """
        if self._broken:
            self._recover()
        else:
            self.flush()
        not_saved = (self.offered if frames is None else frames) - self.saved
        if summary is not None:
            summary = {**summary, "not_saved": not_saved}
            self.summary_written = self._attempt("summary", self._write_summary, summary)
        self._close()
        return not_saved

    def _write_summary(self, summary: dict[str, Any]) -> None:
        rec = np.zeros(1, dtype=SUMMARY_DTYPE)
        for k in SUMMARY_FIELDS:
            rec[k] = summary.get(k, 0)
        rec["reason"] = summary.get("reason", "end").encode()[:16]
        missing = shortfalls(summary)
        if self.error is not None and summary["not_saved"]:
            missing = [f"{m} ({self.error})" if m.startswith("not_saved") else m for m in missing]
        rec["complete"] = not missing
        rec["incomplete"] = ", ".join(missing).encode()[:SUMMARY_DTYPE["incomplete"].itemsize]
        self.summary[...] = rec
        self.end_time[()] = _now().encode()
        self.file.flush()

    def _attempt(self, what: str, action: Callable[..., None], *args: Any) -> bool:
        """Run ``action`` unless the file is in error; its first failure puts the file in error."""
        if self._broken:
            return False
        try:
            action(*args)
        except Exception as exc:
            self._broken = True
            self.error = self.error or f"{what}: {describe(exc)}"
            return False
        return True

    def _recover(self) -> None:
        """One more flush of a file in error; if it works, cut every table back to the rows
        written before the error (a failed append may have grown it) and go on writing."""
        try:
            self._flushed()
        except Exception:
            return
        self._broken = False
        self._attempt("flush", self._trim)

    def _trim(self) -> None:
        for table in (self.frames, *self._growing()):
            table.trim()
        self.file.flush()

    def _growing(self) -> tuple[_Table | _Stack, ...]:
        return (*self.rows.values(), *self.arrays.values(), *self.array_frames.values())

    def _close(self) -> None:
        """Close the file, abandoning it if it is in error; never raises."""
        try:
            if self._broken:
                close_abandoned(self.file)
            else:
                self.file.close()
        except Exception as exc:  # its objects are half freed: closing them again would crash
            _UNCLOSABLE.append(self)
            self.error = self.error or f"close: {describe(exc)}"


class _Growing:
    """A dataset growing along its first axis; ``length`` rows of it were written."""

    dataset: h5py.Dataset
    length = 0

    def _append(self, block: np.ndarray) -> None:
        if len(block):
            n = self.length
            self.dataset.resize((n + len(block), *self.dataset.shape[1:]))
            self.dataset[n:] = block
            self.length = n + len(block)

    def trim(self) -> None:
        """Cut the dataset back to the rows written (an append that failed may have grown it)."""
        if self.dataset.shape[0] != self.length:
            self.dataset.resize((self.length, *self.dataset.shape[1:]))


class _Table(_Growing):
    """A growable 1-D compound dataset, appended in chunks."""

    def __init__(self, group: h5py.Group, name: str, columns: dict[str, str]) -> None:
        self.dtype = np.dtype(list(columns.items()))
        self.dataset = group.create_dataset(name, shape=(0,), maxshape=(None,), dtype=self.dtype,
                                            chunks=(max(1, 65536 // self.dtype.itemsize),))
        self.pending: list[dict[str, Any]] = []
        self._columns: list[np.ndarray] = []

    def add_columns(self, frame: int, columns: dict[str, np.ndarray]) -> None:
        n = len(next(iter(columns.values()))) if columns else 0
        block = np.zeros(n, dtype=self.dtype)
        block["frame"] = frame
        for name, values in columns.items():
            if name in self.dtype.names:
                block[name] = values
        self._columns.append(block)

    def write(self) -> int:
        """Append what is buffered; returns the rows appended."""
        blocks = self._columns
        if self.pending:
            blocks = [*blocks, np.array([tuple(r.get(n, _missing(self.dtype[n])) for n in self.dtype.names)
                                         for r in self.pending], dtype=self.dtype)]
        self.pending, self._columns = [], []
        rows = np.concatenate(blocks) if blocks else np.zeros(0, self.dtype)
        self._append(rows)
        return len(rows)


class _Stack(_Growing):
    """A growable dataset of fixed-shape per-frame arrays."""

    def __init__(self, group: h5py.Group, name: str, shape: tuple[int, ...], dtype: str) -> None:
        rows_per_chunk = max(1, (1 << 16) // max(1, int(np.prod(shape)) * np.dtype(dtype).itemsize))
        self.dataset = group.create_dataset(name, shape=(0, *shape), maxshape=(None, *shape), dtype=dtype,
                                            chunks=(rows_per_chunk, *shape) if shape else (4096,))
        self.pending: list[Any] = []

    def write(self) -> None:
        """Append what is buffered."""
        pending, self.pending = self.pending, []
        self._append(np.asarray(pending, dtype=self.dataset.dtype))


def _frame_stack(group: h5py.Group, name: str, shape: tuple[int, int], dtype: str) -> h5py.Dataset:
    return group.create_dataset(name, shape=(0, *shape), maxshape=(None, *shape), dtype=dtype,
                                chunks=(1, *shape), **BSLZ4)


def _write_frame(dataset: h5py.Dataset, index: int, frame: Any) -> None:
    """Store frame ``index``: a (encoding, blob) bslz4 pair by direct chunk write, else an array."""
    if index >= dataset.shape[0]:
        dataset.resize((index + 1, *dataset.shape[1:]))
    if isinstance(frame, tuple):
        dataset.id.write_direct_chunk((index, 0, 0), bytes(frame[1]))
    else:
        dataset[index] = frame


def _missing(dtype: np.dtype) -> Any:
    return np.nan if dtype.kind == "f" else -1


def _write_detector(entry: h5py.Group, start: SeriesStart) -> None:
    inst = entry.create_group("instrument")
    inst.attrs["NX_class"] = "NXinstrument"
    det = inst.create_group("detector")
    det.attrs["NX_class"] = "NXdetector"
    if start.mask is not None:
        det.create_dataset("pixel_mask", data=(~start.mask).astype(np.uint32), compression="gzip")
    geo = start.geometry
    fields: dict[str, tuple[Any, str | None]] = {}
    if geo.pixel_size is not None:
        fields["y_pixel_size"], fields["x_pixel_size"] = ((v, "m") for v in geo.pixel_size)
    if geo.beam_center is not None:  # NXmx counts from the pixel corner; livediff from its centre
        fields["beam_center_y"], fields["beam_center_x"] = ((v + 0.5, "pixel") for v in geo.beam_center)
    if geo.distance is not None:
        fields["distance"] = (geo.distance, "m")
    if start.count_time is not None:
        fields["count_time"] = (start.count_time, "s")
    if start.saturation is not None:
        fields["saturation_value"] = (start.saturation, None)
    for name, (value, units) in fields.items():
        det[name] = value
        if units:
            det[name].attrs["units"] = units
    if geo.wavelength is not None:
        beam = inst.create_group("beam")
        beam.attrs["NX_class"] = "NXbeam"
        beam["incident_wavelength"] = geo.wavelength
        beam["incident_wavelength"].attrs["units"] = "angstrom"
