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

Each worker thread has its own chain, built from one config: state that must not depend
on which worker saw which frame (a dark accumulated live, an alignment reference) is a
:class:`SeriesBoard` that the instances share through :func:`shared_by_params`.
"""
from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, TypeVar, runtime_checkable

import numpy as np

from ..model import Frame, SeriesStart
from .checks import all_valid

Shape = tuple[int, ...]
T = TypeVar("T")


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


_SHARED: dict[tuple[int, Callable[[], Any]], Any] = {}
_SHARED_LOCK = threading.Lock()


def shared_by_params(params: Any, factory: Callable[[], T]) -> T:
    """The one object ``factory()`` made for ``params``, shared by the instances built from it.

    The pipeline builds every worker's chain from one parsed config, so the operator
    instances built from one ``Params`` object (the worker chains of one pipeline) get the
    same object, and another pipeline, with Params objects of its own, gets another.

    Parameters
    ----------
    params : an operator's ``Params`` object, compared by identity (two equal configs
        parsed twice do not share).
    factory : called without arguments, under a lock, on the first request for
        ``params``; one object per (``params``, ``factory``).

    Returns
    -------
    The shared object, forgotten when ``params`` is garbage-collected.
    """
    key = (id(params), factory)
    with _SHARED_LOCK:
        shared = _SHARED.get(key)
        if shared is None:
            shared = _SHARED[key] = factory()
            weakref.finalize(params, _SHARED.pop, key, None)
        return shared


class SeriesBoard:
    """State that the instances of one configuration share within a series (see :func:`shared_by_params`).

    Every instance calls :meth:`open` in ``start`` and :meth:`close` in ``finish``: the
    first to open a series resets the state (:meth:`reset`), the others find it ready;
    after ``close`` the next ``open`` resets, whatever its series number.  Subclasses
    guard their state with the condition ``self._cond`` (notified by every reset).
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._open = False
        self._series: int | None = None

    def open(self, series: int, *args: Any) -> None:
        """Start series ``series``; ``args`` go to :meth:`reset` if this call starts it."""
        with self._cond:
            if self._open and series == self._series:
                return
            self._open, self._series = True, series
            self.reset(*args)
            self._cond.notify_all()

    def reset(self, *args: Any) -> None:
        """Start afresh (called with the lock held); subclasses define it."""
        raise NotImplementedError(f"{type(self).__name__} must define reset()")

    def close(self) -> None:
        """End the series (the next :meth:`open` resets, whatever its number)."""
        with self._cond:
            self._open = False
