"""HDF5 persistence: one file per series, written on its own thread while the series runs.

Layout (DESIGN.md)::

    /entry                       NXentry
    /entry/instrument/detector   NXdetector: pixel_mask (NXmx: 0 = good), pixel sizes, distance, ...
    /entry/livediff              NXcollection
    /entry/livediff/config       the TOML text that produced the file
    /entry/livediff/frames       one row per processed frame (compound dataset, grows)
    /entry/livediff/summary      one row, written at series end (complete = 1)

Every dataset is created when the series starts, then the file switches to SWMR mode:
rows are appended in chunks and flushed every ``flush_frames`` rows or ``flush_seconds``,
so a reader can follow the file live and a killed process leaves a valid file holding
every row flushed before the kill.  The event loop only enqueues; a full queue drops
rows (counted, logged), never blocks it.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..config import OutputConfig
from ..model import SeriesStart

log = logging.getLogger(__name__)

SUMMARY_FIELDS = ("expected", "received", "processed", "failed", "dropped", "bad", "duplicates", "stray",
                  "lost")
SUMMARY_DTYPE = np.dtype([*((k, "i8") for k in SUMMARY_FIELDS), ("reason", "S16"), ("complete", "u1")])

_CONTROL_TIMEOUT_S = 10.0


class SeriesFile:
    """One open series file (used by the writer thread only)."""

    def __init__(self, path: Path, start: SeriesStart, columns: dict[str, str], config_text: str) -> None:
        self.path = path
        self.dtype = np.dtype(list(columns.items()))
        self.file = h5py.File(path, "w-", libver="latest")
        entry = self.file.create_group("entry")
        entry.attrs["NX_class"] = "NXentry"
        _write_detector(entry, start)
        ld = entry.create_group("livediff")
        ld.attrs.update({"NX_class": "NXcollection", "series": start.series, "shape": start.shape,
                         "dtype": start.dtype, "n_frames": -1 if start.n_frames is None else start.n_frames})
        ld.create_dataset("config", data=config_text)
        self.frames = ld.create_dataset("frames", shape=(0,), maxshape=(None,), dtype=self.dtype,
                                        chunks=(max(1, 65536 // self.dtype.itemsize),))
        self.summary = ld.create_dataset("summary", shape=(1,), dtype=SUMMARY_DTYPE)
        self.file.swmr_mode = True
        self.file.flush()
        self.pending: list[tuple] = []
        self.last_flush = time.monotonic()

    def append(self, row: dict[str, Any]) -> None:
        self.pending.append(tuple(row.get(name, _missing(self.dtype[name])) for name in self.dtype.names))

    def flush(self) -> int:
        """Append the pending rows and flush the file; returns how many rows were written."""
        written = len(self.pending)
        if written:
            rows = np.array(self.pending, dtype=self.dtype)
            n = self.frames.shape[0]
            self.frames.resize((n + written,))
            self.frames[n:] = rows
            self.pending.clear()
        self.file.flush()
        self.last_flush = time.monotonic()
        return written

    def close(self, summary: dict[str, Any] | None) -> int:
        """Flush, write ``summary`` (None: leave the file marked incomplete) and close."""
        written = self.flush()
        if summary is not None:
            rec = np.zeros(1, dtype=SUMMARY_DTYPE)
            for k in SUMMARY_FIELDS:
                rec[k] = summary.get(k, 0)
            rec["reason"] = summary.get("reason", "end").encode()[:16]
            rec["complete"] = 1
            self.summary[...] = rec
        self.file.flush()
        self.file.close()
        return written


def _missing(dtype: np.dtype) -> Any:
    return np.nan if dtype.kind == "f" else -1


def _write_detector(entry: h5py.Group, start: SeriesStart) -> None:
    det = entry.create_group("instrument/detector")
    entry["instrument"].attrs["NX_class"] = "NXinstrument"
    det.attrs["NX_class"] = "NXdetector"
    if start.mask is not None:
        det.create_dataset("pixel_mask", data=(~start.mask).astype(np.uint32), compression="gzip")
    geo = start.geometry
    if geo.pixel_size is not None:
        det["y_pixel_size"], det["x_pixel_size"] = geo.pixel_size
        det["y_pixel_size"].attrs["units"] = det["x_pixel_size"].attrs["units"] = "m"
    if geo.beam_center is not None:  # NXmx counts from the pixel corner; livediff from its centre
        det["beam_center_y"], det["beam_center_x"] = (v + 0.5 for v in geo.beam_center)
    if geo.distance is not None:
        det["distance"] = geo.distance
        det["distance"].attrs["units"] = "m"
    if start.count_time is not None:
        det["count_time"] = start.count_time
        det["count_time"].attrs["units"] = "s"
    if geo.wavelength is not None:
        entry["instrument/wavelength"] = geo.wavelength
        entry["instrument/wavelength"].attrs["units"] = "angstrom"


class HDF5Writer:
    """Writes series files on a thread of its own, fed through a bounded queue.

    Parameters
    ----------
    config : the ``[output]`` section.
    """

    def __init__(self, config: OutputConfig) -> None:
        self.config = config
        self.directory = Path(config.directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.rows_written = 0
        self.rows_dropped = 0
        self.errors = 0
        self._queue: queue.Queue = queue.Queue(maxsize=config.queue_size)
        self._file: SeriesFile | None = None
        self._thread = threading.Thread(target=self._run, name="livediff-hdf5", daemon=True)
        self._thread.start()

    def start_series(self, start: SeriesStart, columns: dict[str, str], config_text: str) -> Path:
        """Open the series' file (never overwriting one); returns its path."""
        path = self._free_path(start)
        self._control(("start", (path, start, columns, config_text)))
        return path

    def append(self, row: dict[str, Any]) -> None:
        """Queue one frames-table row; if the writer is behind, drop it and count it."""
        try:
            self._queue.put_nowait(("row", row))
        except queue.Full:
            self.rows_dropped += 1
            if self.rows_dropped == 1 or self.rows_dropped % 1000 == 0:
                log.error("HDF5 writer is behind: %d rows dropped so far", self.rows_dropped)

    def end_series(self, summary: dict[str, Any]) -> None:
        """Write the summary row and close the file."""
        self._control(("end", summary))

    def close(self) -> None:
        """Flush and close any open file, then stop the thread."""
        self._control(("stop", None))
        self._thread.join()

    def _free_path(self, start: SeriesStart) -> Path:
        name = self.config.template.format(series=start.series, date=time.strftime("%Y%m%d-%H%M%S"))
        path = self.directory / name
        n = 1
        while path.exists():
            path = path.with_name(f"{Path(name).stem}_{n}{Path(name).suffix}")
            n += 1
        return path

    def _control(self, op: tuple[str, Any]) -> None:
        try:
            self._queue.put(op, timeout=_CONTROL_TIMEOUT_S)
        except queue.Full:
            self.errors += 1
            log.error("HDF5 writer did not accept %r within %.0f s (disk too slow?)", op[0], _CONTROL_TIMEOUT_S)

    def _run(self) -> None:
        while True:
            try:
                kind, payload = self._queue.get(timeout=self.config.flush_seconds)
            except queue.Empty:
                kind, payload = "tick", None
            try:
                if self._step(kind, payload):
                    return
            except Exception as exc:  # a disk error must not kill the thread: report, count, go on
                self.errors += 1
                log.error("HDF5 writer: %s failed: %s: %s", kind, type(exc).__name__, exc)

    def _step(self, kind: str, payload: Any) -> bool:
        """Handle one queued operation; True when the thread should stop."""
        f = self._file
        if kind == "row":
            if f is None:
                self.rows_dropped += 1
            else:
                f.append(payload)
        elif kind in ("start", "end", "stop") and f is not None:
            self._file = None
            self.rows_written += f.close(payload if kind == "end" else None)
            log.info("closed %s", f.path)
        if kind == "start":
            self._file = SeriesFile(*payload)
            log.info("writing %s", self._file.path)
        if kind == "stop":
            return True
        f = self._file
        if f is not None and (len(f.pending) >= self.config.flush_frames
                              or time.monotonic() - f.last_flush >= self.config.flush_seconds):
            self.rows_written += f.flush()
        return False
