"""The chain of operators built from the config.

A :class:`Chain` runs its operators in order on one frame at a time; it knows no socket
and no file.  Executors (``livediff.executors``) decide where chains run, keep their
series-wide state in step and merge their partial states.  Each link is an
:class:`OperatorSpec` (label, class, validated parameters): picklable, so a chain can be
rebuilt in another process.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .model import Frame, SeriesStart
from .operators.base import BaseOperator, Operator
from .outputs import Layout


@dataclass(frozen=True)
class OperatorSpec:
    """One link of the chain: its label, the operator class and its validated ``Params``."""

    label: str
    cls: type
    params: Any

    @property
    def kind(self) -> str:
        return self.cls.kind

    def build(self) -> Operator:
        return self.cls(self.params, name=self.label)


class Chain:
    """Operators applied in order.

    Parameters
    ----------
    specs : the configured chain.
    folding : keep only the operators with an in-order step: a ``collect`` of their own
        or series-wide state to fold (the executor's folding chain, which sees every
        frame in arrival order after a worker processed it).
    """

    def __init__(self, specs: Sequence[OperatorSpec], *, folding: bool = False) -> None:
        built = [spec.build() for spec in specs]
        self.operators: list[Operator] = [op for op in built if not folding or in_order(op)]
        self.by_name: dict[str, Operator] = {op.name: op for op in self.operators}
        self.layout = Layout()
        self.inputs: dict[str, SeriesStart] = {}  # what each operator sees, by label
        self._mask = None

    def start(self, series: SeriesStart, inputs: dict[str, SeriesStart] | None = None) -> Layout:
        """Start every operator on the frames it will see; gather what they declare.

        ``inputs`` gives each operator's input series by label (a folding chain lacks
        the operators in between that change it; take them from a full chain's
        :attr:`inputs`).
        """
        self.layout = Layout(scan=series.scan)
        self._mask = series.mask
        self.inputs = {}
        for op in self.operators:
            if inputs is not None:
                series = inputs[op.name]
            self.inputs[op.name] = series
            op.start(series)
            series = op.output_series(series)
            self.layout.add(op)
        self.layout.output = series
        return self.layout

    def process(self, frame: Frame) -> Frame:
        """Run every operator; a frame without a mask of its own starts with the series' mask."""
        if frame.mask is None:
            frame.mask = self._mask
        for op in self.operators:
            frame = op.process(frame)
        return frame

    def collect(self, frame: Frame) -> Frame:
        for op in self.operators:
            frame = op.collect(frame)
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


def collects(op: Operator) -> bool:
    """Whether ``op`` has an in-order ``collect`` step of its own."""
    return type(op).collect is not BaseOperator.collect


def in_order(op: Operator) -> bool:
    """Whether ``op`` needs the in-order (folding) side: a ``collect`` step or series-wide state."""
    return collects(op) or op.series_state
