"""Running per-pixel statistics of a frame stream: weighted mean, variance, std and SEM.

Exact and mergeable: every pixel keeps its count, the sum of weights V1 = sum w, the
sum of squared weights V2 = sum w^2, the weighted mean and M2 = sum w (x - mean)^2.
One Chan/Welford kernel (:func:`.stats_kernels.fold`) folds either one frame or another
partial state into these, so K workers' partial states merge to the single-stream answer and
no mean of squares is ever formed.  The mean is kept relative to a per-pixel shift (the
pixel's first value), which keeps full precision for large offsets (1e8 +- 1).

Weights are reliability weights (DESIGN.md): var = M2 / (V1 - ddof V2 / V1),
SEM = sqrt(var / n_eff) with n_eff = V1^2 / V2; uniform weights give numpy's var and
``scipy.stats.sem``.  An optional time constant tau turns the reductions into
exponentially weighted moving ones: frame i of a stream whose newest frame is L gets
the extra weight exp(-(L - i) / tau), which depends on frame numbers only, so the
moving statistics merge as exactly as the plain ones.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from ...model import Frame, SeriesStart
from ..base import BaseOperator, param
from ..checks import all_valid, check_choice, check_frame_shape, check_image, check_mask, check_shape
from .kernels import ARRAYS, check_weights, derive, fold, fold_frame, valid_sum

#: what :meth:`RunningStats.results` derives (and the operator's reductions)
RESULTS = ("mean", "var", "std", "sem", "count")


def _derived(name: str, doc: str) -> property:
    """A read-only property computing ``name`` alone with :meth:`RunningStats.results`."""
    return property(lambda self: self.results(names=(name,))[name], doc=doc)


class RunningStats:
    """Per-pixel running weighted mean, variance, std and SEM; mask-aware and mergeable.

    Parameters
    ----------
    shape : (rows, cols) of the frames; None = taken from the first frame or state.
    ddof : delta degrees of freedom of ``var``, ``std`` and ``sem`` (1 = ``scipy.stats.sem``).
    dtype : accumulator type, ``"float64"`` (default) or ``"float32"``.
    time_constant : tau in frames for exponentially weighted moving statistics; None =
        every frame keeps its weight.
    pixel_weights : per-pixel weights multiplying every frame's weight; None = 1.

    Raises
    ------
    ValueError
        On an unknown ``dtype``, negative ``ddof``, ``time_constant`` <= 0, or invalid
        ``pixel_weights``.

    Notes
    -----
    With reliability weights w, V1 = sum w, V2 = sum w^2 over the valid samples of a pixel:
    mean = sum(w x) / V1, var = sum(w (x - mean)^2) / (V1 - ddof V2 / V1),
    std = sqrt(var), SEM = sqrt(var / n_eff), n_eff = V1^2 / V2.  Partial states combine
    with the pairwise update of Chan, Golub & LeVeque, "Algorithms for computing the sample
    variance", Am. Stat. 37, 242 (1983), weighted as in West, CACM 22, 532 (1979) and
    Schubert & Gertz, SSDBM 2018; a frame is a partial state of one sample per pixel.
    Pixels without samples give NaN; so do var/std/SEM where V1 - ddof V2/V1 <= 0 or a pixel
    has no more samples than ``ddof``.
    """

    def __init__(self, shape: tuple[int, int] | None = None, *, ddof: int = 1, dtype: str = "float64",
                 time_constant: float | None = None, pixel_weights: np.ndarray | None = None) -> None:
        check_choice(dtype, ("float64", "float32"), "dtype")
        if isinstance(ddof, bool) or not isinstance(ddof, (int, np.integer)) or ddof < 0:
            raise ValueError(f"ddof must be an integer >= 0, got {ddof!r}")
        if time_constant is not None and not (time_constant > 0 and math.isfinite(time_constant)):
            raise ValueError(f"time_constant must be a finite number of frames > 0, got {time_constant!r}")
        self.ddof, self.dtype = int(ddof), np.dtype(dtype)
        self.time_constant = None if time_constant is None else float(time_constant)
        self._pw = self._pw2 = None
        if pixel_weights is not None:
            self._pw = check_weights(pixel_weights, None if shape is None else tuple(shape), "pixel_weights")
            self._pw2 = self._pw * self._pw
            shape = self._pw.shape
        self._weighted = self.time_constant is not None or self._pw is not None
        self._last: int | None = None
        self._s: dict[str, np.ndarray | None] = dict.fromkeys(ARRAYS)
        self._zeros = None
        self.shape: tuple[int, int] | None = None
        if shape is not None:
            self._allocate(tuple(shape))

    def _allocate(self, shape: tuple[int, int]) -> None:
        self.shape = check_frame_shape(shape)
        self._s = {k: None if k in ("w", "w2") and not self._weighted else
                   np.zeros(shape, np.int64 if k == "count" else self.dtype) for k in ARRAYS}

    def _promote(self) -> None:
        """Switch from uniform to explicit weights (V1 = V2 = count so far)."""
        self._weighted = True
        if self.shape is not None and self._s["w"] is None:
            self._s["w"], self._s["w2"] = (self._s["count"].astype(self.dtype) for _ in range(2))

    def _decays(self, index: int) -> tuple[float, float]:
        """(factor on the state, factor on a sample/state at ``index``), moving the reference."""
        if self.time_constant is None:
            return 1.0, 1.0
        last = index if self._last is None else self._last
        self._last = max(last, index)
        tau = self.time_constant
        return math.exp(-(self._last - last) / tau), math.exp(-(self._last - index) / tau)

    def update(self, frame: np.ndarray, mask: np.ndarray | None = None, weight: Any = None, *,
               index: int | None = None) -> None:
        """Fold one frame in.

        Parameters
        ----------
        frame : (rows, cols) real array (any integer or float dtype; never written).
        mask : bool array of the same shape, True = valid; None = all valid.  A masked
            pixel contributes nothing from this frame (its value, even NaN, is not read).
        weight : None (1), a number >= 0, ``"intensity"`` (the frame's total valid
            intensity, scikit-ued's weighting) or a (rows, cols) array >= 0; multiplied by
            the ``pixel_weights``.  A zero weight contributes nothing and is not counted.
        index : frame number, for ``time_constant``; None = one after the newest so far.

        Raises
        ------
        ValueError
            On a shape mismatch, a non-bool mask, or a negative or non-finite weight.
        TypeError
            When ``frame`` is not real-valued.
        """
        frame = check_image(frame, "frame")
        if self.shape is None:
            self._allocate(frame.shape)
        check_shape(frame, self.shape, "frame", of="statistics")
        mask = check_mask(mask, frame.shape)
        scalar, pw, pw2 = self._frame_weights(frame, mask, weight)
        decay = 1.0
        if self._weighted:
            decay, age = self._decays(int(index) if index is not None else
                                      0 if self._last is None else self._last + 1)
            scalar *= age
        count = all_valid(self.shape) if mask is None else mask
        if not self._weighted and self.dtype == np.float64:  # the common case, in the vectorised kernel
            s = self._s
            fold_frame(s["count"], s["shift"], s["mean"], s["m2"], np.ascontiguousarray(frame),
                       np.ascontiguousarray(count))
            return
        if self._zeros is None:  # real arrays, not broadcast views: C-contiguous inputs let the kernel vectorise
            self._zeros = np.zeros(self.shape, np.float32)
        fold(*self._s.values(), decay, count, frame, self._zeros, self._zeros, pw, pw2, scalar)

    def _frame_weights(self, frame: np.ndarray, mask: np.ndarray | None,
                       weight: Any) -> tuple[float, np.ndarray | None, np.ndarray | None]:
        """(scalar weight, per-pixel weights, their squares) of one frame; promotes when weighted."""
        if weight is None:
            return 1.0, self._pw, self._pw2
        if isinstance(weight, str):
            if weight != "intensity":
                raise ValueError(f"weight must be a number, an array or 'intensity', got {weight!r}")
            weight = valid_sum(frame, mask)
        if np.ndim(weight) == 0:
            if not (math.isfinite(weight) and weight >= 0):
                raise ValueError(f"frame weight must be finite and >= 0, got {weight}")
            scalar, pw, pw2 = float(weight), self._pw, self._pw2
        else:
            pw = check_weights(weight, self.shape, "weight")
            scalar, pw = 1.0, pw if self._pw is None else pw * self._pw
            pw2 = pw * pw
        self._promote()
        return scalar, pw, pw2

    def state(self) -> dict[str, Any]:
        """The partial state, for :meth:`merge` (read-only views of the live arrays).

        Returns
        -------
        dict with ``count`` (int64), ``shift``, ``mean`` (relative to ``shift``), ``m2``,
        ``w`` (V1) and ``w2`` (V2) arrays (``w``/``w2`` None for uniform weights, all None
        before the shape is known), ``last`` (newest frame number, moving statistics) and
        ``time_constant``.  msgpack-able with an array codec.
        """
        views = {k: None if a is None else a.view() for k, a in self._s.items()}
        for a in views.values():
            if a is not None:
                a.setflags(write=False)
        return {**views, "last": self._last, "time_constant": self.time_constant}

    def merge(self, other: RunningStats | Mapping[str, Any]) -> None:
        """Fold another partial state (a :class:`RunningStats` or its :meth:`state`) into this one.

        The result equals one object that had seen both streams (Chan et al.'s formulas);
        ``other`` is not modified.

        Raises
        ------
        ValueError
            When the states differ in shape or time constant, or a key is missing.
        """
        o = other.state() if isinstance(other, RunningStats) else other
        missing = [k for k in (*ARRAYS, "last", "time_constant") if k not in o]
        if missing:
            raise ValueError(f"state lacks keys {missing}")
        if o["time_constant"] != self.time_constant:
            raise ValueError(f"cannot merge statistics with time_constant {o['time_constant']} "
                             f"into ones with {self.time_constant}")
        if o["count"] is None or (self.time_constant is not None and o["last"] is None):
            return  # nothing seen
        if self.shape is None:
            self._allocate(tuple(o["count"].shape))
        for k in ARRAYS:
            if o[k] is not None:
                check_shape(o[k], self.shape, f"state {k}", of="statistics")
        if o["w"] is not None:
            self._promote()
        decay, scale = self._decays(int(o["last"])) if self.time_constant is not None else (1.0, 1.0)
        fold(*self._s.values(), decay, *(o[k] for k in ARRAYS), scale)

    def results(self, dtype: str = "float64", names: tuple[str, ...] = RESULTS) -> dict[str, np.ndarray]:
        """Fresh arrays ``names`` of ``mean``, ``var``, ``std``, ``sem`` (``dtype``), ``count`` (int64).

        Raises
        ------
        ValueError
            Before any frame or state gave the shape, or for an unknown name.
        """
        self._require_shape()
        unknown = set(names) - set(RESULTS)
        if unknown:
            raise ValueError(f"unknown results {sorted(unknown)}; expected some of {RESULTS}")
        out = {k: np.empty(self.shape, dtype) for k in RESULTS[:4] if k in names}
        if out:
            derive(*self._s.values(), float(self.ddof), *(out.get(k) for k in RESULTS[:4]))
        if "count" in names:
            out["count"] = self._s["count"].copy()
        return out

    def reset(self) -> None:
        """Forget every sample; keeps shape, settings and the buffers (no new allocation)."""
        self._last = None
        for a in self._s.values():
            if a is not None:
                a.fill(0)

    def _require_shape(self) -> None:
        if self.shape is None:
            raise ValueError("no frame or state yet: the shape of the statistics is unknown")

    @property
    def weight(self) -> np.ndarray:
        """Per-pixel sum of weights V1 (the count for uniform weights), float."""
        self._require_shape()
        return (self._s["count"] if self._s["w"] is None else self._s["w"]).astype(self.dtype)

    @property
    def n_eff(self) -> np.ndarray:
        """Per-pixel effective number of samples V1^2 / V2 (NaN without samples)."""
        w = self.weight
        with np.errstate(invalid="ignore", divide="ignore"):
            return w * w / (w if self._s["w2"] is None else self._s["w2"])

    count = _derived("count", "Per-pixel number of samples that contributed (valid, weight > 0), int64.")
    mean = _derived("mean", "Per-pixel weighted mean, float64 (NaN without samples).")
    var = _derived("var", "Per-pixel variance with ``ddof``, float64 (see the class Notes).")
    std = _derived("std", "Per-pixel standard deviation sqrt(var), float64.")
    sem = _derived("sem", "Per-pixel standard error of the mean sqrt(var / n_eff), float64.")


@dataclass(frozen=True)
class StatsParams:
    """Parameters of the ``stats`` operator (``[operators.stats]``).

    Raises
    ------
    ValueError
        When ``weights = "result"`` lacks ``weight_result`` (``"operator.key"``), or
        ``weight_file`` is not a 2-D array of finite weights >= 0.
    """

    ddof: int = param(1, ge=0, doc="delta degrees of freedom of var, std and SEM (1 = scipy.stats.sem)")
    weights: Literal["uniform", "intensity", "result"] = "uniform"
    weight_result: str = param("", doc="'operator.key' of a per-frame scalar result, for weights = 'result'")
    weight_file: str | None = param(None, file=True, doc="per-pixel weights, multiplying the frame weight")
    time_constant: float | None = param(None, gt=0, doc="frames; exponentially weighted moving statistics")
    accumulator: Literal["float64", "float32"] = "float64"
    output: Literal["float64", "float32"] = "float64"

    def __post_init__(self) -> None:
        if self.weights == "result" and self.weight_result.count(".") != 1:
            raise ValueError(f"weights = 'result' needs weight_result = 'operator.key', got {self.weight_result!r}")
        if self.weights != "result" and self.weight_result:
            raise ValueError(f"weight_result is used only with weights = 'result', got weights = {self.weights!r}")
        if self.weight_file is not None:
            check_weights(self.weight_file, None, "weight_file")


class Stats(BaseOperator):
    """Running per-pixel statistics of the series (:class:`RunningStats`) as an operator.

    Declares the ``reductions`` ``mean``, ``var``, ``std``, ``sem`` (``output`` dtype) and
    ``count`` (int64), returned as fresh arrays by :meth:`snapshot` and :meth:`finish`.
    The statistics start afresh with every series; with ``time_constant`` they are also
    a moving window within it.
    """

    kind = "stats"
    Params = StatsParams

    def __init__(self, params: StatsParams | None = None, *, name: str | None = None) -> None:
        super().__init__(params, name=name)
        self.stats: RunningStats | None = None

    def start(self, series: SeriesStart) -> None:
        super().start(series)
        p, shape = self.params, tuple(series.shape)
        if p.weight_file is not None:
            check_shape(p.weight_file, shape, "weight_file", of="frame")
        if self.stats is not None and self.stats.shape == shape:
            self.stats.reset()  # reuses the buffers: no page faults on hundreds of MB per series
        else:
            self.stats = RunningStats(shape, ddof=p.ddof, dtype=p.accumulator, time_constant=p.time_constant,
                                      pixel_weights=p.weight_file)
        self.reductions = {k: (shape, p.output) for k in RESULTS[:4]}
        self.reductions["count"] = (shape, "int64")

    def process(self, frame: Frame) -> Frame:
        self.stats.update(frame.data, frame.mask, self._weight(frame), index=frame.index)
        return frame

    def _weight(self, frame: Frame) -> float | str | None:
        p = self.params
        if p.weights == "uniform":
            return None
        if p.weights == "intensity":
            return "intensity"
        op, key = p.weight_result.split(".")
        try:
            return frame.results[op][key]
        except KeyError:
            held = sorted(f"{o}.{k}" for o, r in frame.results.items() for k in r)
            raise ValueError(f"frame {frame.index}: no result {p.weight_result!r} for the weight; "
                             f"results hold {held}") from None

    def state(self) -> dict[str, Any]:
        return self.stats.state()

    def merge(self, other: dict[str, Any]) -> None:
        self.stats.merge(other)

    def snapshot(self) -> dict[str, Any]:
        return self.stats.results(self.params.output)
