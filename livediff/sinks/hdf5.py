"""HDF5 persistence: one file per series (layout in :mod:`.series_file`), on its own thread.

:class:`HDF5Writer` is a sink (:class:`~livediff.sinks.base.Sink`): it decides what of
each frame it records (``save_raw``: the frames as received, bitshuffle-LZ4 blobs stored
as they are; ``save_corrected``: the chain's output frames).  The event loop only enqueues.  Rows are flushed every ``flush_frames`` frames or
``flush_seconds``, so a reader in SWMR mode follows the file live and a killed process
leaves a valid file holding every row flushed before the kill.  The queue is bounded in
items and in bytes of frame data: if the disk falls behind, frames are dropped from the
file and counted (``not_saved``), never silently and never by blocking the loop.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..model import SeriesStart
from ..outputs import FrameOutput, Reductions, SeriesContext
from ..params import param
from .series_file import SeriesFile

log = logging.getLogger(__name__)

_CONTROL_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class OutputSettings:
    """The HDF5 file written per series (``[output]``)."""

    directory: str = "livediff-output"
    template: str = "series_{series:06d}.h5"
    flush_frames: int = param(50, ge=1, doc="flush at least every N frames")
    flush_seconds: float = param(1.0, gt=0, doc="flush at least every T seconds")
    queue_size: int = param(1024, ge=1, doc="frames buffered for the writer thread")
    max_pending_mb: float = param(512.0, gt=0, doc="frame data buffered for the writer before frames go unsaved")
    save_raw: bool = param(False, doc="record frames as received in /entry/data/data (bitshuffle-LZ4)")
    save_corrected: bool = param(False, doc="record the chain's output frames in /entry/livediff/corrected")


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
        self._file: SeriesFile | None = None
        self._handed_out: set[Path] = set()
        self._series_not_saved = 0
        self._thread = threading.Thread(target=self._run, name="livediff-hdf5", daemon=True)
        self._thread.start()

    def start_series(self, series: SeriesContext) -> dict[str, Any]:
        """Open the series' file (never overwriting one); reports its path as ``file``."""
        path = self._free_path(series.start)
        self._series_not_saved = self.not_saved
        self._control("start", (path, series.start, series.layout, series.config_text))
        return {"file": str(path)}

    def add_frame(self, out: FrameOutput) -> None:
        """Queue one processed frame with what the settings record of it.  If the writer is
        behind, the frame is not saved (counted)."""
        raw = corrected = None
        if self.config.save_raw:
            raw = ("bslz4", out.blob) if out.blob is not None and out.encoding == "bslz4" else out.received
        if self.config.save_corrected:
            corrected = out.output
        size = _nbytes(raw) + _nbytes(corrected)
        with self._lock:
            full = self._pending_bytes + size > self._max_bytes
            if not full:
                self._pending_bytes += size
        if not full:
            try:
                self._queue.put_nowait(("frame", (out, raw, corrected, size)))
                return
            except queue.Full:
                with self._lock:
                    self._pending_bytes -= size
        self.not_saved += 1
        if self.not_saved == 1 or self.not_saved % 1000 == 0:
            log.error("HDF5 writer is behind: %d frames not saved so far", self.not_saved)

    def add_rows(self, series: int, index: int, rows: dict[str, dict[str, Any]]) -> None:
        """Queue operator rows that belong to no processed frame (e.g. spots completed at series end)."""
        self._control("rows", (index, rows))

    def write_reductions(self, reductions: Reductions) -> None:
        """Overwrite the series' reductions with ``reductions.values`` ({operator: {name: array}})."""
        self._control("reductions", (reductions.values, reductions.maps))

    def end_series(self, summary: dict[str, Any]) -> dict[str, Any]:
        """Write the summary row (with this series' ``not_saved``) and close the file."""
        facts = {"not_saved": self.not_saved - self._series_not_saved}
        self._control("end", {**summary, **facts})
        return facts

    def close(self) -> None:
        """Flush and close any open file, then stop the thread."""
        self._control("stop", None)
        self._thread.join()

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
        if kind == "frame":
            out, raw, corrected, size = payload
            with self._lock:
                self._pending_bytes -= size
            if f is None:
                self.not_saved += 1
            else:
                f.add_frame(out.row, arrays=out.arrays, rows=out.rows, raw=raw, corrected=corrected)
        elif kind == "reductions" and f is not None:
            f.write_reductions(*payload)
        elif kind == "rows" and f is not None:
            f.add_rows(*payload)
        elif kind in ("start", "end", "stop") and f is not None:
            self._file = None
            self.rows_written += f.close(payload if kind == "end" else None)
            log.info("closed %s", f.path)
        if kind == "start":
            path, start, layout, text = payload
            self._file = SeriesFile(path, start, layout, text, save_raw=self.config.save_raw,
                                    save_corrected=self.config.save_corrected)
            log.info("writing %s", path)
        if kind == "stop":
            return True
        f = self._file
        if f is not None and (f.pending >= self.config.flush_frames
                              or time.monotonic() - f.last_flush >= self.config.flush_seconds):
            self.rows_written += f.flush()
        return False


def _nbytes(value: Any) -> int:
    if value is None:
        return 0
    if isinstance(value, tuple):  # (encoding, blob)
        return memoryview(value[1]).nbytes
    return value.nbytes


def _check_writable(directory: Path) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / f".livediff-write-test-{threading.get_ident()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise OSError(f"output directory {directory} is not writable: {exc.strerror or exc}") from None
