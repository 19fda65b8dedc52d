"""Operators: pure kernels plus thin stateful classes, one module per family.

:data:`REGISTRY` maps the name used in a config's ``[operators.NAME]`` table to the
operator class; each class declares its parameters as a frozen dataclass ``Params``.
"""
from __future__ import annotations

from .align import Align
from .azimuthal import Azimuthal, PowderCenter
from .background import DynamicBackground
from .base import NoParams, Operator, Stateless, param
from .binning import Bin, Preview
from .corrections import FlatField, StaticBackground
from .masking import HotPixels
from .spots import Spots
from .stats import Stats
from .summary import Summary

REGISTRY: dict[str, type] = {cls.name: cls for cls in (
    Summary, HotPixels, FlatField, StaticBackground, DynamicBackground, Bin, Preview,
    Align, Stats, Spots, Azimuthal, PowderCenter,
)}

__all__ = ["REGISTRY", "NoParams", "Operator", "Stateless", "param"]
