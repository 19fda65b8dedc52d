"""The pattern files EBSD users have, read lazily, as scan series to replay.

- a **directory of images** (TIFF, PNG, BMP: one pattern per file), in natural sort order
  (``p2.tif`` before ``p10.tif``), or placed by scan positions in the names (``x12y7``, as
  NORDIF and many acquisition programs export them: ``x`` the column, ``y`` the row; a
  missing file is a hole);
- a **zip** of such images (read member by member, never unpacked);
- an **h5ebsd** file (kikuchipy's, EDAX's, Bruker's): patterns in ``Scan N/EBSD/Data/``
  ``patterns`` | ``RawPatterns`` | ``Pattern``, the scan size from ``Scan N/EBSD/Header``;
- **NORDIF** ``.dat`` (with its ``Setting.txt``) and **EDAX** ``.up1`` / ``.up2`` through
  kikuchipy's own readers (lazy, Dask), when kikuchipy is installed.

Images are decoded by tifffile (TIFF) and imageio (PNG, BMP); HDF5 by h5py.  Nothing is
read at open but names, headers and the first pattern's shape and type; :meth:`frame` reads
one pattern.  Every reader is a series source (``series_start``, ``frame``, ``n_frames``,
``indices``: the frames that exist) with its scan, raster order.
"""
from __future__ import annotations

import io
import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from ..model import FRAME_DTYPES, Scan, SeriesStart

__all__ = ["EBSD_SUFFIXES", "IMAGE_SUFFIXES", "PatternSeries", "is_ebsd", "open_patterns"]

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".bmp")
#: files (beside a directory or a zip of images) that :func:`open_patterns` reads
EBSD_SUFFIXES = (".zip", ".h5", ".hdf5", ".h5ebsd", ".dat", ".up1", ".up2")
_POSITION = re.compile(r"x(\d+)[^0-9a-z]*y(\d+)", re.IGNORECASE)
_WIDER = {"int8": "int32", "int16": "int32", "int64": "float32", "uint64": "float32", "float16": "float32",
          "float64": "float32", "bool": "uint8"}


