"""``summary``, ``flatfield`` and ``spots`` in one pass over each frame, when they follow each other.

Run one after the other, the three operators of an MX chain read every frame three
times: ``summary`` for its sums, ``flatfield`` for the mask (counts pass on unchanged), and
``spots`` for its window sums, which stream over the rows once.  On a 4M frame (17 MB of
uint32) each pass goes to main memory.  Fused, the spot kernel's pass calls a row hook
just before it first reads a row: the hook adds the row to the summary and writes the
row of flatfield's mask, while the row is in cache, and the spot test then reads that
mask row.

The results are the three operators' own, bit for bit: the same kernels run on the same
rows in the same order (integer row sums are exact, so the frame's sum adds up row by
row in the same order as ``summary`` adds them).  The operators stay separate in the
config and in the code; :func:`steps` fuses them where they allow it:

- ``summary``, ``flatfield`` and ``spots`` follow each other in the chain;
- ``flatfield`` passes integer counts on (``output = "auto"`` with neither dark nor flat,
  :meth:`~livediff.operators.flatfield.FlatField.count_mask`);
- ``spots`` runs its integer kernel on one block of rows
  (:meth:`~livediff.operators.spots.Spots.strong_kernel_args`: the ``dispersion``
  algorithm, ``threads = 1``, an integer frame of at most 32 bits).

Otherwise, and for a frame holding too many values too large for the integer kernel's
32-bit sums, the three run one after the other as they would unfused.

A frame that came compressed can be decoded by the pass itself (the executor hands it on
undecoded, with a :attr:`~livediff.model.Frame.decoding`, see ``Chain.take``): the row hook
first has the decoding advance to the end of the row, a few 8 KiB blocks at a time, so the
frame is written and read while in cache instead of being decoded whole to memory and read
back.  The decoding is a C-callable function the codec provides, called from numba as a
first-class function: no codec is imported here.  A payload that does not decode fails
before any operator's state changes; a frame the pass hands back is decoded to its end first.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numba
import numpy as np
from numba import types
from numba.extending import overload

from ..model import Decoding, Frame
from .base import Operator
from .checks import all_valid
from .flatfield import FlatField, below_row
from .intrinsics import prefetch_span
from .spots import Spots
from .spots.integer import dispersion_rows, row_hook
from .summary import Summary, summarise_rows

__all__ = ["SummaryMaskSpots", "reads_rows", "steps"]

Step = Callable[[Frame], Frame]


class _Rows(NamedTuple):
    """What the row hook works on (its type chooses the hook when numba compiles)."""

    image: np.ndarray
    summary_mask: np.ndarray
    summary_args: tuple
    flat_mask: np.ndarray
    limit: int
    valid: np.ndarray  # flatfield's mask, written row by row
    acc: np.ndarray  # the summary (sum, max, n_valid, n_saturated), then the pixels valid in ``valid``


class _DecodedRows(NamedTuple):
    """:class:`_Rows` whose image is decoded as the pass reads it (a :class:`~livediff.model.Decoding`)."""

    rows: _Rows
    advance: Any  # the Decoding's C-callable advance(state, src, dst, scratch, upto)
    state: np.ndarray
    src: np.ndarray
    dst: np.ndarray
    scratch: np.ndarray


@numba.njit(nogil=True, cache=True, inline="always")
def _summarise_and_mask(r, counted, rows):  # noqa: ANN001, ANN202
    """Row ``r`` into the summary (when ``counted``) and into flatfield's mask."""
    acc = rows.acc
    # the rows of the masks the next call reads and writes, fetched while the pass works on this
    # one (the pass prefetches the image's rows): 8.5-9.1 -> 7.4-8.1 ms per 4M frame
    after = min(r + 1, rows.image.shape[0] - 1)
    cols = rows.image.shape[1]
    prefetch_span(rows.summary_mask[after], 0, cols)
    prefetch_span(rows.flat_mask[after], 0, cols)
    prefetch_span(rows.valid[after], 0, cols)
    if counted:
        total, peak, n_valid, n_saturated = summarise_rows(rows.image[r:r + 1], rows.summary_mask[r:r + 1],
                                                           rows.summary_args)
        acc[0] += total
        acc[2] += n_valid
        acc[3] += n_saturated
        if n_valid and peak > acc[1]:
            acc[1] = peak
    acc[4] += below_row(rows.image[r], rows.flat_mask[r], rows.limit, rows.valid[r])


