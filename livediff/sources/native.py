"""livediff's native stream protocol: encoder (for :mod:`livediff.sources.sender`) and decoder.

Each message is a ZeroMQ multipart message.  Part 1 is a msgpack map with ``"v"`` (=
:data:`VERSION`), ``"type"`` (``"start"`` | ``"image"`` | ``"end"``) and ``"series"``;
``start`` and ``image`` carry a second part with a raw little-endian buffer.

``start``: ``shape`` [rows, cols], ``dtype``, ``n_frames``, ``geometry`` (see
:class:`livediff.model.Geometry`), ``scan`` [rows, cols] or nil, ``count_time``,
``saturation``, ``instrument`` (see :class:`livediff.model.Instrument`), ``meta``; ``mask``
true when part 2 holds the pixel mask as uint8 (1 = valid, livediff's convention) of
``shape``; ``pixel_flags`` true when the next part holds the detector's pixel mask flags
as received, uint32 little-endian (0 = good, NXmx bits), of ``shape``.

``image``: ``frame`` (0-based), ``timestamp`` (s since the epoch), ``shape``, ``dtype``,
``encoding``, optionally ``position`` [row, col] in the scan; part 2 the pixels, C order: ``"raw"`` little-endian, or compressed as
``"bslz4"`` (bitshuffle-LZ4) or ``"lz4"``, both in the HDF5 filter chunk layout (see
:mod:`livediff.sources.codecs`).  A compressed payload is checked (its framing) but not
decompressed here: it reaches the pipeline as ``Frame.payload``, decoded by the worker that
processes the frame and kept so a writer can store it without recompressing.

The schema the decoder enforces (anything else is a :class:`DecodeError`, one bad
message): ``series`` an integer in 0..2**63 - 1; ``shape`` two integers in 1..2**20 - 1
within the receiver's :class:`~livediff.sources.fields.Limits` with the ``dtype``, one of
:data:`livediff.model.FRAME_DTYPES`; ``n_frames`` nil or an integer in 0..2**31;
``geometry`` nil or a map whose ``beam_center`` is nil or 2 finite numbers,
``pixel_size`` nil or 2 positive finite numbers, ``distance`` and ``wavelength`` nil or
positive finite numbers (other keys ignored); ``scan`` nil or two positive integers
whose product is within the pixel limit; ``count_time`` nil or a finite number >= 0;
``saturation`` nil or a finite number; ``instrument`` nil or a map whose
``sensor_material``, ``description`` and ``serial_number`` are nil or strings (256
characters at most), ``sensor_thickness`` and ``frame_time`` nil or positive finite,
``goniometer`` nil or a list of [axis name, start, increment] (finite, degrees) and
``detector_translation`` nil or 3 finite numbers (other keys ignored); ``meta`` nil or a map
with string keys at every level; ``mask`` and ``pixel_flags`` nil, true or false; ``frame`` an integer in 0..2**31 - 1; ``timestamp``
absent, nil or a finite number; ``encoding`` absent (raw) or one of :data:`ENCODINGS`.

``end``: nothing more.
"""
from __future__ import annotations

import time
from typing import Any

import msgpack
import numpy as np

from ..errors import DecodeError
from ..model import FRAME_DTYPES, Frame, Geometry, Instrument, Scan, SeriesEnd, SeriesStart
from . import codecs
from .fields import (Limits, check_fits, frame_count, frame_index, integer, is_int, number, pair, positive, show, sides,
                     text, vector)

VERSION = 1
ENCODINGS = codecs.ENCODINGS

Event = SeriesStart | Frame | SeriesEnd
_WHERE = "native"


def encode_start(start: SeriesStart) -> list[bytes]:
    """Multipart message announcing ``start``."""
    header = {
        "v": VERSION, "type": "start", "series": start.series, "shape": list(start.shape),
        "dtype": start.dtype, "n_frames": start.n_frames, "geometry": start.geometry.to_dict(),
        "scan": _scan_header(start.scan), "count_time": start.count_time,
        "saturation": start.saturation, "instrument": start.instrument.to_dict(), "meta": start.meta,
        "mask": start.mask is not None, "pixel_flags": start.instrument.pixel_flags is not None,
    }
    parts = [msgpack.packb(header, use_bin_type=True)]
    if start.mask is not None:
        parts.append(start.mask.astype(np.uint8).tobytes())
    if start.instrument.pixel_flags is not None:
        parts.append(start.instrument.pixel_flags.astype("<u4").tobytes())
    return parts


