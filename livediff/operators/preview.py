"""The ``preview`` operator: a binned, contrast-stretched snapshot of the latest frame.

:func:`to_display` stretches a frame between two percentiles of its valid pixels into a
compact integer type for display snapshots.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from ..model import Frame, SeriesStart
from .base import BaseOperator, param
from .bin import bin_frame, binned_shape
from .checks import check_choice, check_image, check_mask
from .masks import finite_mask

__all__ = ["Preview", "PreviewParams", "to_display"]


def to_display(image: np.ndarray, mask: np.ndarray | None = None, *,
               percentiles: tuple[float, float] = (1.0, 99.0), dtype: str = "uint8") -> np.ndarray:
    """``image`` stretched between two percentiles of its valid pixels into a small integer type.

    Parameters
    ----------
    image : (rows, cols), any real dtype.
    mask : bool, True = valid; invalid and non-finite pixels are left out of the
        percentiles and shown as 0.
    percentiles : (low, high), 0 <= low < high <= 100 (numpy's linear interpolation).
    dtype : ``"uint8"`` or ``"uint16"``.

    Returns
    -------
    New array of ``dtype``: :math:`\\mathrm{round}(T \\cdot \\mathrm{clip}((x - p_{lo}) / (p_{hi} - p_{lo}), 0, 1))`
    with :math:`T` the top of the type; all zeros when no pixel is valid or
    :math:`p_{hi} = p_{lo}`.
    """
    image = check_image(image)
    mask = check_mask(mask, image.shape)
    lo_q, hi_q = percentiles
    if not 0 <= lo_q < hi_q <= 100:
        raise ValueError(f"percentiles must satisfy 0 <= low < high <= 100, got {percentiles}")
    check_choice(dtype, ("uint8", "uint16"), "dtype")
    valid = finite_mask(image, mask)
    out = np.zeros(image.shape, dtype=dtype)
    if not valid.any():
        return out
    lo, hi = np.percentile(image[valid], [lo_q, hi_q])
    if hi > lo:
        top = np.iinfo(dtype).max
        scaled = np.clip((image[valid] - lo) / (hi - lo), 0.0, 1.0)
        out[valid] = np.rint(scaled * top).astype(dtype)
    return out


@dataclass(frozen=True)
class PreviewParams:
    """Parameters of :class:`Preview`."""

    k: int = param(4, ge=1, doc="binning before display")
    percentiles: tuple[float, float] = param((1.0, 99.0), ge=0, le=100, doc="contrast stretch (low, high)")
    dtype: Literal["uint8", "uint16"] = "uint8"

    def __post_init__(self) -> None:
        if not self.percentiles[0] < self.percentiles[1]:
            raise ValueError(f"percentiles must be (low, high) with low < high, got {list(self.percentiles)}")


class Preview(BaseOperator):
    """Display snapshot of the latest frame: binned by k (mean of a block's valid pixels), stretched.

    Keeps a reference to the frame with the highest index it processed (no copy: kernels
    never write their inputs); several workers merge by keeping the latest.  ``snapshot()``
    returns ``{"image": ...}`` (the ``image`` topic), empty before the first frame.
    """

    kind = "preview"
    Params = PreviewParams

    def start(self, series: SeriesStart) -> None:
        super().start(series)
        shape = binned_shape(series.shape, self.params.k, name="preview: k", of="frame")
        self.reductions = {"image": (shape, self.params.dtype)}
        self._latest: dict[str, Any] = {}

    def process(self, frame: Frame) -> Frame:
        if not self._latest or frame.index > self._latest["index"]:
            self._latest = {"index": frame.index, "data": frame.data, "mask": frame.mask}
        return frame

    def state(self) -> dict[str, Any]:
        return dict(self._latest)

    def merge(self, other: dict[str, Any]) -> None:
        if other and (not self._latest or other["index"] > self._latest["index"]):
            self._latest = dict(other)

    def snapshot(self) -> dict[str, np.ndarray]:
        if not self._latest:
            return {}
        k = self.params.k
        binned, valid = bin_frame(self._latest["data"], k, self._latest["mask"], reduce="mean", min_valid=1 / k**2)
        return {"image": to_display(binned, valid, percentiles=self.params.percentiles, dtype=self.params.dtype)}
