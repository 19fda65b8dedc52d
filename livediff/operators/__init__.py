"""Operators: pure kernels plus thin stateful classes, one module (or subpackage) per
family, named as the config names the operator.

:data:`REGISTRY` maps an operator kind (a config table's ``kind``, or its label when it
has none) to the operator class; each class declares its parameters as a frozen
dataclass ``Params``.  The registry lives in :mod:`.registry` and is loaded on first use,
so importing one family (or :mod:`.base`) does not import the others.  Operators import
only :mod:`livediff.model`, :mod:`livediff.params`, :mod:`livediff.outputs` (the
declarations they make) and the numeric libraries: a kernel can be called from a
notebook with nothing else loaded.
"""
from __future__ import annotations

from typing import Any

from .base import BaseOperator, NoParams, Operator, param

__all__ = ["REGISTRY", "BaseOperator", "NoParams", "Operator", "param"]


def __getattr__(name: str) -> Any:
    # the registry imports every operator (and numba): only when someone asks for it
    if name == "REGISTRY":
        from .registry import REGISTRY
        return REGISTRY
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
