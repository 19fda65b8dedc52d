"""Hand-off exports: files for other programs, beside each series' HDF5 file.

``[output] export`` names them: ``"refl"`` (:mod:`.refl`, a DIALS reflection table of the
series' spots) and ``"cxi"`` (:mod:`.cxi`, the hit frames and their peaks for CrystFEL).
Each exporter is a sink (:class:`~livediff.sinks.base.Sink`) after the HDF5 writer, whose
``file`` fact names the series file: an export takes its stem (``series_000001.h5`` ->
``series_000001.refl``).  File work runs on a thread of the exporter's own, fed through a
bounded queue, so the event loop only enqueues.
"""
from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..outputs import Layout, SeriesContext
from .base import Sink

log = logging.getLogger(__name__)

#: the names ``[output] export`` accepts
EXPORTS = ("refl", "cxi")

_CONTROL_TIMEOUT_S = 10.0


def create_exporters(names: Sequence[str]) -> list[Sink]:
    """The exporter sinks ``names`` choose, in that order."""
    from .cxi import CxiExporter
    from .refl import ReflExporter

    kinds: dict[str, Callable[[], Sink]] = {"refl": ReflExporter, "cxi": CxiExporter}
    unknown = [n for n in names if n not in kinds]
    if unknown:
        raise ValueError(f"unknown export {', '.join(map(repr, unknown))}; known: {', '.join(EXPORTS)}")
    return [kinds[name]() for name in names]


def beside(series: SeriesContext, suffix: str) -> Path | None:
    """A free path with the series file's stem and ``suffix`` in its directory; None without a series file."""
    file = series.facts.get("file")
    if file is None:
        return None
    path = Path(file).with_suffix(suffix)
    n = 1
    while path.exists():
        path = path.with_name(f"{Path(file).stem}_{n}{suffix}")
        n += 1
    return path


def labels_of(layout: Layout, kind: str) -> list[str]:
    """The labels of the chain's operators of ``kind``, in chain order."""
    return [label for label, k in layout.kinds.items() if k == kind]


class Background:
    """One thread doing an exporter's file work in submission order.

    Parameters
    ----------
    name : the thread's name, also in its log lines.
    size : calls that may wait; beyond it :meth:`offer` refuses (the caller counts).
    """

    def __init__(self, name: str, size: int) -> None:
        self.name = name
        self.errors = 0
        self._queue: queue.Queue = queue.Queue(maxsize=size)
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def offer(self, fn: Callable[..., Any], *args: Any) -> bool:
        """Queue ``fn(*args)`` unless the queue is full; False when refused."""
        try:
            self._queue.put_nowait((fn, args))
            return True
        except queue.Full:
            return False

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        """Queue ``fn(*args)``, waiting for room (bounded; an error is counted and logged)."""
        try:
            self._queue.put((fn, args), timeout=_CONTROL_TIMEOUT_S)
        except queue.Full:
            self.errors += 1
            log.error("%s: %s not accepted within %.0f s (disk too slow?)", self.name, fn.__name__,
                      _CONTROL_TIMEOUT_S)

    def close(self) -> None:
        """Finish what is queued, then stop the thread."""
        self._queue.put((None, ()))
        self._thread.join()

    def _run(self) -> None:
        while True:
            fn, args = self._queue.get()
            if fn is None:
                return
            try:
                fn(*args)
            except Exception as exc:  # a disk error must not kill the thread: report, count, go on
                self.errors += 1
                log.error("%s: %s failed: %s: %s", self.name, fn.__name__, type(exc).__name__, exc)
