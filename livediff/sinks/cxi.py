"""CrystFEL CXI export: the hit frames as received, with their peaks, appended as hits arrive.

Layout (what CrystFEL reads with ``peak_list = /entry_1/result_1``, ``peak_list_type = cxi``
(the default for ``.cxi`` files) and ``indexamajig --peaks=cxi``; reader:
``libcrystfel/src/image-hdf5.c``, ``image_hdf5_read_peaks_cxi``)::

    /cxi_version                         150
    /entry_1/data_1/data                 (n_hits, rows, cols) the frames as received, their dtype,
                                         bitshuffle-LZ4, one chunk per frame (dim0 = %, dim1 = ss, dim2 = fs)
    /entry_1/result_1/nPeaks             (n_hits,) int32
    /entry_1/result_1/peakXPosRaw        (n_hits, MAX_PEAKS) float32, fast scan (column)
    /entry_1/result_1/peakYPosRaw        (n_hits, MAX_PEAKS) float32, slow scan (row)
    /entry_1/result_1/peakTotalIntensity (n_hits, MAX_PEAKS) float32, the spot's summed counts
    /entry_1/result_1/frame              (n_hits,) int64, the hit's frame number in the series

Row i of every dataset is event i (CrystFEL's ``//i``); entries beyond ``nPeaks`` are 0.
Peak convention: CrystFEL counts pixels from their corner and adds 0.5 to the positions
it reads (``--no-half-pixel-shift`` turns that off), i.e. it expects pixel-centre
indices, which is livediff's origin: the positions are the spot centroids as livediff
reports them.  The intensity is the spot's sum of counts without background subtraction
(CrystFEL's own peak finders subtract a local background).  A frame with more than
:data:`MAX_PEAKS` spots keeps its strongest (logged once per series).

A hit is a frame whose ``mx`` operator says ``hit``; without that column (no ``mx`` in
the chain, or a series without geometry) no file is written and a log line says why.
The file is written in SWMR mode and flushed after every hit, so CrystFEL (or h5py with
``swmr=True``) can read it while the series runs.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..outputs import FrameOutput, Reductions, SeriesContext
from ..throttle import Throttle
from .exports import Background, beside, labels_of
from .h5tables import FrameStack, Stack
from .page_cache import WrittenPages

log = logging.getLogger(__name__)

#: peaks per event kept (the width of the peak arrays); CrystFEL's peakfinder8 stops at 2048 per panel
MAX_PEAKS = 2048

#: hits waiting for the writer thread before hits go unsaved (a 4M uint32 frame is 17 MB)
QUEUE = 32


class CxiExporter:
    """Sink appending each series' hits to ``<stem>.cxi`` (see the module docstring)."""

    wants_output = False  # it saves the frames as received

    def __init__(self) -> None:
        self._worker = Background("livediff-cxi", QUEUE)
        self._hit: str | None = None  # the frames-table column saying "hit"
        self._spots: str | None = None
        self.hits = self.not_saved = 0
        self._behind = Throttle()  # a slow disk may refuse every hit: a line now and then, not one per hit
        self._file: _CxiFile | None = None  # the worker thread's

    @property
    def errors(self) -> int:
        return self._worker.errors

    def start_series(self, series: SeriesContext) -> dict[str, Any]:
        layout = series.layout
        hits = [column for column, (label, key) in layout.owners.items()
                if key == "hit" and layout.kinds.get(label) == "mx"]
        spots = labels_of(layout, "spots")
        path = beside(series, ".cxi")
        self._hit = self._spots = None
        if not hits or not spots or path is None:
            why = ("no series file to write beside" if path is None else "the chain finds no spots" if not spots
                   else "no hit column (an mx operator with the series geometry decides what a hit is)")
            log.warning("series %d: cxi export: %s; no .cxi file", series.start.series, why)
            return {}
        self._hit, self._spots, self.hits, self.not_saved, self._path = hits[0], spots[0], 0, 0, path
        self._worker.submit(self._start, path, series.start.shape, series.start.dtype)
        return {}

    def add_frame(self, out: FrameOutput) -> None:
        if self._hit is None or not out.row.get(self._hit):
            return
        peaks = out.rows.get(self._spots) or {"x": np.zeros(0), "y": np.zeros(0), "intensity": np.zeros(0)}
        if self._worker.offer(self._append, out.to_record(), peaks):
            self.hits += 1
        else:
            self.not_saved += 1
            self._behind.log(log, "behind", "cxi export is behind: %d hits not saved so far", self.not_saved,
                             level=logging.ERROR)

    def add_rows(self, series: int, index: int, rows: dict[str, dict[str, Any]], epoch: int) -> None:
        return None

    def write_reductions(self, reductions: Reductions) -> None:
        return None

    def end_series(self, summary: dict[str, Any]) -> dict[str, Any]:
        if self._hit is None:
            return {}
        self._hit = None
        self._worker.submit(self._close)
        return {"cxi": str(self._path), "cxi_hits": self.hits, "cxi_not_saved": self.not_saved}

    def close(self) -> None:
        self._worker.close()
        self._close()

    # ------------------------------------------------------------------ on the worker thread
    def _start(self, path: Path, shape: tuple[int, int], dtype: str) -> None:
        self._close()
        self._file = _CxiFile(path, shape, dtype)
        log.info("writing hits to %s", path)

    def _append(self, out: FrameOutput, peaks: dict[str, np.ndarray]) -> None:
        if self._file is not None:  # out.recorded() here: it may decode the frame
            self._file.append(out.index, out.recorded(), peaks, out.series)

    def _close(self) -> None:
        if self._file is not None:
            f, self._file = self._file, None
            f.close()


