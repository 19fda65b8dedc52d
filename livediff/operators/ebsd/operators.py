"""EBSD operators: static background, rescaling, neighbour pattern averaging, pattern quality.

- ``ebsd_static`` removes a static background: a pattern from a file, or the running mean
  of the scan so far (series-wide state: refreshed every ``update_every`` patterns, applied
  once ``min_patterns`` have arrived; the result depends on the arrival order only, never on
  the number of workers).  Its final mean is a reduction (``background``).
- ``rescale`` stretches each pattern to a dtype's range, or to uint8 with percentile
  contrast (kikuchipy ends every step with the min-max stretch).
- ``ebsd_average`` averages each pattern with its scan neighbours in the in-order step and
  reports the image quality of the averaged pattern, one scan line behind, at the averaged
  pattern's position (``placed`` map values, :data:`~livediff.outputs.PLACED`).
- ``ebsd_quality`` reports each pattern's image quality (a column and a map) and, one line
  behind, its average dot product with its neighbours (a map).

The dynamic background is ``dynamic_background`` with ``window = "kikuchipy"``
(:mod:`livediff.operators.dynamic_background`).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np

from ...model import Frame, SeriesStart
from ...outputs import PLACED
from ..base import BaseOperator, param
from ..checks import check_shape
from ..dynamic_background import remove_background
from ..masks import float32_series
from .kernels import image_quality, quality_weights, rescale, unit_pattern
from .neighbours import Neighbourhood, window

__all__ = ["EbsdAverage", "EbsdQuality", "EbsdStatic", "Rescale"]

log = logging.getLogger(__name__)


def _position(frame: Frame, series: SeriesStart) -> tuple[int, int] | None:
    """The frame's scan position (None: no scan, or a fly-back frame)."""
    if series.scan is None:
        return None
    return frame.position if frame.position is not None else series.scan.position(frame.index)


@dataclass(frozen=True)
class EbsdStaticParams:
    """Parameters of :class:`EbsdStatic`."""

    background: str | None = param(None, file=True, doc="static background pattern; unset: the running mean "
                                                         "of the scan's patterns so far")
    mode: Literal["subtract", "divide", "relative"] = param("subtract", doc="raw - bg, raw / bg or (raw - bg) / bg")
    min_patterns: int = param(50, ge=1, doc="running mean: patterns averaged before it is applied")
    update_every: int = param(32, ge=1, doc="running mean: patterns between refreshes (>= workers, or frames "
                                            "wait for it)")
    fill_value: float = param(0.0, doc="value of invalid pixels")


