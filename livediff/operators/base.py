"""The operator contract (DESIGN.md) and the pieces every operator shares.

An operator is a thin stateful object around pure kernels:

- ``start(series)`` allocates state for the series' shape, dtype and mask;
- ``process(frame)`` transforms ``frame.data``/``frame.mask`` or adds ``frame.results[name]``;
- ``state()``/``merge(other)`` expose and fold mergeable partial state (several workers,
  one answer);
- ``snapshot()``/``finish()`` derive what to publish now and at series end.

Operators declare their parameters as a frozen dataclass (``Params``) whose fields use
:func:`param`, so the config loader can check every key, type and range up front, and
they declare the per-frame scalar ``columns`` they add to the frames table.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, runtime_checkable

from ..model import Frame, SeriesStart


def param(default: Any, *, gt: float | None = None, ge: float | None = None,
          lt: float | None = None, le: float | None = None, doc: str = "") -> Any:
    """A dataclass field with bounds the config loader checks (``gt`` = strictly greater, ...)."""
    bounds = {k: v for k, v in (("gt", gt), ("ge", ge), ("lt", lt), ("le", le)) if v is not None}
    return field(default=default, metadata={"bounds": bounds, "doc": doc})


@runtime_checkable
class Operator(Protocol):
    """What the pipeline calls; see the module docstring."""

    name: str
    columns: dict[str, str]

    def start(self, series: SeriesStart) -> None: ...
    def process(self, frame: Frame) -> Frame: ...
    def state(self) -> dict[str, Any]: ...
    def merge(self, other: dict[str, Any]) -> None: ...
    def snapshot(self) -> dict[str, Any]: ...
    def finish(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class NoParams:
    """For operators without parameters."""


class Stateless:
    """Base for operators that keep no state across frames (merge and snapshots are empty)."""

    name: ClassVar[str]
    Params: ClassVar[type] = NoParams

    def __init__(self, params: Any = None) -> None:
        self.params = params if params is not None else self.Params()
        self.columns: dict[str, str] = {}

    def start(self, series: SeriesStart) -> None:
        self.series = series

    def state(self) -> dict[str, Any]:
        return {}

    def merge(self, other: dict[str, Any]) -> None:
        return None

    def snapshot(self) -> dict[str, Any]:
        return {}

    def finish(self) -> dict[str, Any]:
        return self.snapshot()
