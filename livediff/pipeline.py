"""The chain of operators built from the config, and what it adds to each frame's row.

A :class:`Chain` runs its operators in order on one frame at a time; it knows no
socket and no file.  Executors (``livediff.executors``) decide on which thread a chain
runs and merge the partial states of several chains.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from .config import OperatorConfig
from .model import Frame, SeriesStart
from .operators import REGISTRY, Operator

log = logging.getLogger(__name__)

#: columns every frames-table row has, before the operators' own
BASE_COLUMNS = {"frame": "i8", "timestamp": "f8", "received": "f8", "latency_s": "f8"}


class Chain:
    """Operators applied in order; one instance per worker thread."""

    def __init__(self, operators: Sequence[OperatorConfig]) -> None:
        self.operators: list[Operator] = [REGISTRY[op.name](op.params) for op in operators]
        self.columns: dict[str, str] = dict(BASE_COLUMNS)
        self._mask = None

    def start(self, series: SeriesStart) -> None:
        """Start every operator on the frames it will see; collect the per-frame columns they add."""
        self.columns = dict(BASE_COLUMNS)
        self._mask = series.mask
        for op in self.operators:
            op.start(series)
            series = op.output_series(series)
            for name, dtype in op.columns.items():
                if name in self.columns:
                    raise ValueError(f"operator {op.name!r}: column {name!r} is already produced by another")
                self.columns[name] = dtype

    def process(self, frame: Frame) -> Frame:
        """Run every operator; a frame without a mask of its own starts with the series' mask."""
        if frame.mask is None:
            frame.mask = self._mask
        for op in self.operators:
            frame = op.process(frame)
        return frame

    def state(self) -> dict[str, dict[str, Any]]:
        return {op.name: op.state() for op in self.operators}

    def merge(self, other: dict[str, dict[str, Any]]) -> None:
        for op in self.operators:
            op.merge(other[op.name])

    def snapshot(self) -> dict[str, dict[str, Any]]:
        return {op.name: snap for op in self.operators if (snap := op.snapshot())}

    def finish(self) -> dict[str, dict[str, Any]]:
        return {op.name: fin for op in self.operators if (fin := op.finish())}


def row(frame: Frame, columns: dict[str, str], done: float) -> dict[str, Any]:
    """The frames-table row of a processed frame: base columns plus every operator scalar.

    ``done`` is when processing finished (``time.time()``); ``latency_s`` runs from the
    frame's arrival (decode) to then.
    """
    values: dict[str, Any] = {
        "frame": frame.index, "timestamp": frame.timestamp, "received": frame.received,
        "latency_s": done - frame.received,
    }
    for result in frame.results.values():
        values.update((k, v) for k, v in result.items() if k in columns)
    return values
