"""The ``static_background`` operator: divides (or subtracts) a fixed background frame, as in EBSD."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from ..model import Frame, SeriesStart
from .base import BaseOperator, param
from .checks import check_choice, check_image, check_shape
from .flatfield import correct
from .masks import float32_series, pass_mask

__all__ = ["StaticBackground", "StaticBackgroundParams", "static_background"]


def static_background(image: np.ndarray, background: np.ndarray, mask: np.ndarray | None = None, *,
                      mode: str = "divide", fill_value: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Static-background correction as in EBSD practice: raw / background, or raw - background.

    Parameters
    ----------
    image, background : (rows, cols), any real dtypes.
    mask : bool, True = valid; None = all valid.
    mode : ``"divide"`` (background zero or non-finite -> masked) or ``"subtract"``.
    fill_value : value written at invalid pixels.

    Returns
    -------
    (corrected, mask) : float32 result (``fill_value`` where invalid) and the new bool mask.

    Raises
    ------
    ValueError, TypeError
        As :func:`correct`, and for another ``mode``.
    """
    image = check_image(image)
    check_choice(mode, ("divide", "subtract"), "mode")
    valid = np.empty(image.shape, dtype=np.bool_)
    slot = "flat" if mode == "divide" else "dark"
    out = correct(image, mask=mask, saturation=math.inf, fill_value=fill_value, mask_out=valid, **{slot: background})
    return out, valid


@dataclass(frozen=True)
class StaticBackgroundParams:
    """Parameters of :class:`StaticBackground`."""

    background: str | None = param(None, file=True, doc="static background frame (EBSD: the mean pattern)")
    mode: Literal["divide", "subtract"] = "divide"
    fill_value: float = param(0.0, doc="value of invalid pixels")

    def __post_init__(self) -> None:
        if self.background is None:
            raise ValueError("background: a static background file is required")


class StaticBackground(BaseOperator):
    """Divides (or subtracts) a static background frame: :func:`static_background`.

    Pixels with a zero or non-finite background are masked in divide mode; frames leave
    as float32.  Saturation is ``flatfield``'s business: place this one after it.
    """

    kind = "static_background"
    Params = StaticBackgroundParams

    def start(self, series: SeriesStart) -> None:
        super().start(series)
        background = self.params.background
        check_shape(background, series.shape, "static_background: background", of="frame")
        self._background = np.ascontiguousarray(background, dtype=np.float32)
        valid = np.isfinite(self._background)
        if self.params.mode == "divide":
            valid &= self._background != 0
        if series.mask is not None:
            valid &= series.mask
        valid.setflags(write=False)
        self._valid = valid

    def output_series(self, series: SeriesStart) -> SeriesStart:
        return float32_series(series, self._valid)

    def process(self, frame: Frame) -> Frame:
        p = self.params
        frame.data, frame.mask = static_background(frame.data, self._background,
                                                   pass_mask(frame, self.series, self._valid), mode=p.mode,
                                                   fill_value=p.fill_value)
        return frame
