"""HDF5 persistence: one file per series (layout in :mod:`.series_file`), on its own thread.

:class:`HDF5Writer` is a sink (:class:`~livediff.sinks.base.Sink`): it decides what of
each frame it records (``save_raw``: the frames as received, bitshuffle-LZ4 blobs stored
as they are; ``save_corrected``: the chain's output frames).  The event loop only
enqueues, a batch of frames as one item (:meth:`HDF5Writer.add_frames`).  Rows are flushed every ``flush_frames`` frames or ``flush_seconds``, so a
reader in SWMR mode follows the file live and a killed process leaves a valid file
holding every row flushed before the kill.  The queue is bounded in items and in bytes of
frame data: if the disk falls behind, frames are dropped from the file and counted
(``not_saved``), never silently and never by blocking the loop.

With ``save_raw`` the file is an NXmx recording (:mod:`.nxmx`; ``[output.instrument]``
fills what the series header lacks) and a CrystFEL ``.geom`` is written beside it.

A write error (a full disk, a file size limit, an I/O error) ends the writing of that
series' file, never the service: the error is logged once, every frame of the series not
in the file is counted in ``not_saved``, the summary row is written if the disk takes it
by the series' end, and the next series starts a fresh file.  :meth:`HDF5Writer.end_series`
waits (bounded) until the thread has handled the whole series, so the ``not_saved`` it
reports is final and the heartbeat's ``hdf5_not_saved`` already includes it.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Sequence
from typing import Any, Literal

from ..model import SeriesStart
from ..outputs import FrameOutput, Reductions, SeriesContext
from ..params import param
from .h5errors import describe
from .nxmx import InstrumentSettings
from .series_file import SeriesFile

log = logging.getLogger(__name__)

_CONTROL_TIMEOUT_S = 10.0
_END_TIMEOUT_S = 15.0   # how long a series end waits for the thread to write what was queued
_CLOSE_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class OutputSettings:
    """The HDF5 file written per series (``[output]``)."""

    directory: str = "livediff-output"
    template: str = "series_{series:06d}.h5"
    flush_frames: int = param(1000, ge=1, doc="flush at least every N frames, and every flush_seconds (at "
                                              "thousands of frames a second a flush costs the writer more than "
                                              "the rows it writes)")
    flush_seconds: float = param(1.0, gt=0, doc="flush at least every T seconds")
    queue_size: int = param(1024, ge=1, doc="frames buffered for the writer thread")
    max_pending_mb: float = param(512.0, gt=0, doc="frame data buffered for the writer before frames go unsaved")
    save_raw: bool = param(False, doc="record frames as received in /entry/data/data (bitshuffle-LZ4)")
    save_corrected: bool = param(False, doc="record the chain's output frames in /entry/livediff/corrected")
    export: tuple[Literal["refl", "cxi"], ...] = param((), doc="hand-off files beside each series file")
    instrument: InstrumentSettings = field(default_factory=InstrumentSettings)


@dataclass
class _Series:
    """One series' frames as the writer accounts for them."""

    series: int
    path: Path
    frames: int = 0       # handed to add_frame (loop thread)
    saved: int = 0        # in the file, flushed (writer thread)
    counted: int = 0      # already in HDF5Writer.not_saved (either thread, under the lock)
    reported: bool = False


