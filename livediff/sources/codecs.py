"""Pixel payload codecs: bitshuffle-LZ4 and LZ4 in the HDF5 filter framing, and bare LZ4.

Every decoder here takes bytes from the network, so none may crash the process on
corrupt or truncated input, nor allocate what the header claims before the claim is
checked.  The 12-byte header is parsed here first: its total must equal the expected
``rows x cols x itemsize`` and its block size must suit the element size *before*
anything is decompressed; the decoded length is checked again *after*.  Chunks are
decompressed by DECTRIS' own codec package, ``dectris-compression``, which checks every
block length against the bytes left and decompresses with ``LZ4_decompress_safe``
(bounds-checked; it fails cleanly on corrupt input); bare LZ4 blocks by the ``lz4``
package (the same safe call).  ``bitshuffle.decompress_lz4`` and the HDF5 filter
plugins are never given received bytes: they crash (segfault) on corrupt input.
``tests/test_codecs.py`` fuzzes every decoder with truncated and corrupted blobs.

Formats (the names are :attr:`livediff.model.Frame.encoding` values):

``"bslz4"``
    The bitshuffle HDF5 filter (id 32008) chunk layout, which DECTRIS Stream v1
    (``bs8-lz4<``, ``bs16-lz4<``, ``bs32-lz4<``) and Stream v2 (tag 56500 ``"bslz4"``)
    send: 8-byte big-endian uncompressed size, 4-byte big-endian block size in bytes,
    then per block a 4-byte big-endian compressed length and an LZ4 block of the
    bit-transposed elements.  A last partial block holds the largest multiple of 8
    elements left; the final ``n % 8`` elements follow uncompressed [1]_.
``"lz4"``
    The HDF5 LZ4 filter (id 32004) chunk layout, which Stream v2 (tag 56500 ``"lz4"``)
    sends: the same 12-byte header, then per block a 4-byte big-endian length and
    either an LZ4 block or, when that length equals the block size, the bytes stored
    as they are [2]_.
bare LZ4 block
    Stream v1 ``lz4<``: one LZ4 block, nothing else (:func:`decode_lz4_block`).

The encoders (simulator, replay, tests) compress with the ``lz4`` package; the bit
transposition is a small numba kernel (:mod:`.bitshuffle`, loaded on the first encode, so a
receiver never loads numba), byte-identical to bitshuffle's (tested).

References
----------
.. [1] K. Masui et al., "A compression scheme for radio data in high performance
   computing", Astronomy and Computing 12, 181 (2015); bitshuffle ``src/bshuf_h5filter.c``.
.. [2] HDF Group, ``hdf5_plugins/LZ4/LZ4_HDF5_format.md``.
"""
from __future__ import annotations

import struct
from typing import Any

import dectris.compression
import lz4.block
import numpy as np

from ..errors import DecodeError

#: Encodings a frame payload may have (``Frame.encoding``).
ENCODINGS = ("raw", "bslz4", "lz4")

_HEADER = struct.Struct(">QI")
_LENGTH = struct.Struct(">I")
_BLOCKED_MULT = 8           # bitshuffle transposes groups of 8 elements
_TARGET_BLOCK_BYTES = 8192  # bitshuffle's default block: 8 KiB of elements
_MIN_BLOCK = 128            # ... but at least 128 elements
_LZ4_H5_BLOCK = 1 << 30     # the HDF5 LZ4 filter's default block size (1 GiB)


def decode(blob: Any, encoding: str, shape: tuple[int, int], dtype: Any) -> np.ndarray:
    """Decode a frame payload into a ``(rows, cols)`` array.

    Parameters
    ----------
    blob : bytes-like
        The payload as received.
    encoding : {"raw", "bslz4", "lz4"}
        ``"raw"``: little-endian pixels, C order; the others as in the module docstring.
    shape : (rows, cols)
        Shape the payload must decode to.
    dtype : numpy dtype
        Pixel type; the payload is little-endian, the result has native byte order.

    Returns
    -------
    numpy.ndarray
        ``shape`` array of ``dtype`` in native byte order; it may be read-only (a view of
        ``blob`` for ``"raw"``, of the decoded bytes otherwise).

    Raises
    ------
    DecodeError
        Unknown encoding, or a payload that does not decode to exactly ``shape`` x
        ``dtype`` (each message says which length disagreed and what was expected).
    """
    dtype = np.dtype(dtype)
    if encoding == "raw":
        view = _bytes_view(blob)
        if len(view) != _nbytes(shape, dtype):
            raise DecodeError(f"buffer holds {len(view)} bytes, expected {_nbytes(shape, dtype)} "
                              f"for {dtype.name} {tuple(shape)}")
        return _as_array(view, shape, dtype)
    if encoding == "bslz4":
        return decode_bslz4(blob, shape, dtype)
    if encoding == "lz4":
        return decode_lz4(blob, shape, dtype)
    raise DecodeError(f"unknown encoding {encoding!r} (expected one of {', '.join(ENCODINGS)})")


