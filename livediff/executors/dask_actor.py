"""The worker side of the dask executor: a chain resident on a Dask worker, and what travels to and from it.

A :class:`ChainActor` lives on one Dask worker (a Dask actor) and holds a :class:`Chain`
with its partial state for the series.  The service calls it through :meth:`ChainActor.call`
with a call number; calls run one at a time, in number order, on a thread of the actor's
own (the worker's event loop stays free for Dask's heartbeats), whatever order the
network delivers them in.  Calls:

``start(series, output)``
    Start the chain on a series (compiling its kernels first for a new pixel type).
``process(records, versions)``
    Decode and process each :class:`FrameRecord` in order; returns a :class:`FrameResult`
    per frame.  ``versions`` carries the versions of series-wide state the records use that
    the actor does not hold (``{label: {key: state}}``); the actor keeps, per operator, only
    the newest version it has seen once the call is done, as the service expects.
``pull()``
    The chain's partial state (``Chain.state()``): everything processed since ``start``.

Nothing here imports Dask: the class is plain Python that Dask hosts.
"""
from __future__ import annotations

import asyncio
import copy
import ctypes
import logging
import pickle
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..model import Codec, Encoded, Frame, SeriesStart
from ..pipeline import Chain, OperatorSpec
from .blas import single_threaded_blas

log = logging.getLogger(__name__)

@dataclass
class FrameRecord:
    """A frame on its way to a worker, its pixels as received.

    ``payload`` is the compressed chunk as a uint8 array (``encoding`` "bslz4" or "lz4"), or
    the pixels themselves (``encoding`` "raw"); ``mask`` the frame's own mask, if the source
    gave one; ``keys`` names the version of each operator's series-wide state the frame uses
    (-1: none published yet).
    """

    seq: int
    index: int
    timestamp: float
    received: float
    position: tuple[int, int] | None
    encoding: str
    payload: np.ndarray
    mask: np.ndarray | None = None
    keys: dict[str, int] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        return self.payload.nbytes


@dataclass
class FrameResult:
    """What comes back for one frame: its results, its contributions to series-wide state,
    the output frame when a sink wants it, or the error an operator raised."""

    seq: int
    results: dict[str, dict[str, Any]]
    shared: dict[str, Any]
    data: np.ndarray | None = None
    error: BaseException | None = None


class ChainActor:
    """One chain on a Dask worker; see the module docstring.

    Parameters
    ----------
    specs : the configured chain.
    decode : the codec for compressed payloads (``livediff.sources.codecs.decode_payload``).
    warm : compile the kernels before a series of a new pixel type starts.
    fuse : run operators that allow it as one pass over each frame (``Chain``'s ``fuse``).
    """

    def __init__(self, specs: Sequence[OperatorSpec], decode: Codec, warm: bool = True, fuse: bool = True) -> None:
        _reuse_freed_memory()
        # one chain per worker process, parallel over frames: BLAS threads would oversubscribe the cores (Dask's
        # nanny sets OPENBLAS_NUM_THREADS=1 in the workers it spawns; a worker started otherwise gets it here)
        single_threaded_blas()
        self._specs = list(specs)
        self._decode = decode
        self._warm = warm
        self._warmed: set[tuple[str, bool]] = set()
        self._fuse = fuse
        self._chain = Chain(specs, fuse=fuse)
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="livediff-actor")
        self._next = 0
        self._turn: asyncio.Condition | None = None
        self._series: SeriesStart | None = None
        self._output = False
        self._versions: dict[str, dict[int, Any]] = {}
        self._adopted: dict[str, int] = {}

    async def call(self, number: int, method: str, *args: Any) -> Any:
        """Run ``method`` once every call numbered before ``number`` has run."""
        if self._turn is None:
            self._turn = asyncio.Condition()
        async with self._turn:
            await self._turn.wait_for(lambda: self._next == number)
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, getattr(self, f"_{method}"), *args)
        finally:
            async with self._turn:
                self._next += 1
                self._turn.notify_all()

    def _start(self, series: SeriesStart, output: bool) -> None:
        key = (series.dtype, series.mask is not None)
        if self._warm and key not in self._warmed:
            from .warmup import warm_up  # it runs a chain offline, with the threads executor

            self._warmed.add(key)
            warm_up(self._specs, series, fuse=self._fuse)
        self._chain.start(series)
        self._series, self._output = series, output
        stateful = [op.name for op in self._chain.operators if op.series_state]
        self._versions = {name: {-1: None} for name in stateful}
        self._adopted = dict.fromkeys(stateful, -1)

    def _process(self, records: list[FrameRecord], versions: dict[str, dict[int, Any]]) -> list[FrameResult]:
        for name, states in versions.items():
            self._versions[name].update(states)
        out = [self._one(record) for record in records]
        for name, states in self._versions.items():  # keep the newest only: what the service counts on
            newest = max(states)
            self._versions[name] = {newest: states[newest]}
        return out

    def _one(self, r: FrameRecord) -> FrameResult:
        series = self._series
        compressed = r.encoding != "raw"
        frame = Frame(series.series, r.index, None if compressed else r.payload, r.mask, timestamp=r.timestamp,
                      received=r.received, position=r.position, seq=r.seq,
                      payload=Encoded(r.encoding, r.payload, series.shape, series.dtype) if compressed else None)
        try:
            frame.decode(self._decode)
            for name, key in r.keys.items():
                if self._adopted[name] != key:
                    self._chain.by_name[name].use(self._versions[name][key])
                    self._adopted[name] = key
            frame = self._chain.process(frame)
        except Exception as exc:  # the frame failed: the service counts it, as with threads
            return FrameResult(r.seq, {}, {}, error=_portable(exc))
        return FrameResult(r.seq, frame.results, frame.shared, frame.data if self._output else None)

    def _pull(self) -> dict[str, dict[str, Any]]:
        # a copy: Dask pickles the answer later, when the next call may already be changing the live arrays
        return copy.deepcopy(self._chain.state())


def _reuse_freed_memory() -> None:
    """Let glibc's malloc keep freed frame buffers for the next frame, in this worker process.

    Dask's nanny starts workers with ``MALLOC_TRIM_THRESHOLD_=65536``, which also turns off
    glibc's adaptive mmap threshold: every decoded frame (18 MB for an EIGER2 4M) is then a
    fresh mmap, paid again in page faults, about 9 ms per 4M frame here, as much as decoding
    and summarising it.  Raising both thresholds (mmap at most to glibc's 32 MiB cap)
    restores reuse.  Elsewhere than glibc, nothing is done.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    libc.mallopt(m_mmap_threshold, 32 << 20)
    libc.mallopt(m_trim_threshold, 256 << 20)


def _portable(exc: Exception) -> Exception:
    """``exc``, or a RuntimeError saying the same when ``exc`` does not survive pickling."""
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:
        return RuntimeError(f"{type(exc).__name__}: {exc}")
    return exc
