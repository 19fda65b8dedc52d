"""The flat-field family's kernels in one namespace (the public API DESIGN.md lists).

``from livediff.operators import corrections`` gives :func:`correct`,
:func:`subtract_dark`, :func:`divide_flat` (:mod:`.flatfield`), :func:`static_background`
(:mod:`.static_background`), :func:`dynamic_background` (:mod:`.dynamic_background`) and
:func:`bin_frame` (:mod:`.bin`); each operator lives in the module named as the config
names it.
"""
from __future__ import annotations

from .bin import bin_frame
from .dynamic_background import dynamic_background
from .flatfield import correct, divide_flat, subtract_dark
from .static_background import static_background

__all__ = ["bin_frame", "correct", "divide_flat", "dynamic_background", "static_background", "subtract_dark"]