class _CxiFile:
    """One series' open CXI file; every dataset exists before SWMR is switched on."""

    def __init__(self, path: Path, shape: tuple[int, int], dtype: str) -> None:
        self.path = path
        self.file = h5py.File(path, "w-", libver="latest")
        self.file["cxi_version"] = 150
        entry = self.file.create_group("entry_1")
        self.data = FrameStack(entry.create_group("data_1"), "data", shape, dtype)
        result = entry.create_group("result_1")
        self.n_peaks = Stack(result, "nPeaks", (), "<i4")
        self.peaks = {name: Stack(result, name, (MAX_PEAKS,), "<f4")
                      for name in ("peakXPosRaw", "peakYPosRaw", "peakTotalIntensity")}
        self.frame = Stack(result, "frame", (), "<i8")
        self.file.swmr_mode = True
        self.file.flush()
        self.pages = WrittenPages(self.file)
        self.trimmed = 0

    def append(self, index: int, frame: Any, peaks: dict[str, np.ndarray], series: int) -> None:
        n = self.data.length
        x, y, total = (np.asarray(peaks[k], dtype=np.float64) for k in ("x", "y", "intensity"))
        if x.size > MAX_PEAKS:
            keep = np.sort(np.argsort(-total, kind="stable")[:MAX_PEAKS])
            x, y, total = x[keep], y[keep], total[keep]
            self.trimmed += 1
            if self.trimmed == 1:
                log.warning("series %d: cxi export: frame %d has more than %d spots: the strongest kept",
                            series, index, MAX_PEAKS)
        self.pages.add(self.data.write(n, frame))  # ("bslz4", blob): the chunk as received
        self.n_peaks.pending = [x.size]
        self.frame.pending = [index]
        for name, values in zip(("peakXPosRaw", "peakYPosRaw", "peakTotalIntensity"), (x, y, total)):
            row = np.zeros(MAX_PEAKS, np.float32)
            row[:values.size] = values
            self.peaks[name].pending = [row]
        for stack in (self.n_peaks, self.frame, *self.peaks.values()):
            stack.write()
        self.file.flush()

    def close(self) -> None:
        hits = self.data.length
        self.file.close()
        log.info("closed %s (%d hits)", self.path, hits)
