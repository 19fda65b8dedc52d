"""DIALS reflection table export: the series' spots as ``dials.find_spots`` writes ``strong.refl``.

The file is DIALS' msgpack format (writer: ``dials/array_family/reflection_table_msgpack_adapter.h``,
``pack<dials::af::reflection_table>``; reader: ``flex_ext.py``, ``from_msgpack_file``),
one msgpack array of three::

    ["dials::af::reflection_table", 2, {"identifiers": {}, "nrows": N, "data": {NAME: COLUMN, ...}}]

Each column is ``[type_name, [N, bin]]``, ``bin`` holding the N elements' raw bytes
(little-endian: DIALS writes host memory and runs on little-endian machines).  The columns,
in DIALS' (sorted) order:

=========================  ==================  ==========================================
column                     type                value
=========================  ==================  ==========================================
``bbox``                   ``int6``            6 x int32: x0, x1, y0, y1, z0, z1 (pixel
                                               indices, upper bounds exclusive, as livediff's)
``flags``                  ``std::size_t``     uint64 32 (strong)
``id``                     ``int``             int32 0 (one experiment)
``intensity.sum.value``    ``double``          float64, the sum of the spot's counts
``intensity.sum.variance`` ``double``          float64, the same (Poisson)
``n_signal``               ``int``             int32, the spot's pixels
``panel``                  ``std::size_t``     uint64 0
``xyzobs.px.value``        ``vec3<double>``    3 x float64: x, y, z with DIALS' pixel-edge
                                               origin, i.e. livediff's centroid + 0.5
``xyzobs.px.variance``     ``vec3<double>``    3 x float64, the centroid variances
=========================  ==================  ==========================================

z: DIALS puts frame i (0-based, the image number - 1 of a sequence starting at 1) at
[i, i + 1), so a one-frame spot is at z = i + 0.5 and a spot spread over frames at the
weighted mean of their centres + 0.5; livediff's z is that mean of frame indices.  In
3-D mode the rows are the linked spots.  ``identifiers`` is empty (no experiment list
is written; DIALS does the same when ``find_spots`` starts from images without saving
one).  No ``shoebox`` column (``dials.find_spots output.shoeboxes=False``).

The spots are spilled to a temporary file beside the export as they arrive (memory stays
flat over long series) and the table is written at series end, in chunks, under a
temporary name renamed into place when complete.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import msgpack
import numpy as np

from ..outputs import FrameOutput, Reductions, SeriesContext
from ..throttle import Throttle
from .exports import Background, beside, labels_of

log = logging.getLogger(__name__)

#: the spot rows kept until series end
SPILL = np.dtype([("x", "<f8"), ("y", "<f8"), ("z", "<f8"), ("var_x", "<f8"), ("var_y", "<f8"),
                  ("var_z", "<f8"), ("intensity", "<f8"), ("intensity_var", "<f8"),
                  *((k, "<i4") for k in ("x0", "x1", "y0", "y1", "z0", "z1", "npix"))])

#: DIALS' ``Strong`` flag (``reflection_table.h``, ``Flags``)
STRONG = 1 << 5

_CHUNK = 1 << 20  # rows converted at a time


def _vec3(rows: np.ndarray, names: tuple[str, str, str], offset: float) -> np.ndarray:
    return np.stack([rows[n] + offset for n in names], axis=1).astype("<f8")


#: column name -> (DIALS type name, bytes per element, spill rows -> elements), in DIALS' order
COLUMNS: dict[str, tuple[str, int, Callable[[np.ndarray], np.ndarray]]] = {
    "bbox": ("int6", 24, lambda r: np.stack([r[k] for k in ("x0", "x1", "y0", "y1", "z0", "z1")], axis=1)
             .astype("<i4")),
    "flags": ("std::size_t", 8, lambda r: np.full(r.size, STRONG, "<u8")),
    "id": ("int", 4, lambda r: np.zeros(r.size, "<i4")),
    "intensity.sum.value": ("double", 8, lambda r: r["intensity"].astype("<f8")),
    "intensity.sum.variance": ("double", 8, lambda r: r["intensity_var"].astype("<f8")),
    "n_signal": ("int", 4, lambda r: r["npix"].astype("<i4")),
    "panel": ("std::size_t", 8, lambda r: np.zeros(r.size, "<u8")),
    "xyzobs.px.value": ("vec3<double>", 24, lambda r: _vec3(r, ("x", "y", "z"), 0.5)),
    "xyzobs.px.variance": ("vec3<double>", 24, lambda r: _vec3(r, ("var_x", "var_y", "var_z"), 0.0)),
}


def write_reflection_table(out: BinaryIO, rows: np.ndarray) -> None:
    """Write spot ``rows`` (:data:`SPILL` records, e.g. a memory map) as a DIALS reflection table."""
    pack = msgpack.Packer(use_bin_type=True).pack
    header = msgpack.Packer(use_bin_type=True)
    out.write(header.pack_array_header(3) + pack("dials::af::reflection_table") + pack(2))
    out.write(header.pack_map_header(3) + pack("identifiers") + header.pack_map_header(0))
    out.write(pack("nrows") + pack(int(rows.size)) + pack("data") + header.pack_map_header(len(COLUMNS)))
    for name, (type_name, size, convert) in COLUMNS.items():
        out.write(pack(name) + header.pack_array_header(2) + pack(type_name) + header.pack_array_header(2)
                  + pack(int(rows.size)) + _bin_header(rows.size * size))
        for start in range(0, rows.size, _CHUNK):
            out.write(convert(np.asarray(rows[start:start + _CHUNK])).tobytes())


def _bin_header(n: int) -> bytes:
    """msgpack's bin header for ``n`` bytes, the smallest format that holds it (as msgpack-c's ``pack_bin``)."""
    if n < 1 << 8:
        return b"\xc4" + n.to_bytes(1, "big")
    if n < 1 << 16:
        return b"\xc5" + n.to_bytes(2, "big")
    if n < 1 << 32:
        return b"\xc6" + n.to_bytes(4, "big")
    raise ValueError(f"a msgpack bin holds < 4 GiB; this column needs {n} bytes")


class ReflExporter:
    """Sink writing each series' spots to ``<stem>.refl`` at series end (see the module docstring)."""

    wants_output = False  # it reads the spot rows only

    def __init__(self) -> None:
        self._worker = Background("livediff-refl", 256)
        self._label: str | None = None
        self._open: tuple[BinaryIO, Path] | None = None  # the worker thread's spill file and export path
        self.rows = self.not_saved = 0
        self._behind = Throttle()  # a slow disk may refuse every block: a line now and then, not one per block

    @property
    def errors(self) -> int:
        return self._worker.errors

    def start_series(self, series: SeriesContext) -> dict[str, Any]:
        labels = labels_of(series.layout, "spots")
        path = beside(series, ".refl")
        self._label = labels[0] if labels and path is not None else None
        if self._label is None:
            log.warning("series %d: refl export: %s; no .refl file", series.start.series,
                        "no series file to write beside" if path is None else "the chain finds no spots")
            return {}
        if len(labels) > 1:
            log.info("series %d: refl export: the spots of %r (of %s)", series.start.series, self._label,
                     ", ".join(labels))
        self.rows = 0
        self._path = path
        self._worker.submit(self._start, path)
        return {}

    def add_frame(self, out: FrameOutput) -> None:
        self.add_rows(out.series, out.index, out.rows, out.epoch)

    def add_rows(self, series: int, index: int, rows: dict[str, dict[str, Any]], epoch: int) -> None:
        columns = rows.get(self._label) if self._label is not None else None
        if not columns or len(columns["x"]) == 0:
            return
        block = np.zeros(len(columns["x"]), SPILL)
        for name in SPILL.names:
            block[name] = columns[name]
        if self._worker.offer(self._append, block):
            self.rows += block.size
        else:
            self.not_saved += block.size
            self._behind.log(log, "behind", "refl export is behind: %d spots not saved so far", self.not_saved,
                             level=logging.ERROR)

    def write_reductions(self, reductions: Reductions) -> None:
        return None

    def end_series(self, summary: dict[str, Any]) -> dict[str, Any]:
        if self._label is None:
            return {}
        self._label = None
        self._worker.submit(self._finish)
        return {"refl": str(self._path)}

    def close(self) -> None:
        self._worker.close()
        self._finish()  # stopped without a series end: keep what is known

    # ------------------------------------------------------------------ on the worker thread
    def _start(self, path: Path) -> None:
        self._finish()  # a series without an end, replaced by this one
        self._open = (open(_spill_path(path), "w+b"), path)

    def _append(self, block: np.ndarray) -> None:
        if self._open is not None:
            self._open[0].write(block.tobytes())

    def _finish(self) -> None:
        """Write the open series' table from its spill file, then remove the spill."""
        if self._open is None:
            return
        (spill, path), self._open = self._open, None
        try:
            spill.flush()
            n = spill.seek(0, os.SEEK_END) // SPILL.itemsize
            rows = np.memmap(spill, dtype=SPILL, mode="r", shape=(n,)) if n else np.zeros(0, SPILL)
            part = path.with_name(path.name + ".part")
            with open(part, "wb") as out:
                write_reflection_table(out, rows)
            del rows
            os.replace(part, path)
            log.info("wrote %s (%d spots)", path, n)
        finally:
            spill.close()
            _spill_path(path).unlink(missing_ok=True)


def _spill_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.rows")