def encode_image(series: int, index: int, data: np.ndarray, *, timestamp: float | None = None,
                 encoding: str = "raw", blob: bytes | None = None,
                 position: tuple[int, int] | None = None) -> list[bytes]:
    """Multipart message carrying frame ``index`` of ``series``, its pixels encoded as ``encoding``.

    ``blob``, when given, is the frame already encoded as ``encoding`` (e.g. a stored
    bitshuffle-LZ4 chunk): it is sent as is, and ``data`` only gives the shape and dtype.
    ``position``, when given, is the frame's (row, col) in the series' scan, sent for a
    scan whose frames do not follow its order.

    Raises
    ------
    ValueError
        ``encoding`` is not one of :data:`ENCODINGS`.
    """
    if encoding not in ENCODINGS:
        raise ValueError(f"encoding must be one of {', '.join(ENCODINGS)}, got {encoding!r}")
    header = {
        "v": VERSION, "type": "image", "series": series, "frame": index,
        "timestamp": time.time() if timestamp is None else timestamp,
        "shape": list(data.shape), "dtype": data.dtype.name, "encoding": encoding,
    }
    if position is not None:
        header["position"] = [int(v) for v in position]
    if blob is not None:
        payload = blob
    elif encoding == "raw":
        payload = memoryview(np.ascontiguousarray(data, dtype=data.dtype.newbyteorder("<"))).cast("B")
    else:
        payload = codecs.encode(np.ascontiguousarray(data), encoding)
    return [msgpack.packb(header, use_bin_type=True), payload]


def encode_end(series: int) -> list[bytes]:
    """Multipart message ending ``series``."""
    return [msgpack.packb({"v": VERSION, "type": "end", "series": series}, use_bin_type=True)]


def decode(parts: list[bytes], *, series: SeriesStart | None = None, limits: Limits = Limits()) -> Event:
    """Decode one native multipart message, every header field checked against the schema above.

    Parameters
    ----------
    parts : the message parts as received.
    series : the open series, if any; an image's shape and dtype must agree with it.
    limits : the largest frame accepted (``source.max_frame_pixels``, ``source.max_frame_mb``),
        checked from the header before anything is decoded; a scan map counts as a frame.

    Raises
    ------
    DecodeError
        With a one-line reason: not msgpack, wrong part count, unknown type, dtype or
        encoding, a field of the wrong type or out of range, a frame beyond ``limits``,
        wrong buffer length, shape disagreeing with the header.
    """
    try:
        header = msgpack.unpackb(parts[0], raw=False, strict_map_key=False)
    except (ValueError, TypeError, msgpack.UnpackException, IndexError) as exc:  # TypeError: unhashable map key
        raise DecodeError(f"native: header is not msgpack ({type(exc).__name__}: {exc})") from None
    if not isinstance(header, dict):
        raise DecodeError(f"native: header must be a map, got {type(header).__name__}")
    if header.get("v") != VERSION:
        raise DecodeError(f"native: protocol version {show(header.get('v'))}, expected {VERSION}")
    kind = header.get("type")
    series_no = integer(header, "series", _WHERE)
    if kind == "start":
        return _decode_start(header, parts, series_no, limits)
    if kind == "image":
        return _decode_image(header, parts, series_no, series, limits)
    if kind == "end":
        _expect_parts(parts, 1, "end")
        return SeriesEnd(series_no)
    raise DecodeError(f"native: unknown message type {show(kind)} (expected 'start', 'image' or 'end')")


def _decode_start(header: dict[str, Any], parts: list[bytes], series_no: int, limits: Limits) -> SeriesStart:
    where = f"native: start of series {series_no}"
    shape, dtype = _shape(header, where), _dtype(header, where)
    limits.check(shape, dtype, f"{where} refused")
    has_mask, has_flags = (_flag(header, key, where) for key in ("mask", "pixel_flags"))
    _expect_parts(parts, 1 + has_mask + has_flags, "start")
    flags = _buffer(parts[-1], shape, np.dtype("<u4"), "pixel_flags") if has_flags else None
    return SeriesStart(
        series=series_no, shape=shape, dtype=dtype.name, n_frames=frame_count(header, "n_frames", where),
        mask=_buffer(parts[1], shape, np.dtype(np.uint8), "mask").astype(bool) if has_mask else None,
        geometry=_geometry(header.get("geometry"), where), scan=_scan(header.get("scan"), where, limits),
        count_time=number(header, "count_time", where, minimum=0), saturation=_saturation(header, where),
        instrument=_instrument(header.get("instrument"), where, flags), meta=_meta(header.get("meta"), where),
    )


