"""Operators: pure kernels plus thin stateful classes, one module per family.

:data:`REGISTRY` maps the name used in a config's ``[operators.NAME]`` table to the
operator class; each class declares its parameters as a frozen dataclass ``Params``.
"""
from __future__ import annotations

from .base import NoParams, Operator, Stateless, param
from .summary import Summary

REGISTRY: dict[str, type] = {cls.name: cls for cls in (Summary,)}

__all__ = ["REGISTRY", "NoParams", "Operator", "Stateless", "param"]
