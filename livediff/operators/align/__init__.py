"""The ``align`` operator: registers every frame to a reference and shifts it into place.

The kernels (:func:`register`, :func:`shift_image`, :class:`Registration`) live in
:mod:`livediff.operators.align.register` and are re-exported here, so that
``from livediff.operators import align; align.register(image, reference, mask)`` works
as DESIGN.md lists it.

Reference
---------
The reference is series-wide state (``livediff.operators.base``): it is built from frames
in arrival order on one instance and handed to every worker, so results do not depend on
the number of workers or on timing.  Frames are counted in arrival order:

``"first"``  the first frame with a valid pixel (darks that ``flatfield`` masked entirely,
             frames that failed upstream do not count).  It is its own reference:
             shift (0, 0), quality 1.
``"mean"``   the first such frame until ``2k`` frames have arrived (``k =
             update_every``), then, for frame ``seq``, the mean of the aligned frames among
             the first ``k * (seq // k - 1)``: the reference is refreshed every ``k`` frames
             from frames at least ``k`` older, so a worker rarely waits for the frames it
             needs.  A pixel of the mean is valid when at least half of those frames
             covered it.  Frames below ``min_quality`` do not count.
``"file"``   an image read from a file at start-up (``reference_file``).

Until the first reference exists, each frame waits for the frames before it (a few frames
at the start of a series); a frame with no valid pixel is never shifted (quality NaN).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal

import numba
import numpy as np

from ...model import Frame, SeriesStart
from ..base import BaseOperator, param
from ..checks import all_valid, check_shape
from .register import Registration, check_roi, register, shift_image

__all__ = ["Align", "AlignParams", "Registration", "register", "shift_image"]


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

    def __post_init__(self) -> None:
        if (self.reference == "file") != (self.reference_file is not None):
            raise ValueError(f"reference_file is required with reference = 'file' and only then; got "
                             f"reference = {self.reference!r} and reference_file "
                             f"{'unset' if self.reference_file is None else 'set'}")


@numba.njit(nogil=True, cache=True)
def accumulate_valid(total, count, data, mask):
    """total += data, count += 1 where mask (in place); masked pixels are never read.

    The running sums of a mean over each pixel's valid frames (``align``'s "mean"
    reference, ``powder_center``'s running mean)."""
    rows, cols = data.shape
    for r in range(rows):
        for c in range(cols):
            if mask[r, c]:
                total[r, c] += data[r, c]
                count[r, c] += 1


class Align(BaseOperator):
    """Registers each frame to the reference and shifts it; frames too unlike it pass unshifted.

    Adds ``results["align"]`` = ``shift_y``, ``shift_x`` (px, the shift applied, DESIGN.md's
    sign), ``quality`` (NCC peak height, NaN when no shift could be measured) and
    ``aligned`` (1 if the frame was shifted, 0 if its quality is below ``min_quality``).
    Output frames are float32; an aligned frame's mask is the shifted mask AND the
    pixels the shift covers (:func:`shift_image`).
    """

    kind = "align"
    Params = AlignParams

    def __init__(self, params: AlignParams | None = None, *, name: str | None = None) -> None:
        super().__init__(params, name=name)
        self.series_state = self.params.reference != "file"

    def start(self, series: SeriesStart) -> None:
        super().start(series)
        p = self.params
        self.columns = {"shift_y": "f8", "shift_x": "f8", "quality": "f8", "aligned": "i1"}
        check_roi(p.roi, series.shape)
        self._options = {"max_shift": p.max_shift, "roi": p.roi, "overlap_ratio": p.overlap_ratio,
                         "workers": p.fft_workers}
        self._registration: Registration | None = None
        self._registration_mask: np.ndarray | None = None
        self._reference: tuple[np.ndarray, np.ndarray] | None = None
        if p.reference == "file":
            reference = np.asarray(p.reference_file)
            check_shape(reference, series.shape, "align: reference_file", of="frame")
            mask = all_valid(series.shape) if series.mask is None else series.mask
            self._reference = (reference, mask & np.isfinite(reference))
        # the folding instance's state ("mean": the sums of the aligned frames; "first": the first frame)
        self._first: tuple[np.ndarray, np.ndarray] | None = None
        self._total: np.ndarray | None = None
        self._count: np.ndarray | None = None
        self._frames = 0
        self._published: tuple[np.ndarray, np.ndarray] | None = None
        self._first_key: int | None = None  # frames folded when the first reference was published

    def output_series(self, series: SeriesStart) -> SeriesStart:
        return replace(series, dtype="float32")

    def process(self, frame: Frame) -> Frame:
        p = self.params
        mask = self.valid(frame)
        if self._reference is None or not mask.any():
            frame.data = frame.data.astype(np.float32)
            if self._reference is None and mask.any():  # the first usable frame: the reference, aligned to itself
                self._result(frame, 0.0, 0.0, 1.0, aligned=True)
                frame.shared[self.name] = (frame.data, mask)
            else:
                self._result(frame, math.nan, math.nan, math.nan, aligned=False)
            return frame
        shift_y, shift_x, quality = self._registration_for(mask)(frame.data)
        aligned = quality >= p.min_quality
        if aligned:
            frame.data, frame.mask = shift_image(frame.data, (shift_y, shift_x), mask, p.fill_value, order=p.order)
            if p.reference == "mean":
                frame.shared[self.name] = (frame.data, frame.mask)
        else:
            frame.data = frame.data.astype(np.float32)
        self._result(frame, shift_y, shift_x, quality, aligned=aligned)
        return frame

    def _result(self, frame: Frame, shift_y: float, shift_x: float, quality: float, *, aligned: bool) -> None:
        frame.results[self.name] = {"shift_y": shift_y, "shift_x": shift_x, "quality": quality,
                                    "aligned": int(aligned)}

    def _registration_for(self, mask: np.ndarray) -> Registration:
        """The cached registration for the current reference and this mask (rebuilt when either changes)."""
        if self._registration is None or not (
                mask is self._registration_mask or np.array_equal(mask, self._registration_mask)):
            reference, reference_mask = self._reference
            self._registration = Registration(reference, mask, reference_mask=reference_mask, **self._options)
            self._registration_mask = mask
        return self._registration

    # ------------------------------------------------------------------ series-wide reference
    def epoch(self, seq: int, index: int) -> int | None:
        if self._first_key is None:
            return None  # no reference yet: decide once every earlier frame is folded
        k = self.params.update_every
        if self.params.reference == "first":
            return self._first_key
        return max(self._first_key, k * (seq // k - 1))

    def fold(self, seq: int, contribution: tuple[np.ndarray, np.ndarray] | None) -> bool:
        folded = seq + 1
        if self.params.reference == "first":
            if contribution is None or self._first_key is not None:
                return False
            self._published, self._first_key = contribution, folded
            return True
        if contribution is not None:
            data, mask = contribution
            if self._total is None:
                self._total = np.zeros(data.shape)
                self._count = np.zeros(data.shape, dtype=np.int32)
            accumulate_valid(self._total, self._count, data, mask)
            self._frames += 1
        if self._frames == 0 or not (self._first_key is None or folded % self.params.update_every == 0):
            return False
        valid = self._count >= max(1, math.ceil(self._frames / 2))
        mean = np.divide(self._total, self._count, out=np.zeros(self._total.shape), where=valid)
        self._published = (mean.astype(np.float32), valid)
        if self._first_key is None:
            self._first_key = folded
        return True

    def shared(self) -> tuple[np.ndarray, np.ndarray] | None:
        return self._published

    def use(self, state: tuple[np.ndarray, np.ndarray] | None) -> None:
        self._reference = state
        self._registration = None
