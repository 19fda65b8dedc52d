"""What the run loop hands to the sinks: the outputs a chain declares, and typed results.

:class:`Layout` gathers what the operators declared at series start, so a sink can create
every dataset before the first frame arrives (SWMR needs that).  Per frame the sinks get a
:class:`FrameOutput`; at snapshots and at series end a :class:`Reductions`.  Sinks import
this module and :mod:`livediff.model`, never the operators, and decide for themselves
what to keep (the HDF5 sink, for example, whether to record the frames as received).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from .model import Codec, Encoded, Frame, Scan, SeriesStart

Shape = tuple[int, ...]

#: columns every frames-table row has, before the operators' own
BASE_COLUMNS = {"frame": "i8", "timestamp": "f8", "received": "f8", "latency_s": "f8", "epoch": "i8"}

#: names under /entry/livediff that operators cannot take
RESERVED = frozenset({"frames", "config", "summary", "reductions", "corrected", "maps", "per_frame", "written",
                      "provenance", "epochs"})

#: the result key (in ``frame.results[label]`` or in ``finish()``) of map values for other scan positions than
#: the frame's own: a list of ``((row, col), {name: value})``, e.g. what needs the neighbours of a position
PLACED = "placed"


class Declaring(Protocol):
    """The part of an operator a :class:`Layout` reads (see ``livediff.operators.base``)."""

    kind: str
    name: str
    columns: dict[str, str]
    arrays: dict[str, tuple[Shape, str]]
    rows: dict[str, str]
    reductions: dict[str, tuple[Shape, str]]
    maps: dict[str, str]

    def derive_maps(self, maps: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


@dataclass
class Layout:
    """Every output the chain declared for a series.

    ``columns`` is flat, one entry per frames-table column; ``owners`` says which operator
    (label) and which of its result keys fills it.  An operator under its own kind's name
    gives its columns their plain names (``shift_y``); one under another label prefixes them
    (``aligned_stats.n_valid``), so one kind may appear several times.  ``arrays``, ``rows``
    and ``reductions`` are keyed by operator label.
    """

    columns: dict[str, str] = field(default_factory=lambda: dict(BASE_COLUMNS))
    owners: dict[str, tuple[str, str]] = field(default_factory=dict)
    arrays: dict[str, dict[str, tuple[Shape, str]]] = field(default_factory=dict)
    rows: dict[str, dict[str, str]] = field(default_factory=dict)
    reductions: dict[str, dict[str, tuple[Shape, str]]] = field(default_factory=dict)
    maps: dict[str, dict[str, str]] = field(default_factory=dict)
    derived: dict[str, Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]] = field(default_factory=dict)
    kinds: dict[str, str] = field(default_factory=dict)  # label -> operator kind
    scan: Scan | None = None
    output: SeriesStart | None = None  # what the last operator's frames look like

    def add(self, op: Declaring) -> None:
        """Add ``op``'s declarations, refusing clashes with names already taken."""
        self.kinds[op.name] = op.kind
        for key, dtype in op.columns.items():
            column = key if op.name == op.kind else f"{op.name}.{key}"
            if column in self.columns:
                raise ValueError(f"operator {op.name!r}: column {column!r} is already produced by another")
            self.columns[column] = dtype
            self.owners[column] = (op.name, key)
        if (op.arrays or op.rows) and op.name in RESERVED:
            raise ValueError(f"operator {op.name!r} cannot write /entry/livediff/{op.name}: the name is "
                             f"taken by livediff ({', '.join(sorted(RESERVED))})")
        if op.arrays and op.rows:
            raise ValueError(f"operator {op.name!r} declares both per-frame arrays and rows; "
                             f"/entry/livediff/{op.name} can hold only one")
        clash = set(op.maps) & set(op.reductions)
        if clash:
            raise ValueError(f"operator {op.name!r} declares {', '.join(sorted(clash))} as both a map and a "
                             f"reduction; /entry/livediff/maps and the image topic need one name each")
        for kind in ("arrays", "rows", "reductions", "maps"):
            if getattr(op, kind):
                getattr(self, kind)[op.name] = dict(getattr(op, kind))
        if op.maps:
            self.derived[op.name] = op.derive_maps

    def output_of(self, frame: Frame, received: np.ndarray | None, done: float | None = None, *,
                  decode: Codec | None = None) -> FrameOutput:
        """The typed output of a processed ``frame``.

        Parameters
        ----------
        frame : the frame as the chain left it (operators replace ``data`` and ``mask``,
            never the compressed ``payload``).
        received : the pixels as received, before any operator replaced them; None when they
            were decoded in another process (``frame.payload`` holds them).
        done : when processing finished (``time.time()``); default now.
        decode : the codec that decodes ``frame.payload`` for the sinks that need the pixels
            and got no ``received``.
        """
        done = time.time() if done is None else done
        row: dict[str, Any] = {"frame": frame.index, "timestamp": frame.timestamp, "received": frame.received,
                               "latency_s": done - frame.received, "epoch": frame.epoch}
        for column, (label, key) in self.owners.items():
            result = frame.results.get(label)
            if result is not None and key in result:
                row[column] = result[key]
        arrays = {label: {name: frame.results[label][name] for name in declared}
                  for label, declared in self.arrays.items() if label in frame.results}
        rows = {label: frame.results[label]["rows"] for label in self.rows
                if "rows" in frame.results.get(label, {})}
        position = None
        if self.scan is not None:
            position = frame.position if frame.position is not None else self.scan.position(frame.index)
        maps = {label: {name: frame.results[label][name] for name in declared if name in frame.results[label]}
                for label, declared in self.maps.items() if label in frame.results} if position else {}
        return FrameOutput(series=frame.series, index=frame.index, epoch=frame.epoch, row=row, arrays=arrays,
                           rows=rows, received=received, payload=frame.payload, decode=decode, output=frame.data,
                           position=position, maps=maps, placed=self.placed_of(frame.results))

    def placed_of(self, results: dict[str, dict[str, Any]]) -> dict[str, list[tuple[tuple[int, int], dict]]]:
        """The map values for explicit positions (:data:`PLACED`) in a frame's ``results`` or in ``finish()``'s,
        ``{operator label: [((row, col), {name: value}), ...]}``, declared names only; empty without a scan."""
        if self.scan is None:
            return {}
        return {label: [(tuple(pos), {k: v for k, v in values.items() if k in self.maps[label]})
                        for pos, values in results[label][PLACED]]
                for label in self.maps if PLACED in results.get(label, {})}