def decode_bslz4(blob: Any, shape: tuple[int, int], dtype: Any) -> np.ndarray:
    """Decode a bitshuffle-LZ4 chunk (HDF5 filter 32008 layout) into a ``shape`` array.

    Parameters
    ----------
    blob : bytes-like
        12-byte header, compressed blocks, uncompressed tail (module docstring).
    shape : (rows, cols)
    dtype : numpy dtype
        Element type; its size is the bitshuffle element size.

    Returns
    -------
    numpy.ndarray
        ``shape`` array of ``dtype`` (native byte order), read-only.

    Raises
    ------
    DecodeError
        Header total != rows x cols x itemsize, block size not a positive multiple of
        8 elements, truncated or corrupt block, or a wrong decoded length.

    Notes
    -----
    With n elements and a block of b elements there are ``n // b`` full blocks, one
    block of ``(n % b) - (n % b) % 8`` elements if that is not zero, then ``n % 8``
    elements stored as they are.  Inside a block of m elements of s bytes, bit k
    (k < 8 s, little-endian) of element i is bit ``i % 8`` of byte ``k m / 8 + i // 8``.
    """
    dtype = np.dtype(dtype)
    view = _bytes_view(blob)
    block_bytes = _check_header(view, _nbytes(shape, dtype), "bslz4")
    unit = _BLOCKED_MULT * dtype.itemsize
    if block_bytes == 0 or block_bytes % unit:
        raise DecodeError(f"bslz4: block size {block_bytes} bytes is not a positive multiple of "
                          f"{_BLOCKED_MULT} elements of {dtype.itemsize} byte(s)")
    return _decompress(view, "bslz4", shape, dtype)


def decode_lz4(blob: Any, shape: tuple[int, int], dtype: Any) -> np.ndarray:
    """Decode an LZ4 chunk in the HDF5 LZ4 filter (32004) layout into a ``shape`` array.

    Parameters
    ----------
    blob : bytes-like
    shape : (rows, cols)
    dtype : numpy dtype

    Returns
    -------
    numpy.ndarray
        ``shape`` array of ``dtype`` (native byte order), read-only.

    Raises
    ------
    DecodeError
        Header total != rows x cols x itemsize, zero block size, truncated or corrupt
        block, or a wrong decoded length.
    """
    dtype = np.dtype(dtype)
    view = _bytes_view(blob)
    if _check_header(view, _nbytes(shape, dtype), "lz4") == 0:
        raise DecodeError("lz4: block size 0 in the header")
    return _decompress(view, "lz4", shape, dtype)


def decode_lz4_block(blob: Any, shape: tuple[int, int], dtype: Any) -> np.ndarray:
    """Decode one bare LZ4 block (DECTRIS Stream v1 ``lz4<``) into a ``shape`` array.

    Raises
    ------
    DecodeError
        Corrupt or truncated block, or one not decompressing to exactly
        rows x cols x itemsize bytes.
    """
    dtype = np.dtype(dtype)
    expected = _nbytes(shape, dtype)
    view = _bytes_view(blob)
    data = _lz4_block(view, expected, "lz4 block")
    if len(data) != expected:
        raise DecodeError(f"lz4 block: decoded {len(data)} bytes, expected {expected}")
    return _as_array(data, shape, dtype)


def lz4_block_to_h5(blob: Any, nbytes: int) -> bytes | None:
    """Re-frame a bare LZ4 block of ``nbytes`` decoded bytes as one HDF5 LZ4 filter chunk.

    The result is a valid ``"lz4"`` payload (one block, no recompression), or None in
    the one case the framing cannot express: a compressed block exactly ``nbytes``
    long, which the filter would read as stored.
    """
    view = _bytes_view(blob)
    if len(view) == nbytes:
        return None
    return _HEADER.pack(nbytes, nbytes) + _LENGTH.pack(len(view)) + bytes(view)


def encode(data: np.ndarray, encoding: str) -> bytes:
    """Encode ``data`` (any shape) as ``encoding``: the inverse of :func:`decode`.

    Raises
    ------
    ValueError
        Unknown encoding.
    """
    if encoding == "raw":
        return _little_endian(data).tobytes()
    if encoding == "bslz4":
        return encode_bslz4(data)
    if encoding == "lz4":
        return encode_lz4(data)
    raise ValueError(f"unknown encoding {encoding!r} (expected one of {', '.join(ENCODINGS)})")