def _flag(header: dict[str, Any], key: str, where: str) -> bool:
    value = header.get(key)
    if value is not None and not isinstance(value, bool):
        raise DecodeError(f"{where}: {key!r} must be true or false, got {show(value)}")
    return bool(value)


def _instrument(value: Any, where: str, flags: np.ndarray | None) -> Instrument:
    """``instrument``: nil, or a map as :meth:`livediff.model.Instrument.to_dict` writes it."""
    if value is None:
        return Instrument(pixel_flags=None if flags is None else flags.astype(np.uint32))
    if not isinstance(value, dict):
        raise DecodeError(f"{where}: 'instrument' must be a map, got {show(value)}")
    where = f"{where}: instrument"
    axes = value.get("goniometer") or []
    if not isinstance(axes, list) or len(axes) > 32 or not all(
            isinstance(a, list) and len(a) == 3 and isinstance(a[0], str) and len(a[0]) <= 64 for a in axes):
        raise DecodeError(f"{where}: 'goniometer' must be a list of [axis name, start, increment], got {show(axes)}")
    goniometer = tuple((a[0], number({"start": a[1]}, "start", f"{where}: goniometer {a[0]}"),
                        number({"increment": a[2]}, "increment", f"{where}: goniometer {a[0]}")) for a in axes)
    if any(v is None for a in goniometer for v in a[1:]):
        raise DecodeError(f"{where}: goniometer start and increment must be numbers, got {show(axes)}")
    return Instrument(sensor_material=text(value, "sensor_material", where),
                      sensor_thickness=positive(value, "sensor_thickness", where),
                      frame_time=positive(value, "frame_time", where), description=text(value, "description", where),
                      serial_number=text(value, "serial_number", where), goniometer=goniometer,
                      detector_translation=vector(value, "detector_translation", where),
                      pixel_flags=None if flags is None else flags.astype(np.uint32))


def _decode_image(header: dict[str, Any], parts: list[bytes], series_no: int,
                  series: SeriesStart | None, limits: Limits) -> Frame:
    _expect_parts(parts, 2, "image")
    index = frame_index(header, "frame", _WHERE)
    where = f"native: frame {index}"
    shape, dtype = _shape(header, where), _dtype(header, where)
    limits.check(shape, dtype, where)
    encoding = header.get("encoding", "raw")
    if encoding not in ENCODINGS:
        raise DecodeError(f"{where}: unknown encoding {show(encoding)} (expected one of {ENCODINGS})")
    timestamp = number(header, "timestamp", where)
    check_fits(series, shape, dtype, where)
    position = _position(header.get("position"), series, where)
    try:
        data, payload = codecs.accept(parts[1], encoding, shape, dtype)
    except DecodeError as exc:
        raise DecodeError(f"native: frame {index}: {exc}") from None
    return Frame(series=series_no, index=index, data=data, payload=payload,
                 timestamp=0.0 if timestamp is None else timestamp, position=position)


def _position(value: Any, series: SeriesStart | None, where: str) -> tuple[int, int] | None:
    """``position``: absent, nil, or [row, col] within the open series' scan."""
    if value is None:
        return None
    scan = series.scan if series is not None else None
    if (not isinstance(value, list) or len(value) != 2 or not all(is_int(v) and v >= 0 for v in value)
            or scan is None or not (value[0] < scan.shape[0] and value[1] < scan.shape[1])):
        within = f"within the scan {list(scan.shape)}" if scan is not None else "(the series has no scan)"
        raise DecodeError(f"{where}: 'position' must be [row, col] {within}, got {show(value)}")
    return value[0], value[1]


def _expect_parts(parts: list[bytes], n: int, kind: str) -> None:
    if len(parts) != n:
        raise DecodeError(f"native: {kind} message needs {n} part(s), got {len(parts)}")


def _shape(header: dict[str, Any], where: str) -> tuple[int, int]:
    value = header.get("shape")
    shape = sides(value)
    if shape is None:
        raise DecodeError(f"{where}: 'shape' must be [rows, cols] of positive integers, got {show(value)}")
    return shape


