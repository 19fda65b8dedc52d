"""One series' HDF5 file: its layout, created at series start, and the appends.

::

    /entry                             NXentry (start_time, end_time); with raw frames definition "NXmx"
    /entry/source, sample, instrument  the NXmx description (:mod:`.nxmx`): sample and detector depends_on
                                       chains, module, sensor, pixel_mask with the detector's bits, ...
    /entry/data                        NXdata: raw frames as received in data (with save_raw; bitshuffle-LZ4,
                                       chunk per frame), else a link to the default plot
    /entry/livediff                    NXcollection
    /entry/livediff/config             the configuration history: one row per configuration epoch (epoch,
                                       frame: the first frame processed under it, 0 for the epoch in force
                                       at the series' start; toml: the effective configuration)
    /entry/livediff/provenance         JSON: where each NXmx value came from (header, config, default, missing)
    /entry/livediff/frames             one row per processed frame (compound dataset)
    /entry/livediff/per_frame          NXdata: the same values, a 1-D dataset per column, against frame
    /entry/livediff/written            u1 per frame number: 1 = its row (and raw frame) is in the file,
                                       0 = never received, failed or not saved (an unwritten raw frame
                                       reads back as zeros: this says so)
    /entry/livediff/<op>               rows an operator emits (e.g. spots), with their frame and epoch
    /entry/livediff/epochs/<op>        the reductions of epochs a live change closed (restarting the operator):
                                       <name> (epoch x shape), epoch, frame (the last frame in them)
    /entry/livediff/<op>/<name>        NXdata: per-frame arrays of an operator (frame x shape), with .../frame
    /entry/livediff/reductions/<op>    NXdata: snapshots and final results (overwritten), with their axes
    /entry/livediff/maps/<op>          NXdata: scan maps (rows, cols), NaN where no frame arrived (overwritten)
    /entry/livediff/corrected          corrected frames (optional; float32, chunk per frame)
    /entry/livediff/summary            one row, written at series end: the counts (``written`` frames in
                                       the file, ``missing`` frames of the series not in it), the end
                                       reason, complete (1 only when every announced frame was received,
                                       processed and written) and, when 0, what is incomplete
    @default                           from the root down to the most useful plot (:mod:`.nxdata`)

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
import numpy as np

from ..model import SeriesStart
from ..outputs import Layout
from . import nxdata
from .h5errors import close_abandoned, describe
from .h5tables import Columns, FrameStack, Stack, Table, missing
from .nxmx import InstrumentSettings, NXmxWriter, crystfel_geometry
from .page_cache import WrittenPages

SUMMARY_FIELDS = ("expected", "received", "processed", "failed", "dropped", "bad", "duplicates", "stray",
                  "lost", "not_saved", "written", "missing")
SUMMARY_DTYPE = np.dtype([*((k, "i8") for k in SUMMARY_FIELDS), ("reason", "S16"), ("complete", "u1"),
                          ("incomplete", "S160")])
#: the configuration history's columns (``toml``: the effective configuration of the epoch)
CONFIG_COLUMNS = {"epoch": "i8", "frame": "i8", "toml": h5py.string_dtype()}
#: counts of frames that did not make it into the file; a complete series has all of them 0
SHORTFALLS = ("lost", "dropped", "failed", "not_saved")

#: files whose close failed: never closed again, as a second close crashes libhdf5
_UNCLOSABLE: list[SeriesFile] = []


def _now(later_s: float = 0.0) -> str:
    """ISO 8601 local time with its UTC offset (``later_s`` seconds from now)."""
    return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(time.time() + later_s))


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
                 save_raw: bool, save_corrected: bool, instrument: InstrumentSettings | None = None,
                 epoch: int = 0) -> None:
        self.path = path
        self.error: str | None = None  # the first write error, once there was one
        self.offered = 0               # frames handed to add_frame
        self.saved = 0                 # frame rows on disk: written and flushed
        self._unflushed = 0            # frame rows written since the last flush that worked
        self._broken = False           # nothing more may be written
        self.file = h5py.File(path, "w-", libver="latest")
        self._pages = WrittenPages(self.file)  # the frames written leave the page cache
        self.summary_written = False
        self.written_frames: set[int] = set()   # frame numbers whose row is on disk
        self._written_pending: list[int] = []
        try:
            self._create(start, layout, config_text, save_raw=save_raw, save_corrected=save_corrected,
                         instrument=instrument or InstrumentSettings(), epoch=epoch)
        except Exception:
            self._broken = True
            self._close()
            raise

    def _create(self, start: SeriesStart, layout: Layout, config_text: str, *, save_raw: bool,
                save_corrected: bool, instrument: InstrumentSettings, epoch: int) -> None:
        entry = self.file.create_group("entry")
        entry.attrs["NX_class"] = "NXentry"
        entry["start_time"] = _now()
        self.end_time = entry.create_dataset("end_time", shape=(), dtype="S32")
        frame_time = start.instrument.frame_time or start.count_time or 0.0
        self.end_estimated = entry.create_dataset("end_time_estimated", shape=(), dtype="S32",
                                                  data=_now(frame_time * (start.n_frames or 0)).encode())
        self.nxmx = NXmxWriter(entry, start, instrument, raw=save_raw)
        #: the CrystFEL geometry of the recording (None without raw frames or a complete geometry)
        self.geometry = crystfel_geometry(self.nxmx.d, start.shape) if save_raw else None
        plots: dict[str, str] = {}
        self.raw = self.corrected = None
        if save_raw:
            data = entry.create_group("data")
            self.raw = FrameStack(data, "data", start.shape, start.dtype)
            nxdata.nxdata(data, "data", [".", ".", "."], image=True)
            plots["raw"] = data.name
        ld = entry.create_group("livediff")
        ld.attrs.update({"NX_class": "NXcollection", "series": start.series, "shape": start.shape,
                         "dtype": start.dtype, "n_frames": -1 if start.n_frames is None else start.n_frames})
        if start.scan is not None:
            ld.attrs["scan"] = start.scan.shape
        ld.attrs["meta"] = json.dumps(start.meta, default=str)
        ld.attrs["instrument"] = json.dumps(start.instrument.to_dict())
        self.config = Table(ld, "config", CONFIG_COLUMNS)
        self.config.pending.append({"epoch": epoch, "frame": 0, "toml": config_text})
        self.config.write()
        ld["provenance"] = self.nxmx.provenance
        if save_corrected and layout.output is not None:
            self.corrected = FrameStack(ld, "corrected", layout.output.shape, "float32")
        self.frames = Table(ld, "frames", layout.columns)
        self.per_frame = Columns(ld.create_group("per_frame"), layout.columns)
        plots["per_frame"] = ld["per_frame"].name
        self.written = ld.create_dataset("written", shape=(0,), maxshape=(None,), dtype="u1", chunks=(4096,))
        self.rows = {op: Table(ld, op, {"frame": "i8", "epoch": "i8", **cols}) for op, cols in layout.rows.items()}
        red = ld.create_group("reductions")
        red.attrs["NX_class"] = "NXcollection"
        self.reductions = {(op, name): red.require_group(op).create_dataset(
            name, shape=shape, dtype=dtype, fillvalue=np.nan if np.dtype(dtype).kind == "f" else 0)
            for op, decl in layout.reductions.items() for name, (shape, dtype) in decl.items()}
        for op, decl in layout.reductions.items():
            if nxdata.plot_results(red[op], decl, start.shape):
                kind = layout.kinds.get(op)
                key = "profile" if any(a in decl for a in nxdata.AXES) else "mean" if kind == "stats" else "reduction"
                plots.setdefault(key, red[op].name)
        self.epochs = self._create_epochs(ld, layout)
        self.arrays = {(op, name): Stack(ld.require_group(op), name, shape, dtype)
                       for op, decl in layout.arrays.items() for name, (shape, dtype) in decl.items()}
        self.array_frames = {op: Stack(ld[op], "frame", (), "i8") for op in layout.arrays}
        for op, decl in layout.arrays.items():
            links = {a: red[op][a] for a in nxdata.AXES if op in red and a in red[op]}
            nxdata.plot_results(ld[op], decl, start.shape, leading="frame", axis_links=links)
        self.maps = {}
        if layout.scan is not None and layout.maps:
            self.maps = self._create_maps(ld, layout)
            plots["map"] = ld["maps"][next(iter(layout.maps))].name
        target = nxdata.default_target(plots)
        if not save_raw:  # /entry/data: the default plot, so that the entry's NXdata is never empty
            entry["data"] = self.file[target]
        nxdata.default_chain(self.file, target)
        self.summary = ld.create_dataset("summary", shape=(1,), dtype=SUMMARY_DTYPE)
        self.file.swmr_mode = True
        self.file.flush()
        self.last_flush = time.monotonic()

    @staticmethod
    def _create_epochs(ld: h5py.Group, layout: Layout) -> dict[str, dict[str, Stack]]:
        """Per operator with reductions: a stack per reduction, and the epoch and last frame of
        each entry, for the epochs a live change closes (SWMR: created now, grown later)."""
        if not layout.reductions:
            return {}
        group = ld.create_group("epochs")
        group.attrs["NX_class"] = "NXcollection"
        return {op: {"epoch": Stack(group.require_group(op), "epoch", (), "i8"),
                     "frame": Stack(group[op], "frame", (), "i8"),
                     **{name: Stack(group[op], name, shape, dtype) for name, (shape, dtype) in decl.items()}}
                for op, decl in layout.reductions.items()}

    def _create_maps(self, ld: h5py.Group, layout: Layout) -> dict[tuple[str, str], h5py.Dataset]:
        maps = ld.create_group("maps")
        maps.attrs["NX_class"] = "NXcollection"
        scan = layout.scan
        maps.attrs.update(scan_order=scan.order, scan_flyback=scan.flyback)
        found = {(op, name): maps.require_group(op).create_dataset(name, shape=scan.shape, dtype="f8",
                                                                   fillvalue=np.nan)
                 for op, names in layout.maps.items() for name in names}
        step = 1.0 if scan.step is None else scan.step
        for op, names in layout.maps.items():
            group = maps[op]
            for k, name in enumerate(("scan_y", "scan_x")):
                nxdata.axis(group, name, step * np.arange(scan.shape[k], dtype=np.float64), units=scan.unit)
            names = list(names)
            nxdata.nxdata(group, names[0], ["scan_y", "scan_x"], auxiliary=names[1:])
        return found

    @property
    def pending(self) -> int:
        return len(self.frames.pending)

    def add_frame(self, row: dict[str, Any], *, arrays: dict[str, dict[str, Any]] | None = None,
                  rows: dict[str, dict[str, np.ndarray]] | None = None, raw: Any = None,
                  corrected: np.ndarray | None = None, epoch: int = 0) -> bool:
        """Buffer one processed frame's frames-table ``row`` (its ``"frame"`` is the frame number),
        per-frame ``arrays`` and ``rows`` ({operator: {name: value}}, found under configuration
        epoch ``epoch``); write ``raw`` (pixels, or an ``(encoding, blob)`` bslz4 pair stored by a
        direct chunk write) and ``corrected`` at once.
        False when nothing was done: the file is in error (:attr:`error`)."""
        return self.add_frames([(row, arrays or {}, rows or {}, raw, corrected, epoch)]) == 1

    def add_frames(self, frames: list[tuple[dict[str, Any], dict[str, dict[str, Any]],
                                            dict[str, dict[str, np.ndarray]], Any, np.ndarray | None, int]]) -> int:
        """:meth:`add_frame` for each ``(row, arrays, rows, raw, corrected, epoch)`` of a batch, in
        order; their rows reach the tables together at the next flush.  Returns how many were
        added: all, or 0 when the file is (now) in error."""
        self.offered += len(frames)
        return len(frames) if self._attempt("frame", self._add_frames, frames) else 0

    def _add_frames(self, frames: list[tuple[Any, ...]]) -> None:
        for frame in frames:
            self._add_frame(*frame)

    def _add_frame(self, row: dict[str, Any], arrays: dict[str, dict[str, Any]],
                   rows: dict[str, dict[str, np.ndarray]], raw: Any, corrected: np.ndarray | None, epoch: int) -> None:
        index = row["frame"]
        self.frames.pending.append(row)
        self._written_pending.append(index)
        self._add_rows(index, rows, epoch)
        for op, values in arrays.items():
            for name, value in values.items():
                self.arrays[op, name].pending.append(value)
            self.array_frames[op].pending.append(index)
        if self.raw is not None and raw is not None:
            self._pages.add(self.raw.write(index, raw))
        if self.corrected is not None and corrected is not None:
            self._pages.add(self.corrected.write(index, corrected))

    def add_rows(self, index: int, rows: dict[str, dict[str, np.ndarray]], epoch: int) -> bool:
        """Buffer operators' rows ({operator: {column: array}}) emitted with frame ``index``
        under configuration epoch ``epoch``."""
        return self._attempt("rows", self._add_rows, index, rows, epoch)

    def _add_rows(self, index: int, rows: dict[str, dict[str, np.ndarray]], epoch: int) -> None:
        for op, columns in rows.items():
            if op in self.rows:
                self.rows[op].add_columns(index, columns, epoch=epoch)

    def new_epoch(self, epoch: int, frame: int, config_text: str) -> bool:
        """Add configuration epoch ``epoch`` to the history: its effective TOML, from ``frame`` on."""
        self.config.pending.append({"epoch": epoch, "frame": frame, "toml": config_text})
        return self._attempt("config", self.config.write)

    def close_epoch(self, epoch: int, frame: int, results: dict[str, dict[str, Any]]) -> bool:
        """Keep the reductions ``results`` ({operator: {name: array}}) of operators a live change
        restarts under ``epoch``, whose last frame was ``frame``."""
        return self._attempt("epochs", self._close_epoch, epoch, frame, results)

    def _close_epoch(self, epoch: int, frame: int, results: dict[str, dict[str, Any]]) -> None:
        for op, values in results.items():
            stacks = self.epochs.get(op)
            if stacks is None:
                continue
            for name, stack in stacks.items():
                value = {"epoch": epoch, "frame": frame}.get(name, values.get(name))
                if value is None:  # not reported yet: an entry for every epoch all the same
                    value = np.full(stack.dataset.shape[1:], missing(stack.dataset.dtype))
                stack.pending.append(value)
                stack.write()

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
        rows = self.frames.write()
        self.per_frame.write(rows)
        self._unflushed += len(rows)
        for table in self._growing():
            table.write()
        self._mark_written()
        self._flushed()

    def _mark_written(self, length: int = 0) -> None:
        """Set the written flags of the frames whose rows were just appended; grow them to ``length``."""
        pending, self._written_pending = self._written_pending, []
        self.written_frames.update(pending)
        n = max(length, self.written.shape[0], max(pending, default=-1) + 1)
        if n != self.written.shape[0]:
            self.written.resize((n,))
        if pending:
            flags = self.written[...]
            flags[pending] = 1
            self.written[...] = flags

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
        n = max(summary.get("expected", 0), max(self.written_frames, default=-1) + 1)
        self._mark_written(n)
        if self.raw is not None:   # frames missing at the end: flagged, not cut off
            self.raw.pad(n)
        self.nxmx.size(n if self.raw is None else self.raw.length)
        summary = {**summary, "written": len(self.written_frames), "missing": n - len(self.written_frames)}
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
        self.end_time[()] = self.end_estimated[()] = _now().encode()
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
        for table in self._trimmed():
            table.trim()
        self.file.flush()

    def _growing(self) -> tuple[Table | Stack | Columns, ...]:
        return (*self.rows.values(), *self.arrays.values(), *self.array_frames.values(),
                *(stack for stacks in self.epochs.values() for stack in stacks.values()))

    def _trimmed(self) -> tuple[Table | Stack | Columns, ...]:
        return (self.frames, self.per_frame, *self._growing())

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
