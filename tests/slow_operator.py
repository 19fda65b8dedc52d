"""A test operator that is slow on purpose on some frames, importable by Dask workers (tests/ is on their path)."""
from __future__ import annotations

import time
from dataclasses import dataclass

from livediff.model import Frame, SeriesStart
from livediff.operators.base import BaseOperator, param


@dataclass(frozen=True)
class SlowParams:
    every: int = param(4, ge=1, doc="frames whose number is 1 modulo this are slow")
    seconds: float = param(0.3, ge=0, doc="how long a slow frame takes")


class Slow(BaseOperator):
    """Sleeps on frames 1, 1 + every, ...; records when each frame was done (``done``, s since the epoch)."""

    kind = "slow"
    Params = SlowParams

    def start(self, series: SeriesStart) -> None:
        super().start(series)
        self.columns = {"done": "f8"}

    def process(self, frame: Frame) -> Frame:
        if frame.index % self.params.every == 1:
            time.sleep(self.params.seconds)
        frame.results[self.name] = {"done": time.time()}
        return frame
