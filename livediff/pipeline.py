"""The chain of operators built from the config, and the outputs it declares.

A :class:`Chain` runs its operators in order on one frame at a time; it knows no
socket and no file.  Executors (``livediff.executors``) decide on which thread a chain
runs and merge the partial states of several chains.  :class:`Layout` gathers what the
operators declared at series start, so the sinks can create every dataset before the
first frame arrives.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .config import OperatorConfig
from .model import Frame, SeriesStart
from .operators import REGISTRY, Operator, Stateless
from .operators.base import Shape

#: columns every frames-table row has, before the operators' own
BASE_COLUMNS = {"frame": "i8", "timestamp": "f8", "received": "f8", "latency_s": "f8"}

#: names under /entry/livediff that operators cannot take
RESERVED = frozenset({"frames", "config", "summary", "reductions", "corrected"})


@dataclass
class Layout:
    """Every output the chain declared for a series (see ``livediff.operators.base``).

    ``columns`` is flat (names unique across operators); the others are keyed by
    operator name.
    """

    columns: dict[str, str] = field(default_factory=lambda: dict(BASE_COLUMNS))
    arrays: dict[str, dict[str, tuple[Shape, str]]] = field(default_factory=dict)
    rows: dict[str, dict[str, str]] = field(default_factory=dict)
    reductions: dict[str, dict[str, tuple[Shape, str]]] = field(default_factory=dict)
    output: SeriesStart | None = None  # what the last operator's frames look like

    def add(self, op: Operator) -> None:
        """Add ``op``'s declarations, refusing clashes with names already taken."""
        for name, dtype in op.columns.items():
            if name in self.columns:
                raise ValueError(f"operator {op.name!r}: column {name!r} is already produced by another")
            self.columns[name] = dtype
        if (op.arrays or op.rows) and op.name in RESERVED:
            raise ValueError(f"operator {op.name!r} cannot write /entry/livediff/{op.name}: the name is "
                             f"taken by livediff ({', '.join(sorted(RESERVED))})")
        if op.arrays and op.rows:
            raise ValueError(f"operator {op.name!r} declares both per-frame arrays and rows; "
                             f"/entry/livediff/{op.name} can hold only one")
        for kind in ("arrays", "rows", "reductions"):
            if getattr(op, kind):
                getattr(self, kind)[op.name] = dict(getattr(op, kind))


class Chain:
    """Operators applied in order; one instance per worker thread.

    Parameters
    ----------
    operators : the configured chain.
    only_collecting : keep only the operators with a ``collect`` step (the collector's
        chain, which sees every frame in order after the workers processed it).
    """

    def __init__(self, operators: Sequence[OperatorConfig], *, only_collecting: bool = False) -> None:
        built = [REGISTRY[op.name](op.params) for op in operators]
        self.operators: list[Operator] = [op for op in built if not only_collecting or collects(op)]
        self.layout = Layout()
        self._mask = None

    def start(self, series: SeriesStart) -> None:
        """Start every operator on the frames it will see; gather what they declare."""
        self.layout = Layout()
        self._mask = series.mask
        for op in self.operators:
            op.start(series)
            series = op.output_series(series)
            self.layout.add(op)
        self.layout.output = series

    @property
    def columns(self) -> dict[str, str]:
        return self.layout.columns

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
    return type(op).collect is not Stateless.collect


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
