"""The sink protocol: where the run loop hands every output of a series.

The run loop holds a list of sinks (the HDF5 writer, the publisher, and later the web
view and the hand-off exporters) and calls each in order.  A sink writes what it is given
and decides for itself what to keep; it never reaches back into the pipeline.  Facts a
sink reports at series start or end (the HDF5 writer: ``file``, ``not_saved``) are added
to what the sinks after it receive.

A sink that keeps the configuration history implements the optional hook
``new_epoch(epoch, frame, config_text)``: the run loop calls it (through :func:`new_epoch`)
before the first frame processed under a new configuration epoch (a live change), ``frame``
being that frame.

Frames come in batches when they come fast: the run loop calls :func:`add_frames`, which
hands a sink the whole batch through its optional ``add_frames(outs)`` (one queue item,
one message, one write for the batch) or, for a sink without one, frame by frame through
``add_frame``.
"""
from __future__ import annotations

from collections.abc import Awaitable, Sequence
from typing import Any, Protocol

from ..outputs import FrameOutput, Reductions, SeriesContext


class Sink(Protocol):
    """What the run loop calls, in this order within a series.

    ``wants_output`` says whether :meth:`add_frame` reads :attr:`FrameOutput.output` (the
    chain's output frame); an executor that runs chains in other processes ships the output
    frames back only when a sink wants them (a sink without the attribute is taken to want them).
    """

    wants_output: bool

    def start_series(self, series: SeriesContext) -> dict[str, Any]:
        """A series starts: create what the layout declares; return facts for the later sinks."""
        ...

    def add_frame(self, out: FrameOutput) -> None:
        """One processed frame, in arrival order; must not block the event loop."""
        ...

    def add_rows(self, series: int, index: int, rows: dict[str, dict[str, Any]], epoch: int) -> None:
        """Operator rows completed without a frame of their own (3D spots at series end), found
        under configuration epoch ``epoch``."""
        ...

    def write_reductions(self, reductions: Reductions) -> None:
        """Running results now (``reductions.final``: the series' last word; ``reductions.closed``:
        the last values of an epoch whose operators a live change restarts)."""
        ...

    def end_series(self, summary: dict[str, Any]) -> dict[str, Any] | Awaitable[dict[str, Any]]:
        """The series ended with ``summary`` (counts, reason, facts so far); return facts to add.

        A sink that must wait for a thread of its own before its facts are final (the HDF5
        writer) returns an awaitable, which the run loop awaits: the event loop never blocks.
        """
        ...

    def close(self) -> None:
        """Flush and release everything (the service is stopping)."""
        ...


def add_frames(sink: Sink, outs: Sequence[FrameOutput]) -> None:
    """Hand ``sink`` processed frames, in arrival order: with its ``add_frames`` when it has one,
    else one by one with :meth:`Sink.add_frame`."""
    batch = getattr(sink, "add_frames", None)
    if batch is not None:
        batch(outs)
    else:
        for out in outs:
            sink.add_frame(out)


def new_epoch(sink: Sink, epoch: int, frame: int, config_text: str) -> None:
    """Tell ``sink`` that ``frame`` is the first of configuration epoch ``epoch``, when it keeps
    the configuration history (its optional ``new_epoch`` hook)."""
    hook = getattr(sink, "new_epoch", None)
    if hook is not None:
        hook(epoch, frame, config_text)
