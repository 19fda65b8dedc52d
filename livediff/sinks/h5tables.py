"""Growing datasets of a series file: tables, per-frame stacks, columns, frame stacks (SWMR appends)."""
from __future__ import annotations

import functools
from typing import Any

import h5py
import hdf5plugin
import numpy as np

from . import nxdata

#: HDF5 filter for frames: bitshuffle + LZ4, byte-compatible with DECTRIS bslz4 blobs
BSLZ4 = hdf5plugin.Bitshuffle(cname="lz4")


class Growing:
    """A dataset growing along its first axis; ``length`` rows of it were written.

    Appends call HDF5 through h5py's low-level interface: ``resize`` and ``dataset[n:] = block``
    check and convert their arguments in Python at every call, 67 µs for a row where
    ``set_extent`` and a hyperslab write take 18 (a series file appends to some twenty
    datasets per batch, a CXI file to five per hit).
    """

    dataset: h5py.Dataset
    length = 0

    def _append(self, block: np.ndarray) -> None:
        if len(block):
            n = self.length
            block = np.asarray(block, dtype=self.dataset.dtype)
            self._extend(n + len(block))
            if block.dtype.hasobject:  # variable-length strings: h5py's conversions
                self.dataset[n:] = block
            else:
                block = np.ascontiguousarray(block)
                space = self.dataset.id.get_space()
                space.select_hyperslab((n,) + (0,) * (block.ndim - 1), block.shape)
                self.dataset.id.write(h5py.h5s.create_simple(block.shape), space, block)
            self.length = n + len(block)

    def _extend(self, length: int) -> None:
        self.dataset.id.set_extent((length, *self._row_shape))

    @functools.cached_property
    def _row_shape(self) -> tuple[int, ...]:
        """The shape of one row (asking HDF5 for the dataset's shape costs a call per append)."""
        return self.dataset.shape[1:]

    def trim(self) -> None:
        """Cut the dataset back to the rows written (an append that failed may have grown it)."""
        if self.dataset.shape[0] != self.length:
            self.dataset.resize((self.length, *self.dataset.shape[1:]))


class Table(Growing):
    """A growable 1-D compound dataset, appended in chunks."""

    def __init__(self, group: h5py.Group, name: str, columns: dict[str, str]) -> None:
        self.dtype = np.dtype(list(columns.items()))
        self.dataset = group.create_dataset(name, shape=(0,), maxshape=(None,), dtype=self.dtype,
                                            chunks=(max(1, 65536 // self.dtype.itemsize),))
        self.pending: list[dict[str, Any]] = []
        self._columns: list[np.ndarray] = []

    def add_columns(self, frame: int, columns: dict[str, np.ndarray], **constant: Any) -> None:
        """Buffer rows given as columns; every row has ``frame`` and the ``constant`` values."""
        n = len(next(iter(columns.values()))) if columns else 0
        block = np.zeros(n, dtype=self.dtype)
        block["frame"] = frame
        for name, value in constant.items():
            block[name] = value
        for name, values in columns.items():
            if name in self.dtype.names:
                block[name] = values
        self._columns.append(block)

    def write(self) -> np.ndarray:
        """Append what is buffered; returns the rows appended."""
        blocks = self._columns
        if self.pending:
            blocks = [*blocks, np.array([tuple(r.get(n, missing(self.dtype[n])) for n in self.dtype.names)
                                         for r in self.pending], dtype=self.dtype)]
        self.pending, self._columns = [], []
        rows = np.concatenate(blocks) if blocks else np.zeros(0, self.dtype)
        self._append(rows)
        return rows


class Stack(Growing):
    """A growable dataset of fixed-shape per-frame arrays."""

    def __init__(self, group: h5py.Group, name: str, shape: tuple[int, ...], dtype: str) -> None:
        rows_per_chunk = max(1, (1 << 16) // max(1, int(np.prod(shape)) * np.dtype(dtype).itemsize))
        self.dataset = group.create_dataset(name, shape=(0, *shape), maxshape=(None, *shape), dtype=dtype,
                                            chunks=(rows_per_chunk, *shape) if shape else (4096,))
        self.pending: list[Any] = []

    def write(self) -> None:
        """Append what is buffered."""
        pending, self.pending = self.pending, []
        self._append(np.asarray(pending, dtype=self.dataset.dtype))


class Columns:
    """The numeric columns of a table as 1-D datasets of an NXdata group, against ``frame``."""

    def __init__(self, group: h5py.Group, columns: dict[str, str]) -> None:
        names = [n for n, dtype in columns.items() if np.dtype(dtype).kind in "iuf"]
        self.columns = [Stack(group, n, (), columns[n]) for n in names]
        others = [n for n in names if n != "frame"]
        own = [n for n in others if n not in ("timestamp", "received", "latency_s")]   # the operators' columns
        signal = next((n for n in ("sum", "n_spots") if n in others), own[0] if own else "latency_s")
        nxdata.nxdata(group, signal, ["frame"], auxiliary=[n for n in others if n != signal])

    def write(self, rows: np.ndarray) -> None:
        """Append the rows just appended to the table."""
        for column in self.columns:
            column.pending = rows[column.dataset.name.rsplit("/", 1)[-1]]
            column.write()

    def trim(self) -> None:
        for column in self.columns:
            column.trim()


class FrameStack(Growing):
    """Frames, one bitshuffle-LZ4 chunk each, written at their index (``length``: one past the
    highest index written; frames that never came stay unwritten chunks)."""

    def __init__(self, group: h5py.Group, name: str, shape: tuple[int, int], dtype: str) -> None:
        self.dataset = group.create_dataset(name, shape=(0, *shape), maxshape=(None, *shape), dtype=dtype,
                                            chunks=(1, *shape), **BSLZ4)

    def write(self, index: int, frame: Any) -> int:
        """Store frame ``index``: a (encoding, blob) bslz4 pair by direct chunk write, else an array.
        Returns the bytes handed over (an array's before compression)."""
        self.pad(index + 1)
        if isinstance(frame, tuple):
            chunk = memoryview(frame[1])  # the buffer itself, not a copy
            self.dataset.id.write_direct_chunk((index, 0, 0), chunk)
            return chunk.nbytes
        self.dataset[index] = frame
        return np.asarray(frame).nbytes

    def pad(self, length: int) -> None:
        """Grow to ``length`` frames; those never written read as the fill value."""
        if length > self.length:
            self._extend(length)
            self.length = length


def missing(dtype: np.dtype) -> Any:
    return np.nan if dtype.kind == "f" else -1
