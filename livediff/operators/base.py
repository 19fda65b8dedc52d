"""The operator contract (DESIGN.md) and the pieces every operator shares.

An operator is a thin stateful object around pure kernels:

- ``start(series)`` allocates state for the series' shape, dtype and mask, and declares
  the outputs (below);
- ``output_series(series)`` tells the next operator what frames it will see (an
  operator that bins or crops changes the shape, mask and geometry; others return
  ``series`` unchanged);
- ``process(frame)`` transforms ``frame.data``/``frame.mask`` or adds
  ``frame.results[name]``; it runs on a worker thread, several workers at once, each
  with its own operator instance;
- ``collect(frame)`` (optional) runs afterwards on one thread, in arrival order, for
  work that must see frames in sequence (e.g. linking 2D spots across frames);
- ``state()``/``merge(other)`` expose and fold mergeable partial state (several workers,
  one answer);
- ``snapshot()``/``finish()`` derive what to publish now and at series end.

Declared outputs (set in ``start``; the sinks create HDF5 datasets from them before the
first frame, as SWMR requires):

``columns``     ``{name: dtype}`` per-frame scalars -> the frames table and the ``stats`` topic.
``arrays``      ``{name: (shape, dtype)}`` per-frame fixed-shape arrays ->
                ``/entry/livediff/<operator>/<name>`` (frame x shape) and the ``stats`` topic.
``rows``        ``{column: dtype}`` a per-frame table with any number of rows (spots) ->
                ``/entry/livediff/<operator>`` and the topic named like the operator.
``reductions``  ``{name: (shape, dtype)}`` what ``snapshot()``/``finish()`` return ->
                ``/entry/livediff/reductions/<operator>/<name>`` and the ``image`` topic.

``frame.results[name]`` holds the scalars and arrays under their names and, for
``rows``, one 1-D array per column under the key ``"rows"``.

Operators declare their parameters as a frozen dataclass ``Params`` whose fields use
:func:`param`, so the config loader can check every key, type and range up front.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, runtime_checkable

from ..model import Frame, SeriesStart

Shape = tuple[int, ...]


def param(default: Any, *, gt: float | None = None, ge: float | None = None,
          lt: float | None = None, le: float | None = None, file: bool = False, doc: str = "") -> Any:
    """A dataclass field with bounds the config loader checks (``gt`` = strictly greater, ...).

    ``file=True`` marks a field (typed ``str | None`` in the dataclass) naming an array
    file (``.npy``, ``.tif``/``.tiff``, ``.h5``/``.hdf5``/``.nxs``, with ``FILE::/dataset``
    for a given HDF5 dataset): the config loader reads it at start-up, reporting an
    unreadable file as a config error, and the operator receives the numpy array.
    """
    bounds = {k: v for k, v in (("gt", gt), ("ge", ge), ("lt", lt), ("le", le)) if v is not None}
    return field(default=default, metadata={"bounds": bounds, "file": file, "doc": doc})


@runtime_checkable
class Operator(Protocol):
    """What the pipeline calls; see the module docstring."""

    name: str
    columns: dict[str, str]
    arrays: dict[str, tuple[Shape, str]]
    rows: dict[str, str]
    reductions: dict[str, tuple[Shape, str]]

    def start(self, series: SeriesStart) -> None: ...
    def output_series(self, series: SeriesStart) -> SeriesStart: ...
    def process(self, frame: Frame) -> Frame: ...
    def collect(self, frame: Frame) -> Frame: ...
    def state(self) -> dict[str, Any]: ...
    def merge(self, other: dict[str, Any]) -> None: ...
    def snapshot(self) -> dict[str, Any]: ...
    def finish(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class NoParams:
    """For operators without parameters."""


class Stateless:
    """Base for operators: no outputs declared, no state to merge, nothing to collect.

    Subclasses override what they need; an operator with mergeable state overrides
    ``state``/``merge``/``snapshot``/``finish``.
    """

    name: ClassVar[str]
    Params: ClassVar[type] = NoParams

    def __init__(self, params: Any = None) -> None:
        self.params = params if params is not None else self.Params()
        self.columns: dict[str, str] = {}
        self.arrays: dict[str, tuple[Shape, str]] = {}
        self.rows: dict[str, str] = {}
        self.reductions: dict[str, tuple[Shape, str]] = {}

    def start(self, series: SeriesStart) -> None:
        self.series = series

    def output_series(self, series: SeriesStart) -> SeriesStart:
        return series

    def collect(self, frame: Frame) -> Frame:
        return frame

    def state(self) -> dict[str, Any]:
        return {}

    def merge(self, other: dict[str, Any]) -> None:
        return None

    def snapshot(self) -> dict[str, Any]:
        return {}

    def finish(self) -> dict[str, Any]:
        return self.snapshot()
