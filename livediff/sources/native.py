"""livediff's native stream protocol: encoder (for :mod:`livediff.sources.sender`) and decoder.

Each message is a ZeroMQ multipart message.  Part 1 is a msgpack map with ``"v"`` (=
:data:`VERSION`), ``"type"`` (``"start"`` | ``"image"`` | ``"end"``) and ``"series"``;
``start`` and ``image`` carry a second part with a raw little-endian buffer.

``start``: ``shape`` [rows, cols], ``dtype``, ``n_frames``, ``geometry`` (see
:class:`livediff.model.Geometry`), ``scan`` [rows, cols] or nil, ``count_time``,
``saturation``, ``meta``; ``mask`` true when part 2 holds the pixel mask as uint8
(1 = valid, livediff's convention) of ``shape``.

``image``: ``frame`` (0-based), ``timestamp`` (s since the epoch), ``shape``, ``dtype``,
``encoding``; part 2 the pixels, C order: ``"raw"`` little-endian, or compressed as
``"bslz4"`` (bitshuffle-LZ4) or ``"lz4"``, both in the HDF5 filter chunk layout (see
:mod:`livediff.sources.codecs`).  A compressed payload reaches the pipeline as
``Frame.raw`` too, so a writer can store it without recompressing.

``end``: nothing more.
"""
from __future__ import annotations

import time
from typing import Any

import msgpack
import numpy as np

from ..errors import DecodeError
from ..model import FRAME_DTYPES, Frame, Geometry, Scan, SeriesEnd, SeriesStart
from . import codecs

VERSION = 1
ENCODINGS = codecs.ENCODINGS

Event = SeriesStart | Frame | SeriesEnd


def encode_start(start: SeriesStart) -> list[bytes]:
    """Multipart message announcing ``start``."""
    header = {
        "v": VERSION, "type": "start", "series": start.series, "shape": list(start.shape),
        "dtype": start.dtype, "n_frames": start.n_frames, "geometry": start.geometry.to_dict(),
        "scan": list(start.scan.shape) if start.scan else None, "count_time": start.count_time,
        "saturation": start.saturation, "meta": start.meta, "mask": start.mask is not None,
    }
    parts = [msgpack.packb(header, use_bin_type=True)]
    if start.mask is not None:
        parts.append(start.mask.astype(np.uint8).tobytes())
    return parts


def encode_image(series: int, index: int, data: np.ndarray, *, timestamp: float | None = None,
                 encoding: str = "raw", blob: bytes | None = None) -> list[bytes]:
    """Multipart message carrying frame ``index`` of ``series``, its pixels encoded as ``encoding``.

    ``blob``, when given, is the frame already encoded as ``encoding`` (e.g. a stored
    bitshuffle-LZ4 chunk): it is sent as is, and ``data`` only gives the shape and dtype.

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


def decode(parts: list[bytes], *, series: SeriesStart | None = None) -> Event:
    """Decode one native multipart message.

    Parameters
    ----------
    parts : the message parts as received.
    series : the open series, if any; an image's shape and dtype must agree with it.

    Raises
    ------
    DecodeError
        With a one-line reason: not msgpack, wrong part count, unknown type, dtype or
        encoding, bad shape, wrong buffer length, shape disagreeing with the header.
    """
    try:
        header = msgpack.unpackb(parts[0], raw=False, strict_map_key=False)
    except (ValueError, TypeError, msgpack.UnpackException, IndexError) as exc:  # TypeError: unhashable map key
        raise DecodeError(f"native: header is not msgpack ({type(exc).__name__}: {exc})") from None
    if not isinstance(header, dict):
        raise DecodeError(f"native: header must be a map, got {type(header).__name__}")
    if header.get("v") != VERSION:
        raise DecodeError(f"native: protocol version {header.get('v')!r}, expected {VERSION}")
    kind = header.get("type")
    series_no = _int(header, "series")
    if kind == "start":
        return _decode_start(header, parts, series_no)
    if kind == "image":
        return _decode_image(header, parts, series_no, series)
    if kind == "end":
        _expect_parts(parts, 1, "end")
        return SeriesEnd(series_no)
    raise DecodeError(f"native: unknown message type {kind!r} (expected 'start', 'image' or 'end')")


def _decode_start(header: dict[str, Any], parts: list[bytes], series_no: int) -> SeriesStart:
    shape, dtype = _shape(header), _dtype(header)
    _expect_parts(parts, 2 if header.get("mask") else 1, "start")
    mask = None
    if header.get("mask"):
        mask = _buffer(parts[1], shape, np.dtype(np.uint8), "mask").astype(bool)
    scan = header.get("scan")
    try:
        return SeriesStart(
            series=series_no, shape=shape, dtype=dtype.name,
            n_frames=None if header.get("n_frames") is None else int(header["n_frames"]),
            mask=mask, geometry=Geometry.from_dict(header.get("geometry")),
            scan=Scan(tuple(int(n) for n in scan)) if scan else None,
            count_time=header.get("count_time"), saturation=header.get("saturation"),
            meta=dict(header.get("meta") or {}),
        )
    except (TypeError, ValueError) as exc:
        raise DecodeError(f"native: bad start header: {exc}") from None


def _decode_image(header: dict[str, Any], parts: list[bytes], series_no: int,
                  series: SeriesStart | None) -> Frame:
    _expect_parts(parts, 2, "image")
    index = _int(header, "frame")
    shape, dtype = _shape(header), _dtype(header)
    encoding = header.get("encoding", "raw")
    if encoding not in ENCODINGS:
        raise DecodeError(f"native: frame {index}: unknown encoding {encoding!r} (expected one of {ENCODINGS})")
    if series is not None and (shape != series.shape or dtype.name != series.dtype):
        raise DecodeError(
            f"native: frame {index}: {dtype.name} {shape} disagrees with the series header "
            f"({series.dtype} {series.shape})"
        )
    data = _buffer(parts[1], shape, dtype, f"frame {index}", encoding)
    raw = None if encoding == "raw" else parts[1]
    timestamp = header.get("timestamp", 0.0)
    return Frame(series=series_no, index=index, data=data, raw=raw, encoding=encoding,
                 timestamp=float(timestamp) if isinstance(timestamp, (int, float)) else 0.0)


def _expect_parts(parts: list[bytes], n: int, kind: str) -> None:
    if len(parts) != n:
        raise DecodeError(f"native: {kind} message needs {n} part(s), got {len(parts)}")


def _int(header: dict[str, Any], key: str) -> int:
    value = header.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise DecodeError(f"native: {key!r} must be an integer >= 0, got {value!r}")
    return value


def _shape(header: dict[str, Any]) -> tuple[int, int]:
    shape = header.get("shape")
    if (not isinstance(shape, list) or len(shape) != 2
            or not all(isinstance(n, int) and not isinstance(n, bool) and 0 < n < 1 << 20 for n in shape)):
        raise DecodeError(f"native: 'shape' must be [rows, cols] of positive integers, got {shape!r}")
    return (shape[0], shape[1])


def _dtype(header: dict[str, Any]) -> np.dtype:
    name = header.get("dtype")
    if name not in FRAME_DTYPES:
        raise DecodeError(f"native: unknown dtype {name!r} (expected one of {', '.join(FRAME_DTYPES)})")
    return np.dtype(name).newbyteorder("<")


def _buffer(buf: bytes, shape: tuple[int, int], dtype: np.dtype, what: str, encoding: str = "raw") -> np.ndarray:
    try:
        return codecs.decode(buf, encoding, shape, dtype)
    except DecodeError as exc:
        raise DecodeError(f"native: {what}: {exc}") from None
