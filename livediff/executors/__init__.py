"""Executors run chains off the event loop: the boundary between the run loop and the operators.

The run loop (:mod:`.runloop`) sees only the :class:`Executor` protocol; operators and
sinks never know which executor runs them.  An executor

- starts one chain per worker on each series (``start``) and reports the chain's
  :class:`~livediff.outputs.Layout`;
- takes batches of frames in arrival order (``process``, returning a :class:`Job` per run
  of the batch that may be processed together; the caller keeps at most
  :attr:`Executor.capacity` frames in flight) and hands them back, in the same order,
  through its in-order step (``collect``), where ``collect`` operators see them and
  series-wide state is folded (``livediff.operators.base``);
- holds each frame back until the series-wide state it needs is folded, and gives its
  worker that version: results never depend on the number of workers or on timing;
- merges the workers' partial states for ``snapshot`` and ``finish``.

Two implementations: ``threads`` (:mod:`.threads`, worker threads of this process) and
``dask`` (:mod:`.dask`, chains on Dask workers fed with the frames as received, with a
ledger that survives the loss of a worker).

:data:`EXECUTORS` maps ``[pipeline] executor`` to an implementation.
"""
from __future__ import annotations

import importlib.util
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from ..model import Codec, RowDecoder
from ..params import param
from ..pipeline import OperatorSpec
from .base import Executor, Job
from .threads import ThreadExecutor

__all__ = ["EXECUTORS", "Executor", "Job", "PipelineSettings", "ThreadExecutor", "create"]


@dataclass(frozen=True)
class PipelineSettings:
    """How frames are buffered and processed (``[pipeline]``)."""

    executor: Literal["threads", "dask"] = param("threads", doc="where chains run: worker threads of this "
                                                                "process, or Dask workers")
    workers: int = param(1, ge=1, le=1024, doc="workers, each with its own chain")
    queue_size: int = param(64, ge=1, doc="frames buffered between receiver and pipeline")
    overflow: Literal["block", "drop"] = "block"
    snapshot_period: float = param(2.0, ge=0, doc="seconds between published/saved snapshots of running "
                                                  "results; 0 = only at series end")
    scheduler: str = param("local", doc="dask: 'local' (a LocalCluster of `workers` processes here) or a running "
                                        "scheduler's address, e.g. 'tcp://host:8786'")
    credits: int = param(2, ge=1, le=64, doc="dask: calls in flight per worker")
    batch_frames: int = param(64, ge=1, le=4096, doc="most frames handed on together: the run loop takes as many "
                                                     "as have arrived, up to this, as one batch (1: a frame at "
                                                     "a time)")
    batch_mb: float = param(4.0, gt=0, doc="most payload per batch (a larger frame goes alone); dask: per call")
    fuse: bool = param(True, doc="run operators that allow it as one pass over each frame (summary, flatfield "
                                 "and spots on integer counts: the same results); false: each alone")
    ledger_mb: float = param(1024.0, gt=0, doc="dask: frames kept for re-sending after a worker loss; when "
                                               "full, the workers' partial states are pulled")
    wait_s: float = param(60.0, gt=0, doc="dask: a call not back after this long loses its worker; frames "
                                          "that find no worker this long are given up")

    def __post_init__(self) -> None:
        if self.scheduler != "local" and "://" not in self.scheduler:
            raise ValueError(f"scheduler must be 'local' or an address like 'tcp://host:8786', "
                             f"got {self.scheduler!r}")
        if self.executor == "dask" and importlib.util.find_spec("distributed") is None:
            raise ValueError("executor 'dask' needs Dask distributed: pip install 'livediff[dask]'")


def _threads(specs: Sequence[OperatorSpec], settings: PipelineSettings, decode: Codec | None,
             rows: RowDecoder | None) -> Executor:
    return ThreadExecutor(specs, settings.workers, batch_frames=settings.batch_frames, batch_mb=settings.batch_mb,
                          decode=decode, rows=rows, fuse=settings.fuse)


def _dask(specs: Sequence[OperatorSpec], settings: PipelineSettings, decode: Codec | None,
          rows: RowDecoder | None) -> Executor:  # noqa: ARG001 - its workers decode frames whole
    from .dask import DaskExecutor  # Dask is an optional extra: loaded only when chosen

    return DaskExecutor(specs, settings.workers, decode=decode, scheduler=settings.scheduler,
                        credits=settings.credits, batch_mb=settings.batch_mb, ledger_mb=settings.ledger_mb,
                        wait_s=settings.wait_s, fuse=settings.fuse)


#: ``[pipeline] executor`` -> factory ``(specs, settings, decode, rows) -> Executor``
EXECUTORS: dict[str, Callable[[Sequence[OperatorSpec], PipelineSettings, Codec | None, RowDecoder | None],
                              Executor]] = {
    "threads": _threads,
    "dask": _dask,
}


def create(settings: PipelineSettings, specs: Sequence[OperatorSpec], *, decode: Codec | None = None,
           rows: RowDecoder | None = None) -> Executor:
    """The executor ``settings`` chooses, with one chain per worker built from ``specs``.

    ``decode`` is the codec for frames that arrived compressed
    (``livediff.sources.codecs.decode_payload``): their workers decode them with it, or, where
    the chain's first pass can and ``rows`` (``livediff.sources.codecs.BitshuffleRows``) decodes
    the payload so, the pass decodes them as it reads their rows (the thread executor).
    """
    return EXECUTORS[settings.executor](specs, settings, decode, rows)