class EbsdStatic(BaseOperator):
    """Static background removal (``ebsd_static``): float32 out, mask-aware.

    Running mean: pattern ``seq`` (in arrival order) uses the mean of the first ``E`` patterns
    with ``E = update_every * (seq // update_every - 1)`` (the last refresh at least
    ``update_every`` patterns back, so workers never wait), once ``E >= min_patterns``;
    before, the pattern leaves without static correction.  Fly-back frames do not count.
    Column ``n_background``: patterns in the background applied (0: none).  Reduction
    ``background``: the running mean (float32, NaN where no valid pixel came).
    """

    kind = "ebsd_static"
    Params = EbsdStaticParams

    def __init__(self, params: Any = None, *, name: str | None = None) -> None:
        super().__init__(params, name=name)
        self._running = self.series_state = self.params.background is None

    def start(self, series: SeriesStart) -> None:
        super().start(series)
        p = self.params
        self.columns = {"n_background": "i8"}
        self._checked: tuple[np.ndarray | None, bool] = (None, False)
        if self._running:
            self.reductions = {"background": (tuple(series.shape), "f4")}
            self._sum = np.zeros(series.shape)
            self._n = np.zeros(series.shape, dtype=np.int64)
            self._current: tuple[np.ndarray, int] | None = None
        else:
            check_shape(p.background, series.shape, "ebsd_static: background", of="frame")
            background = np.array(p.background, dtype=np.float32)
            background.setflags(write=False)
            self._current = (background, 1)

    def output_series(self, series: SeriesStart) -> SeriesStart:
        return float32_series(series, series.mask)

    def process(self, frame: Frame) -> Frame:
        if self._running and (self.series.scan is None or _position(frame, self.series) is not None):
            frame.shared[self.name] = (frame.data, frame.mask)
        fill = np.float32(self.params.fill_value)
        if self._current is None:
            n = 0
            data = frame.data.astype(np.float32)
            if frame.mask is not None:
                data[~frame.mask] = fill
        else:
            background, n = self._current
            # an integer pattern and a usable background everywhere: the mask stays the one that came (the
            # series', whose background weights the dynamic background computes once)
            keep = frame.data.dtype.kind in "ui" and self._usable(background)
            valid = None if keep else np.empty(frame.data.shape, dtype=bool)
            data = remove_background(frame.data, background, frame.mask, mode=self.params.mode, fill_value=fill,
                                     mask_out=valid)
            frame.mask = frame.mask if keep else valid
        frame.data = data
        frame.results[self.name] = {"n_background": n}
        return frame

    def _usable(self, background: np.ndarray) -> bool:
        """Whether every pixel of ``background`` is finite (and > 0 for a division); cached per version."""
        if self._checked[0] is not background:
            ok = np.isfinite(background).all() and (self.params.mode == "subtract" or (background > 0).all())
            self._checked = (background, bool(ok))
        return self._checked[1]

    # series-wide state: the running mean, folded in arrival order
    def epoch(self, seq: int, index: int) -> int:
        k = self.params.update_every
        return max(0, (seq // k - 1) * k)

    def fold(self, seq: int, contribution: Any) -> bool:
        if contribution is not None:
            data, mask = contribution
            if mask is None:
                self._sum += data
                self._n += 1
            else:
                self._sum += np.where(mask, data, 0.0)
                self._n += mask
        count = int(self._n.max(initial=0))
        return (seq + 1) % self.params.update_every == 0 and count >= self.params.min_patterns

    def _mean(self) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return (self._sum / self._n).astype(np.float32)

    def shared(self) -> tuple[np.ndarray, int]:
        mean = self._mean()
        mean.setflags(write=False)
        return mean, int(self._n.max(initial=0))

    def use(self, state: tuple[np.ndarray, int] | None) -> None:
        self._current = state

    def snapshot(self) -> dict[str, Any]:
        return {"background": self._mean()} if self._running else {}


@dataclass(frozen=True)
class RescaleParams:
    """Parameters of :class:`Rescale`."""

    dtype: Literal["uint8", "uint16", "float32"] = param("uint8", doc="output type: its full range "
                                                                      "(float32: -1..1, kikuchipy's)")
    percentiles: tuple[float, float] | None = param(None, ge=0, le=100, doc="clip to these percentiles of "
                                                                            "each pattern first (contrast)")

    def __post_init__(self) -> None:
        if self.percentiles is not None and not self.percentiles[0] < self.percentiles[1]:
            raise ValueError(f"percentiles must be (low, high) with low < high, got {list(self.percentiles)}")


class Rescale(BaseOperator):
    """Stretches every pattern to the full range of ``dtype`` (:func:`~.kernels.rescale`), as kikuchipy
    ends each step; invalid pixels are 0."""

    kind = "rescale"
    Params = RescaleParams

    def output_series(self, series: SeriesStart) -> SeriesStart:
        return replace(series, dtype=self.params.dtype, saturation=None)

    def process(self, frame: Frame) -> Frame:
        frame.data = rescale(frame.data, frame.mask, dtype=self.params.dtype, percentiles=self.params.percentiles)
        return frame


@dataclass(frozen=True)
class NeighbourParams:
    """Parameters of :class:`EbsdAverage` (the window of scan neighbours)."""

    radius: int = param(1, ge=1, doc="window half width, scan steps (1: 3 x 3)")
    shape: Literal["circular", "rectangular"] = param("circular", doc="circular: kikuchipy's default window")
    std: float | None = param(None, gt=0, doc="Gaussian weights of this std (scan steps); unset: equal weights")


class _Neighbours(BaseOperator):
    """What both neighbourhood operators share: the pattern kept by ``process`` for the in-order step,
    a :class:`Neighbourhood` on the folding instance only, and the last line at series end."""

    figure = "average"

    def start(self, series: SeriesStart) -> None:
        super().start(series)
        self._hood: Neighbourhood | None = None
        if series.scan is None:
            log.warning("%s: the series has no scan, so no neighbours: no neighbour figures", self.name)

    def _window(self) -> np.ndarray:
        return window(self.params.radius, shape=self.params.shape, std=self.params.std)

    def collect(self, frame: Frame) -> Frame:
        kept = frame.shared.get(self.name)
        position = _position(frame, self.series)
        if kept is None or position is None:
            return frame
        if self._hood is None:  # only the folding instance keeps lines
            self._hood = Neighbourhood(self.series.scan, self.series.shape, self._window(), figure=self.figure)
            log.info("%s: keeping %d scan lines of patterns (%.1f MB)", self.name, self._hood.slots,
                     self._hood.nbytes / 1e6)
        done = self._hood.add(position, kept)
        frame.results.setdefault(self.name, {})[PLACED] = [(p, self._values(v)) for p, v in done]
        return frame

    def _values(self, figure: Any) -> dict[str, float]:
        raise NotImplementedError

    def finish(self) -> dict[str, Any]:
        if self._hood is None:
            return self.snapshot()
        if self._hood.late:
            log.warning("%s: %d patterns arrived after a neighbour that needed them was evaluated (out of scan "
                        "order); they were left out there", self.name, self._hood.late)
        return {**self.snapshot(), PLACED: [(p, self._values(v)) for p, v in self._hood.flush()]}


class EbsdAverage(_Neighbours):
    """Neighbour pattern averaging (``ebsd_average``) and the image quality of the averaged patterns.

    Each pattern is averaged with its neighbours in the window (:func:`~.neighbours.window`)
    as soon as they have arrived: one scan line and ``radius`` patterns behind, in the
    in-order step; holes and the scan border are left out of the average (kikuchipy's
    weights).  Map ``iq``: the averaged pattern's image quality, placed at its position;
    the patterns the chain passes on are not averaged (their neighbours had not arrived).
    """

    kind = "ebsd_average"
    Params = NeighbourParams

    def start(self, series: SeriesStart) -> None:
        super().start(series)
        self.maps = {"iq": "f8"}
        self._mask = series.mask
        self._weights = quality_weights(tuple(series.shape))

    def process(self, frame: Frame) -> Frame:
        frame.shared[self.name] = frame.data
        return frame

    def _values(self, averaged: np.ndarray) -> dict[str, float]:
        return {"iq": image_quality(averaged, self._mask, weights=self._weights)}


@dataclass(frozen=True)
class QualityParams:
    """Parameters of :class:`EbsdQuality`."""

    dot_products: bool = param(True, doc="also the average dot product with the neighbours (one line behind)")
    radius: int = param(1, ge=1, doc="neighbours within this many scan steps (circular window)")


class EbsdQuality(_Neighbours):
    """Pattern quality (``ebsd_quality``): image quality per pattern, average neighbour dot product.

    Column and map ``iq`` (:func:`~.kernels.image_quality`, kikuchipy's); map ``adp``, the
    mean dot product of the zero-mean, unit-norm pattern with its existing neighbours'
    (kikuchipy's average neighbour dot product map), placed one scan line behind.
    """

    kind = "ebsd_quality"
    Params = QualityParams
    figure = "dot"

    def start(self, series: SeriesStart) -> None:
        super().start(series)
        self.columns = {"iq": "f8"}
        self.maps = {"iq": "f8", "adp": "f8"} if self.params.dot_products else {"iq": "f8"}
        self._weights = quality_weights(tuple(series.shape))

    def process(self, frame: Frame) -> Frame:
        frame.results[self.name] = {"iq": image_quality(frame.data, frame.mask, weights=self._weights)}
        if self.params.dot_products:
            frame.shared[self.name] = unit_pattern(frame.data, frame.mask)
        return frame

    def _window(self) -> np.ndarray:
        return window(self.params.radius)

    def _values(self, adp: float) -> dict[str, float]:
        return {"adp": adp}
