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
``maps``        ``{name: dtype}`` per-frame scalars of ``frame.results[name]`` placed at the
                frame's scan position -> ``/entry/livediff/maps/<operator>/<name>`` ((rows,
                cols), NaN where no frame arrived) and the ``image`` topic; only when the
                series has a scan.  ``derive_maps(maps)`` fills the declared maps that
                are computed from the others (a pure function of them, called at each
                snapshot); a declared name no frame result carries is such a map.  Values
                for other positions than the frame's own (a figure that needs a position's
                neighbours, known only once they have arrived) go in a list under the key
                ``livediff.outputs.PLACED`` of ``frame.results[name]`` (from ``collect``)
                or of ``finish()`` (what is left at series end): ``[((row, col), {name:
                value}), ...]``.

``frame.results[name]`` holds the scalars and arrays under their names and, for
``rows``, one 1-D array per column under the key ``"rows"``.

Names: ``kind`` is what the config's ``kind`` key (or, without one, the table's label)
names, e.g. ``"stats"``; ``name`` is the instance's label in the chain, so one kind may
appear several times (``[operators.stats_raw]`` and ``[operators.stats_aligned]`` with
``kind = "stats"``).  Results, HDF5 groups and snapshots are keyed by ``name``.

Series-wide state
-----------------
Some operators need state that depends on earlier frames of the series, yet must not
depend on which worker processed which frame: an alignment reference, a dark taken at the
start of the series, the hot pixels found so far.  Such an operator sets ``series_state =
True`` and implements four hooks; the executor does the rest:

- ``epoch(seq, index)`` (dispatching side, in arrival order): how many of the series'
  first frames, counted in arrival order (``seq``), the state for frame ``seq`` (frame
  number ``index``) must include; 0 = none.  Non-decreasing in ``seq``.  ``None`` means
  "every frame before this one": the executor then waits until they are all folded and
  asks again, when the answer may read what the folding instance has seen (align: no
  reference yet, so wait for one).
- ``process`` (worker) puts what the frame contributes under ``frame.shared[name]``.
- ``fold(seq, contribution)`` (one instance, in arrival order, for every frame, with
  ``None`` for a frame that contributed nothing or failed): folds it in; returns True when
  the state changed, and ``shared()`` then returns the new version (read-only arrays).
- ``use(state)`` (worker): adopt the version the executor hands over before a frame;
  ``None`` means no frame has contributed yet.

The executor holds a frame back until the frames its epoch names are folded, then gives
its workers the last version published at or before that epoch.  The result depends on
the arrival order only, never on the number of workers or on timing; versions are plain
data, so a process or Dask executor can ship them.  ``snapshot``/``finish`` of such an
operator are taken from the folding instance.

Operators declare their parameters as a frozen dataclass ``Params`` whose fields use
:func:`param`, so the config loader can check every key, type and range up front.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np

from ..model import Frame, SeriesStart
from ..outputs import Declaring, Shape
from ..params import param
from .checks import all_valid

__all__ = ["BaseOperator", "NoParams", "Operator", "Shape", "param"]


@runtime_checkable
class Operator(Declaring, Protocol):
    """What the pipeline calls (its declared outputs: :class:`~livediff.outputs.Declaring`);
    see the module docstring."""

    series_state: bool

    def start(self, series: SeriesStart) -> None: ...
    def output_series(self, series: SeriesStart) -> SeriesStart: ...
    def process(self, frame: Frame) -> Frame: ...
    def collect(self, frame: Frame) -> Frame: ...
    def state(self) -> dict[str, Any]: ...
    def merge(self, other: dict[str, Any]) -> None: ...
    def snapshot(self) -> dict[str, Any]: ...
    def finish(self) -> dict[str, Any]: ...
    def epoch(self, seq: int, index: int) -> int | None: ...
    def fold(self, seq: int, contribution: Any) -> bool: ...
    def shared(self) -> Any: ...
    def use(self, state: Any) -> None: ...


@dataclass(frozen=True)
class NoParams:
    """For operators without parameters."""


class BaseOperator:
    """Defaults for every hook of the contract: no outputs, no state to merge, nothing to
    collect, no series-wide state.

    Subclasses set ``kind`` and ``Params`` and override what they need; an operator with
    mergeable state overrides ``state``/``merge``/``snapshot``/``finish``.

    Parameters
    ----------
    params : the validated ``Params`` (default: all defaults).
    name : the label in the chain (default: ``kind``).
    """

    kind: ClassVar[str]
    Params: ClassVar[type] = NoParams

    def __init__(self, params: Any = None, *, name: str | None = None) -> None:
        self.params = params if params is not None else self.Params()
        self.name = name or self.kind
        self.series_state = False
        self.columns: dict[str, str] = {}
        self.arrays: dict[str, tuple[Shape, str]] = {}
        self.rows: dict[str, str] = {}
        self.reductions: dict[str, tuple[Shape, str]] = {}
        self.maps: dict[str, str] = {}

    def start(self, series: SeriesStart) -> None:
        self.series = series

    def valid(self, frame: Frame) -> np.ndarray:
        """The frame's valid pixels as a bool array, for kernels that need one.

        Returns
        -------
        ``frame.mask``, or, when it is None (all valid), a shared read-only all-True mask
        of the frame's shape (:func:`~.checks.all_valid`: no allocation per frame).
        """
        return all_valid(frame.data.shape) if frame.mask is None else frame.mask

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

    def derive_maps(self, maps: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {}

    def epoch(self, seq: int, index: int) -> int | None:
        return 0

    def fold(self, seq: int, contribution: Any) -> bool:
        return False

    def shared(self) -> Any:
        return None

    def use(self, state: Any) -> None:
        return None
