"""A 4D (or 3D) dataset in any HDF5 file, read lazily, as a scan series to replay.

The datasets 4D-STEM and EBSD users have: ``(rows, cols, H, W)`` (the pattern at each scan
position; the scan shape is the first two axes, raster order unless given) or ``(N, H, W)`` (frames in acquisition order; the scan is
given by the caller, or there is none).  Named as ``FILE.h5::/path/to/dataset``.  Nothing
but the dataset's shape and type is read at open; :meth:`StackSeries.frame` reads one
frame (HDF5 reads the chunks it touches).  Pixel types livediff does not take are
converted frame by frame (signed and unsigned 8/16-bit to uint16, other floats to
float32); they keep their values.
"""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from ..model import FRAME_DTYPES, Scan, SeriesStart

#: how pixel types livediff does not take are sent: the smallest it takes that holds every value
_WIDER = {"int8": "int32", "int16": "int32", "int64": "float32", "uint64": "float32", "float16": "float32",
          "float64": "float32"}

SEPARATOR = "::"


def is_stack(spec: str | Path) -> bool:
    """Whether ``spec`` names a dataset inside a file (``FILE.h5::/path``)."""
    return SEPARATOR in str(spec)


class StackSeries:
    """The frames of one dataset as a series (the interface ``stream_series`` sends from).

    Parameters
    ----------
    spec : ``FILE.h5::/path/to/dataset``, shaped (rows, cols, H, W) or (N, H, W).
    scan : the scan of an (N, H, W) dataset (order, fly-back); for a 4D dataset its shape
        must be the first two axes (default: raster over them).
    series : the series number to announce.

    Raises
    ------
    OSError
        The file is missing or not HDF5.
    ValueError
        No such dataset, or one that is not 3- or 4-D, or a scan that does not fit it.
    """

    chunk_encoding = None  # frames are read and re-encoded, never forwarded

    def __init__(self, spec: str | Path, *, scan: Scan | None = None, series: int = 1) -> None:
        path, _, name = str(spec).partition(SEPARATOR)
        if not Path(path).is_file():
            raise OSError(f"{path}: no such file")
        try:
            self._file = h5py.File(path, "r")
        except OSError as exc:
            raise OSError(f"{path}: cannot open as HDF5 ({str(exc).splitlines()[0]})") from None
        try:
            ds = self._file.get(name)
            if not isinstance(ds, h5py.Dataset) or ds.ndim not in (3, 4):
                what = "no dataset" if ds is None else f"a {getattr(ds, 'ndim', '?')}-D {type(ds).__name__}"
                raise ValueError(f"{spec}: expected a (rows, cols, H, W) or (N, H, W) dataset, found {what}")
            if ds.ndim == 4:
                grid = ds.shape[:2]
                scan = scan or Scan(grid)
                if tuple(scan.shape) != grid or scan.flyback:
                    raise ValueError(f"{spec}: scan {scan.shape} (fly-back {scan.flyback}) does not fit the "
                                     f"dataset's scan axes {grid}")
            self._ds, self.scan, self.series = ds, scan, series
            self.shape = tuple(ds.shape[-2:])
            self.n_frames = int(np.prod(ds.shape[:-2]))
            self.dtype = ds.dtype.name if ds.dtype.name in FRAME_DTYPES else _WIDER.get(ds.dtype.name, "uint16")
            self.indices = range(self.n_frames)
        except BaseException:
            self._file.close()
            raise

    def series_start(self) -> SeriesStart:
        return SeriesStart(series=self.series, shape=self.shape, dtype=self.dtype, n_frames=self.n_frames,
                           scan=self.scan)

    def frame(self, i: int) -> np.ndarray:
        """Frame ``i`` in acquisition order (4D: the pattern at the scan's ``position(i)``)."""
        index = self.scan.position(i) if self._ds.ndim == 4 else (i,)
        return np.asarray(self._ds[index], dtype=self.dtype)

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> StackSeries:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