@dataclass
class FrameOutput:
    """One processed frame, as the sinks receive it.

    Attributes
    ----------
    series, index : the series and the frame number.
    epoch : the configuration epoch the frame was processed under (also in ``row``).
    row : the frames-table row: :data:`BASE_COLUMNS` and every operator column.
    arrays : per-frame arrays, ``{operator label: {name: array}}``.
    rows : tables with any number of rows (spots), ``{operator label: {column: 1-D array}}``.
    received : the pixels as received (their dtype) when this process decoded them; None
        when a Dask worker did (:meth:`pixels` decodes ``payload`` then).
    payload : the pixels as received when they came compressed (``"bslz4"`` or ``"lz4"``),
        else None.
    decode : the codec for ``payload`` (:meth:`pixels`).
    output : the chain's output frame (float32 after a correcting operator).
    position : (row, col) of the frame in the series' scan, or None (no scan, a fly-back frame).
    maps : the values to place there, ``{operator label: {name: value}}`` (empty without a position).
    placed : values for other positions, ``{operator label: [((row, col), {name: value}), ...]}``
        (:data:`PLACED`): an operator that needs a position's neighbours reports it later.
    """

    series: int
    index: int
    epoch: int
    row: dict[str, Any]
    arrays: dict[str, dict[str, np.ndarray]]
    rows: dict[str, dict[str, np.ndarray]]
    received: np.ndarray | None
    payload: Encoded | None = None
    decode: Codec | None = None
    output: np.ndarray | None = None
    position: tuple[int, int] | None = None
    maps: dict[str, dict[str, float]] = field(default_factory=dict)
    placed: dict[str, list[tuple[tuple[int, int], dict[str, float]]]] = field(default_factory=dict)

    def pixels(self) -> np.ndarray:
        """The pixels as received: ``received``, or ``payload`` decoded now.  It may decode a
        frame, so call it off the event loop (a sink's own thread, a page render).

        Raises
        ------
        ValueError
            Nothing to give (no pixels, or a payload and no codec).
        """
        if self.received is not None:
            return self.received
        if self.payload is None or self.decode is None:
            raise ValueError(f"frame {self.index} of series {self.series}: no pixels as received, and "
                             f"{'no payload' if self.payload is None else 'no codec'} to decode them from")
        return self.decode(self.payload)

    def recorded(self) -> np.ndarray | tuple[str, Any]:
        """The frame as a writer records it as received: ``("bslz4", chunk)`` for a bitshuffle-LZ4
        payload (stored as it is, by a direct chunk write), else :meth:`pixels` (off the event loop)."""
        if self.payload is not None and self.payload.encoding == "bslz4":
            return ("bslz4", self.payload.buffer)
        return self.pixels()

    def to_record(self) -> FrameOutput:
        """This frame as a writer that records it as received keeps it in its queue: without the
        output frame, and without the decoded pixels when a bitshuffle-LZ4 payload is what it
        stores, so the queue holds no more than its budget (:attr:`recorded_nbytes`) counts."""
        stored = self.payload is not None and self.payload.encoding == "bslz4"
        return replace(self, output=None, received=None if stored else self.received)

    @property
    def recorded_nbytes(self) -> int:
        """Bytes :meth:`recorded` gives, known without decoding (a writer's queue budget)."""
        if self.payload is not None:
            return memoryview(self.payload.buffer).nbytes if self.payload.encoding == "bslz4" else self.payload.nbytes
        return 0 if self.received is None else self.received.nbytes


@dataclass
class Reductions:
    """Running (or, with ``final``, end-of-series) results of the operators that declared reductions or maps.

    ``values`` is ``{operator label: {name: array}}``; ``maps`` the same for the scan maps
    ((rows, cols) float64, NaN where no frame arrived); ``frame`` is the last frame processed.
    ``epoch`` is the configuration epoch in force; ``closed`` marks the last values of the
    operators a live change restarts, to be kept under that epoch (not mixed with the next).
    """

    series: int
    frame: int
    processed: int
    final: bool
    values: dict[str, dict[str, Any]]
    maps: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    epoch: int = 0
    closed: bool = False


@dataclass
class SeriesContext:
    """What the sinks get at series start.

    ``facts`` gathers what the sinks that started before report (the HDF5 sink: ``file``),
    so the publisher can announce where the series is written.  ``config_text`` is the
    configuration of ``epoch``, the configuration epoch in force at the series' start.
    """

    start: SeriesStart
    layout: Layout
    config_text: str
    config_hash: str
    epoch: int = 0
    facts: dict[str, Any] = field(default_factory=dict)