@overload(row_hook)
def _hook(r, counted, prepared):  # noqa: ANN001, ANN202 - dispersion_rows' row hook for _Rows and _DecodedRows
    if not isinstance(prepared, types.BaseNamedTuple):
        return None
    if prepared.instance_class is _Rows:
        return lambda r, counted, prepared: _summarise_and_mask(r, counted, prepared)
    if prepared.instance_class is not _DecodedRows:
        return None

    def decode_then_hook(r, counted, prepared):  # noqa: ANN001, ANN202
        # a failure stops the decoding for good (the rest of the frame is not read as pixels: finish() reports it)
        prepared.advance(prepared.state.ctypes, prepared.src.ctypes, prepared.dst.ctypes, prepared.scratch.ctypes,
                         (r + 1) * prepared.rows.image.shape[1] * prepared.rows.image.itemsize)
        _summarise_and_mask(r, counted, prepared.rows)

    return decode_then_hook


@numba.njit(nogil=True, cache=True)
def _fused(prepared, spot_args):  # noqa: ANN001, ANN202
    image = spot_args[0]
    return dispersion_rows(prepared, *spot_args, 0, image.shape[0], None)  # the runs; no strong-pixel map


class SummaryMaskSpots:
    """``summary`` → ``flatfield`` → ``spots`` on a frame in one pass (see the module docstring).

    Parameters
    ----------
    summary, flatfield, spots : the chain's operators, started; they keep their state and
        their results' names, and run alone on a frame the fused pass does not take.
    """

    def __init__(self, summary: Summary, flatfield: FlatField, spots: Spots) -> None:
        self.operators = (summary, flatfield, spots)

    def process(self, frame: Frame) -> Frame:
        """The three operators' work on ``frame``; a frame still being decoded (its
        :attr:`~livediff.model.Frame.decoding`) is decoded as the pass reads its rows.

        Raises
        ------
        livediff.errors.DecodeError
            The frame's payload does not decode (before any operator's state has changed).
        """
        decoding, frame.decoding = frame.decoding, None
        if decoding is not None:
            frame.data = decoding.pixels  # filled by the pass, or by finish() below
        done = self._one_pass(frame, decoding)
        if done is not None:
            return done
        if decoding is not None:
            decoding.finish()
        for op in self.operators:  # nothing of the frame changed yet
            frame = op.process(frame)
        return frame

    def _one_pass(self, frame: Frame, decoding: Decoding | None) -> Frame | None:
        """The frame after the fused pass, or None (frame untouched) when the pass cannot take it."""
        summary, flatfield, spots = self.operators
        counts = flatfield.count_mask(frame)
        if counts is None:
            return None
        valid = np.empty(np.shape(frame.data), dtype=np.bool_)
        spot_args = spots.strong_kernel_args(frame, valid)
        if spot_args is None:
            return None
        image = spot_args[0]  # C-ordered
        if decoding is not None and image.ctypes.data != decoding.pixels.ctypes.data:
            return None  # the kernel would read a copy of the pixels the decoding has yet to fill
        flat_mask, limit = counts
        summary_mask = all_valid(image.shape) if frame.mask is None else frame.mask
        acc = np.array([0.0, -np.inf, 0.0, 0.0, 0.0])
        rows = _Rows(image, summary_mask, summary.kernel_args(image.dtype), flat_mask, limit, valid, acc)
        if decoding is None:
            runs, complete = _fused(rows, spot_args)
        else:
            runs, complete = _fused(_DecodedRows(rows, decoding.advance, *decoding.args), spot_args)
            decoding.finish()  # a corrupt payload raises here, before the operators' state changes
        if not complete:
            return None
        # the pass wrote no strong-pixel map (nothing reads it) and counted the valid pixels
        summary.add_summary(frame, acc[0], acc[1], int(acc[2]), int(acc[3]))
        frame.mask = valid
        return spots.add_strong(frame, runs, int(acc[4]))


def steps(operators: Sequence[Operator]) -> list[Step]:
    """What a chain runs on each frame: the operators' ``process``, with every started
    ``summary`` → ``flatfield`` → ``spots`` that can run as one pass replaced by
    :class:`SummaryMaskSpots`."""
    out: list[Step] = []
    i = 0
    while i < len(operators):
        trio = tuple(operators[i:i + 3])
        if (len(trio) == 3 and isinstance(trio[0], Summary) and isinstance(trio[1], FlatField)
                and isinstance(trio[2], Spots) and trio[1].passes_counts and trio[2].single_block):
            out.append(SummaryMaskSpots(*trio).process)
            i += 3
        else:
            out.append(operators[i].process)
            i += 1
    return out


def reads_rows(chain_steps: Sequence[Step]) -> bool:
    """Whether the first of ``chain_steps`` (from :func:`steps`) is a one pass that decodes a
    frame as it reads its rows (a frame's :attr:`~livediff.model.Frame.decoding`)."""
    return bool(chain_steps) and isinstance(getattr(chain_steps[0], "__self__", None), SummaryMaskSpots)