def is_ebsd(path: str | Path) -> bool:
    """Whether ``path`` is a pattern directory or an EBSD file :func:`open_patterns` reads (an HDF5 file: one
    with a top-level group holding ``EBSD``, h5ebsd's layout)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if path.is_dir() or suffix in (".zip", ".dat", ".up1", ".up2"):
        return True
    if suffix not in (".h5", ".hdf5", ".h5ebsd") or not path.is_file():
        return False
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return any(isinstance(f[k], h5py.Group) and "EBSD" in f[k] for k in f)
    except OSError:
        return False


def _natural_key(name: str) -> list[Any]:
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def _decode(data: bytes | Path, suffix: str) -> np.ndarray:
    """One image file (a path or its bytes) as a 2-D array: tifffile for TIFF, imageio for the rest."""
    if suffix in (".tif", ".tiff"):
        import tifffile

        image = tifffile.imread(io.BytesIO(data) if isinstance(data, bytes) else data)
    else:
        import imageio.v3 as iio

        image = iio.imread(data, extension=suffix)
    if image.ndim == 3 and image.shape[-1] in (3, 4) and np.all(image[..., :3] == image[..., :1]):
        image = image[..., 0]  # a grey pattern saved as RGB(A)
    if image.ndim != 2:
        raise ValueError(f"expected a grey pattern, got an image of shape {image.shape}")
    return image


class PatternSeries:
    """EBSD patterns as a series to replay (see the module docstring for the formats).

    Parameters
    ----------
    read : reads pattern ``k`` (0-based, in file order) as a 2-D array.
    count : number of patterns.
    scan : the scan; without one, the patterns are frames in order (no maps).
    positions : each pattern's scan position (files named by position), else None: pattern k
        is frame k of the scan.
    series : series number to announce.
    close : called by :meth:`close`.
    """

    chunk_encoding = None  # frames are read and re-encoded, never forwarded

    def __init__(self, read, count: int, *, scan: Scan | None, positions: list[tuple[int, int]] | None = None,
                 series: int = 1, close=None) -> None:
        if count == 0:
            raise ValueError("no patterns found")
        self._read, self._close, self.scan, self.series = read, close, scan, series
        first = np.asarray(read(0))
        self.shape = tuple(first.shape)
        name = first.dtype.name
        self.dtype = name if name in FRAME_DTYPES else _WIDER.get(name, "uint16")
        if positions is None:
            self.n_frames = count if scan is None else scan.n_frames
            if scan is not None and count > scan.n_frames:
                raise ValueError(f"{count} patterns do not fit a scan of {scan.shape} ({scan.n_frames} frames)")
            self._pattern_of = {i: i for i in range(count)}
        else:
            by_index = _frame_indices(scan)
            self.n_frames = scan.n_frames
            self._pattern_of = {by_index[p]: k for k, p in enumerate(positions)}
        self.indices = sorted(self._pattern_of)

    def series_start(self) -> SeriesStart:
        return SeriesStart(series=self.series, shape=self.shape, dtype=self.dtype, n_frames=self.n_frames,
                           scan=self.scan)

    def frame(self, i: int) -> np.ndarray:
        """Frame ``i`` of the series (a frame in :attr:`indices`)."""
        pattern = np.asarray(self._read(self._pattern_of[i]))
        if pattern.shape != self.shape:
            raise ValueError(f"pattern {i} has shape {pattern.shape}, the first {self.shape}")
        return pattern.astype(self.dtype, copy=False)

    def close(self) -> None:
        if self._close is not None:
            self._close()

    def __enter__(self) -> PatternSeries:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _frame_indices(scan: Scan) -> dict[tuple[int, int], int]:
    return {p: i for i in range(scan.n_frames) if (p := scan.position(i)) is not None}


def _image_series(names: list[str], reader, where: str, scan: Scan | None, series: int, close=None) -> PatternSeries:
    """Images in natural order, or placed by the x..y.. positions in their names when all have one."""
    names = sorted((n for n in names if Path(n).suffix.lower() in IMAGE_SUFFIXES), key=_natural_key)
    if not names:
        raise ValueError(f"{where}: no {', '.join(IMAGE_SUFFIXES)} files")
    found = [_POSITION.search(Path(n).stem) for n in names]
    positions = None
    if all(found):
        positions = [(int(m.group(2)), int(m.group(1))) for m in found]  # (row = y, col = x)
        grid = (max(p[0] for p in positions) + 1, max(p[1] for p in positions) + 1)
        scan = scan or Scan(grid)
        if any(p[0] >= scan.shape[0] or p[1] >= scan.shape[1] for p in positions):
            raise ValueError(f"{where}: the positions in the file names span {grid}, which does not fit the scan "
                             f"{scan.shape} (fly-back {scan.flyback})")
        if len(set(positions)) != len(positions):
            raise ValueError(f"{where}: two files name the same scan position")
        order = sorted(range(len(names)), key=lambda k: positions[k])
        names, positions = [names[k] for k in order], [positions[k] for k in order]
    return PatternSeries(lambda k: reader(names[k]), len(names), scan=scan, positions=positions, series=series,
                         close=close)


def _h5ebsd(path: Path, scan: Scan | None, series: int, group: str | None) -> PatternSeries:
    import h5py

    f = h5py.File(path, "r")
    try:
        scans = [k for k in f if isinstance(f[k], h5py.Group) and "EBSD" in f[k]]
        if group is None and not scans:
            raise ValueError(f"{path}: no h5ebsd scan (a group holding EBSD/Data and EBSD/Header)")
        name = group or scans[0]
        data = f[name]["EBSD/Data"]
        found = [k for k in ("patterns", "RawPatterns", "Pattern") if k in data]
        if not found:
            raise ValueError(f"{path}: {name}/EBSD/Data holds no patterns, RawPatterns or Pattern dataset")
        ds = data[found[0]]
        header = f[name]["EBSD/Header"]
        rows = next((int(header[k][()]) for k in ("n_rows", "NROWS", "nRows") if k in header), None)
        cols = next((int(header[k][()]) for k in ("n_columns", "NCOLS", "nColumns") if k in header), None)
        if scan is None and rows is not None and cols is not None:
            scan = Scan((rows, cols))
        if ds.ndim == 4:
            shape = ds.shape[:2]

            def read(k: int) -> np.ndarray:
                return ds[np.unravel_index(k, shape)]
        elif ds.ndim == 3:
            def read(k: int) -> np.ndarray:
                return ds[k]
        else:
            raise ValueError(f"{path}: {ds.name} has {ds.ndim} dimensions, expected (N, H, W) or (rows, cols, H, W)")
        count = int(np.prod(ds.shape[:-2]))
        return PatternSeries(read, count, scan=scan, series=series, close=f.close)
    except BaseException:
        f.close()
        raise


def _kikuchipy(path: Path, scan: Scan | None, series: int) -> PatternSeries:
    try:
        import kikuchipy
    except ImportError:
        raise ValueError(f"{path}: NORDIF and EDAX binary files are read by kikuchipy (pip install kikuchipy, or "
                         f"livediff's bench extra)") from None
    signal = kikuchipy.load(str(path), lazy=True)
    data = signal.data
    nav = data.shape[:-2]
    grid = nav if len(nav) == 2 else (1, int(np.prod(nav)))
    scan = scan or Scan(tuple(int(n) for n in grid))
    flat = data.reshape((-1, *data.shape[-2:]))
    return PatternSeries(lambda k: np.asarray(flat[k].compute()), flat.shape[0], scan=scan, series=series)


def open_patterns(path: str | Path, *, scan: Scan | None = None, series: int = 1,
                  group: str | None = None) -> PatternSeries:
    """Open the EBSD patterns at ``path`` (see the module docstring) as a series.

    Parameters
    ----------
    path : a directory of images, a zip of them, an h5ebsd file, a NORDIF ``.dat`` or an
        EDAX ``.up1`` / ``.up2``.
    scan : the scan (order, fly-back); default: from the file names' positions, the h5ebsd
        header or kikuchipy's reader; a directory or zip in natural order has none unless given.
    series : the series number to announce.
    group : the h5ebsd scan group (default: the first, e.g. ``Scan 1``).

    Raises
    ------
    OSError
        ``path`` does not exist or cannot be read.
    ValueError
        No patterns, patterns of different shapes, a scan that does not fit, an unknown format.
    """
    path = Path(path)
    if not path.exists():
        raise OSError(f"{path}: no such file or directory")
    suffix = path.suffix.lower()
    if path.is_dir():
        files = [p.name for p in path.iterdir() if p.is_file()]
        return _image_series(files, lambda n: _decode(path / n, Path(n).suffix.lower()), str(path), scan, series)
    if suffix == ".zip":
        zf = zipfile.ZipFile(path)
        members = [m.filename for m in zf.infolist() if not m.is_dir()]
        try:
            return _image_series(members, lambda n: _decode(zf.read(n), Path(n).suffix.lower()), str(path), scan,
                                 series, close=zf.close)
        except BaseException:
            zf.close()
            raise
    if suffix in (".h5", ".hdf5", ".h5ebsd"):
        return _h5ebsd(path, scan, series, group)
    if suffix in (".dat", ".up1", ".up2"):
        return _kikuchipy(path, scan, series)
    raise ValueError(f"{path}: not an EBSD pattern file (expected a directory of {', '.join(IMAGE_SUFFIXES)} files "
                     f"or {', '.join(EBSD_SUFFIXES)})")