def _dtype(header: dict[str, Any], where: str) -> np.dtype:
    name = header.get("dtype")
    if not isinstance(name, str) or name not in FRAME_DTYPES:
        raise DecodeError(f"{where}: unknown dtype {show(name)} (expected one of {', '.join(FRAME_DTYPES)})")
    return np.dtype(name).newbyteorder("<")


def _geometry(value: Any, where: str) -> Geometry:
    """``geometry``: nil, or a map of ``beam_center`` [row, col] px, ``pixel_size`` [y, x] m (> 0),
    ``distance`` m (> 0), ``wavelength`` Å (> 0), each nil or absent when unknown; other keys ignored."""
    if value is None:
        return Geometry()
    if not isinstance(value, dict):
        raise DecodeError(f"{where}: 'geometry' must be a map, got {show(value)}")
    where = f"{where}: geometry"
    return Geometry(beam_center=pair(value, "beam_center", where),
                    pixel_size=pair(value, "pixel_size", where, positive=True),
                    distance=positive(value, "distance", where), wavelength=positive(value, "wavelength", where))


def _scan_header(scan: Scan | None) -> Any:
    """``scan`` as sent: [rows, cols] for a plain raster, else the map with every field."""
    if scan is None:
        return None
    if (scan.order, scan.flyback, scan.step, scan.unit) == ("raster", 0, None, None):
        return list(scan.shape)
    return scan.to_dict()


def _scan(value: Any, where: str, limits: Limits) -> Scan | None:
    """``scan``: nil, [rows, cols] of positive integers (a raster), or a map with ``shape`` [rows,
    cols], ``order`` ("raster" | "serpentine"), ``flyback`` (frames >= 0), ``step`` (> 0) and
    ``unit`` (a string), each optional but the shape; its maps are images, so within ``limits``."""
    if value is None:
        return None
    fields = value if isinstance(value, dict) else {"shape": value}
    shape = sides(fields.get("shape"))
    if shape is None:
        raise DecodeError(f"{where}: 'scan' must be [rows, cols] of positive integers or a map with them as "
                          f"'shape', got {show(value)}")
    if shape[0] * shape[1] > limits.max_pixels:
        raise DecodeError(f"{where} refused: 'scan' of {shape[0] * shape[1]} positions, more than "
                          f"source.max_frame_pixels = {limits.max_pixels} (a scan map is an image)")
    order = fields.get("order", "raster")
    if order not in ("raster", "serpentine"):
        raise DecodeError(f"{where}: scan 'order' must be 'raster' or 'serpentine', got {show(order)}")
    unit = fields.get("unit")
    if unit is not None and not isinstance(unit, str):
        raise DecodeError(f"{where}: scan 'unit' must be a string, got {show(unit)}")
    flyback = integer(fields, "flyback", f"{where}: scan", required=False) or 0
    if flyback > 1 << 20:
        raise DecodeError(f"{where}: scan 'flyback' of {flyback} frames per line is not plausible")
    return Scan(shape, order=order, flyback=flyback, step=positive(fields, "step", f"{where}: scan"), unit=unit)


def _saturation(header: dict[str, Any], where: str) -> int | float | None:
    """``saturation``: nil or a finite number (an integer stays an integer)."""
    value = number(header, "saturation", where)
    return header["saturation"] if is_int(header.get("saturation")) else value


_META_DEPTH = 8


def _meta(value: Any, where: str) -> dict[str, Any]:
    """``meta``: nil or a map with string keys (at every level) of msgpack/JSON-able values."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise DecodeError(f"{where}: 'meta' must be a map, got {show(value)}")
    _check_plain(value, f"{where}: 'meta'", _META_DEPTH)
    return value


def _check_plain(value: Any, where: str, depth: int) -> None:
    if depth == 0:
        raise DecodeError(f"{where}: nested more than {_META_DEPTH} levels deep")
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise DecodeError(f"{where} keys must be strings, got {show(list(value))}")
        for v in value.values():
            _check_plain(v, where, depth - 1)
    elif isinstance(value, (list, tuple)):
        for v in value:
            _check_plain(v, where, depth - 1)


def _buffer(buf: bytes, shape: tuple[int, int], dtype: np.dtype, what: str) -> np.ndarray:
    try:
        return codecs.decode(buf, "raw", shape, dtype)
    except DecodeError as exc:
        raise DecodeError(f"native: {what}: {exc}") from None
