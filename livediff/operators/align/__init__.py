"""The ``align`` operator: registers every frame to a reference and shifts it into place.

The kernels (:func:`register`, :func:`shift_image`, :class:`Registration`) live in
:mod:`livediff.operators.align.register` and are re-exported here, so that
``from livediff.operators import align; align.register(image, reference, mask)`` works
as DESIGN.md lists it.

Reference and several workers
-----------------------------
Each worker thread has its own operator instance and sees only some of the frames, yet
the result must not depend on which worker got which frame.  The reference for frame
``i`` is therefore a function of frame indices only, and the instances built from one
configuration (the same ``Params`` object: the workers of one chain) share it.  Results
are then the same for any number of workers (for ``"mean"``, up to the float64 rounding
of summing a block's frames in another order):

``"first"``  frame 0 of the series; a worker that gets a later frame first waits for it.
``"mean"``   frame 0 for frames ``0 .. 2k-1`` (``k = update_every``), then, for frame
             ``i``, the mean of the aligned frames with index ``< k * (i // k - 1)``:
             the reference is refreshed every ``k`` frames from frames at least ``k``
             older, so a worker rarely waits for the frames it needs.  A pixel of the mean
             is valid when at least half of those frames covered it.
``"file"``   an image read from a file at start-up (``reference_file``); never waits.

If a frame a worker waits for does not come within ``wait_s`` seconds (lost or dropped
upstream), the series continues with what has arrived ("first": the waiting frame
becomes the reference), no longer waits, and logs a warning: from then on the
reference depends on timing.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace
from typing import Any, Literal

import numba
import numpy as np

from ...model import Frame, SeriesStart
from ..base import SeriesBoard, Stateless, param, shared_by_params
from ..checks import all_valid, check_shape
from .register import Registration, check_roi, register, shift_image

__all__ = ["Align", "AlignParams", "Registration", "register", "shift_image"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AlignParams:
    """Parameters of the ``align`` operator (see the module docstring for ``reference``)."""

    reference: Literal["first", "mean", "file"] = "first"
    reference_file: str | None = param(None, file=True, doc="reference image, with reference = 'file'")
    update_every: int = param(16, ge=1, doc="'mean' reference: frames between refreshes")
    max_shift: float | None = param(None, gt=0, doc="search radius in px (expected drift); unset = any shift")
    roi: tuple[int, int, int, int] | None = param(None, ge=0, doc="(row_start, row_stop, col_start, col_stop) "
                                                                  "of the region registered; unset = whole frame")
    overlap_ratio: float = param(0.3, gt=0, le=1, doc="ignore shifts overlapping fewer valid pixels than this "
                                                      "fraction of the largest overlap")
    min_quality: float = param(0.2, ge=-1, le=1, doc="frames whose NCC peak is lower are flagged and not shifted")
    order: Literal[1, 3] = param(3, doc="interpolation: 1 = bilinear, 3 = cubic convolution")
    fill_value: float = param(0.0, doc="value of pixels the shift uncovers (they are masked)")
    fft_workers: int = param(1, ge=1, doc="threads per FFT")
    wait_s: float = param(5.0, gt=0, doc="seconds a worker waits for reference frames before going on")

    def __post_init__(self) -> None:
        if (self.reference == "file") != (self.reference_file is not None):
            raise ValueError(f"reference_file is required with reference = 'file' and only then; got "
                             f"reference = {self.reference!r} and reference_file "
                             f"{'unset' if self.reference_file is None else 'set'}")


@numba.njit(nogil=True, cache=True)
def _accumulate(total, count, data, mask):
    """total += data, count += 1 where mask (in place)."""
    rows, cols = data.shape
    for r in range(rows):
        for c in range(cols):
            if mask[r, c]:
                total[r, c] += data[r, c]
                count[r, c] += 1


class _SharedReference(SeriesBoard):
    """The frame-derived reference of one configuration, shared by its instances.

    ``open(series, every)`` starts a series: ``every`` = ``update_every`` for the "mean"
    reference, None for "first".
    """

    def reset(self, every: int | None) -> None:
        self._every = every
        self._versions: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._blocks: dict[int, list[Any]] = {}  # block -> [sum, count, aligned frames, frames done]
        self._folded = 0                          # blocks 0 .. folded - 1 are in the running sum
        self._total: list[Any] | None = None      # [sum, count, aligned frames]
        self._degraded = False

    def post_first(self, data: np.ndarray, mask: np.ndarray) -> None:
        """Frame 0 has arrived: it is the reference until the mean takes over."""
        with self._cond:
            if 0 not in self._versions:
                self._versions[0] = (np.array(data, dtype=np.float32), mask)
                self._cond.notify_all()

    def get(self, index: int, data: np.ndarray, mask: np.ndarray,
            wait_s: float) -> tuple[int, np.ndarray, np.ndarray]:
        """(version, reference, reference mask) for frame ``index`` (which has ``data``, ``mask``)."""
        need = 0 if self._every is None else max(index // self._every - 1, 0)
        with self._cond:
            if not self._cond.wait_for(lambda: self._degraded or need in self._versions, timeout=wait_s):
                self._degraded = True
                log.warning("align: frames needed for the reference of frame %d did not arrive within %.1f s "
                            "(lost upstream?); going on with what arrived, results now depend on timing",
                            index, wait_s)
            if self._degraded:
                if 0 not in self._versions:
                    self._versions[0] = (np.array(data, dtype=np.float32), mask)
                self._fold(force_below=need)
            version = need if need in self._versions else max(v for v in self._versions if v <= need)
            return (version, *self._versions[version])

    def done(self, index: int, data: np.ndarray | None, mask: np.ndarray | None) -> None:
        """Frame ``index`` is processed; ``data``/``mask`` is the aligned frame, None if not aligned."""
        if self._every is None:
            return
        with self._cond:
            block = index // self._every
            if block < self._folded:
                return  # folded early after a timeout
            entry = self._blocks.get(block)
            if entry is None:
                entry = self._blocks[block] = [None, None, 0, 0]
            if data is not None:
                if entry[0] is None:
                    entry[0], entry[1] = np.zeros(data.shape), np.zeros(data.shape, dtype=np.int32)
                _accumulate(entry[0], entry[1], data, mask)
                entry[2] += 1
            entry[3] += 1
            self._fold(force_below=self._folded)

    def _fold(self, force_below: int) -> None:
        """Fold complete blocks (and all blocks below ``force_below``) into the running mean, in order."""
        while True:
            entry = self._blocks.get(self._folded)
            complete = entry is not None and entry[3] == self._every
            if not (complete or self._folded < force_below):
                return
            self._blocks.pop(self._folded, None)
            if entry is not None and entry[0] is not None:
                if self._total is None:
                    self._total = entry[:3]
                else:
                    self._total[0] += entry[0]
                    self._total[1] += entry[1]
                    self._total[2] += entry[2]
            self._folded += 1
            if self._total is not None:
                total, count, frames = self._total
                valid = count >= max(1, math.ceil(frames / 2))
                mean = np.divide(total, count, out=np.zeros(total.shape), where=valid).astype(np.float32)
                self._versions[self._folded] = (mean, valid)
            elif 0 in self._versions:
                self._versions[self._folded] = self._versions[0]
            for old in [v for v in self._versions if 0 < v < self._folded - 1]:
                del self._versions[old]  # frames not done yet have index >= folded * every
            self._cond.notify_all()


class Align(Stateless):
    """Registers each frame to the reference and shifts it; frames too unlike it pass unshifted.

    Adds ``results["align"]`` = ``shift_y``, ``shift_x`` (px, the shift applied, DESIGN.md's
    sign), ``quality`` (NCC peak height, NaN when no shift could be measured) and
    ``aligned`` (1 if the frame was shifted, 0 if its quality is below ``min_quality``).
    Output frames are float32; an aligned frame's mask is the shifted mask AND the
    pixels the shift covers (:func:`shift_image`).
    """

    name = "align"
    Params = AlignParams

    def start(self, series: SeriesStart) -> None:
        super().start(series)
        p = self.params
        self.columns = {"shift_y": "f8", "shift_x": "f8", "quality": "f8", "aligned": "i1"}
        check_roi(p.roi, series.shape)
        self._options = {"max_shift": p.max_shift, "roi": p.roi, "overlap_ratio": p.overlap_ratio,
                         "workers": p.fft_workers}
        self._registration: Registration | None = None
        self._key: tuple[Any, ...] = ()
        if p.reference == "file":
            reference = np.asarray(p.reference_file)
            check_shape(reference, series.shape, "align: reference_file", of="frame")
            mask = all_valid(series.shape) if series.mask is None else series.mask
            self._file = (reference, mask & np.isfinite(reference))
            self._board = None
        else:
            self._board = shared_by_params(p, _SharedReference)
            self._board.open(series.series, p.update_every if p.reference == "mean" else None)

    def output_series(self, series: SeriesStart) -> SeriesStart:
        return replace(series, dtype="float32")

    def process(self, frame: Frame) -> Frame:
        p = self.params
        mask = self.valid(frame)
        aligned = None
        try:
            shift_y, shift_x, quality = self._registration_for(frame, mask)(frame.data)
            if quality >= p.min_quality:
                aligned = shift_image(frame.data, (shift_y, shift_x), mask, p.fill_value, order=p.order)
                frame.data, frame.mask = aligned
            else:
                frame.data = frame.data.astype(np.float32)
            frame.results[self.name] = {"shift_y": shift_y, "shift_x": shift_x, "quality": quality,
                                        "aligned": int(aligned is not None)}
        finally:
            if self._board is not None:
                self._board.done(frame.index, *(aligned if aligned is not None else (None, None)))
        return frame

    def _registration_for(self, frame: Frame, mask: np.ndarray) -> Registration:
        """The cached registration for this frame's reference and mask (rebuilt when either changes)."""
        if self._board is None:
            version, (reference, reference_mask) = 0, self._file
        else:
            if frame.index == 0:
                self._board.post_first(frame.data, mask)
            version, reference, reference_mask = self._board.get(frame.index, frame.data, mask, self.params.wait_s)
        key = (version, id(reference))
        if self._registration is None or key != self._key or not (
                mask is self._registration_mask or np.array_equal(mask, self._registration_mask)):
            self._registration = Registration(reference, mask, reference_mask=reference_mask, **self._options)
            self._registration_mask, self._key = mask, key
        return self._registration

    def finish(self) -> dict[str, Any]:
        if self._board is not None:
            self._board.close()
        return {}
