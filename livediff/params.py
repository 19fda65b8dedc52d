"""Declaring settings: a dataclass field with the bounds and meaning the config loader checks.

Every settings dataclass (an operator's ``Params``, the receiver's, the sinks', the
executors') declares its fields with :func:`param`, so ``livediff.config`` can check each
key's type and range at start-up without knowing who uses it.  Nothing here imports the
rest of livediff.
"""
from __future__ import annotations

from dataclasses import field
from typing import Any


def param(default: Any, *, gt: float | None = None, ge: float | None = None,
          lt: float | None = None, le: float | None = None, file: bool = False, doc: str = "") -> Any:
    """A dataclass field with bounds the config loader checks (``gt`` = strictly greater, ...).

    ``file=True`` marks a field (typed ``str | None`` in the dataclass) naming an array
    file (``.npy``, ``.tif``/``.tiff``, ``.h5``/``.hdf5``/``.nxs``, with ``FILE::/dataset``
    for a given HDF5 dataset): the config loader reads it at start-up, reporting an
    unreadable file as a config error, and the user of the settings receives the numpy array.
    """
    bounds = {k: v for k, v in (("gt", gt), ("ge", ge), ("lt", lt), ("le", le)) if v is not None}
    return field(default=default, metadata={"bounds": bounds, "file": file, "doc": doc})