class HDF5Writer:
    """Writes series files on a thread of its own, fed through a bounded queue.

    Parameters
    ----------
    config : the ``[output]`` settings.

    Raises
    ------
    OSError
        When the output directory cannot be created or written.
    """

    def __init__(self, config: OutputSettings) -> None:
        self.config = config
        self.directory = Path(config.directory)
        _check_writable(self.directory)
        self.rows_written = 0
        self.not_saved = 0
        self.errors = 0
        self._pending_bytes = 0
        self._max_bytes = int(config.max_pending_mb * 2**20)
        self._lock = threading.Lock()
        self._queue: queue.Queue = queue.Queue(maxsize=config.queue_size)
        self._handed_out: set[Path] = set()
        self._series: _Series | None = None   # the series being handed out (loop thread)
        self._file: SeriesFile | None = None  # the writer thread's
        self._writing: _Series | None = None  # the series the thread writes
        self._thread = threading.Thread(target=self._run, name="livediff-hdf5", daemon=True)
        self._thread.start()

    @property
    def wants_output(self) -> bool:
        """Whether :meth:`add_frame` reads the chain's output frames (``save_corrected``)."""
        return self.config.save_corrected

    def start_series(self, series: SeriesContext) -> dict[str, Any]:
        """Open the series' file (never overwriting one); reports its path as ``file``."""
        path = self._free_path(series.start)
        self._series = _Series(series.start.series, path)
        self._control("start", (self._series, series.start, series.layout, series.config_text, series.epoch))
        return {"file": str(path)}

    def add_frame(self, out: FrameOutput) -> None:
        """Queue one processed frame (:meth:`add_frames`)."""
        self.add_frames([out])

    def add_frames(self, outs: Sequence[FrameOutput]) -> None:
        """Queue processed frames, in order, as one item, with what the settings record of them.
        If the writer is behind, they are not saved (counted)."""
        items = [(out.to_record(), out.output if self.config.save_corrected else None) for out in outs]
        size = sum((out.recorded_nbytes if self.config.save_raw else 0) + (0 if corrected is None else corrected.nbytes)
                   for out, corrected in items)
        with self._lock:
            if self._series is not None:
                self._series.frames += len(items)
            full = self._pending_bytes + size > self._max_bytes
            if not full:
                self._pending_bytes += size
        if not full:
            try:
                self._queue.put_nowait(("frames", (items, size)))
                return
            except queue.Full:
                with self._lock:
                    self._pending_bytes -= size
        before = self.not_saved
        self._count_not_saved(self._series, len(items))
        if before == 0 or before // 1000 != self.not_saved // 1000:  # the first, then one line per thousand
            log.error("HDF5 writer is behind: %d frames not saved so far", self.not_saved)

    def add_rows(self, series: int, index: int, rows: dict[str, dict[str, Any]], epoch: int) -> None:
        """Queue operator rows that belong to no processed frame (e.g. spots completed at series end)."""
        self._control("rows", (index, rows, epoch))

    def write_reductions(self, reductions: Reductions) -> None:
        """Overwrite the series' reductions with ``reductions.values`` ({operator: {name: array}});
        closed ones (a live change restarts their operators) are kept under their epoch instead."""
        if reductions.closed:
            self._control("epoch_closed", (reductions.epoch, reductions.frame, reductions.values))
        else:
            self._control("reductions", (reductions.values, reductions.maps))

    def new_epoch(self, epoch: int, frame: int, config_text: str) -> None:
        """Queue configuration epoch ``epoch`` (its effective TOML, from ``frame`` on) for the file's history."""
        self._control("epoch", (epoch, frame, config_text))

    async def end_series(self, summary: dict[str, Any]) -> dict[str, Any]:
        """Write the summary row and close the file, once the thread has written what the series
        queued (waiting at most a few seconds); reports the series' final ``not_saved``, and
        ``file`` None when the file could not be created."""
        series, self._series = self._series, None
        done: concurrent.futures.Future = concurrent.futures.Future()
        await asyncio.to_thread(self._control, "end", (summary, done))
        try:
            return await asyncio.wait_for(asyncio.wrap_future(done), _END_TIMEOUT_S)
        except asyncio.TimeoutError:
            log.error("HDF5 writer: series %d not written after %.0f s (disk too slow?): its not_saved counts "
                      "the frames not yet flushed; the file's summary will have the final count",
                      series.series, _END_TIMEOUT_S)
            with self._lock:
                return {"not_saved": series.frames - series.saved}

    def close(self) -> None:
        """Flush and close any open file, then stop the thread."""
        self._control("stop", None)
        self._thread.join(_CLOSE_TIMEOUT_S)
        if self._thread.is_alive():
            log.error("HDF5 writer: still busy after %.0f s; its open file is left as a killed writer leaves it",
                      _CLOSE_TIMEOUT_S)

    def _free_path(self, start: SeriesStart) -> Path:
        name = self.config.template.format(series=start.series, date=time.strftime("%Y%m%d-%H%M%S"))
        path = self.directory / name
        n = 1
        while path.exists() or path in self._handed_out:  # the thread may not have created it yet
            path = path.with_name(f"{Path(name).stem}_{n}{Path(name).suffix}")
            n += 1
        self._handed_out.add(path)
        return path

    def _control(self, kind: str, payload: Any) -> None:
        try:
            self._queue.put((kind, payload), timeout=_CONTROL_TIMEOUT_S)
        except queue.Full:
            self.errors += 1
            log.error("HDF5 writer did not accept %r within %.0f s (disk too slow?)", kind, _CONTROL_TIMEOUT_S)

    def _count_not_saved(self, series: _Series | None, n: int = 1) -> None:
        """``n`` frames of ``series`` will not be in its file."""
        with self._lock:
            self.not_saved += n
            if series is not None:
                series.counted += n

    # ------------------------------------------------------------------ the writer thread
    def _run(self) -> None:
        while True:
            try:
                kind, payload = self._queue.get(timeout=self.config.flush_seconds)
            except queue.Empty:
                kind, payload = "tick", None
            try:
                if self._step(kind, payload):
                    return
            except Exception as exc:  # a bug, not the disk (SeriesFile keeps those): report, go on
                self.errors += 1
                log.exception("HDF5 writer: %s failed: %s: %s", kind, type(exc).__name__, exc)

    def _step(self, kind: str, payload: Any) -> bool:
        """Handle one queued operation; True when the thread should stop."""
        f = self._file
        if kind == "frames":
            items, size = payload
            with self._lock:
                self._pending_bytes -= size
            # the raw pixels are taken here, on the writer thread: a payload may need decoding
            rows = [(out.row, out.arrays, out.rows, out.recorded() if self.config.save_raw else None, corrected,
                     out.epoch) for out, corrected in items]
            added = 0 if f is None else f.add_frames(rows)
            if added < len(items):
                self._count_not_saved(self._writing, len(items) - added)
        elif kind == "reductions" and f is not None:
            f.write_reductions(*payload)
        elif kind == "rows" and f is not None:
            f.add_rows(*payload)
        elif kind == "epoch" and f is not None:
            f.new_epoch(*payload)
        elif kind == "epoch_closed" and f is not None:
            f.close_epoch(*payload)
        elif kind == "end":
            summary, done = payload
            done.set_result(self._finish(summary))
        elif kind in ("start", "stop"):
            self._finish(None)
        if kind == "start":
            self._open(*payload)
        if kind == "stop":
            return True
        f = self._file
        if f is not None and (f.pending >= self.config.flush_frames
                              or time.monotonic() - f.last_flush >= self.config.flush_seconds):
            f.flush()
            with self._lock:
                self._writing.saved = f.saved
        self._check(f, self._writing)
        return False

    def _open(self, series: _Series, start: SeriesStart, layout: Any, config_text: str, epoch: int) -> None:
        self._writing = series
        try:
            self._file = SeriesFile(series.path, start, layout, config_text, save_raw=self.config.save_raw,
                                    save_corrected=self.config.save_corrected, instrument=self.config.instrument,
                                    epoch=epoch)
        except Exception as exc:
            self.errors += 1
            series.reported = True
            with contextlib.suppress(OSError):  # it holds nothing: leave no half-made file behind
                series.path.unlink()
            log.error("HDF5 writer: cannot create %s: %s; the series' frames are counted in not_saved",
                      series.path, describe(exc))
            return
        log.info("writing %s", series.path)
        if self._file.geometry is not None:   # CrystFEL's view of the recording, beside it
            geom = series.path.with_suffix(".geom")
            try:
                geom.write_text(self._file.geometry)
            except OSError as exc:
                log.error("HDF5 writer: cannot write %s: %s", geom, exc.strerror or exc)

    def _check(self, f: SeriesFile | None, series: _Series | None) -> None:
        """Report the first write error of ``series``' file, once."""
        if f is not None and f.error is not None and not series.reported:
            series.reported = True
            self.errors += 1
            log.error("HDF5 writer: %s: %s; nothing more is written to this file, the series' frames not in "
                      "it are counted in not_saved", f.path, f.error)

    def _finish(self, summary: dict[str, Any] | None) -> dict[str, Any]:
        """Close the series' file (writing ``summary`` if given); returns the series' final facts:
        ``not_saved``, and ``file`` None when it could not be created."""
        series, f = self._writing, self._file
        if series is None:
            return {"not_saved": 0}
        self._writing = self._file = None
        not_saved = series.frames if f is None else f.close(summary, frames=series.frames)
        with self._lock:
            self.not_saved += not_saved - series.counted
            series.counted, series.saved = not_saved, series.frames - not_saved
        self.rows_written += series.saved
        if f is None:
            log.error("HDF5 writer: %s not created: %d frames not saved", series.path, not_saved)
            return {"not_saved": not_saved, "file": None}
        if f.error is None:
            log.info("closed %s", f.path)
        else:
            self._check(f, series)
            log.error("HDF5 writer: %s: %d of %d frames not saved; summary %s", f.path, not_saved, series.frames,
                      "written" if f.summary_written else
                      "not written (the file opens with swmr=True, as a killed writer's does)")
        return {"not_saved": not_saved}


def _check_writable(directory: Path) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / f".livediff-write-test-{threading.get_ident()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise OSError(f"output directory {directory} is not writable: {exc.strerror or exc}") from None
