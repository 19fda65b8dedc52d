"""Operators: pure kernels plus thin stateful classes, one module per family.

:data:`REGISTRY` maps the name used in a config's ``[operators.NAME]`` table to the
operator class; each class declares its parameters as a frozen dataclass ``Params``.
"""
from __future__ import annotations

from .align import Align
from .azimuthal import Azimuthal
from .base import NoParams, Operator, Stateless, param
from .bin import Bin
from .dynamic_background import DynamicBackground
from .flatfield import FlatField
from .hot_pixels import HotPixels
from .powder_center import PowderCenter
from .preview import Preview
from .spots import Spots
from .static_background import StaticBackground
from .stats import Stats
from .summary import Summary

REGISTRY: dict[str, type] = {cls.name: cls for cls in (
    Summary, HotPixels, FlatField, StaticBackground, DynamicBackground, Bin, Preview,
    Align, Stats, Spots, Azimuthal, PowderCenter,
)}

__all__ = ["REGISTRY", "NoParams", "Operator", "Stateless", "param"]
