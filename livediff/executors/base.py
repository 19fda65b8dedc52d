"""The executor protocol, the job it returns, and the in-order side every executor shares.

:class:`InOrder` is what does not depend on where chains run: it numbers the frames in
arrival order, asks the operators with series-wide state which epoch each frame needs,
folds the frames' contributions and runs the ``collect`` steps on one chain (the folding
chain, on one thread, in arrival order), and keeps the published :class:`Versions`.
:func:`report` merges partial states for a snapshot or the series end.
"""
from __future__ import annotations

import asyncio
import bisect
from collections.abc import Awaitable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from ..model import Codec, Frame, SeriesStart
from ..outputs import Layout
from ..pipeline import Chain, OperatorSpec


#: what :meth:`Executor.collect` returns per frame: the processed frame, or the error its operators raised
Outcome = Frame | BaseException


@dataclass
class Job:
    """Frames handed to an executor together: ``future`` resolves to one :data:`Outcome` per frame.

    ``received`` keeps each frame's pixels as the source delivered them (operators replace
    ``frame.data``), for sinks that record frames as received: the executor sets an entry
    when it decodes a compressed frame in this process, before ``future`` resolves; it stays
    None when the frame is decoded elsewhere (a Dask worker), and sinks decode
    ``frame.payload`` themselves if they need the pixels
    (:meth:`livediff.outputs.FrameOutput.pixels`).
    """

    frames: list[Frame]
    received: list[np.ndarray | None]
    future: asyncio.Future = field(init=False)


class Executor(Protocol):
    """What the run loop uses (see :mod:`livediff.executors`).

    ``workers`` is the number of chains; ``capacity`` how many frames the caller may keep
    in flight (``process`` called, ``collect`` not yet); ``process`` takes a batch of frames
    in arrival order and returns its jobs (a run of frames each, in order: a frame whose
    series-wide state needs an earlier frame of the batch folded starts a new job);
    ``collect`` returns a job's outcomes, in order; ``resent`` the frames of the
    current series processed a second time because a worker was lost.  ``start`` takes
    ``output``: whether a sink needs the chain's output frames (an executor running chains
    in other processes ships them back only then).  ``decode`` is the codec compressed
    frames are decoded with (where the work happens), which the sinks are handed too.
    ``restart`` takes new parameters for the same operators and restarts one operator and
    those after it, with no frame in flight (a live change; ``ValueError`` with the reasons
    when it cannot apply).
    """

    workers: int
    resent: int
    decode: Codec | None

    @property
    def layout(self) -> Layout: ...
    @property
    def capacity(self) -> int: ...

    async def warm_up(self, series: SeriesStart) -> None: ...
    async def start(self, series: SeriesStart, *, output: bool = True) -> Layout: ...
    async def restart(self, specs: Sequence[OperatorSpec], label: str) -> None: ...
    def process(self, frames: Sequence[Frame]) -> list[Job]: ...
    async def collect(self, job: Job) -> list[Outcome]: ...
    async def snapshot(self) -> dict[str, dict[str, Any]]: ...
    async def finish(self) -> dict[str, dict[str, Any]]: ...
    def status(self) -> dict[str, Any]: ...
    def close(self) -> None | Awaitable[None]: ...


class Versions:
    """The published versions of one operator's series-wide state.

    A version is keyed by the number of frames (in arrival order) folded when it was
    published; a frame whose epoch is ``e`` uses the last version with key <= ``e``.
    ``nbytes`` counts the array bytes the kept versions hold.
    """

    def __init__(self) -> None:
        self._keys: list[int] = []
        self._states: list[Any] = []
        self._sizes: list[int] = []
        self.nbytes = 0

    def publish(self, key: int, state: Any) -> None:
        self._keys.append(key)
        self._states.append(state)
        self._sizes.append(nbytes(state))
        self.nbytes += self._sizes[-1]

    def at(self, epoch: int | None) -> tuple[int, Any]:
        """(key, state) of the version for ``epoch``; (-1, None) when none was published by then."""
        i = -1 if epoch is None else bisect.bisect_right(self._keys, epoch) - 1
        return (-1, None) if i < 0 else (self._keys[i], self._states[i])

    def get(self, key: int) -> Any:
        """The state published under ``key`` exactly (None for -1, no version)."""
        found, state = self.at(key)
        if found != key:
            raise KeyError(f"no version {key} kept (oldest kept: {self._keys[0] if self._keys else None})")
        return state

    def forget_before(self, key: int) -> None:
        """Drop the versions older than ``key``: no frame still to be processed needs them
        (the version a frame needs never goes back in arrival order)."""
        i = bisect.bisect_left(self._keys, key)
        self.nbytes -= sum(self._sizes[:i])
        del self._keys[:i], self._states[:i], self._sizes[:i]


def nbytes(obj: Any) -> int:
    """Array bytes in ``obj`` (arrays, and tuples, lists and dicts of them)."""
    if isinstance(obj, np.ndarray):
        return obj.nbytes
    if isinstance(obj, (tuple, list)):
        return sum(nbytes(v) for v in obj)
    if isinstance(obj, dict):
        return sum(nbytes(v) for v in obj.values())
    return 0


