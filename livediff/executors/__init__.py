"""Executors run chains off the event loop: the boundary between the run loop and the operators.

The run loop (:mod:`.runloop`) sees only the :class:`Executor` protocol; operators and
sinks never know which executor runs them.  An executor

- starts one chain per worker on each series (``start``) and reports the chain's
  :class:`~livediff.outputs.Layout`;
- takes frames in arrival order (``process``, returning a :class:`Job`; the caller keeps
  at most :attr:`Executor.workers` in flight) and hands them back, in the same order,
  through its in-order step (``collect``), where ``collect`` operators see them and
  series-wide state is folded (``livediff.operators.base``);
- holds each frame back until the series-wide state it needs is folded, and gives its
  worker that version: results never depend on the number of workers or on timing;
- merges the workers' partial states for ``snapshot`` and ``finish``.

:data:`EXECUTORS` maps ``[pipeline] executor`` to an implementation.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from ..params import param
from ..pipeline import OperatorSpec
from .base import Executor, Job
from .threads import ThreadExecutor

__all__ = ["EXECUTORS", "Executor", "Job", "PipelineSettings", "ThreadExecutor", "create"]


@dataclass(frozen=True)
class PipelineSettings:
    """How frames are buffered and processed (``[pipeline]``)."""

    executor: Literal["threads"] = param("threads", doc="where chains run: worker threads of this process")
    workers: int = param(1, ge=1, le=64, doc="workers, each with its own chain")
    queue_size: int = param(64, ge=1, doc="frames buffered between receiver and pipeline")
    overflow: Literal["block", "drop"] = "block"
    snapshot_period: float = param(2.0, ge=0, doc="seconds between published/saved snapshots of running "
                                                  "results; 0 = only at series end")


#: ``[pipeline] executor`` -> factory ``(specs, workers) -> Executor``
EXECUTORS: dict[str, Callable[[Sequence[OperatorSpec], int], Executor]] = {
    "threads": ThreadExecutor,
}


def create(settings: PipelineSettings, specs: Sequence[OperatorSpec]) -> Executor:
    """The executor ``settings`` chooses, with one chain per worker built from ``specs``."""
    return EXECUTORS[settings.executor](specs, settings.workers)
