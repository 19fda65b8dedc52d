"""The chain of operators built from the config.

A :class:`Chain` runs its operators in order on a frame, or on a batch of frames (a
worker's job: one thread hop for the batch); it knows no socket and no file.  Executors (``livediff.executors``) decide where chains run, keep their
series-wide state in step and merge their partial states.  Each link is an
:class:`OperatorSpec` (label, class, validated parameters): picklable, so a chain can be
rebuilt in another process.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .model import Codec, Frame, RowDecoder, SeriesStart
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


#: what :meth:`Chain.declared` holds per operator, as the reasons for refusing a change name it
_DECLARED = ("columns", "per-frame arrays", "rows", "reductions", "maps", "in-order step", "series-wide state",
             "output frames (shape, dtype)")


class Chain:
    """Operators applied in order.

    Parameters
    ----------
    specs : the configured chain.
    folding : keep only the operators with an in-order step: a ``collect`` of their own
        or series-wide state to fold (the executor's folding chain, which sees every
        frame in arrival order after a worker processed it).
    fuse : run operators that allow it as one pass over each frame
        (:mod:`livediff.operators.fused`; the same results); False runs each alone.
    """

    def __init__(self, specs: Sequence[OperatorSpec], *, folding: bool = False, fuse: bool = True) -> None:
        built = [spec.build() for spec in specs]
        self.operators: list[Operator] = [op for op in built if not folding or in_order(op)]
        self.fuse = fuse
        self._steps: list[Callable[[Frame], Frame]] = []  # what process_batch runs: the operators, some fused
        self.by_name: dict[str, Operator] = {op.name: op for op in self.operators}
        self.layout = Layout()
        self.inputs: dict[str, SeriesStart] = {}  # what each operator sees, by label
        self._mask = None
        self.reads_rows = False  # the first step decodes compressed frames as it reads them (see take)

    def start(self, series: SeriesStart, inputs: dict[str, SeriesStart] | None = None) -> Layout:
        """Start every operator on the frames it will see; gather what they declare.

        ``inputs`` gives each operator's input series by label (a folding chain lacks
        the operators in between that change it; take them from a full chain's
        :attr:`inputs`).
        """
        self._mask = series.mask
        return self._start(0, series, inputs)

    def restart(self, specs: Sequence[OperatorSpec], label: str,
                inputs: dict[str, SeriesStart] | None = None) -> Layout:
        """Rebuild the operator ``label`` and every operator after it from ``specs`` (new
        parameters, same labels in the same order) and start them afresh on the frames
        they see now: they continue as if the series had started here.  Those after it
        restart too because their input may depend on it.  ``inputs`` as for :meth:`start`.

        Raises
        ------
        ValueError
            When ``specs`` does not hold this chain's operators in the same order.
        """
        order = [spec.label for spec in specs]
        mine = [op.name for op in self.operators]
        if [name for name in order if name in self.by_name] != mine or label not in order:
            raise ValueError(f"cannot restart {label!r}: the chain is {mine}, the new specs are {order}")
        position = order.index(label)
        first = next((i for i, name in enumerate(mine) if order.index(name) >= position), len(mine))
        built = {spec.label: spec for spec in specs}
        for i in range(first, len(mine)):
            self.operators[i] = built[mine[i]].build()
            self.by_name[mine[i]] = self.operators[i]
        start = self.inputs[mine[first]] if first < len(mine) else self.layout.output
        return self._start(first, start, inputs)

    def _start(self, first: int, series: SeriesStart, inputs: dict[str, SeriesStart] | None) -> Layout:
        """Start the operators from index ``first`` on (``series``: what the first of them sees);
        declare every operator's outputs."""
        self.layout = Layout(scan=series.scan)
        for i, op in enumerate(self.operators):
            if i < first:
                series = self.inputs[op.name]
            elif inputs is not None:
                series = inputs[op.name]
            if i >= first:
                self.inputs[op.name] = series
                op.start(series)
            series = op.output_series(series)
            self.layout.add(op)
        self.layout.output = series
        self._steps = [op.process for op in self.operators]
        self.reads_rows = False
        if self.fuse:
            from .operators import fused  # numba's, like the operators: loaded with them, not with this module

            self._steps = fused.steps(self.operators)
            self.reads_rows = fused.reads_rows(self._steps)
        return self.layout

    def take(self, frame: Frame, decode: Codec | None, rows: RowDecoder | None) -> np.ndarray:
        """Make ``frame``'s pixels ready for :meth:`process_batch` and return them.

        A frame that came compressed is decoded now with ``decode``, unless this chain's first
        step is a pass that decodes frames as it reads their rows (:attr:`reads_rows`) and
        ``rows`` decodes this payload so: then it becomes the frame's
        :attr:`~livediff.model.Frame.decoding`, and the array returned is filled by the time
        the frame is processed.

        Raises
        ------
        livediff.errors.DecodeError
            The payload does not decode (found now, or by the pass).
        """
        if frame.data is None and rows is not None and self.reads_rows and frame.payload is not None:
            frame.decoding = rows(frame.payload)
            if frame.decoding is not None:
                return frame.decoding.pixels
        return frame.decode(decode)

    def declared(self) -> dict[str, tuple[Any, ...]]:
        """What each operator declared at its start, whether it runs in order (and holds
        series-wide state), and the frames it hands on (shape, dtype), by label: a change
        of parameters that changes any of this cannot apply mid-series."""
        return {op.name: (op.columns, op.arrays, op.rows, op.reductions, op.maps, in_order(op), op.series_state,
                          self._handed_on(op)) for op in self.operators}

    def differences(self, other: Chain) -> list[str]:
        """Why ``other`` (started on the same series) cannot take over from this chain
        mid-series: one line per operator whose :meth:`declared` outputs differ."""
        mine, theirs = self.declared(), other.declared()
        if list(mine) != list(theirs):
            return [f"the operators would change from {', '.join(mine)} to {', '.join(theirs)}"]
        problems = []
        for label in mine:
            changed = [what for what, a, b in zip(_DECLARED, mine[label], theirs[label]) if a != b]
            if changed:
                problems.append(f"operators.{label}: its {', '.join(changed)} would change")
        return problems

    def _handed_on(self, op: Operator) -> tuple[tuple[int, ...], str]:
        out = op.output_series(self.inputs[op.name])
        return tuple(out.shape), str(out.dtype)

    def process(self, frame: Frame) -> Frame:
        """Run every operator; a frame without a mask of its own starts with the series' mask.
        Raises what an operator raised."""
        outcome = self.process_batch([frame])[0]
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    def process_batch(self, frames: Sequence[Frame]) -> list[Frame | BaseException]:
        """Run every operator on each of ``frames``, in order; a frame an operator raises on
        goes no further, its outcome is the exception, and the others go on."""
        outcomes: list[Frame | BaseException] = []
        for frame in frames:
            if frame.mask is None:
                frame.mask = self._mask
            try:
                for step in self._steps:
                    frame = step(frame)
            except Exception as exc:
                outcomes.append(exc)
            else:
                outcomes.append(frame)
        return outcomes

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