class InOrder:
    """The in-order side of a series: numbering, epochs, the folding chain and the versions.

    Every method but :meth:`fold` runs on the event loop; :meth:`fold` (and :meth:`start`)
    on the executor's one folding thread.  A frame may run once :meth:`need` frames are
    folded (:attr:`folded`); :meth:`versions_for` then names the versions it uses.
    """

    def __init__(self, specs: Sequence[OperatorSpec]) -> None:
        self.chain = Chain(specs, folding=True)
        self.stateful: list[str] = []
        self.versions: dict[str, Versions] = {}
        self.started: dict[str, int] = {}  # stateful operator -> the seq it (re)started at
        self.next_seq = 0
        self.folded = 0

    def start(self, series: SeriesStart, inputs: dict[str, SeriesStart]) -> None:
        self.chain.start(series, inputs)
        self.stateful = [op.name for op in self.chain.operators if op.series_state]
        self.versions = {name: Versions() for name in self.stateful}
        self.started = dict.fromkeys(self.stateful, 0)
        self.next_seq = 0
        self.folded = 0

    def restart(self, specs: Sequence[OperatorSpec], label: str, inputs: dict[str, SeriesStart]) -> list[str]:
        """Restart the folding chain from ``label`` on (:meth:`Chain.restart`), with every frame
        folded: a restarted stateful operator counts the frames from the next one, as if the
        series started there, and its versions start empty.  Returns the stateful operators
        restarted."""
        before = {name: self.chain.by_name[name] for name in self.stateful}
        self.chain.restart(specs, label, inputs)
        restarted = [name for name in self.stateful if self.chain.by_name[name] is not before[name]]
        for name in restarted:
            self.versions[name] = Versions()
            self.started[name] = self.next_seq
        return restarted

    def number(self, frame: Frame) -> dict[str, int | None]:
        """Give ``frame`` its place in arrival order (``seq``); returns the epoch each
        stateful operator names for it (None: decide once every earlier frame is folded)."""
        frame.seq, self.next_seq = self.next_seq, self.next_seq + 1
        return {name: self._epoch(name, frame) for name in self.stateful}

    def _epoch(self, name: str, frame: Frame) -> int | None:
        """The operator's epoch for ``frame`` in frames folded since the series started; the
        operator itself counts from where it (re)started."""
        base = self.started[name]
        epoch = self.chain.by_name[name].epoch(frame.seq - base, frame.index)
        return None if epoch is None else base + epoch

    def runs(self, frames: Sequence[Frame]) -> list[tuple[list[Frame], list[dict[str, int | None]]]]:
        """:meth:`number` each of ``frames`` (a batch, in arrival order) and cut it into runs
        that may be processed together: every frame of a run needs only frames before the run
        folded, so no run waits for itself.  Returns ``(frames, epochs)`` per run."""
        found: list[tuple[list[Frame], list[dict[str, int | None]]]] = []
        for frame in frames:
            epochs = self.number(frame)
            if not found or self.need(frame, epochs) > found[-1][0][0].seq:
                found.append(([], []))
            found[-1][0].append(frame)
            found[-1][1].append(epochs)
        return found

    @staticmethod
    def need(frame: Frame, epochs: dict[str, int | None]) -> int:
        """How many frames must be folded before ``frame`` may run."""
        return max((frame.seq if e is None else e for e in epochs.values()), default=0)

    def versions_for(self, frame: Frame, epochs: dict[str, int | None]) -> dict[str, tuple[int, Any]]:
        """(key, state) of each stateful operator's version for ``frame``; call once
        :meth:`need` frames are folded (the answer is settled then)."""
        for name, epoch in epochs.items():
            if epoch is None:
                epochs[name] = self._epoch(name, frame)
        return {name: self.versions[name].at(epoch) for name, epoch in epochs.items()}

    def fold(self, frame: Frame, ok: bool) -> list[tuple[str, Any]]:
        """On the folding thread: the ``collect`` steps, then each contribution to series-wide
        state (None for a failed frame); returns the versions to publish."""
        if ok:
            frame = self.chain.collect(frame)
        published = []
        for name in self.stateful:
            op = self.chain.by_name[name]
            if op.fold(frame.seq - self.started[name], frame.shared.pop(name, None) if ok else None):
                published.append((name, op.shared()))
        frame.shared.clear()
        return published

    def fold_all(self, frames: Sequence[Frame], outcomes: Sequence[Outcome]) -> list[list[tuple[str, Any]]]:
        """:meth:`fold` each frame of a job (one thread hop per job); the versions each published."""
        return [self.fold(frame, not isinstance(outcome, BaseException)) for frame, outcome in zip(frames, outcomes)]

    def folded_through(self, frame: Frame, published: list[tuple[str, Any]]) -> None:
        """``frame`` is folded: publish the versions it produced."""
        for name, state in published:
            self.versions[name].publish(frame.seq + 1, state)
        self.folded = frame.seq + 1

    @property
    def versions_nbytes(self) -> int:
        return sum(v.nbytes for v in self.versions.values())


def report(merged: Chain, series: SeriesStart, states: Iterable[dict[str, dict[str, Any]]], folder: Chain,
           method: str) -> dict[str, dict[str, Any]]:
    """``method`` ("snapshot" or "finish") of the chain whose partial ``states`` are merged
    into ``merged`` (restarted on ``series`` first); operators of the folding chain ``folder``
    report from there."""
    merged.start(series)
    for state in states:
        merged.merge(state)
    return merged_report(merged, folder, method)


def merged_report(merged: Chain, folder: Chain, method: str) -> dict[str, dict[str, Any]]:
    """``method`` of ``merged``, with the folding chain's operators reporting from ``folder``."""
    out = {k: v for k, v in getattr(merged, method)().items() if k not in folder.by_name}
    out.update(getattr(folder, method)())
    return out
