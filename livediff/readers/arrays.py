"""Read one reference array (dark, flat, mask, background) from a file named in a config.

Formats: NumPy ``.npy``; TIFF (``.tif``/``.tiff``, via tifffile); HDF5 (``.h5``, ``.hdf5``,
``.nxs``, ``.cxi``) where ``FILE::/path/to/dataset`` names the dataset, and without it the
file must hold exactly one dataset of two or more dimensions.  A 3-D stack is averaged over
its first axis (a dark or flat series).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

_HDF5 = (".h5", ".hdf5", ".nxs", ".cxi")


def load_array(spec: str) -> np.ndarray:
    """The 2-D array named by ``spec`` (see the module docstring).

    Raises
    ------
    ValueError
        Unknown format, missing or ambiguous dataset, or not 2-D / 3-D.
    OSError
        The file cannot be read.
    """
    path, _, dataset = spec.partition("::")
    suffix = Path(path).suffix.lower()
    if suffix == ".npy":
        array = np.load(path, allow_pickle=False)
    elif suffix in (".tif", ".tiff"):
        import tifffile

        array = tifffile.imread(path)
    elif suffix in _HDF5:
        array = _read_hdf5(path, dataset or None)
    else:
        raise ValueError(f"unknown array file type {suffix!r} (expected .npy, .tif, .tiff, {', '.join(_HDF5)})")
    if array.ndim == 3:
        array = array.mean(axis=0, dtype=np.float64)
    if array.ndim != 2:
        raise ValueError(f"expected a 2-D array (or a 3-D stack), got shape {array.shape}")
    return array


def _read_hdf5(path: str, dataset: str | None) -> np.ndarray:
    import h5py

    with h5py.File(path, "r") as f:
        if dataset is None:
            found: list[str] = []
            f.visititems(lambda name, obj: found.append(name)
                         if isinstance(obj, h5py.Dataset) and obj.ndim >= 2 else None)
            if len(found) != 1:
                raise ValueError(f"{len(found)} datasets of 2+ dimensions in the file; name one as "
                                 f"'{path}::/path' (found: {', '.join(found[:5]) or 'none'})")
            dataset = found[0]
        if dataset not in f:
            raise ValueError(f"no dataset {dataset!r} in the file")
        return f[dataset][()]