def encode_bslz4(data: np.ndarray, *, block_size: int | None = None) -> bytes:
    """Bitshuffle-LZ4 chunk of ``data`` in the HDF5 filter 32008 layout.

    Parameters
    ----------
    data : numpy.ndarray
        Any shape; its elements are written little-endian, C order.
    block_size : int, optional
        Elements per block, a positive multiple of 8; default bitshuffle's own choice,
        8192 bytes of elements (at least 128), as DECTRIS detectors use.

    Returns
    -------
    bytes

    Raises
    ------
    ValueError
        ``block_size`` not a positive multiple of 8.
    """
    flat = _little_endian(data).reshape(-1).view(np.uint8)
    itemsize = data.dtype.itemsize
    if block_size is None:
        block_size = max(_TARGET_BLOCK_BYTES // itemsize // _BLOCKED_MULT * _BLOCKED_MULT, _MIN_BLOCK)
    if block_size <= 0 or block_size % _BLOCKED_MULT:
        raise ValueError(f"block_size must be a positive multiple of {_BLOCKED_MULT}, got {block_size}")
    n = data.size
    shuffled = np.empty_like(flat)
    from .bitshuffle import bitshuffle  # numba, compiled only when something is encoded

    bitshuffle(flat, shuffled, block_size, itemsize)
    parts = [_HEADER.pack(flat.size, block_size * itemsize)]
    end = (n - n % _BLOCKED_MULT) * itemsize
    for start in range(0, end, block_size * itemsize):
        block = lz4.block.compress(shuffled[start:min(start + block_size * itemsize, end)], store_size=False)
        parts += [_LENGTH.pack(len(block)), block]
    parts.append(flat[end:].tobytes())
    return b"".join(parts)


def encode_lz4(data: np.ndarray, *, block_size: int = _LZ4_H5_BLOCK) -> bytes:
    """LZ4 chunk of ``data`` in the HDF5 LZ4 filter 32004 layout (blocks of ``block_size`` bytes).

    A block that LZ4 cannot shrink is stored as it is, as the HDF5 filter does.

    Raises
    ------
    ValueError
        ``block_size`` not positive.
    """
    if block_size <= 0:
        raise ValueError(f"block_size must be > 0, got {block_size}")
    flat = _little_endian(data).reshape(-1).view(np.uint8)
    block_size = min(block_size, max(flat.size, 1))
    parts = [_HEADER.pack(flat.size, block_size)]
    for start in range(0, flat.size, block_size):
        raw = flat[start:start + block_size]
        block = lz4.block.compress(raw, store_size=False)
        if len(block) >= raw.size:
            block = raw.tobytes()
        parts += [_LENGTH.pack(len(block)), block]
    return b"".join(parts)


def encode_lz4_block(data: np.ndarray) -> bytes:
    """One bare LZ4 block of ``data`` (little-endian, C order): Stream v1 ``lz4<``."""
    return lz4.block.compress(_little_endian(data).reshape(-1).view(np.uint8), store_size=False)


# ---------------------------------------------------------------------- helpers
def _bytes_view(blob: Any) -> memoryview:
    try:
        view = memoryview(blob)
    except TypeError:
        raise DecodeError(f"payload must be bytes-like, got {type(blob).__name__}") from None
    return view if view.format == "B" and view.ndim == 1 else view.cast("B")


def _nbytes(shape: tuple[int, int], dtype: np.dtype) -> int:
    return int(shape[0]) * int(shape[1]) * dtype.itemsize


def _check_header(view: memoryview, expected: int, what: str) -> int:
    """Validate the 12-byte HDF5-filter header; return the block size in bytes."""
    if len(view) < _HEADER.size:
        raise DecodeError(f"{what}: {len(view)} bytes, too short for the {_HEADER.size}-byte header")
    total, block_bytes = _HEADER.unpack_from(view, 0)
    if total != expected:
        raise DecodeError(f"{what}: header announces {total} bytes, expected {expected}")
    return block_bytes


def _decompress(view: memoryview, algorithm: str, shape: tuple[int, int], dtype: np.dtype) -> np.ndarray:
    """Decompress a header-checked HDF5-filter chunk with dectris-compression, checking the length."""
    try:
        data = dectris.compression.decompress(view, algorithm, elem_size=dtype.itemsize)
    except RuntimeError:  # dectris-compression's only failure: "error decompressing stream"
        raise DecodeError(f"{algorithm}: corrupt or truncated data") from None
    expected = _nbytes(shape, dtype)
    if len(data) != expected:
        raise DecodeError(f"{algorithm}: decoded {len(data)} bytes, expected {expected}")
    return _as_array(data, shape, dtype)


def _lz4_block(view: memoryview, size: int, what: str) -> bytes:
    try:
        return lz4.block.decompress(view, uncompressed_size=size)
    except lz4.block.LZ4BlockError as exc:
        raise DecodeError(f"{what}: corrupt LZ4 data ({exc})") from None


def _little_endian(data: np.ndarray) -> np.ndarray:
    data = np.ascontiguousarray(data)
    return data.astype(data.dtype.newbyteorder("<"), copy=False)


def _as_array(buf: Any, shape: tuple[int, int], dtype: np.dtype) -> np.ndarray:
    wire = np.frombuffer(buf, dtype=dtype.newbyteorder("<")).reshape(shape)
    return wire.astype(dtype.newbyteorder("="), copy=False)
