"""Operator kind -> class, for the config loader (``[operators.LABEL]`` with ``kind``)."""
from __future__ import annotations

from .align import Align
from .azimuthal import Azimuthal
from .bin import Bin
from .dynamic_background import DynamicBackground
from .ebsd import EbsdAverage, EbsdQuality, EbsdStatic, Rescale
from .flatfield import FlatField
from .hot_pixels import HotPixels
from .mx import Mx
from .powder_center import PowderCenter
from .preview import Preview
from .spots import Spots
from .static_background import StaticBackground
from .stats import Stats
from .summary import Summary
from .virtual import Com, Virtual

REGISTRY: dict[str, type] = {cls.kind: cls for cls in (
    Summary, HotPixels, FlatField, StaticBackground, DynamicBackground, Bin, Preview,
    Align, Stats, Spots, Mx, Azimuthal, PowderCenter, Virtual, Com, EbsdStatic, Rescale, EbsdAverage, EbsdQuality,
)}
